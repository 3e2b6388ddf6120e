"""Science instruments' tables: [data.synthetic], [data.facts], [data.tasks], [sampling] (sweeps/README.md).

Each config checks its own values (scaling/config.py). Checked here: what needs the task registry
(a task's kind, its own settings, the length of its documents) or the model (sampling lengths and
top_k against seq_len and the vocabulary).
"""
from __future__ import annotations

from scaling.config import FactsConfig, SamplingConfig, SyntheticConfig, TasksConfig, TaskSpec
from scaling.config_checks import task_name_problem
from scaling.sweep.table import MISSING, Table


def read_synthetic(data_table: Table, source) -> SyntheticConfig | None:
    """[data.synthetic]; the source's default process when the table is left out. (A table given for
    another source is refused by DataConfig.)"""
    data_table.used.add("synthetic")
    if "synthetic" not in data_table.data:
        return SyntheticConfig() if source == "synthetic" else None
    return data_table.sub("synthetic").config(SyntheticConfig)


def read_facts(data_table: Table, source) -> FactsConfig | None:
    """[data.facts]; the source's default facts when the table is left out (like [data.synthetic])."""
    data_table.used.add("facts")
    if "facts" not in data_table.data:
        return FactsConfig() if source == "facts" else None
    return data_table.sub("facts").config(FactsConfig)


def read_tasks(data_table: Table, seq_len: int) -> TasksConfig | None:
    data_table.used.add("tasks")
    if "tasks" not in data_table.data:
        return None
    tasks_table = data_table.sub("tasks")
    settings = tasks_table.values(TasksConfig, ("rate", "heldout_fraction", "probe_items", "seed"))
    specs = tuple(_read_task(tasks_table, name, seq_len) for name, value in tasks_table.data.items()
                  if isinstance(value, dict))
    tasks_table.finish()
    return settings.build(TasksConfig, tasks=specs)


def _read_task(tasks_table: Table, name: str, seq_len: int) -> TaskSpec:
    from scaling.data.tasks import TASKS, max_document_tokens
    # The name before the kind: a misspelt name would otherwise read as a kind left out.
    problem = task_name_problem(name)
    if problem:
        raise tasks_table.error(name, problem)
    table = tasks_table.sub(name)
    kind = table.str("kind", name if name in TASKS else MISSING, choices=tuple(TASKS))
    weight = table.values(TaskSpec, ("weight",))
    task_class = TASKS[kind]
    params = {}
    for key, default in task_class.PARAMS.items():  # typed by the default's type
        read = {bool: table.bool, int: table.int, float: table.float, str: table.str}[type(default)]
        params[key] = read(key, default)
    for key, message in task_class(**params).check():
        raise table.error(key, message)
    table.finish()
    spec = weight.build(TaskSpec, name=name, kind=kind, params=tuple(sorted(params.items())))
    need = max_document_tokens(spec)
    if need > seq_len:
        raise table.error("kind", f"a {kind} document takes up to {need} tokens, more than data.seq_len={seq_len}")
    return spec


def read_sampling(root: Table, seq_len: int, vocab_size: int) -> SamplingConfig | None:
    root.used.add("sampling")
    if "sampling" not in root.data:
        return None
    table = root.sub("sampling")
    cfg = table.config(SamplingConfig)
    if cfg.prompt_tokens + cfg.new_tokens > seq_len:
        raise table.error("new_tokens", f"prompt_tokens + new_tokens = {cfg.prompt_tokens + cfg.new_tokens} is more "
                          f"than data.seq_len={seq_len}")
    if cfg.top_k > vocab_size:
        raise table.error("top_k", f"{cfg.top_k} is more than the vocabulary ({vocab_size} tokens)")
    return cfg


def announce_small_probes(sweep) -> None:
    """One line for each task whose held-out instances are fewer than `probe_items` (a small
    instance space, e.g. 1-digit addition or a small modulus): all of them are probed, and the
    intervals on its scores are wider by as much (`probe/<task>/items` records the count)."""
    from scaling.data.tasks import probe_items
    seen = set()
    for spec in sweep.runs:
        cfg = spec.data.tasks
        if cfg is None or cfg in seen:
            continue
        seen.add(cfg)
        for task in cfg.tasks:
            n = len(probe_items(cfg, task))
            if n < cfg.probe_items:
                print(f"sweep {sweep.name}: task {task.name!r} has {n} held-out instances, fewer than probe_items = "
                      f"{cfg.probe_items}: all {n} are probed, and its scores' intervals are wider for it")

