"""Probes score what they say (oracle and off-by-one answers), and a run records them with its
calibration table and samples."""

import math

import jax
import jax.numpy as jnp

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, write_sweep
from scaling import records
from scaling.science import metrics, probes, sampling
from scaling.config import ModelConfig, TasksConfig, TaskSpec

CFG = ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, vocab_size=256, seq_len=48)
TASKS = TasksConfig(probe_items=20, tasks=(TaskSpec("copy", "copy", params=(("max_len", 6), ("min_len", 3))),
                                           TaskSpec("modular", "modular", params=(("modulus", 97), ("op", "+")))))


def _with_answers(p: probes.Probes, edit) -> None:
    """Replace the compiled pass by an oracle: certain of every target token, and greedy answers that
    are the true ones changed by `edit`."""
    def fake_pass(params, full, prompt_len, n_steps):
        b, length = full.shape
        tokens = np.zeros((b, p.max_new), np.int32)
        for i in range(b):
            rest = list(full[i, prompt_len[i]:])
            answer = edit(rest[:rest.index(probes.NEWLINE) + 1] if probes.NEWLINE in rest else rest)[:p.max_new]
            tokens[i, :len(answer)] = answer
        return np.zeros((b, length - 1)), np.ones((b, length - 1), bool), np.zeros((b, length - 1)), tokens
    p._pass = fake_pass


def test_oracle_scores_perfectly_and_off_by_one_scores_distance_one():
    p = probes.Probes(TASKS, CFG, chunk=16)
    assert p.n_items == 40 and len(p.full) == 48  # padded to whole chunks
    _with_answers(p, lambda t: t)
    out = p.evaluate(params=None)
    for task in ("copy", "modular"):
        assert out[f"probe/{task}/exact_match"] == 1.0
        assert out[f"probe/{task}/edit_distance"] == 0.0
        assert out[f"probe/{task}/token_accuracy"] == 1.0
        assert out[f"probe/{task}/target_logprob"] == pytest.approx(0.0, abs=1e-6)
        assert out[f"probe/{task}/brier"] == pytest.approx(0.0, abs=1e-6)
        assert out[f"probe/{task}/items"] == 20
    # The first answer character wrong: no exact match, distance 1.
    _with_answers(p, lambda t: [(t[0] + 1) % 256] + t[1:])
    out = p.evaluate(params=None)
    assert out["probe/copy/exact_match"] == 0.0 and out["probe/copy/edit_distance"] == 1.0
    # Right answer, but no newline after it: not an exact match.
    _with_answers(p, lambda t: t[:-1] + [ord("x")])
    out = p.evaluate(params=None)
    assert out["probe/modular/exact_match"] == 0.0


def test_probe_pass_matches_the_module_and_plain_greedy_decoding():
    """The merged pass (one forward whose cache serves decoding) against the Flax module and
    against greedy generation from a separately prefilled prompt."""
    from flax import nnx

    from scaling.model import GPT
    from scaling.training.step import _flatten, _unflatten
    model = GPT(CFG, rngs=nnx.Rngs(0))
    params = {k: v * 5 if v.ndim == 2 else v for k, v in _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}
    p = probes.Probes(TASKS, CFG, chunk=8)
    rows = slice(16, 24)  # copy and modular items
    logp, correct, brier, tokens = (np.asarray(x) for x in p._pass(params, p.full[rows], p.prompt_len[rows], p.max_new))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, _unflatten(params))
    nnx.update(model, state)
    logits = np.asarray(model(jnp.asarray(p.full[rows])), dtype=np.float64)[:, :-1]  # the Flax module, eagerly
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    targets = p.full[rows, 1:]
    np.testing.assert_allclose(logp, np.log(np.take_along_axis(probs, targets[..., None], -1)[..., 0]), atol=1e-4)
    np.testing.assert_allclose(brier, metrics.brier(probs, targets), atol=1e-5)
    prompts = np.where(np.arange(p.full.shape[1])[None] < p.prompt_len[rows, None], p.full[rows], 0)[:, :p.max_prompt]
    plain, _ = sampling.make_generate(CFG, p.max_new, "greedy")(params, prompts, p.prompt_len[rows], jax.random.key(0))
    np.testing.assert_array_equal(tokens, plain)


def test_chance_columns_are_recorded_per_task():
    p = probes.Probes(TASKS, CFG)
    chance = p.chance_columns()
    assert chance["probe/modular/chance_exact_match"] == pytest.approx(1 / 97)
    assert chance["probe/copy/chance_token_accuracy"] == pytest.approx(1 / 27)
    assert set(chance) == {f"probe/{t}/chance_{m}" for t in ("copy", "modular")
                           for m in ("exact_match", "token_accuracy", "target_logprob", "brier", "edit_distance")}


SWEEP = """
[sweep]
out_dir = "{out}"
[data]
source = "text"
paths = ["{repo}/scaling/*.py"]
seq_len = 48
[data.tasks]
rate = 0.3
probe_items = 24
[data.tasks.copy]
max_len = 5
[data.tasks.sum]
kind = "addition"
max_digits = 2
format = "reversed"
[sampling]
prompts = 3
prompt_tokens = 16
new_tokens = 12
beam = 2
[model]
head_dim = 8
[train]
batch_tokens = 384
eval_points = 3
eval_sequences = 8
[grid]
models = [{{ n_layer = 1, d_model = 16 }}]
tokens = [3840]
"""


def test_a_run_records_probes_calibration_and_samples(tmp_path):
    from scaling.training.run import train_run
    from scaling.sweep.reader import load_sweep

    sweep = load_sweep(write_sweep(tmp_path / "p.toml", SWEEP.format(out=tmp_path / "out", repo=REPO)), device_count=1)
    spec = sweep.runs[0]
    summary = train_run(spec, sweep.out_dir)
    path = records.run_dir(sweep.out_dir, spec.run_id)
    hist = pq.read_table(path / "history.parquet").to_pandas()
    for task in ("copy", "sum"):
        for metric in ("exact_match", "token_accuracy", "target_logprob", "edit_distance", "brier", "items",
                       "chance_exact_match", "chance_token_accuracy"):
            column = f"probe/{task}/{metric}"
            assert column in hist and hist[column].notna().all() and math.isfinite(summary[column]), column
        assert hist[f"probe/{task}/items"].iloc[0] == 24
        assert (hist[f"probe/{task}/target_logprob"] < 0).all()
    assert math.isnan(summary["val_loss_optimal"])  # text: unknown
    calibration = pq.read_table(path / "calibration.parquet").to_pandas()
    assert len(calibration) == 15 * len(hist) and list(calibration["step"].unique()) == list(hist["step"])
    per_step = calibration.groupby("step")["count"].sum()
    assert (per_step == per_step.iloc[0]).all() and per_step.iloc[0] == 8 * 48
    for strategy in sampling.STRATEGIES:
        assert 0 < summary[f"sample/{strategy}/distinct_1"] <= 1
    text = (path / "samples.txt").read_text()
    assert text.count("=== prompt") == 3 and "--- top_p" in text
    summary_file = pq.read_table(path / "summary.parquet").to_pylist()[0]
    assert summary_file["sample/beam/logprob"] == summary["sample/beam/logprob"]


def test_a_task_with_few_held_out_instances_says_so(tmp_path, capsys):
    """Modular addition mod 7 has 49 problems, about 5 of them held out: all are probed, and the
    sweep says how many (one line), where a large space gets its probe_items silently."""
    from scaling.sweep.instruments import announce_small_probes
    from scaling.sweep.reader import load_sweep

    path = tmp_path / "small.toml"
    path.write_text('[sweep]\nname = "small"\n[data]\nseq_len = 64\n[data.tasks]\nrate = 0.2\nprobe_items = 100\n'
                    '[data.tasks.modular]\nmodulus = 7\n[data.tasks.copy]\n[model]\nhead_dim = 16\n'
                    '[grid]\nmodels = [{ n_layer = 1, d_model = 16 }]\ntokens = [1e5]\n')
    announce_small_probes(load_sweep(path))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "task 'modular' has" in lines[0] and "fewer than probe_items = 100" in lines[0]
    n = int(lines[0].split(" has ")[1].split()[0])
    assert 0 < n < 49
