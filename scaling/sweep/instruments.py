"""Science instruments' tables: [data.synthetic], [data.tasks], [sampling] (sweeps/README.md)."""
from __future__ import annotations


from scaling.config import (
    SamplingConfig, SyntheticConfig, TasksConfig, TaskSpec,
)
from scaling.sweep.table import MAX_BEAM, MAX_PROBE_ITEMS, MAX_PROMPTS, MISSING, Table, int_list


def read_synthetic(d: Table, source: str) -> SyntheticConfig | None:
    if "synthetic" not in d.data:
        d.used.add("synthetic")
        return SyntheticConfig() if source == "synthetic" else None
    if source != "synthetic":
        raise d.error("synthetic", f'settings for source = "synthetic", but source = {source!r}')
    from scaling.data.synthetic import check_config
    t = d.sub("synthetic")
    default = SyntheticConfig()
    cfg = SyntheticConfig(
        seed=t.int("seed", default.seed, min=0), components=t.int("components", default.components, min=1),
        zipf_exponent=t.float("zipf_exponent", default.zipf_exponent, min=0),
        alphabet=t.int("alphabet", default.alphabet, min=2),
        orders=tuple(int_list(t, "orders")) if "orders" in t.data else default.orders,
        concentration=t.float("concentration", default.concentration, min=0, min_open=True),
        end_prob=t.float("end_prob", default.end_prob, min=0, max=1, min_open=True),
        train_tokens=t.int("train_tokens", default.train_tokens, min=1000),
        val_tokens=t.int("val_tokens", default.val_tokens, min=1000))
    t.used.add("orders")
    for key, message in check_config(cfg):
        raise t.error(key, message)
    t.finish()
    return cfg


_TASK_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def read_tasks(d: Table, source: str, seq_len: int) -> TasksConfig | None:
    d.used.add("tasks")
    if "tasks" not in d.data:
        return None
    from scaling.data.tasks import TASKS, max_document_tokens
    t = d.sub("tasks")
    if source == "tokens":
        raise t.error("rate", 'task documents are bytes: they mix only into a byte-level source '
                      '("stdlib", "text" or "synthetic")')
    default = TasksConfig()
    settings = dict(rate=t.float("rate", default.rate, min=0, max=0.9, min_open=True),
                    heldout_fraction=t.float("heldout_fraction", default.heldout_fraction, min=0, max=0.9,
                                             min_open=True),
                    probe_items=t.int("probe_items", default.probe_items, min=1, max=MAX_PROBE_ITEMS),
                    seed=t.int("seed", default.seed, min=0))
    specs = []
    for name in [k for k, v in t.data.items() if isinstance(v, dict)]:
        if not set(name) <= _TASK_NAME_CHARS:
            raise t.error(name, "a task name is lowercase letters, digits and _ (it names record columns)")
        tt = t.sub(name)
        kind = tt.str("kind", name if name in TASKS else MISSING, choices=tuple(TASKS))
        weight = tt.float("weight", 1.0, min=0, min_open=True)
        cls = TASKS[kind]
        params = {}
        for key, value in cls.PARAMS.items():
            read = {bool: tt.bool, int: tt.int, float: tt.float, str: tt.str}[type(value)]
            params[key] = read(key, value)
        for key, message in cls(**params).check():
            raise tt.error(key, message)
        tt.finish()
        spec = TaskSpec(name=name, kind=kind, weight=weight, params=tuple(sorted(params.items())))
        need = max_document_tokens(spec)
        if need > seq_len:
            raise tt.error("kind", f"a {kind} document takes up to {need} tokens, more than data.seq_len={seq_len}")
        specs.append(spec)
    if not specs:
        raise t.error("rate", "no tasks: add a table per task, e.g. [data.tasks.addition]")
    t.finish()
    return TasksConfig(tasks=tuple(specs), **settings)


def read_sampling(root: Table, seq_len: int, vocab_size: int) -> SamplingConfig | None:
    root.used.add("sampling")
    if "sampling" not in root.data:
        return None
    t = root.sub("sampling")
    default = SamplingConfig()
    cfg = SamplingConfig(
        prompts=t.int("prompts", default.prompts, min=1, max=MAX_PROMPTS),
        prompt_tokens=t.int("prompt_tokens", default.prompt_tokens, min=1),
        new_tokens=t.int("new_tokens", default.new_tokens, min=1),
        temperature=t.float("temperature", default.temperature, min=0, min_open=True),
        top_k=t.int("top_k", default.top_k, min=1), top_p=t.float("top_p", default.top_p, min=0, max=1, min_open=True),
        beam=t.int("beam", default.beam, min=1, max=MAX_BEAM), seed=t.int("seed", default.seed, min=0))
    if cfg.prompt_tokens + cfg.new_tokens > seq_len:
        raise t.error("new_tokens", f"prompt_tokens + new_tokens = {cfg.prompt_tokens + cfg.new_tokens} is more than "
                      f"data.seq_len={seq_len}")
    if cfg.top_k > vocab_size:
        raise t.error("top_k", f"{cfg.top_k} is more than the vocabulary ({vocab_size} tokens)")
    t.finish()
    return cfg
