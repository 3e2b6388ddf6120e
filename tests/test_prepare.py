"""`scaling prepare` and the prepared corpus as source "tokens": splits by document that never overlap,
exact byte counts, a no-op rerun, one-line errors (exit 2) that leave nothing behind, and exact bits
per byte on the windows scored."""

import json
import math
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_sweep
from scaling import records
from scaling.cli import main
from scaling.data import bits_per_byte, corpus
from scaling.data.errors import DataError
from scaling.data.prepare import prepare
from scaling.data.sources import open_source
from scaling.data.tokenizer import token_dtype
from scaling.sweep.reader import load_sweep

# A tiny real corpus, made at test time from the standard library's own docstrings (about 40 KB).
MODULES = ("argparse", "collections", "csv", "functools", "heapq", "itertools", "json", "pathlib", "string",
           "textwrap", "shutil", "statistics")


def docstrings(name: str) -> str:
    module = __import__(name)
    docs = [module.__doc__ or ""] + [getattr(module, n).__doc__ or "" for n in sorted(dir(module))
                                     if not n.startswith("_")][:15]
    return "\n\n".join(d for d in docs if d and d.strip())


@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in MODULES:
        (folder / f"{name}.txt").write_text(docstrings(name) + "\nnaïve café — ½\n")
    return folder


def documents_of(tokens: np.ndarray) -> list[bytes]:
    return [d for d in np.asarray(tokens, dtype=np.uint8).tobytes().split(b"\0") if d]


def test_bytes_corpus_splits_by_document_and_counts_every_byte(text_dir, tmp_path):
    out = tmp_path / "prepared"
    meta = prepare([str(text_dir)], out, tokenizer="bytes", val_fraction=0.2, log=lambda line: None)
    texts = {p.read_bytes() for p in text_dir.iterdir()}
    prepared = corpus.read(out)
    train, val = documents_of(prepared.tokens("train")), documents_of(prepared.tokens("val"))
    assert set(train).isdisjoint(val) and set(train) | set(val) == texts  # whole documents, each once
    assert (len(train), len(val)) == (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"])
    assert meta["splits"]["val"]["bytes"] == sum(map(len, val)) and meta["bytes_exact"]
    assert meta["splits"]["train"]["tokens"] == sum(map(len, train)) + len(train)  # one NUL after each
    assert meta["vocab_size"] == 256 and meta["dtype"] == "uint16"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


def test_a_rerun_with_the_same_inputs_is_a_no_op(text_dir, tmp_path):
    out, said = tmp_path / "prepared", []
    prepare([str(text_dir / "*.txt")], out, log=said.append)
    stamp = (out / "train.bin").stat().st_mtime_ns
    prepare([str(text_dir / "*.txt")], out, log=said.append)
    assert "up to date" in said[-1] and (out / "train.bin").stat().st_mtime_ns == stamp
    (text_dir / "json.txt").write_text("changed")
    meta = prepare([str(text_dir / "*.txt")], out, log=said.append)
    assert len(said) == 1 and (out / "train.bin").stat().st_mtime_ns != stamp  # built again, not "up to date"
    assert meta == corpus.read(out).metadata


def test_jsonl_and_parquet_documents(tmp_path):
    rows = [f"record {i}: {docstrings(MODULES[i % len(MODULES)])[:200]}" for i in range(30)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": r, "n": i}) + "\n" for i, r in enumerate(rows)))
    pq.write_table(pa.table({"body": rows, "n": list(range(30))}), tmp_path / "b.parquet")
    meta = prepare([str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")], tmp_path / "out", field="body",
                   val_fraction=0.1, log=lambda line: None)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 60
    assert meta["splits"]["val"]["documents"] >= 1
    assert sum(s["bytes"] for s in meta["splits"].values()) == 2 * sum(len(r.encode()) for r in rows)


def test_trained_bpe_counts_the_exact_bytes_of_its_tokens(text_dir, tmp_path):
    pytest.importorskip("tokenizers", reason="the bpe extra (pip install 'scaling[bpe]') is not installed")
    from tokenizers import Tokenizer
    out = tmp_path / "bpe"
    meta = prepare([str(text_dir)], out, tokenizer="bpe", vocab_size=512, val_fraction=0.2, log=lambda line: None)
    prepared = corpus.read(out)
    assert meta["vocab_size"] == 512 and meta["bytes_exact"] and meta["tokenizer"]["eot"] == "<|endoftext|>"
    table, val = prepared.token_bytes(), np.asarray(prepared.tokens("val"))
    assert int(table[val].sum()) == meta["splits"]["val"]["bytes"]
    assert meta["splits"]["val"]["bytes"] > 1.5 * meta["splits"]["val"]["tokens"]  # merges happened
    decoded = Tokenizer.from_file(str(out / "tokenizer.json")).decode(val.tolist(), skip_special_tokens=True)
    val_texts = {p.read_text() for p in text_dir.iterdir() if p.read_text() in decoded}
    assert len(decoded.encode()) == meta["splits"]["val"]["bytes"] == sum(len(t.encode()) for t in val_texts)
    # An existing tokenizer.json gives the same tokens.
    again = prepare([str(text_dir)], tmp_path / "file", tokenizer=str(out / "tokenizer.json"), val_fraction=0.2,
                    log=lambda line: None)
    assert again["splits"] == meta["splits"] and again["vocab_size"] == 512


def test_bits_per_byte_on_hand_made_windows():
    table = np.array([0, 1, 2, 3])  # token 0 is an end-of-document token: no bytes
    windows = np.array([[1, 2, 3, 0], [3, 3, 1, 2]])  # targets: 2 3 0 | 3 1 2 -> 5 + 6 = 11 bytes
    loss = 1.7  # nats per target token, over the 6 targets
    assert math.isclose(bits_per_byte(loss, windows, table), loss / math.log(2) * 6 / 11)
    assert math.isclose(bits_per_byte(loss, windows, np.ones(4)), loss / math.log(2))  # a token is a byte
    assert math.isnan(bits_per_byte(loss, np.array([[1, 0, 0]]), table))


def test_tokens_source_reads_a_prepared_folder(text_dir, tmp_path):
    out = tmp_path / "prepared"
    prepare([str(text_dir)], out, val_fraction=0.2, log=lambda line: None)
    src = open_source("tokens", paths=[str(out)], vocab_size=None)
    assert src.vocab_size == 256 and src.token_bytes[0] == 0 and src.token_bytes[65] == 1
    assert len(src.val) == corpus.read(out).split("val")["tokens"]
    with pytest.raises(DataError, match="vocab_size 100 is smaller than the vocabulary"):
        open_source("tokens", paths=[str(out)], vocab_size=100)
    sweep = load_sweep(write_sweep(tmp_path / "s.toml", textwrap.dedent(f"""
        [sweep]
        out_dir = "{tmp_path / 'results'}"
        [data]
        source = "tokens"
        paths = ["{out}"]
        seq_len = 16
        [model]
        head_dim = 8
        [train]
        batch_tokens = 128
        eval_points = 2
        eval_sequences = 8
        [grid]
        models = [{{ n_layer = 1, d_model = 16 }}]
        tokens = [1280]
        """)), device_count=1)
    assert sweep.runs[0].model.vocab_size == 256  # from the metadata, not typed


def test_a_run_on_a_prepared_corpus_records_exact_bits_per_byte(text_dir, tmp_path):
    from scaling.training.run import train_run
    out = tmp_path / "prepared"
    prepare([str(text_dir)], out, val_fraction=0.2, log=lambda line: None)
    path = write_sweep(tmp_path / "s.toml", textwrap.dedent(f"""
        [sweep]
        out_dir = "{tmp_path / 'results'}"
        [data]
        source = "tokens"
        paths = ["{out}"]
        seq_len = 16
        [model]
        head_dim = 8
        [train]
        batch_tokens = 128
        eval_points = 2
        eval_sequences = 8
        [grid]
        models = [{{ n_layer = 1, d_model = 16 }}]
        tokens = [1280]
        """))
    spec = load_sweep(path, device_count=1).runs[0]
    train_run(spec, tmp_path / "results")
    s = pq.read_table(records.run_dir(tmp_path / "results", spec.run_id) / "summary.parquet").to_pylist()[0]
    assert s["status"] == "complete" and math.isfinite(s["val_bits_per_byte"])
    assert s["val_bits_per_byte"] >= s["val_loss"] / math.log(2)  # end-of-document tokens have no bytes


def test_a_vocabulary_over_uint32_is_refused():
    assert token_dtype(65536, "x") == "uint16" and token_dtype(65537, "x") == "uint32"
    with pytest.raises(DataError, match="does not fit uint32"):
        token_dtype(2**32 + 1, "tokenizer.json")


@pytest.mark.parametrize("case", ["missing", "empty", "field", "column", "tokenizer", "size", "metadata"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, text_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(text_dir)]
    expected = {"missing": "input not found", "empty": "no text in", "field": "no field 'body'",
                "column": "no column 'body'", "tokenizer": "not a tokenizer.json",
                "size": "expects", "metadata": "metadata.json not found"}[case]
    extra = []
    if case == "missing":
        args = [str(tmp_path / "nope.txt")]
    elif case == "empty":
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "a.txt").write_text("")
        args = [str(tmp_path / "e")]
    elif case == "field":
        (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
        args, extra = [str(tmp_path / "a.jsonl")], ["--field", "body"]
    elif case == "column":
        pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "a.parquet")
        args, extra = [str(tmp_path / "a.parquet")], ["--field", "body"]
    elif case == "tokenizer":
        pytest.importorskip("tokenizers", reason="the bpe extra (pip install 'scaling[bpe]') is not installed")
        (tmp_path / "tokenizer.json").write_text("{not json")
        extra = ["--tokenizer", str(tmp_path / "tokenizer.json")]
    if case in ("size", "metadata"):
        assert main(["prepare", *args, "--out", str(out), "--quiet"]) == 0
        capsys.readouterr()
        if case == "size":
            with open(out / "val.bin", "ab") as f:
                f.write(b"\0\0")
        else:
            (out / corpus.METADATA).unlink()
        with pytest.raises(DataError, match=expected):
            open_source("tokens", paths=[str(out)])
        return
    assert main(["prepare", *args, "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_a_sweep_on_a_damaged_prepared_folder_exits_2(text_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    prepare([str(text_dir)], out, log=lambda line: None)
    (out / "train.bin").write_bytes(b"\0\0")
    sweep = write_sweep(tmp_path / "s.toml", f'[data]\nsource = "tokens"\npaths = ["{out}"]\n'
                                             '[grid]\nmodels = [{ n_layer = 1, d_model = 32 }]\ntokens = [1e5]\n')
    assert main(["sweep", str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.bin" in err and "expects" in err and err.count("\n") == 1
