"""Data sources, the train/val split, the stateless permutation and batches (scaling/data/sources.py)."""

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from scaling.data import sources as data
from scaling.data.batches import Batcher, permute, validation_windows
from scaling.data.sources import DataError, check_source, open_source


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache folder and a fresh per-process cache for every test."""
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "cache"))
    data._open_cached.cache_clear()
    yield tmp_path / "cache"
    data._open_cached.cache_clear()


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory):
    """One stdlib build shared by the tests that need it (it reads ~30 MB of source)."""
    folder = tmp_path_factory.mktemp("stdlib-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCALING_CACHE_DIR", str(folder))
        data._open_cached.cache_clear()
        open_source("stdlib")
    return folder


def write_docs(folder: Path, n: int, size: int = 300) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"doc{i:03d}.txt"
        p.write_bytes(f"document {i} ".encode() * (size // 12 + 1))
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------
# permute


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 97, 1000, 4099])
def test_permute_is_a_bijection(n):
    for seed, epoch in [(0, 0), (1, 0), (0, 5)]:
        image = permute(np.arange(n), n, seed, epoch)
        assert image.dtype == np.int64 and image.shape == (n,)
        assert np.array_equal(np.sort(image), np.arange(n))


def test_permute_differs_across_seeds_and_epochs_and_is_not_identity():
    n = 1000
    base = permute(np.arange(n), n, seed=0, epoch=0)
    assert not np.array_equal(base, np.arange(n))
    assert np.mean(base != permute(np.arange(n), n, seed=1, epoch=0)) > 0.9
    assert np.mean(base != permute(np.arange(n), n, seed=0, epoch=1)) > 0.9


def test_permute_is_a_pure_function_of_each_index():
    n = 997
    whole = permute(np.arange(n), n, seed=3, epoch=2)
    idx = np.array([996, 0, 500, 3])
    assert np.array_equal(permute(idx, n, 3, 2), whole[idx])
    assert int(permute(np.int64(500), n, 3, 2)) == whole[500]
    with pytest.raises(ValueError):
        permute(np.array([n]), n, 3, 2)


# ---------------------------------------------------------------------------------------------
# Batcher


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a, b = Batcher(tokens, 16, 8, data_seed=7), Batcher(tokens, 16, 8, data_seed=7)
    forward = [a.batch(s) for s in range(30)]
    backward = [b.batch(s) for s in reversed(range(30))][::-1]
    for x, y in zip(forward, backward):
        assert x.dtype == np.int32 and x.shape == (8, 17)
        assert np.array_equal(x, y)
    assert not np.array_equal(a.batch(0), a.batch(1))
    assert not np.array_equal(a.batch(0), Batcher(tokens, 16, 8, data_seed=8).batch(0))


def test_rows_are_the_windows_they_claim():
    tokens = np.arange(1_000, dtype=np.uint32)
    batcher = Batcher(tokens, seq_len=10, batch_size=4, data_seed=0)
    assert batcher.n_windows == 99  # (1000 - 1) // 10
    batch = batcher.batch(3)
    for row, w in zip(batch, batcher.window_indices(3)):
        assert np.array_equal(row, np.arange(w * 10, w * 10 + 11))


def test_process_shards_concatenate_to_the_global_batch():
    tokens = np.arange(5_000, dtype=np.uint16)
    batcher = Batcher(tokens, 12, batch_size=8, data_seed=1)
    for step in (0, 17, 400):  # 400 crosses epochs (n_windows = 416)
        whole = batcher.batch(step)
        for count in (2, 4, 8):
            shards = [batcher.batch(step, process_index=i, process_count=count)
                      for i in range(count)]
            assert all(s.shape == (8 // count, 13) for s in shards)
            assert np.array_equal(np.concatenate(shards), whole)
    with pytest.raises(ValueError):
        batcher.batch(0, process_index=0, process_count=3)


def test_every_window_is_visited_once_per_epoch():
    tokens = np.arange(1_000, dtype=np.uint16)
    batcher = Batcher(tokens, seq_len=9, batch_size=5, data_seed=2)
    n = batcher.n_windows  # 111, not a multiple of the batch size: epochs straddle batches
    windows = np.concatenate([batcher.window_indices(s) for s in range(3 * n // 5 + 1)])
    epochs = [windows[e * n:(e + 1) * n] for e in range(3)]
    for e in epochs:
        assert np.array_equal(np.sort(e), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1])


def test_batcher_needs_one_window():
    with pytest.raises(DataError, match="fewer than one window"):
        Batcher(np.arange(10, dtype=np.uint16), seq_len=10, batch_size=1, data_seed=0)


# ---------------------------------------------------------------------------------------------
# validation_windows


def test_validation_windows_are_deterministic_and_spread():
    val = np.arange(1_001, dtype=np.uint16)
    w = validation_windows(val, seq_len=10, n_sequences=4)
    assert w.dtype == np.int32 and w.shape == (4, 11)
    assert np.array_equal(w, validation_windows(val.copy(), 10, 4))
    assert list(w[:, 0]) == [0, 250, 500, 750]  # 100 windows, every 25th
    assert validation_windows(val, 10, 10_000).shape == (100, 11)  # capped by what val holds
    with pytest.raises(DataError, match="validation split holds 10 tokens"):
        validation_windows(val[:10], 10, 1)


# ---------------------------------------------------------------------------------------------
# stdlib


def test_stdlib_source_splits_by_file(stdlib_cache, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE_DIR", str(stdlib_cache))
    src = open_source("stdlib")
    assert src.name == "stdlib" and src.vocab_size == 256 and src.bytes_per_token == 1.0
    assert len(src.content_hash) == 16
    assert isinstance(src.train, np.memmap) and isinstance(src.val, np.memmap)
    (manifest_path,) = stdlib_cache.glob("stdlib-*.json")
    manifest = json.loads(manifest_path.read_text())
    train_docs, val_docs = set(manifest["train_documents"]), set(manifest["val_documents"])
    assert val_docs and train_docs and not train_docs & val_docs
    assert not any("site-packages" in d for d in train_docs | val_docs)
    assert all(data._in_val(d, 0.02) for d in val_docs)
    assert 0.003 < len(src.val) / (len(src.train) + len(src.val)) < 0.1
    n_docs = len(train_docs | val_docs)
    # One separator (NUL) per document, and no NUL inside any source file.
    n_separators = sum(split.size - np.count_nonzero(split) for split in (src.train, src.val))
    assert n_separators == n_docs


def test_stdlib_cache_is_built_once_and_reused(stdlib_cache, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE_DIR", str(stdlib_cache))
    first = open_source("stdlib")
    assert open_source("stdlib") is first  # opened once per process
    (train_bin,) = stdlib_cache.glob("stdlib-*.train.bin")
    mtime = train_bin.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached corpus")

    monkeypatch.setattr(data, "_build_byte_corpus", no_rebuild)
    data._open_cached.cache_clear()  # a new process, as far as the cache is concerned
    again = open_source("stdlib")
    assert again is not first and again.content_hash == first.content_hash
    assert train_bin.stat().st_mtime_ns == mtime
    assert np.array_equal(again.val, first.val)


# ---------------------------------------------------------------------------------------------
# text


def test_text_source_with_glob_splits_by_file(tmp_path):
    write_docs(tmp_path / "corpus", 60)
    src = open_source("text", paths=["corpus/*.txt"], base_dir=tmp_path)
    assert src.vocab_size == 256 and "by document" in src.split_rule
    (manifest_path,) = Path(os.environ["SCALING_CACHE_DIR"]).glob("text-*.json")
    manifest = json.loads(manifest_path.read_text())
    train_docs, val_docs = set(manifest["train_documents"]), set(manifest["val_documents"])
    assert len(train_docs | val_docs) == 60 and not train_docs & val_docs
    assert {"corpus/doc001.txt", "corpus/doc059.txt"} <= train_docs | val_docs  # relative names
    # Every val document's text is in val and not in train (each document text is unique).
    train_bytes, val_bytes = bytes(src.train), bytes(src.val)
    for name in val_docs:
        doc = (tmp_path / name).read_bytes() + data.SEPARATOR
        assert doc in val_bytes and doc not in train_bytes
    assert len(train_bytes) + len(val_bytes) == sum(
        (tmp_path / d).stat().st_size + 1 for d in train_docs | val_docs)


def test_text_content_hash_tracks_content(tmp_path):
    paths = write_docs(tmp_path / "corpus", 40)
    first = open_source("text", paths=["corpus/*.txt"], base_dir=tmp_path)
    paths[0].write_bytes(b"changed " * 50)
    data._open_cached.cache_clear()
    second = open_source("text", paths=["corpus/*.txt"], base_dir=tmp_path)
    assert second.content_hash != first.content_hash
    data._open_cached.cache_clear()
    third = open_source("text", paths=["corpus/*.txt"], base_dir=tmp_path, val_fraction=0.3)
    assert third.content_hash != second.content_hash


def test_single_text_file_falls_back_to_a_tail_split(tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(bytes(range(1, 201)) * 10)
    src = open_source("text", paths=[str(path)], val_fraction=0.1)
    assert (len(src.train), len(src.val)) == (2001 - 200, 200)  # 2000 bytes + separator
    assert bytes(src.train) + bytes(src.val) == path.read_bytes() + data.SEPARATOR
    # A lone string is one path; a padded vocabulary is allowed, one below 256 bytes is not.
    padded = open_source("text", paths=str(path), val_fraction=0.1, vocab_size=512)
    assert padded.vocab_size == 512 and padded.content_hash == src.content_hash
    with pytest.raises(DataError, match="vocab_size 100 is too small"):
        open_source("text", paths=str(path), vocab_size=100)


def test_missing_text_path_and_empty_glob_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nope/missing.txt"):
        open_source("text", paths=["nope/missing.txt"], base_dir=tmp_path)
    with pytest.raises(DataError, match=r"glob matched no files: corpus/\*\.md"):
        check_source("text", paths=["corpus/*.md"], dtype="uint16", vocab_size=None,
                     base_dir=tmp_path)
    with pytest.raises(DataError, match="needs at least one path"):
        check_source("text", paths=[], dtype="uint16", vocab_size=None, base_dir=tmp_path)
    with pytest.raises(DataError, match="unknown data source"):
        check_source("wiki", paths=[], dtype="uint16", vocab_size=None, base_dir=tmp_path)


def test_concurrent_builds_do_not_corrupt_the_cache(tmp_path, cache):
    docs = [(p.name, p) for p in write_docs(tmp_path / "corpus", 30, size=20_000)]
    stem = cache / "text-concurrent"
    results, errors = [], []

    def build():
        try:
            results.append(data._build_byte_corpus(stem, docs, 0.1))
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({r["content_hash"] for r in results}) == 1
    assert data._read_manifest(stem) == results[0]
    assert sorted(p.name for p in cache.iterdir()) == [
        "text-concurrent.json", "text-concurrent.train.bin", "text-concurrent.val.bin"]


# ---------------------------------------------------------------------------------------------
# tokens


def test_tokens_source_splits_at_the_tail(tmp_path):
    tokens = (np.arange(10_000) % 1000).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    src = open_source("tokens", paths=["train.bin"], dtype="uint16", vocab_size=1000,
                      val_fraction=0.1, base_dir=tmp_path)
    assert src.bytes_per_token is None and src.vocab_size == 1000
    assert isinstance(src.train, np.memmap)
    assert (len(src.train), len(src.val)) == (9_000, 1_000)
    assert np.array_equal(np.concatenate([src.train, src.val]), tokens)
    # Disjoint index ranges: the split is a cut, the train view ends where val begins.
    assert not np.shares_memory(src.train, src.val)
    start = lambda a: a.__array_interface__["data"][0]  # noqa: E731
    assert start(src.val) == start(src.train) + src.train.nbytes
    assert open_source("tokens", paths=["train.bin"], dtype="uint16", vocab_size=1000,
                       val_fraction=0.1, base_dir=tmp_path) is src


def test_tokens_uint32_and_content_hash(tmp_path):
    tokens = np.arange(5_000, dtype=np.uint32) * 7
    tokens.tofile(tmp_path / "t.bin")
    src = open_source("tokens", paths=[str(tmp_path / "t.bin")], dtype="uint32", vocab_size=50_000)
    assert int(src.train.max()) == 7 * (len(src.train) - 1)
    data._open_cached.cache_clear()
    (tokens + 1).tofile(tmp_path / "t.bin")
    other = open_source("tokens", paths=[str(tmp_path / "t.bin")], dtype="uint32",
                        vocab_size=50_000)
    assert other.content_hash != src.content_hash


def test_tokens_out_of_vocab_and_bad_settings_raise(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_READ_CHUNK_BYTES", 256)  # several chunks: the max is found in any
    tokens = np.zeros(1_000, dtype=np.uint16)
    tokens[777] = 500
    tokens.tofile(tmp_path / "t.bin")
    with pytest.raises(DataError, match="token id 500, not below vocab_size 500"):
        open_source("tokens", paths=["t.bin"], dtype="uint16", vocab_size=500, base_dir=tmp_path)
    with pytest.raises(DataError, match="token file not found: gone.bin"):
        check_source("tokens", paths=["gone.bin"], dtype="uint16", vocab_size=500,
                     base_dir=tmp_path)
    with pytest.raises(DataError, match="int64"):
        check_source("tokens", paths=["t.bin"], dtype="int64", vocab_size=500, base_dir=tmp_path)
    with pytest.raises(DataError, match="vocab_size"):
        check_source("tokens", paths=["t.bin"], dtype="uint16", vocab_size=None, base_dir=tmp_path)
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="odd.bin holds 7 bytes"):
        check_source("tokens", paths=["odd.bin"], dtype="uint16", vocab_size=500, base_dir=tmp_path)
