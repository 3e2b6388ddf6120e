"""Sweep files: every user mistake is one line on stderr with exit status 2, and good files resolve
to the runs that sweeps/README.md documents.

Most bad files go through `scaling.cli.main` in-process (the same code path as the console script,
without ~1 s of interpreter start-up each); a few go through a real `python -m scaling` subprocess
to check the process-level contract: exit status, a single stderr line, no traceback, no files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scaling import cli
from scaling.flops import param_counts, training_flops_per_token
from scaling.sweep.reader import load_sweep

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "sweeps").glob("*.toml"))

# A minimal valid grid that bad files append so that exactly one thing is wrong with each.
GRID = """
[grid]
models = [{ n_layer = 2, d_model = 64 }]
tokens = [1e5]
"""

# The device count the in-process CLI sees (monkeypatched: no JAX start-up, and the same answer
# whatever XLA_FLAGS other tests set).
DEVICES = 4

# (id, file text, key path in the message or None for file-level errors, what the message must say)
BAD = [
    ("unknown-table", "[optimiser]\nlr = 1e-3\n" + GRID, "optimiser", "unknown key"),
    ("unknown-key", "[train]\nbatch_tokns = 8192\n" + GRID, "train.batch_tokns",
     "unknown key (known here: attention, batch_tokens"),
    ("unknown-shape-key", "[grid]\nmodels = [{ n_layer = 2, d_model = 64, heads = 2 }]\ntokens = [1e5]\n",
     "grid.models[0].heads", "unknown key"),
    ("string-for-int", '[train]\nbatch_tokens = "8192"\n' + GRID, "train.batch_tokens", "expected an integer"),
    ("fraction-for-int", "[data]\nseq_len = 2.5\n" + GRID, "data.seq_len", "expected an integer, got 2.5"),
    ("bool-for-int", "[train]\neval_points = true\n" + GRID, "train.eval_points", "expected an integer, got True"),
    ("string-for-bool", '[model]\ntie_embeddings = "yes"\n' + GRID, "model.tie_embeddings", "expected true or false"),
    ("n_head-not-dividing", "[grid]\nmodels = [{ n_layer = 2, d_model = 64, n_head = 3 }]\ntokens = [1e5]\n",
     "grid.models[0].n_head", "expected a divisor of d_model"),
    ("zero-d_model", "[grid]\nmodels = [{ n_layer = 2, d_model = 0 }]\ntokens = [1e5]\n",
     "grid.models[0].d_model", "expected an integer >= 1"),
    ("negative-n_layer", "[grid]\nmodels = [{ n_layer = -2, d_model = 64 }]\ntokens = [1e5]\n",
     "grid.models[0].n_layer", "expected an integer >= 1"),
    ("zero-tokens", "[grid]\nmodels = [{ n_layer = 2, d_model = 64 }]\ntokens = [1e5, 0]\n",
     "grid.tokens[1]", "expected an integer >= 1"),
    ("zero-n_params", "[grid]\nn_params = [0]\ntokens = [1e5]\n", "grid.n_params[0]", "expected an integer >= 1"),
    ("unreachable-n_params", "[grid]\nn_params = [10]\ntokens = [1e5]\n", "grid.n_params[0]", "within 25%"),
    ("tokens-under-one-batch", "[train]\nbatch_tokens = 8192\n[grid]\nmodels = [{ n_layer = 2, d_model = 64 }]\n"
     "tokens = [4096]\n", "grid.tokens", "less than one batch of 8192"),
    ("batch-not-multiple-of-seq_len", "[data]\nseq_len = 128\n[train]\nbatch_tokens = 1000\n" + GRID,
     "train.batch_tokens", "not a multiple of data.seq_len=128"),
    ("budget-too-small", "[isoflop]\nbudgets = [1e12, 1e8]\nmodels = [{ n_layer = 1, d_model = 32 }, "
     "{ n_layer = 2, d_model = 32 }, { n_layer = 2, d_model = 64 }]\n", "isoflop.budgets[1]",
     "fits only 0 distinct model size(s) (need >= 3"),
    # The second shape is the first one with its defaults written out: one size, not two.
    ("isoflop-duplicate-sizes", "[isoflop]\nbudgets = [1e12]\nmodels = [{ n_layer = 2, d_model = 64 }, "
     "{ n_layer = 2, d_model = 64, n_head = 2, d_ff = 256 }, { n_layer = 3, d_model = 64 }]\n", "isoflop.models[1]",
     "repeats isoflop.models[0] (the shape n_layer=2, d_model=64, n_head=2, d_ff=256)"),
    ("isoflop-bad-window", "[isoflop]\nbudgets = [1e12]\nmodels = [{ n_layer = 2, d_model = 64 }]\n"
     "tokens_per_param = [100, 10]\n", "isoflop.tokens_per_param", "0 < low < high"),
    ("mesh-not-dividing-devices", "[mesh]\nsize = 3\n" + GRID, "mesh.size", f"do not divide the {DEVICES} available"),
    ("mesh-zero", "[mesh]\nsize = 0\n" + GRID, "mesh.size", "expected a positive device count or -1"),
    ("fsdp-d_model", '[mesh]\npreset = "fsdp"\nsize = 4\n[grid]\nmodels = [{ n_layer = 2, d_model = 66, n_head = 1 }]\n'
     "tokens = [1e5]\n", "mesh.size", "d_model divisible by 4"),
    ("micro_batch-not-dividing", "[train]\nmicro_batch = 3\n" + GRID, "train.micro_batch",
     "does not divide the per-device batch of 16 sequences"),
    ("text-path-missing", '[data]\nsource = "text"\npaths = ["corpus/missing.txt"]\n' + GRID, "data.paths",
     "text file not found: corpus/missing.txt"),
    ("text-empty-glob", '[data]\nsource = "text"\npaths = ["corpus/*.md"]\n' + GRID, "data.paths",
     "glob matched no files: corpus/*.md"),
    ("text-no-paths", '[data]\nsource = "text"\n' + GRID, "data.paths", "expected at least one path"),
    ("paths-not-a-list", '[data]\nsource = "text"\npaths = "corpus/a.txt"\n' + GRID, "data.paths",
     "expected a list of strings"),
    ("tokens-without-vocab", '[data]\nsource = "tokens"\npaths = ["corpus/a.txt"]\n' + GRID, "data.vocab_size",
     "is required"),
    ("bytes-vocab", "[data]\nvocab_size = 512\n" + GRID, "data.vocab_size", "has 256 tokens"),
    ("unknown-source", '[data]\nsource = "web"\n' + GRID, "data.source", "expected one of stdlib, text, tokens"),
    ("unknown-schedule", '[schedule]\nkind = "linear"\n' + GRID, "schedule.kind",
     "expected one of cosine, wsd, constant, got 'linear'"),
    ("wsd-too-long", '[schedule]\nkind = "wsd"\nwarmup = 0.5\ndecay = 0.6\n' + GRID, "schedule.decay",
     "warmup + decay must be at most 1"),
    ("wsd-from-axes-too-long", '[schedule]\nwarmup = 0.5\ndecay = 0.6\n[axes]\n"schedule.kind" = ["cosine", "wsd"]\n'
     + GRID, "schedule.decay", "warmup + decay must be at most 1"),
    ("unknown-axis", '[axes]\n"optimizer.beta1" = [0.9, 0.95]\n' + GRID, 'axes.optimizer.beta1', "unknown sweep axis"),
    ("axis-negative-lr", '[axes]\n"optimizer.lr" = [1e-3, -1e-3]\n' + GRID, 'axes."optimizer.lr"[1]',
     "expected a number > 0"),
    ("axis-label_smoothing", '[axes]\n"train.label_smoothing" = [0.1, 1.5]\n' + GRID,
     'axes."train.label_smoothing"[1]', "expected a number <= 1"),
    ("label_smoothing-over-1", "[train]\nlabel_smoothing = 1.5\n" + GRID, "train.label_smoothing",
     "expected a number <= 1, got 1.5"),
    ("zero-lr", "[optimizer]\nlr = 0\n" + GRID, "optimizer.lr", "expected a number > 0"),
    ("negative-seed", "[sweep]\nseeds = [0, -1]\n" + GRID, "sweep.seeds[1]", "expected an integer >= 0"),
    ("empty-name", '[sweep]\nname = ""\n' + GRID, "sweep.name", "non-empty"),
    ("table-as-value", "train = 3\n" + GRID, "train", "expected a table"),
    ("no-grid", "[train]\nbatch_tokens = 8192\n", "grid", "the sweep has no runs"),
    ("models-and-n_params", "[grid]\nmodels = [{ n_layer = 2, d_model = 64 }]\nn_params = [1e5]\ntokens = [1e5]\n",
     "grid.models", "exactly one of `models` (shapes) or `n_params`"),
    ("empty-tokens", "[grid]\nmodels = [{ n_layer = 2, d_model = 64 }]\ntokens = []\n", "grid.tokens",
     "expected a non-empty list"),
    # Sweep names are one folder under results/ (the reliability issue: "../../x" wrote outside it).
    ("name-with-separator", '[sweep]\nname = "a/b"\n' + GRID, "sweep.name", "a path separator in the name"),
    ("name-climbing-out", '[sweep]\nname = "../../x"\n' + GRID, "sweep.name", "a path separator in the name"),
    ("name-absolute", '[sweep]\nname = "/x"\n' + GRID, "sweep.name", "a path separator in the name"),
    ("name-dot-dot", '[sweep]\nname = ".."\n' + GRID, "sweep.name", "starts with '.'"),
    ("name-hidden", '[sweep]\nname = ".x"\n' + GRID, "sweep.name", "starts with '.'"),
    ("name-newline", '[sweep]\nname = "a\\nb"\n' + GRID, "sweep.name", "a control character"),
    ("name-tab", '[sweep]\nname = "a\\tb"\n' + GRID, "sweep.name", "a control character"),
    ("name-backslash", '[sweep]\nname = "a\\\\b"\n' + GRID, "sweep.name", "a path separator in the name"),
    # Values that pass their types but cannot work: memory before training, Adam that never moves.
    ("eval_points-huge", "[train]\neval_points = 1e9\n" + GRID, "train.eval_points",
     "expected an integer <= 10,000, got 1,000,000,000"),
    ("eval_sequences-huge", "[train]\neval_sequences = 1e9\n" + GRID, "train.eval_sequences",
     "expected an integer <= 1,048,576"),
    ("seq_len-huge", "[data]\nseq_len = 1e9\n[train]\nbatch_tokens = 1e9\n" + GRID, "data.seq_len",
     "expected an integer <= 65,536"),
    ("probe_items-huge", "[data.tasks]\nprobe_items = 1e8\n[data.tasks.copy]\n" + GRID, "data.tasks.probe_items",
     "expected an integer <= 100,000"),
    ("sampling-prompts-huge", "[sampling]\nprompts = 1e7\n" + GRID, "sampling.prompts",
     "expected an integer <= 4,096"),
    ("sampling-beam-huge", "[sampling]\nbeam = 1000\n" + GRID, "sampling.beam", "expected an integer <= 64"),
    ("beta1-one", "[optimizer]\nbeta1 = 1.0\n" + GRID, "optimizer.beta1", "expected a number < 1, got 1.0"),
    ("beta2-one", "[optimizer]\nbeta1 = 0.9\nbeta2 = 1.0\n" + GRID, "optimizer.beta2",
     "expected a number < 1, got 1.0"),
    ("beta2-over-one", "[optimizer]\nbeta2 = 1.5\n" + GRID, "optimizer.beta2", "expected a number < 1, got 1.5"),
    # A grid point written twice is one run: refused, naming both entries.
    ("duplicate-models", "[grid]\nmodels = [{ n_layer = 2, d_model = 64 }, { n_layer = 1, d_model = 32 }, "
     "{ n_layer = 2, d_model = 64 }]\ntokens = [1e5]\n", "grid.models[2]", "repeats grid.models[0]"),
    ("duplicate-tokens", "[grid]\nmodels = [{ n_layer = 2, d_model = 64 }]\ntokens = [1e5, 2e5, 100000]\n",
     "grid.tokens[2]", "repeats grid.tokens[0] (100,000 tokens)"),
    ("duplicate-n_params", "[grid]\nn_params = [1e5, 1.01e5]\ntokens = [1e5]\n", "grid.n_params[1]",
     "repeats grid.n_params[0] (the shape"),
    ("duplicate-seeds", "[sweep]\nseeds = [0, 1, 0]\n" + GRID, "sweep.seeds[2]", "repeats sweep.seeds[0]"),
    ("duplicate-budgets", "[isoflop]\nbudgets = [1e12, 3e12, 1e12]\nmodels = [{ n_layer = 1, d_model = 32 }, "
     "{ n_layer = 2, d_model = 32 }, { n_layer = 2, d_model = 64 }]\n", "isoflop.budgets[2]",
     "repeats isoflop.budgets[0] (1e+12 FLOPs)"),
    ("duplicate-axis-values", '[axes]\n"optimizer.lr" = [1e-3, 3e-3, 0.001]\n' + GRID, 'axes."optimizer.lr"[2]',
     'repeats axes."optimizer.lr"[0] (0.001)'),
    ("out_dir-under-a-file", '[sweep]\nout_dir = "corpus/a.txt/out"\n' + GRID, "sweep.out_dir",
     "corpus/a.txt is not a folder"),
    ("out_dir-in-proc", '[sweep]\nout_dir = "/proc/scaling-results"\n' + GRID, "sweep.out_dir", "cannot write there"),
    ("eval_spacing-unknown", '[train]\neval_spacing = "cubic"\n' + GRID, "train.eval_spacing",
     "expected one of log, linear, got 'cubic'"),
    # Learning-rate tuning (scaling/sweep/tuning.py).
    ("tuned-without-a-rule", '[optimizer]\nlr = "tuned"\n' + GRID, "optimizer.lr",
     '"tuned" needs the rule that `scaling tune bad.toml` writes: no results/bad/tune/lr_rule.json'),
    ("tuned-with-an-lr-axis", '[optimizer]\nlr = "tuned"\n[axes]\n"optimizer.lr" = [1e-3, 3e-3]\n' + GRID,
     'axes."optimizer.lr"', 'not with optimizer.lr = "tuned"'),
    ("tune-too-few-lrs", "[tune]\nlrs = [1e-3, 2e-3, 4e-3]\n" + GRID, "tune.lrs", "expected at least 5 distinct"),
    ("tune-too-narrow", "[tune]\nlrs = [1e-3, 1.2e-3, 1.5e-3, 2e-3, 3e-3]\n" + GRID, "tune.lrs",
     "expected a span of at least 8x"),
    ("tune-fraction", "[tune]\nlrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]\nfraction = 1.5\n" + GRID, "tune.fraction",
     "expected a number <= 1"),
    ("toml-syntax", "[train]\nbatch_tokens = 8192\nlr = = 3\n", None,
     "TOML syntax error: Invalid value (at line 3, column 6)"),
    ("toml-duplicate-key", "[train]\neval_points = 4\neval_points = 5\n" + GRID, None, "(at line 3, column"),
    ("not-utf8", b"\xff\xfe[grid]\n", None, "not UTF-8"),
    ("a-directory", None, None, "cannot read the file"),
]


def _make_case(workdir: Path, text: str | bytes | None) -> str:
    """Write one bad sweep file into `workdir` (plus a small corpus that text-source cases refer to)."""
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("hello world\n")
    path = workdir / "bad.toml"
    if text is None:
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path.name


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _check_one_line_error(rc: int, err: str, file: str, key: str | None, expected: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    where = f"scaling: {file}: {key}: " if key else f"scaling: {file}: "
    assert lines[0].startswith(where), lines[0]
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("text,key,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_sweep_is_one_line_exit_2(text, key, expected, tmp_path, monkeypatch, capsys):
    name = _make_case(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_device_count", lambda: DEVICES)
    before = _tree(tmp_path)
    rc = cli.main(["sweep", name, "--dry-run"])
    captured = capsys.readouterr()
    _check_one_line_error(rc, captured.err, name, key, expected)
    assert captured.out == ""
    assert _tree(tmp_path) == before  # no results/ folder, nothing else either


def test_bad_sweep_ids_are_distinct():
    assert len({c[0] for c in BAD}) == len(BAD) >= 15


# Through a real interpreter: JAX's real device count, the console exit status. Two of them run
# without --dry-run, so "nothing written" means validation really happens before training.
SUBPROCESS_CASES = ["toml-syntax", "n_head-not-dividing", "text-empty-glob", "unknown-key", "label_smoothing-over-1"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_sweep_through_the_console(case, tmp_path):
    _, text, key, expected = next(c for c in BAD if c[0] == case)
    name = _make_case(tmp_path, text)
    before = _tree(tmp_path)
    dry = [] if case in ("n_head-not-dividing", "text-empty-glob") else ["--dry-run"]
    proc = subprocess.run([sys.executable, "-m", "scaling", "sweep", name, *dry], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    _check_one_line_error(proc.returncode, proc.stderr, name, key, expected)
    assert _tree(tmp_path) == before


def test_mesh_larger_than_the_machine_through_the_console(tmp_path):
    (tmp_path / "big.toml").write_text("[mesh]\nsize = 7919\n" + GRID)
    proc = subprocess.run([sys.executable, "-m", "scaling", "sweep", "big.toml", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    _check_one_line_error(proc.returncode, proc.stderr, "big.toml", "mesh.size", "7919 devices do not divide the")
    assert not (tmp_path / "results").exists()


def test_missing_sweep_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_device_count", lambda: 1)
    rc = cli.main(["sweep", "nope.toml", "--dry-run"])
    _check_one_line_error(rc, capsys.readouterr().err, "nope.toml", None, "no such file")


# ------------------------------------------------------------------------------------------------
# Good files


def _load(tmp_path: Path, text: str, name: str = "s.toml", **kwargs):
    path = tmp_path / name
    path.write_text(text)
    return load_sweep(path, **kwargs)


def _n(model) -> int:
    return param_counts(**dataclasses.asdict(model)).n_params_nonembed


def test_n_params_targets_resolve_within_25_percent(tmp_path):
    targets = [3e4, 1e5, 1e6]
    sweep = _load(tmp_path, f"""
[data]
seq_len = 64
[model]
head_dim = 16
aspect_ratio = 32
[grid]
n_params = {targets}
tokens = [1e6]
""")
    assert len(sweep.runs) == len(targets)
    for target, spec in zip(targets, sweep.runs):
        m = spec.model
        assert 1 / 1.25 <= _n(m) / target <= 1.25, (target, m)
        assert m.d_model % m.n_head == 0 and m.d_model // m.n_head == 16
        assert m.d_ff == 4 * m.d_model and m.vocab_size == 256 and m.seq_len == 64
    # At 1e6 there is room to honour the aspect ratio (the rule picks the depth nearest it).
    big = sweep.runs[-1].model
    assert 24 <= big.d_model / big.n_layer <= 40, big
    assert [_n(s.model) for s in sweep.runs] == sorted(_n(s.model) for s in sweep.runs)


def test_explicit_shapes_are_respected(tmp_path):
    sweep = _load(tmp_path, """
[data]
seq_len = 32
[model]
head_dim = 32
ffn_ratio = 2.5
tie_embeddings = false
[grid]
models = [{ n_layer = 3, d_model = 96, n_head = 4, d_ff = 200 }, { n_layer = 2, d_model = 64 }]
tokens = [1e5]
""")
    first, second = (s.model for s in sweep.runs)
    assert (first.n_layer, first.d_model, first.n_head, first.d_ff) == (3, 96, 4, 200)
    assert (second.n_layer, second.d_model, second.n_head, second.d_ff) == (2, 64, 2, 160)  # 64 / 32, 2.5 * 64
    assert not first.tie_embeddings and first.seq_len == 32


def test_kaplan_grid_is_models_times_tokens_times_seeds(tmp_path):
    sweep = _load(tmp_path, """
[sweep]
seeds = [0, 1]
[grid]
models = [{ n_layer = 1, d_model = 32 }, { n_layer = 2, d_model = 64 }]
tokens = [1e5, 2e5]
""")
    keys = {(s.model.d_model, s.train.tokens, s.seed) for s in sweep.runs}
    assert len(sweep.runs) == len(keys) == 2 * 2 * 2  # (a repeated entry is an error: BAD "duplicate-*")
    assert {s.grid for s in sweep.runs} == {"kaplan"} and all(s.flops_budget is None for s in sweep.runs)


def test_isoflop_tokens_from_the_exact_flop_count(tmp_path):
    batch_tokens, min_steps, window = 4096, 20, (1.0, 1000.0)
    shapes = [(1, 16), (1, 32), (2, 32), (2, 48), (3, 64), (4, 96)]
    budgets = [1e11, 1e12]
    models = ", ".join(f"{{ n_layer = {n}, d_model = {d} }}" for n, d in shapes)
    sweep = _load(tmp_path, f"""
[data]
seq_len = 64
[model]
head_dim = 16
[train]
batch_tokens = {batch_tokens}
[isoflop]
budgets = {budgets}
models = [{models}]
min_steps = {min_steps}
tokens_per_param = [{window[0]}, {window[1]}]
""")
    got = {(s.flops_budget, s.model.n_layer, s.model.d_model): s for s in sweep.runs}
    expected = set()
    for c in budgets:
        for n_layer, d_model in shapes:
            shape = dict(n_layer=n_layer, d_model=d_model, n_head=d_model // 16, d_ff=4 * d_model, vocab_size=256,
                         seq_len=64, tie_embeddings=True)
            d = math.floor(c / training_flops_per_token(**shape) / batch_tokens) * batch_tokens
            n = param_counts(**shape).n_params_nonembed
            if d // batch_tokens >= min_steps and window[0] <= d / n <= window[1]:
                expected.add((c, n_layer, d_model))
                spec = got[(c, n_layer, d_model)]
                assert spec.train.tokens == d and spec.steps * batch_tokens == d
                assert training_flops_per_token(**shape) * d <= c
    assert set(got) == expected
    # The window and min_steps really bite in this grid: the extremes are left out of some budget.
    assert len(expected) < len(shapes) * len(budgets)
    for s in sweep.runs:
        assert s.grid == "isoflop"
        assert s.labels()["budget"] in ("1e+11", "1e+12")


def test_token_counts_written_as_floats_become_ints(tmp_path):
    sweep = _load(tmp_path, """
[train]
batch_tokens = 8.192e3
[grid]
models = [{ n_layer = 2, d_model = 64.0 }]
tokens = [1e6, 2.5e5]
""")
    assert [s.train.tokens for s in sweep.runs] == [1_000_000, 250_000]
    for s in sweep.runs:
        assert type(s.train.tokens) is int and type(s.train.batch_tokens) is int and type(s.model.d_model) is int
    assert sweep.runs[0].run_id.startswith("L2-d64-t1e6-s0-")


RUN_ID_BASE = """
[optimizer]
lr = {lr}
[train]
micro_batch = {micro}
checkpoint_every = {ckpt}
[mesh]
size = {mesh}
[grid]
models = [{{ n_layer = 2, d_model = 64 }}]
tokens = [1e5]
"""


def _run_id(tmp_path, name="s.toml", lr=3e-3, micro=0, ckpt=200, mesh=-1) -> str:
    (sweep_run,) = _load(tmp_path, RUN_ID_BASE.format(lr=lr, micro=micro, ckpt=ckpt, mesh=mesh), name).runs
    return sweep_run.run_id


def test_run_id_is_stable_and_hashes_the_science_only(tmp_path):
    base = _run_id(tmp_path)
    assert re.fullmatch(r"L2-d64-t1e5-s0-[0-9a-f]{8}", base)
    assert _run_id(tmp_path) == base
    # Across processes too (no dependence on hash randomisation or the working directory).
    code = "import sys; from scaling.sweep import load_sweep; print(load_sweep(sys.argv[1]).runs[0].run_id)"
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.toml")], cwd="/", capture_output=True,
                           text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == base, other.stderr
    assert _run_id(tmp_path, lr=1e-3) != base
    # Execution details and the sweep's name do not change what a run computes.
    assert _run_id(tmp_path, mesh=2) == base
    assert _run_id(tmp_path, micro=8) == base
    assert _run_id(tmp_path, ckpt=50) == base
    assert _run_id(tmp_path, name="renamed.toml") == base


@pytest.fixture
def only_sweep(tmp_path, monkeypatch):
    """A sweep file in tmp_path, and `scaling sweep --dry-run` patched to record the runs it would list."""
    (tmp_path / "only.toml").write_text("""
[model]
head_dim = 32
[grid]
models = [{ n_layer = 1, d_model = 64 }, { n_layer = 2, d_model = 64 }, { n_layer = 2, d_model = 640 },
          { n_layer = 2, d_model = 128 }]
tokens = [1e5, 2e5]
""")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_device_count", lambda: 1)
    listed = []
    monkeypatch.setattr(cli, "_print_plan", lambda sweep, runs: listed.append(runs))

    def only(*patterns):
        listed.clear()
        argv = ["sweep", "only.toml", "--dry-run"] + [a for p in patterns for a in ("--only", p)]
        rc = cli.main(argv)
        return rc, (listed[0] if listed else None)
    return only


def test_only_selects_by_labels_and_run_ids(only_sweep):
    rc, runs = only_sweep("d_model=64")
    assert rc == 0
    assert sorted((s.model.n_layer, s.train.tokens) for s in runs) == [(1, 100000), (1, 200000), (2, 100000),
                                                                       (2, 200000)]
    assert all(s.model.d_model == 64 for s in runs)  # whole-label match: not 640
    _, runs = only_sweep("d_model=64*")
    assert {s.model.d_model for s in runs} == {64, 640}
    _, runs = only_sweep("d_model=64", "n_layer=2", "tokens=200000")  # repeated: AND
    assert [(s.model.n_layer, s.model.d_model, s.train.tokens) for s in runs] == [(2, 64, 200000)]
    _, runs = only_sweep("L2-d128-*")
    assert {(s.model.n_layer, s.model.d_model) for s in runs} == {(2, 128)} and len(runs) == 2
    _, runs = only_sweep(runs[0].run_id)
    assert len(runs) == 1


def test_only_matching_nothing_is_one_line_exit_2(only_sweep, capsys):
    rc, runs = only_sweep("d_model=64", "d_model=128")
    err = capsys.readouterr().err
    _check_one_line_error(rc, err, "only.toml", None, "no run matches --only d_model=64 d_model=128")
    assert runs is None


def test_text_paths_are_relative_to_the_project_when_the_file_is_in_sweeps(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "a.txt").write_text("some text\n")
    (project / "sweeps").mkdir()
    (project / "sweeps" / "t.toml").write_text('[data]\nsource = "text"\npaths = ["data/*.txt"]\n' + GRID)
    monkeypatch.chdir(tmp_path)  # not the project: the path still resolves
    (spec,) = load_sweep(project / "sweeps" / "t.toml").runs
    assert spec.data.paths == ("data/*.txt",)


def test_readme_examples_load(tmp_path, monkeypatch):
    """Every ```toml block of sweeps/README.md is a complete, valid sweep file."""
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "sweeps" / "README.md").read_text(), re.S)
    assert len(blocks) >= 4
    counts = [len(_load(tmp_path, block, f"example{i}.toml", device_count=1).runs) for i, block in enumerate(blocks)]
    assert counts == [4, 3, 8, 12, 4, 8, 2]  # as the README says


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_sweeps_load(path):
    sweep = load_sweep(path)
    assert sweep.runs
    assert len({s.run_id for s in sweep.runs}) == len(sweep.runs)
    if all(s.mesh.size in (-1, 1) for s in sweep.runs):
        load_sweep(path, device_count=1)  # the mesh and micro-batch checks against one device
