"""Tasks: formats, the held-out split (never trained on), mixing rate, chance levels, sweep keys."""

import math

import numpy as np
import pytest

from conftest import write_sweep
from scaling.data import tasks
from scaling.config import ConfigError, SyntheticConfig, TasksConfig, TaskSpec
from scaling.data.sources import open_source
from scaling.science.probes import chance_levels


def _spec(kind, name=None, **params):
    return TaskSpec(name=name or kind, kind=kind, params=tuple(sorted(params.items())))


def test_addition_formats():
    direct, rev, pad = (tasks.Addition(format=f) for f in ("direct", "reversed", "scratchpad"))
    assert direct.answer(123, 459) == "582"
    assert rev.answer(123, 459) == "285"
    assert pad.answer(123, 459) == "3+9+0=12,2+5+1=8,1+4+0=5:582"
    assert pad.answer(95, 7) == "5+7+0=12,9+0+1=10:102"
    rng = np.random.default_rng(0)
    for task in (direct, rev, pad):
        for _ in range(200):
            item = task.sample(rng)
            assert item.target.endswith("\n") and len(item.prompt) <= task.max_prompt_chars()
            assert len(item.target) <= task.max_target_chars()
            assert set(item.target) <= set(task.answer_alphabet())
            a, b = map(int, item.prompt[:-1].split("+"))
            assert item.key == f"addition:{a}+{b}"  # the same problem has one key in every format


def test_other_tasks_are_well_formed():
    rng = np.random.default_rng(1)
    item = tasks.Recall(pairs=4).sample(rng)
    context, query = item.prompt[:-1].split("|")
    pairs = dict(p.split(":") for p in context.split(" "))
    assert len(pairs) == 4 and item.target == pairs[query] + "\n"
    item = tasks.Copy(min_len=5, max_len=5).sample(rng)
    assert item.prompt == f"copy:{item.target[:-1]}=" and len(item.target) == 6
    item = tasks.Modular(modulus=7, op="*").sample(rng)
    a, rest = item.prompt.split("*")
    b = rest.split("%")[0]
    assert item.target == f"{int(a) * int(b) % 7}\n"
    for cls in tasks.TASKS.values():
        task = cls()
        assert not task.check()
        for _ in range(50):
            it = task.sample(rng)
            assert set(it.target) <= set(task.answer_alphabet())
            assert len(it.prompt) <= task.max_prompt_chars() and len(it.target) <= task.max_target_chars()


def test_heldout_split_is_a_stable_hash():
    keys = [f"modular:{a}+{b}%97" for a in range(97) for b in range(97)]
    held = [k for k in keys if tasks.is_heldout(k, 0.1)]
    assert 0.08 < len(held) / len(keys) < 0.12
    assert tasks.is_heldout("modular:1+2%97", 0.1) == tasks.is_heldout("modular:1+2%97", 0.1)
    assert set(held) < {k for k in keys if tasks.is_heldout(k, 0.3)}  # nested in the fraction


def test_heldout_instances_never_appear_in_training_data(tmp_path, monkeypatch):
    """The whole instance space is small (13 x 13 sums), so the train stream contains nearly every
    instance that is not held out; none that is held out, and the probes use only held-out ones."""
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec("modular", modulus=13)
    cfg = TasksConfig(rate=0.3, heldout_fraction=0.2, probe_items=500, tasks=(spec,))
    base = SyntheticConfig(components=4, alphabet=8, orders=(1,), train_tokens=60_000, val_tokens=20_000)
    src = open_source("synthetic", synthetic=base, tasks=cfg)
    train, val = bytes(src.train), bytes(src.val)
    task = tasks.make_task(spec)
    space = [tasks.Item(key=f"modular:{a}+{b}%13", prompt=f"{a}+{b}%13=", target=f"{(a + b) % 13}\n")
             for a in range(13) for b in range(13)]
    held = [it for it in space if tasks.is_heldout(it.key, 0.2)]
    seen = [it for it in space if not tasks.is_heldout(it.key, 0.2)]
    assert held and seen
    for it in held:
        assert tasks.document(it) not in train
    assert sum(tasks.document(it) in train for it in seen) > 0.9 * len(seen)  # the test can fail
    assert any(tasks.document(it) in val for it in held)
    assert not any(tasks.document(it) in val for it in seen)
    probe = tasks.probe_items(cfg, spec)
    assert {it.key for it in probe} == {it.key for it in held}  # all of a small held-out set, once each
    assert len(probe) == len(held) < cfg.probe_items
    assert src.optimal_nll is None  # a mix has no known optimum
    # About `rate` of the tokens are task documents.
    n_docs = train.count(b"%13=")
    mean_len = np.mean([len(tasks.document(it)) for it in space])
    assert abs(n_docs * mean_len / len(train) - 0.3) < 0.03
    assert task.kind == "modular"


def test_probe_items_are_deterministic_and_distinct():
    cfg = TasksConfig(probe_items=300, tasks=(_spec("addition", max_digits=3),))
    a, b = tasks.probe_items(cfg, cfg.tasks[0]), tasks.probe_items(cfg, cfg.tasks[0])
    assert a == b and len(a) == 300 and len({it.key for it in a}) == 300
    assert all(tasks.is_heldout(it.key, cfg.heldout_fraction) for it in a)


def test_chance_levels_by_hand():
    one_digit = tasks.Addition(min_digits=1, max_digits=1)
    items = [tasks.Item("addition:3+4", "3+4=", "7\n")]
    c = chance_levels(one_digit, items)
    assert c["chance_exact_match"] == pytest.approx(1 / 19)  # sums 0..18
    assert c["chance_token_accuracy"] == pytest.approx(1 / 11)  # 10 digits and the newline
    assert c["chance_target_logprob"] == pytest.approx(-math.log(11))
    assert c["chance_brier"] == pytest.approx(1 - 1 / 11)  # (1 - 1/A)^2 + (A - 1) / A^2
    two = tasks.Addition(min_digits=2, max_digits=2)
    assert two.chance_exact_match(tasks.Item("addition:10+99", "10+99=", "109\n")) == pytest.approx(1 / 179)  # sums 20..198
    assert tasks.Modular(modulus=97).chance_exact_match(None) == pytest.approx(1 / 97)
    assert tasks.Recall(value_digits=2).chance_exact_match(None) == pytest.approx(0.01)
    assert tasks.Copy().chance_exact_match(tasks.Item("copy:abc", "copy:abc=", "abc\n")) == pytest.approx(26.0 ** -3)
    # A random two-letter guess at a two-letter copy is at distance 2, 1 or 0.
    copy_items = [tasks.Item("copy:ab", "copy:ab=", "ab\n")] * 200
    d = chance_levels(tasks.Copy(), copy_items)["chance_edit_distance"]
    assert 1.85 < d < 2.0 and d == chance_levels(tasks.Copy(), copy_items)["chance_edit_distance"]


SWEEP = """
[sweep]
out_dir = "{out}"
[data]
seq_len = 64
[data.tasks]
rate = 0.1
{extra}
[model]
head_dim = 16
[train]
batch_tokens = 1024
[grid]
models = [{{ n_layer = 1, d_model = 32 }}]
tokens = [1e5]
"""


@pytest.mark.parametrize("extra,key", [
    ("", "data.tasks.rate"),  # no task tables
    ("[data.tasks.addition]\nmax_digits = 40", "data.tasks.addition.max_digits"),
    ("[data.tasks.sums]\nformat = 'direct'", "data.tasks.sums.kind"),  # not a known kind: needs kind
    ("[data.tasks.addition]\nformat = 'roman'", "data.tasks.addition.format"),
    ("[data.tasks.recall]\npairs = 20", "data.tasks.recall.kind"),  # longer than seq_len
    ("[data.tasks.copy]\nspan = 3", "data.tasks.copy.span"),
])
def test_bad_task_settings_are_config_errors(tmp_path, extra, key):
    from scaling.sweep.reader import load_sweep
    path = write_sweep(tmp_path / "t.toml", SWEEP.format(out=tmp_path / "out", extra=extra))
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    assert e.value.key == key, str(e.value)


def test_task_tables_resolve_and_change_the_run_id(tmp_path):
    from scaling.sweep.reader import load_sweep
    extra = "[data.tasks.addition]\n[data.tasks.add_cot]\nkind = 'addition'\nformat = 'scratchpad'\nweight = 2.0"
    with_tasks = load_sweep(write_sweep(tmp_path / "a.toml", SWEEP.format(out=tmp_path, extra=extra))).runs[0]
    specs = {t.name: t for t in with_tasks.data.tasks.tasks}
    assert specs["add_cot"].kind == "addition" and dict(specs["add_cot"].params)["format"] == "scratchpad"
    assert specs["add_cot"].weight == 2.0 and dict(specs["addition"].params)["format"] == "direct"
    plain = load_sweep(write_sweep(tmp_path / "b.toml", SWEEP.format(out=tmp_path, extra="").replace(
        "[data.tasks]\nrate = 0.1\n", ""))).runs[0]
    assert plain.data.tasks is None and plain.run_id != with_tasks.run_id


def test_insert_documents_matches_inserting_them_one_by_one():
    """The vectorised insertion gives the stream that slicing it at every cut would: documents at the
    start, at the end, several at one cut (kept in order), of different lengths."""
    rng = np.random.default_rng(3)
    stream = rng.integers(1, 256, size=500).astype(np.uint8)
    cuts = np.sort(np.concatenate([[0, 0, 500, 500, 250, 250, 250], rng.integers(0, 501, size=40)]))
    docs = [bytes([tasks.SEP]) + bytes(rng.integers(1, 256, size=int(rng.integers(1, 9))).astype(np.uint8))
            for _ in cuts]
    pieces, previous = [], 0
    for cut, doc in zip(cuts.tolist(), docs):
        pieces += [stream[previous:cut], np.frombuffer(doc, dtype=np.uint8)]
        previous = cut
    expected = np.concatenate(pieces + [stream[previous:]])
    np.testing.assert_array_equal(tasks.insert_documents(stream, cuts, docs), expected)
    np.testing.assert_array_equal(tasks.insert_documents(stream, np.zeros(0, np.int64), []), stream)


def _mix_one_by_one(stream, cfg, split, data_hash):
    """The mix written instance by instance (`draw`, `document`), as it was before its array code:
    the reference that `tasks.mix` must reproduce byte for byte."""
    specs = [tasks.make_task(s) for s in cfg.tasks]
    weights = np.array([s.weight for s in cfg.tasks])
    rng = tasks._rng("mix", cfg.seed, split, data_hash)
    sizes = [np.mean([len(tasks.document(it)) for it in t.sample_many(tasks._rng("size", i), 256)])
             for i, t in enumerate(specs)]
    n_docs = max(1, int(round(len(stream) * cfg.rate / (1 - cfg.rate) / float(np.average(sizes, weights=weights)))))
    cuts = np.sort(rng.integers(0, len(stream) + 1, size=n_docs))
    which = rng.choice(len(specs), size=n_docs, p=weights / weights.sum())
    docs = [None] * n_docs
    for t, task in enumerate(specs):
        slots = np.flatnonzero(which == t)
        for slot, item in zip(slots, tasks.draw(task, rng, len(slots), cfg.heldout_fraction, split == "val")):
            docs[slot] = tasks.document(item)
    placed = [i for i, d in enumerate(docs) if d is not None]
    return tasks.insert_documents(stream, cuts[placed], [docs[i] for i in placed]), len(placed)


@pytest.mark.parametrize("specs", [
    [_spec("addition", max_digits=2, format="reversed"), _spec("copy", min_len=3, max_len=6)],
    [_spec("addition", name="direct", max_digits=3), _spec("addition", name="pad", max_digits=3, format="scratchpad"),
     _spec("addition", name="long", min_digits=4, max_digits=5)],
    [_spec("copy", min_len=1, max_len=2), _spec("copy", name="long", min_len=4, max_len=12),
     _spec("recall", pairs=3), _spec("modular", modulus=11)],
])
def test_mix_in_arrays_gives_the_bytes_of_the_mix_one_instance_at_a_time(specs):
    """Tasks draw their documents as arrays (`sample_documents`, memo tables of short instances):
    every kind and format, on both sides of the held-out split, gives the mixed stream of the
    item-by-item path exactly."""
    stream = np.random.default_rng(5).integers(1, 256, size=20_000).astype(np.uint8)
    cfg = TasksConfig(rate=0.6, tasks=tuple(specs), heldout_fraction=0.2)
    for split in ("train", "val"):
        expected, n_expected = _mix_one_by_one(stream, cfg, split, "h")
        mixed, n = tasks.mix(stream, cfg, split, "h")
        assert n == n_expected > 500
        np.testing.assert_array_equal(mixed, expected)
    for spec in specs:  # and drawn alone: the same instances, documents and verdicts as sample_many's
        task, again = tasks.make_task(spec), tasks.make_task(spec)
        docs = task.sample_documents(np.random.default_rng(9), 3000, 0.2)
        items = again.sample_many(np.random.default_rng(9), 3000)
        assert [bytes(d[:n]) for d, n in zip(docs.data, docs.lengths)] == [tasks.document(it) for it in items]
        assert docs.heldout.tolist() == [tasks.is_heldout(it.key, 0.2) for it in items]
        assert 0.1 < docs.heldout.mean() < 0.3


def test_addition_items_are_written_once_per_pair():
    """Drawing a pair again gives the same item (the memo that makes a mix fast), and the stream of
    draws is the same as a fresh task's."""
    task = tasks.Addition(min_digits=1, max_digits=1, format="scratchpad")
    first = task.sample_many(np.random.default_rng(0), 300)
    again = tasks.Addition(min_digits=1, max_digits=1, format="scratchpad").sample_many(np.random.default_rng(0), 300)
    assert first == again and len({id(it) for it in first}) <= 100
    assert all(it.target == task.answer(*map(int, it.prompt[:-1].split("+"))) + "\n" for it in first)
    wide = tasks.Addition(min_digits=5, max_digits=5)  # 8.1e9 pairs: nothing to reuse, nothing remembered
    items = wide.sample_many(np.random.default_rng(0), 50)
    assert all(int(it.target) == sum(map(int, it.prompt[:-1].split("+"))) for it in items)
    assert [wide.heldout(it, 0.5) for it in items] == [tasks.is_heldout(it.key, 0.5) for it in items]
    assert "_items" not in wide.__dict__ and "_heldout" not in wide.__dict__
