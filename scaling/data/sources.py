"""Token sources and their train/validation split (batches: scaling/data/batches.py).

Sources (DESIGN.md, "Data sources"):

- ``stdlib`` (default): the running Python's standard-library ``*.py`` files, as bytes (vocab 256).
- ``text``: the user's files or globs, as bytes.
- ``tokens``: a folder written by ``scaling prepare`` (scaling/data/prepare.py: train.bin, val.bin and
  the metadata that gives the vocabulary and the bytes of every token), or one flat ``.bin`` of
  uint16 / uint32 token ids (the nanoGPT layout), memory-mapped.
- ``synthetic``: a process with a known next-token distribution (scaling/data/synthetic.py); its
  ``TokenSource.optimal_nll`` gives the exact optimal loss of any validation windows.
- ``facts``: K key -> value records with Zipf frequencies (scaling/data/facts.py): an exact optimal
  loss, and known data and parameter exponents (``TokenSource.true_exponents``).

Any byte-level source can have task documents mixed in (``tasks``; scaling/data/tasks.py). A data
recipe (``recipe``; scaling/data/recipe.py) mixes ``stdlib`` and ``text`` sources by weight and
filters their documents; it is built and cached like a byte source.

Byte sources are packed the standard way: documents (files) are concatenated, each followed by one
end-of-document byte ``SEPARATOR`` (NUL, which a text file never contains, so it acts as a
dedicated EOT token), and training windows may cross document boundaries. They are split by
document: a file is in validation iff a stable hash of its relative path falls under
``val_fraction``, so no file is in both splits and the split is the same on every machine. Where
that leaves a split empty (a single file, or a tiny ``val_fraction``), the last ``val_fraction``
of the packed stream is validation instead; ``TokenSource.split_rule`` says which rule applied.
A ``tokens`` file's validation split is its last ``val_fraction`` of tokens; a prepared folder's
splits are its own (by document, made by ``scaling prepare``).

Bits per byte (``TokenSource.token_bytes``): byte sources count every byte but the end-of-document
NUL, which stands for no text (as a BPE's end-of-text token decodes to none), so their bits per byte
and a BPE corpus's compare like for like. A prepared corpus counts the UTF-8 bytes of each token.
``synthetic`` and ``facts`` are not text: a token is one symbol of at most 256, stored as a byte, so
their bits per byte are bits per token. A bare ``.bin`` has no tokenizer to count with: NaN.

Byte sources are built once into the user's cache folder (``cache_dir()``), as ``<name>.train.bin``
and ``<name>.val.bin`` plus a ``<name>.json`` manifest. The name hashes the file list with sizes and
mtimes (and the Python version for stdlib) and the split, so a changed input gets a fresh build.
Every file is written to a unique temp name and ``os.replace``d, manifest last: two processes
building at once write identical bytes, and a reader that sees the manifest sees complete files.
Everything is then opened with ``np.memmap``, once per process (``open_source`` is cached).

Batches: the train split is cut into fixed windows of ``seq_len + 1`` tokens, window k starting at
``k * seq_len`` (consecutive windows share one token, so every token is a target once). Global row j
of step s is sequence ``i = s * batch_size + j``; it reads window
``permute(i % n_windows, n_windows, data_seed, epoch=i // n_windows)``. ``permute`` is a keyed
Feistel network, so the order is a pure function of (data_seed, step): every model of a sweep sees
the same data in the same order and resume needs no replay.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import sys
import sysconfig
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from scaling.config import FactsConfig, SyntheticConfig
from scaling.data import corpus, facts as facts_mod, recipe as recipe_mod, splitcache, synthetic as syn
from scaling.data.errors import DataError
from scaling.data.tasks import mix_tasks

SOURCES = ("stdlib", "text", "tokens", "synthetic", "facts")
TOKEN_DTYPES = ("uint16", "uint32")
BYTE_VOCAB_SIZE = 256
SEPARATOR = b"\x00"
# Bumped when the packing or split changes, so old caches are never reused for a new layout.
_FORMAT_VERSION = 1
_READ_CHUNK_BYTES = 1 << 24
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no useful ==; identity is what we want
class TokenSource:
    name: str
    vocab_size: int
    content_hash: str  # 16 hex digits of sha256 over the tokens of both splits and the split rule
    train: np.ndarray  # 1-D, disjoint from val
    val: np.ndarray
    bytes_per_token: float | None  # the val split's mean UTF-8 bytes per token (1.0: a token is a byte)
    split_rule: str = ""  # how train and val were cut, in words; part of content_hash
    # For a source whose distribution is known: windows [n, S + 1] -> float64 [n, S], the exact
    # optimal -log p of each target given only its window (None: unknown).
    optimal_nll: Callable[[np.ndarray], np.ndarray] | None = None
    # For a source whose scaling exponents are known: (data exponent, parameter exponent), else None.
    true_exponents: tuple[float, float] | None = None
    # int64 [>= every id in the data]: the bytes each token id stands for, so that bits per byte are
    # counted on exactly the windows scored (batches.bits_per_byte). None: unknown (a bare .bin).
    token_bytes: np.ndarray | None = None


def cache_dir() -> Path:
    """``$SCALING_CACHE_DIR``, else ``$XDG_CACHE_HOME/scaling``, else ``~/.cache/scaling``."""
    if os.environ.get("SCALING_CACHE_DIR"):
        return Path(os.environ["SCALING_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "scaling"


# ----------------------------------------------------------------------------------------------
# Validation and path resolution (cheap: stats files, never reads them)


def check_source(source: str, *, paths: Sequence[str] = (), dtype: str = "uint16",
                 vocab_size: int | None = None, base_dir: str | Path = ".",
                 val_fraction: float = 0.02) -> None:
    """Raise DataError for a source that cannot be opened; reads no file contents."""
    paths = _as_tuple(paths)
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if source in ("synthetic", "facts"):
        if paths:
            raise DataError(f"data source {source!r} takes no paths (its settings are [data.{source}])")
        _byte_vocab_size(vocab_size)
    elif source == "stdlib":
        if paths:
            raise DataError("data source 'stdlib' takes no paths "
                            "(use source 'text' for your own files)")
        if not _stdlib_root().is_dir():
            raise DataError(f"Python standard library source not found at {_stdlib_root()}")
        _byte_vocab_size(vocab_size)
    elif source == "text":
        if not paths:
            raise DataError("data source 'text' needs at least one path or glob in paths")
        _resolve_text_paths(paths, base_dir)
        _byte_vocab_size(vocab_size)
    else:
        _check_tokens(paths, dtype, vocab_size, base_dir)


def _as_tuple(paths: Sequence[str] | str) -> tuple[str, ...]:
    # A lone string is one path, not a sequence of one-character paths.
    return (paths,) if isinstance(paths, str) else tuple(paths)


def _byte_vocab_size(vocab_size: int | None) -> int:
    # A model may pad its vocabulary above 256 (for matmul-friendly sizes); below 256 some bytes
    # would have no embedding.
    if vocab_size is None:
        return BYTE_VOCAB_SIZE
    if vocab_size < BYTE_VOCAB_SIZE:
        raise DataError(f"vocab_size {vocab_size} is too small for the bytes tokenizer "
                        f"(needs >= {BYTE_VOCAB_SIZE})")
    return vocab_size


def _check_tokens(paths: Sequence[str], dtype: str, vocab_size: int | None,
                  base_dir: str | Path) -> Path:
    if dtype not in TOKEN_DTYPES:
        raise DataError(f"token dtype {dtype!r} is not supported; "
                        f"expected one of {', '.join(TOKEN_DTYPES)}")
    if len(paths) != 1:
        raise DataError(f"data source 'tokens' takes exactly one prepared folder or .bin file, got {len(paths)} paths")
    path = _absolute(paths[0], base_dir)
    if corpus.is_prepared(path):
        prepared = corpus.read(path)
        if vocab_size is not None and vocab_size < prepared.vocab_size:
            raise DataError(f"vocab_size {vocab_size} is smaller than the vocabulary of {path} "
                            f"({prepared.vocab_size} tokens, {corpus.METADATA}); expected >= {prepared.vocab_size}")
        return path
    if vocab_size is None or vocab_size < 1:
        raise DataError(f"data source 'tokens' needs a positive vocab_size, got {vocab_size!r}")
    if not path.is_file():
        raise DataError(f"token file not found: {paths[0]} (looked at {path})")
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size == 0 or size % itemsize:
        raise DataError(f"token file {path} holds {size} bytes, not a positive multiple of "
                        f"{itemsize} ({dtype})")
    return path


def prepared_vocab_size(paths: Sequence[str], base_dir: str | Path = ".") -> int | None:
    """The vocabulary of a ``tokens`` source that is a prepared folder (from its metadata), else None."""
    paths = _as_tuple(paths)
    if len(paths) != 1 or not corpus.is_prepared(_absolute(paths[0], base_dir)):
        return None
    return corpus.read(_absolute(paths[0], base_dir)).vocab_size


def _absolute(path: str, base_dir: str | Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(base_dir).expanduser().resolve() / p


def _resolve_text_paths(paths: Sequence[str], base_dir: str | Path) -> list[tuple[str, Path]]:
    """(document name, absolute path) per file, in the order given, globs sorted, no duplicates.

    The document name (path relative to base_dir where possible) is what the split hashes, so the
    split does not depend on where the project is checked out.
    """
    base = Path(base_dir).expanduser().resolve()
    found: dict[Path, str] = {}
    for entry in paths:
        target = _absolute(entry, base)
        if _GLOB_CHARS & set(entry):
            matches = sorted(Path(m) for m in glob.glob(str(target), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise DataError(f"glob matched no files: {entry} (looked under {target.parent})")
        elif target.is_dir():
            raise DataError(f"text path is a directory: {entry}; give files or a glob such as "
                            f"{entry.rstrip('/')}/**/*.txt")
        elif not target.is_file():
            raise DataError(f"text file not found: {entry} (looked at {target})")
        else:
            files = [target]
        for f in files:
            f = f.resolve()
            try:
                name = f.relative_to(base).as_posix()
            except ValueError:
                name = f.as_posix()
            found.setdefault(f, name)
    return [(name, f) for f, name in found.items()]


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[tuple[str, Path]]:
    root = _stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Installed packages are not the standard library and differ between environments.
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages")]
        for fn in filenames:
            if fn.endswith(".py"):
                path = Path(dirpath) / fn
                files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


# ----------------------------------------------------------------------------------------------
# Opening sources


def open_source(source: str = "stdlib", *, paths: Sequence[str] = (), dtype: str = "uint16",
                vocab_size: int | None = None, val_fraction: float = 0.02,
                base_dir: str | Path = ".", synthetic=None, tasks=None, facts=None, recipe=None) -> TokenSource:
    """Open (building the cache on first use) a token source; cached per process.

    `synthetic` (a config.SyntheticConfig) parameterises source "synthetic" (defaults when None),
    `facts` (a config.FactsConfig) source "facts";
    `tasks` (a config.TasksConfig) mixes task documents into a byte-level source;
    `recipe` (a config.RecipeConfig), when given, is the data instead of `source` and `paths`.
    """
    if recipe is None:
        check_source(source, paths=paths, dtype=dtype, vocab_size=vocab_size, base_dir=base_dir,
                     val_fraction=val_fraction)
    else:
        for i, component in enumerate(recipe.components):
            try:
                check_source(component.source, paths=component.paths, vocab_size=vocab_size, base_dir=base_dir,
                             val_fraction=val_fraction)
            except DataError as e:
                raise DataError(f"recipe {recipe.name!r}: components[{i}]: {e}") from None
    base = str(Path(base_dir).expanduser().resolve())
    # The cache folder is part of the key so that a changed $SCALING_CACHE_DIR is honoured.
    opened = _open_cached(source, _as_tuple(paths), dtype, vocab_size, float(val_fraction), base,
                          str(cache_dir()), synthetic if source == "synthetic" else None,
                          facts if source == "facts" else None, recipe)
    if tasks is None or not tasks.tasks:
        return opened
    return mix_tasks(opened, tasks, cache_dir())


@functools.lru_cache(maxsize=None)
def _open_cached(source: str, paths: tuple[str, ...], dtype: str, vocab_size: int | None,
                 val_fraction: float, base_dir: str, cache: str, synthetic=None, facts=None,
                 recipe=None) -> TokenSource:
    if recipe is not None:
        return _open_recipe(recipe, vocab_size, val_fraction, base_dir, Path(cache))
    if source == "synthetic":
        config = synthetic or SyntheticConfig()
        train, val, content_hash, split_rule = syn.open_synthetic(config, Path(cache))
        return TokenSource(name="synthetic", vocab_size=_byte_vocab_size(vocab_size), content_hash=content_hash,
                           train=train, val=val, bytes_per_token=1.0, split_rule=split_rule,
                           optimal_nll=lambda windows: syn.build_process(config).optimal_nll(windows),
                           token_bytes=np.ones(BYTE_VOCAB_SIZE, dtype=np.int64))
    if source == "facts":
        config = facts or FactsConfig()
        train, val, content_hash, split_rule = facts_mod.open_facts(config, Path(cache))
        return TokenSource(name="facts", vocab_size=_byte_vocab_size(vocab_size), content_hash=content_hash,
                           train=train, val=val, bytes_per_token=1.0, split_rule=split_rule,
                           optimal_nll=lambda windows: facts_mod.build_facts(config).optimal_nll(windows),
                           true_exponents=facts_mod.build_facts(config).true_exponents,
                           token_bytes=np.ones(BYTE_VOCAB_SIZE, dtype=np.int64))
    if source == "tokens":
        return _open_tokens(paths[0], dtype, vocab_size, val_fraction, base_dir, Path(cache))
    tag, salt, docs = _documents(source, paths, base_dir)
    train, val, manifest = _open_byte_corpus(tag, salt, docs, val_fraction, Path(cache))
    return _byte_source(source, vocab_size, manifest, train, val)


def _documents(source: str, paths: tuple[str, ...], base_dir: str) -> tuple[str, str, list[tuple[str, Path]]]:
    """(cache tag, salt, documents) of a byte source; the salt names what else the bytes depend on."""
    if source == "stdlib":
        return f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}", sys.version, _stdlib_files()
    return "text", "", _resolve_text_paths(paths, base_dir)


def _byte_source(name: str, vocab_size: int | None, manifest: dict, train, val) -> TokenSource:
    token_bytes = np.ones(BYTE_VOCAB_SIZE, dtype=np.int64)
    token_bytes[SEPARATOR[0]] = 0  # the end of a document is no text byte
    return TokenSource(name=name, vocab_size=_byte_vocab_size(vocab_size),
                       content_hash=manifest["content_hash"], train=train, val=val,
                       bytes_per_token=1.0, split_rule=manifest["split_rule"], token_bytes=token_bytes)


def _open_recipe(recipe, vocab_size: int | None, val_fraction: float, base_dir: str, cache: Path) -> TokenSource:
    components = [_documents(c.source, c.paths, base_dir)[1:] for c in recipe.components]
    stem = recipe_mod.cache_stem(recipe, components, val_fraction, cache)
    manifest = _read_manifest(stem)
    if manifest is None:
        manifest = recipe_mod.build(stem, recipe, [docs for _, docs in components],
                                    lambda name: _in_val(name, val_fraction), SEPARATOR)
    train = np.memmap(f"{stem}.train.bin", dtype=np.uint8, mode="r")
    val = np.memmap(f"{stem}.val.bin", dtype=np.uint8, mode="r")
    return _byte_source(f"recipe:{recipe.name}", vocab_size, manifest, train, val)


def _in_val(doc_name: str, val_fraction: float) -> bool:
    # sha256, not hash(): Python's str hash is salted per process.
    h = int.from_bytes(hashlib.sha256(doc_name.encode()).digest()[:8], "big")
    return h / 2.0**64 < val_fraction


def _open_byte_corpus(tag: str, salt: str, docs: list[tuple[str, Path]], val_fraction: float,
                      cache: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    key = hashlib.sha256()
    key.update(f"v{_FORMAT_VERSION}|{salt}|{val_fraction!r}\n".encode())
    for name, path in docs:
        st = path.stat()
        key.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    stem = cache / f"{tag}-{key.hexdigest()[:16]}"
    manifest = _read_manifest(stem)
    if manifest is None:
        manifest = _build_byte_corpus(stem, docs, val_fraction)
    train = np.memmap(f"{stem}.train.bin", dtype=np.uint8, mode="r")
    val = np.memmap(f"{stem}.val.bin", dtype=np.uint8, mode="r")
    return train, val, manifest


def _read_manifest(stem: Path) -> dict | None:
    """The manifest of a complete build, or None (absent, unreadable, or sizes not matching)."""
    try:
        manifest = json.loads(Path(f"{stem}.json").read_text())
        sizes = (os.path.getsize(f"{stem}.train.bin"), os.path.getsize(f"{stem}.val.bin"))
    except (OSError, ValueError):
        return None
    return manifest if sizes == (manifest.get("n_train"), manifest.get("n_val")) else None


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK_BYTES):
            yield chunk


def _build_byte_corpus(stem: Path, docs: list[tuple[str, Path]], val_fraction: float) -> dict:
    """Pack docs into ``stem.train.bin`` / ``stem.val.bin``; streamed, so big corpora fit."""
    val_docs = {name for name, _ in docs if _in_val(name, val_fraction)}
    by_document = 0 < len(val_docs) < len(docs)
    if by_document:
        split_rule = f"bytes; split by document sha256(path) < {val_fraction!r}"
        cut = None
    else:
        # Too few documents for a document split: the tail of the packed stream is validation.
        total = sum(path.stat().st_size + len(SEPARATOR) for _, path in docs)
        n_val = max(1, round(total * val_fraction))
        if total - n_val < 1:
            raise DataError(f"text corpus of {total} bytes is too small to split "
                            "into train and val")
        cut = total - n_val
        split_rule = f"bytes; last {n_val} of {total} packed bytes are val"
        val_docs = set()

    hashers = {"train": hashlib.sha256(), "val": hashlib.sha256()}
    counts = {"train": 0, "val": 0}
    with splitcache.staged(stem) as tmp:
        with open(tmp["train"], "wb") as f_train, open(tmp["val"], "wb") as f_val:
            out = {"train": f_train, "val": f_val}

            def write(split: str, data: bytes) -> None:
                out[split].write(data)
                hashers[split].update(data)
                counts[split] += len(data)

            position = 0
            for name, path in docs:
                for chunk in [*_read_chunks(path), SEPARATOR]:
                    if cut is None:
                        write("val" if name in val_docs else "train", chunk)
                    else:
                        head = chunk[:max(0, cut - position)]
                        if head:
                            write("train", head)
                        if len(head) < len(chunk):
                            write("val", chunk[len(head):])
                    position += len(chunk)
        if counts["train"] == 0 or counts["val"] == 0:
            raise DataError(f"corpus {stem.name} has an empty train or val split")
        content = hashlib.sha256(
            f"{split_rule}|{hashers['train'].hexdigest()}|{hashers['val'].hexdigest()}".encode())
        manifest = {
            "format_version": _FORMAT_VERSION,
            "content_hash": content.hexdigest()[:16],
            "split_rule": split_rule,
            "separator": SEPARATOR.hex(),
            "n_train": counts["train"],
            "n_val": counts["val"],
            "val_documents": sorted(val_docs),
            "train_documents": sorted(name for name, _ in docs if name not in val_docs),
        }
        tmp["json"].write_text(json.dumps(manifest, indent=1))
    return manifest


def _open_tokens(path_str: str, dtype: str, vocab_size: int, val_fraction: float, base_dir: str,
                 cache: Path) -> TokenSource:
    path = _absolute(path_str, base_dir).resolve()
    if corpus.is_prepared(path):
        return _open_prepared(path, vocab_size)
    tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    digest, max_token = _scan_tokens(path, tokens, dtype, cache)
    if max_token >= vocab_size:
        raise DataError(f"token file {path} holds token id {max_token}, "
                        f"not below vocab_size {vocab_size}")
    n_val = max(1, round(len(tokens) * val_fraction))
    if len(tokens) - n_val < 1:
        raise DataError(f"token file {path} holds {len(tokens)} tokens, "
                        "too few to split into train and val")
    split_rule = f"{dtype}; last {n_val} of {len(tokens)} tokens are val"
    content_hash = hashlib.sha256(f"{split_rule}|{digest}".encode()).hexdigest()[:16]
    cut = len(tokens) - n_val
    return TokenSource(name="tokens", vocab_size=vocab_size, content_hash=content_hash,
                       train=tokens[:cut], val=tokens[cut:], bytes_per_token=None,
                       split_rule=split_rule)


def _open_prepared(folder: Path, vocab_size: int | None) -> TokenSource:
    """A folder of `scaling prepare`: its splits, vocabulary and byte table (checked by corpus.read)."""
    prepared = corpus.read(folder)
    val = prepared.split("val")
    return TokenSource(name="tokens", vocab_size=vocab_size or prepared.vocab_size,
                       content_hash=prepared.metadata["content_hash"], train=prepared.tokens("train"),
                       val=prepared.tokens("val"), bytes_per_token=val["bytes"] / val["tokens"],
                       split_rule=f"prepared {folder.name} ({prepared.metadata['tokenizer']['name']}); "
                                  f"{prepared.metadata['split_rule']}",
                       token_bytes=prepared.token_bytes())


def _scan_tokens(path: Path, tokens: np.ndarray, dtype: str, cache: Path) -> tuple[str, int]:
    """(sha256 of the file, largest token id), read in chunks and cached per (file, size, mtime).

    A token file may be many GB: the full pass happens once per machine, not once per run.
    """
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:16]
    record = cache / f"tokens-{key}.json"
    try:
        scanned = json.loads(record.read_text())
        return scanned["sha256"], int(scanned["max_token"])
    except (OSError, ValueError, KeyError):
        pass
    hasher, max_token = hashlib.sha256(), 0
    step = _READ_CHUNK_BYTES // tokens.itemsize
    for start in range(0, len(tokens), step):
        chunk = np.asarray(tokens[start:start + step])
        hasher.update(chunk.tobytes())
        max_token = max(max_token, int(chunk.max()))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f"{record.name}.tmp-{uuid.uuid4().hex}")
    scanned = {"path": str(path), "sha256": hasher.hexdigest(), "max_token": max_token}
    tmp.write_text(json.dumps(scanned))
    os.replace(tmp, record)
    return hasher.hexdigest(), max_token


