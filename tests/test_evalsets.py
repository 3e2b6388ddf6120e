"""Evaluation sets (`[eval.sets.<name>]`): a run scores each set beside its own validation split and
records val/<set>/{loss, bits_per_byte, entropy, ece}; a bad set is one line and exit 2; the shipped
sweeps keep their run ids; the figure draws a line per set."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY_SWEEP
from scaling.config import ConfigError
from scaling.config_evals import EVAL_SOURCES, METRICS, EvalSet
from scaling.data.sources import SOURCES
from scaling.sweep.reader import load_sweep

matplotlib.use("Agg")

SETS = """
[eval.sets.same]
source = "stdlib"
[eval.sets.notes]
source = "text"
paths = ["{notes}/*.txt"]
val_fraction = 0.5
sequences = 16
[eval.sets.chains]
source = "synthetic"
[eval.sets.chains.synthetic]
components = 4
alphabet = 8
orders = [1]
train_tokens = 2000
val_tokens = 2000
"""


def _sweep(tmp_path, extra: str, *, tokens=1280, name="ev.toml"):
    text = TINY_SWEEP.format(out=tmp_path / "out", tokens=tokens, lr=3e-3, more_models="", train_extra="")
    path = tmp_path / name
    path.write_text(text + extra)
    return path


def _notes(folder):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["calibration", "entropy", "scaling", "law", "token", "model", "the", "of", "and", "is"]
    for i in range(3):
        (folder / f"n{i}.txt").write_text(" ".join(rng.choice(words, 600)) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from scaling.training.run import train_run
    tmp = tmp_path_factory.mktemp("evalsets")
    notes = _notes(tmp / "notes")
    (spec,) = load_sweep(_sweep(tmp, SETS.format(notes=notes)), device_count=1).runs
    summary = train_run(spec, tmp / "out")
    folder = tmp / "out" / "runs" / spec.run_id
    history = pq.read_table(folder / "history.parquet").to_pandas()
    config = json.loads((folder / "config.json").read_text())
    return spec, summary, history, config, tmp / "out"


def test_a_run_records_every_set_in_history_and_summary(trained):
    spec, summary, history, config, _ = trained
    assert summary["status"] == "complete" and spec.steps == 10
    assert len(history) == len(spec.train.eval_steps(spec.steps))
    for name in ("same", "notes", "chains"):
        for metric in METRICS:
            column = f"val/{name}/{metric}"
            assert np.isfinite(history[column]).all(), column
            assert math.isfinite(summary[column]) and summary[column] == history[column].iloc[-1]
    assert config["eval_sets"]["notes"]["sequences"] == 16  # its own count
    assert config["eval_sets"]["same"]["sequences"] == config["eval_sequences"]  # the run's
    # Bytes are bytes: the byte sources' bits per byte are their loss in bits.
    np.testing.assert_allclose(history["val/chains/bits_per_byte"], history["val/chains/loss"] / math.log(2))


def test_the_run_s_own_source_as_a_set_scores_as_its_validation_split(trained):
    _, _, history, _, _ = trained
    for metric, own in (("loss", "val_loss"), ("entropy", "val_entropy"), ("ece", "val_ece"),
                        ("bits_per_byte", "val_bits_per_byte")):
        np.testing.assert_allclose(history[f"val/same/{metric}"], history[own], rtol=1e-6, atol=1e-7)
    # ... and the other sets are other data.
    assert not np.allclose(history["val/notes/loss"], history["val_loss"])
    assert history["val/notes/loss"].iloc[-1] < history["val/notes/loss"].iloc[0]  # the text is learnable


def test_sets_enter_run_id_and_the_shipped_sweeps_keep_theirs(tmp_path):
    (plain,) = load_sweep(_sweep(tmp_path, "", name="a.toml")).runs
    (with_set,) = load_sweep(_sweep(tmp_path, '[eval.sets.code]\nsource = "stdlib"\n', name="b.toml")).runs
    (other,) = load_sweep(_sweep(tmp_path, '[eval.sets.code]\nsource = "stdlib"\nsequences = 4\n', name="c.toml")).runs
    assert len({plain.run_id, with_set.run_id, other.run_id}) == 3
    again = type(with_set).from_dict(json.loads(json.dumps(with_set.to_dict())))
    assert again == with_set and again.run_id == with_set.run_id
    kaplan = load_sweep(REPO / "sweeps" / "kaplan.toml")
    assert "L1-d16-t4e6-s0-1e1faab3" in {s.run_id for s in kaplan.runs}


def test_a_set_may_be_any_data_source():
    assert EVAL_SOURCES == SOURCES


def _prepared(folder, kind: str, vocab_size: int):
    """A minimal folder as `scaling prepare` writes it, of a tokenizer `kind`."""
    folder.mkdir()
    tokens = np.arange(400, dtype=np.uint16) % vocab_size
    for split in ("train", "val"):
        tokens.tofile(folder / f"{split}.bin")
    np.save(folder / "token_bytes.npy", np.ones(vocab_size, dtype=np.int64))
    (folder / "tokenizer.json").write_text("{}")
    split = {"documents": 1, "tokens": 400, "bytes": 400}
    (folder / "metadata.json").write_text(json.dumps({
        "format": "scaling-prepared-corpus", "format_version": 1, "tokenizer": {"name": kind, "kind": kind},
        "vocab_size": vocab_size, "dtype": "uint16", "content_hash": "0" * 16, "split_rule": "by document",
        "splits": {"train": split, "val": split}}))
    return folder


BAD = [
    ('[eval.sets.notes]\nsource = "text"\npaths = ["nowhere/missing.txt"]\n', "eval.sets.notes.paths",
     "text file not found: nowhere/missing.txt"),
    ('[eval.sets.notes]\nsource = "wiki"\n', "eval.sets.notes.source", "expected one of stdlib, text, tokens"),
    ('[eval.sets.notes]\npaths = ["a.txt"]\n', "eval.sets.notes.source", "is required"),
    ('[eval.sets.notes]\nsource = "stdlib"\nsequence = 8\n', "eval.sets.notes.sequence", "unknown key"),
    ('[eval.sets.Notes]\nsource = "stdlib"\n', "eval.sets.Notes.name", "a set name is lowercase letters"),
    ('[eval.sets.notes]\nsource = "text"\n', "eval.sets.notes.paths", "expected at least one path"),
    ('[eval.sets.notes]\nsource = "stdlib"\n[eval.sets.notes.facts]\nalpha = 1.0\n', "eval.sets.notes.facts",
     'settings for source = "facts"'),
    ('[eval]\nsets = {}\n', "eval.sets", "no sets"),
    ('[eval.sets.bpe]\nsource = "tokens"\npaths = ["{bpe}"]\n', "eval.sets.bpe.paths",
     "its tokens are ids of the bpe tokenizer"),
    ('[eval.sets.big]\nsource = "tokens"\npaths = ["{big}"]\n', "eval.sets.big.paths",
     "vocab_size 256 is smaller than the vocabulary"),
]


@pytest.mark.parametrize("extra, key, expected", BAD, ids=[b[1] + "-" + b[2][:12] for b in BAD])
def test_a_bad_set_is_one_line_naming_the_key(tmp_path, extra, key, expected):
    bpe, big = _prepared(tmp_path / "bpe", "bpe", 200), _prepared(tmp_path / "big", "bpe", 300)
    path = _sweep(tmp_path, extra.replace("{bpe}", str(bpe)).replace("{big}", str(big)))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert err.value.key == key and expected in err.value.message and "\n" not in str(err.value)


def test_a_prepared_byte_folder_is_a_set_a_byte_model_can_read(tmp_path):
    folder = _prepared(tmp_path / "bytes", "bytes", 256)
    (spec,) = load_sweep(_sweep(tmp_path, f'[eval.sets.b]\nsource = "tokens"\npaths = ["{folder}"]\n')).runs
    assert spec.eval.sets == (EvalSet(name="b", source="tokens", paths=(str(folder),)),)


def test_the_command_line_exits_2_on_a_bad_set(tmp_path):
    path = _sweep(tmp_path, '[eval.sets.notes]\nsource = "text"\npaths = ["missing.txt"]\n')
    done = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(path), "--dry-run"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "eval.sets.notes.paths" in lines[0]
    assert "text file not found: missing.txt" in lines[0]


def _fake_runs() -> pd.DataFrame:
    rows = []
    for n in (1e4, 1e5, 1e6):
        row = {"run_id": f"r{n:g}", "status": "complete", "n_params": n, "tokens": 1e6, "val_loss": 2.0 / np.log10(n),
               "val_bits_per_byte": 2.5 / np.log10(n), "val_ece": 0.01}
        for name, shift in (("shakespeare", 1.0), ("code", 0.5)):
            row.update({f"val/{name}/loss": row["val_loss"] + shift, f"val/{name}/bits_per_byte":
                        row["val_bits_per_byte"] + shift, f"val/{name}/entropy": 1.0, f"val/{name}/ece": 0.05 * shift})
        rows.append(row)
    return pd.DataFrame(rows)


def test_the_figure_draws_a_line_per_set_and_the_own_split():
    from analysis.evalset_figures import eval_sets_figure
    fig = eval_sets_figure(_fake_runs())
    ax_loss, ax_ece = fig.axes
    labels = [line.get_label() for line in ax_loss.get_lines()]
    assert labels == ["own validation", "shakespeare", "code"]
    assert [line.get_label() for line in ax_ece.get_lines()] == labels
    assert "bits per byte" in ax_loss.get_ylabel() and ax_loss.get_xscale() == "log"
    np.testing.assert_allclose(ax_ece.get_lines()[1].get_ydata(), 0.05)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue()[:4] == b"\x89PNG"
    no_bytes = _fake_runs().assign(**{"val/code/bits_per_byte": np.nan})
    assert "nats/token" in eval_sets_figure(no_bytes).axes[0].get_ylabel()  # one unit for every line
    with pytest.raises(ValueError, match="no evaluation-set columns"):
        eval_sets_figure(_fake_runs()[["run_id", "n_params", "val_loss"]])


def test_make_plots_writes_the_figure_for_a_sweep_with_sets(trained):
    from analysis.make_plots import sweep_figures
    written = [p.name for p in sweep_figures(trained[-1], bootstrap=0)]
    assert "eval_sets.png" in written
