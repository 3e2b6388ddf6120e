"""`scaling prepare`: text files (or globs, or folders), ``.jsonl`` (a named text field) and
``.parquet`` (a named text column) -> a prepared corpus folder (layout: scaling/data/corpus.py).

A document is a text file, a JSON line or a parquet row. Each document lies wholly in train or in
validation: in validation iff sha256 of its name (``path``, ``path:line``, ``path:row``) falls under
``val_fraction``; where that leaves a split empty, the document of the smallest hash is validation
(or that of the largest, train). Documents are packed in input order, each followed by the
tokenizer's end-of-document token. A BPE is trained on the train documents only.

Everything streams: the inputs are read in passes (hash, split, [BPE training], encoding), never
held whole, so a corpus larger than memory works. The output is built in a temporary folder beside
the target and moved into place whole; the inputs' content hash, with every setting, is kept in the
metadata, so a rerun with the same inputs is a no-op.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from scaling.data import corpus
from scaling.data.errors import DataError
from scaling.data.tokenizer import BPE, BYTES, BytesTokenizer, load_tokenizer_file, token_dtype, train_bpe

_READ_BYTES = 1 << 20  # a long text file is encoded in pieces of about this size, cut at line ends
_ENCODE_BATCH_CHARS = 1 << 23
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Input:
    name: str  # as the split hashes it: relative to the working folder where possible
    path: Path
    kind: str  # text | jsonl | parquet


def resolve_inputs(entries: list[str]) -> list[Input]:
    """Files, globs (``**`` recurses) and folders (every file under them, hidden ones left out), in
    the order given, globs and folders sorted, no duplicates."""
    if not entries:
        raise DataError("scaling prepare: give at least one input file, glob or folder")
    found: dict[Path, None] = {}
    for entry in entries:
        target = Path(os.path.expanduser(entry))
        if _GLOB_CHARS & set(entry):
            files = [Path(m) for m in sorted(glob.glob(str(target), recursive=True)) if Path(m).is_file()]
            if not files:
                raise DataError(f"glob matched no files: {entry}")
        elif target.is_dir():
            files = sorted(p for p in target.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(target).parts))
            if not files:
                raise DataError(f"folder holds no files: {entry}")
        elif not target.is_file():
            raise DataError(f"input not found: {entry}")
        else:
            files = [target]
        found.update(dict.fromkeys(f.resolve() for f in files))
    cwd = Path.cwd().resolve()
    out = []
    for f in found:
        name = f.relative_to(cwd).as_posix() if f.is_relative_to(cwd) else f.as_posix()
        kind = {".jsonl": "jsonl", ".parquet": "parquet"}.get(f.suffix.lower(), "text")
        out.append(Input(name, f, kind))
    return out


def documents(inputs: list[Input], field: str, on_file: Callable[[int], None] = lambda n: None
              ) -> Iterator[tuple[str, str, bool]]:
    """(document name, text piece, last piece of its document) for every non-empty document."""
    for item in inputs:
        if item.kind == "text":
            yield from _text_pieces(item)
        elif item.kind == "jsonl":
            yield from _jsonl_documents(item, field)
        else:
            yield from _parquet_documents(item, field)
        on_file(item.path.stat().st_size)


def _text_pieces(item: Input) -> Iterator[tuple[str, str, bool]]:
    try:
        with open(item.path, encoding="utf-8", newline="") as f:
            piece = "".join(f.readlines(_READ_BYTES))
            while piece:
                following = "".join(f.readlines(_READ_BYTES))
                yield item.name, piece, not following
                piece = following
    except UnicodeDecodeError as e:
        raise DataError(f"{item.path}: not UTF-8 text ({e.reason} near byte {e.start}); expected a text file, "
                        "a .jsonl or a .parquet") from None


def _jsonl_documents(item: Input, field: str) -> Iterator[tuple[str, str, bool]]:
    with open(item.path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"{item.path}:{line_no}: not a JSON line ({e})") from None
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{item.path}:{line_no}: no field {field!r} (found: {keys}); "
                                "name the text field with --field")
            text = record[field]
            if not isinstance(text, str):
                raise DataError(f"{item.path}:{line_no}: field {field!r} is {type(text).__name__}, expected a string")
            if text:
                yield f"{item.name}:{line_no}", text, True


def _parquet_documents(item: Input, field: str) -> Iterator[tuple[str, str, bool]]:
    try:
        file = pq.ParquetFile(item.path)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged file vary
        raise DataError(f"{item.path}: not a readable parquet file ({e})") from None
    names = file.schema_arrow.names
    if field not in names:
        raise DataError(f"{item.path}: no column {field!r} (columns: {', '.join(names)}); "
                        "name the text column with --field")
    kind = file.schema_arrow.field(field).type
    if not (str(kind) in ("string", "large_string", "string_view")):
        raise DataError(f"{item.path}: column {field!r} is {kind}, expected strings")
    row = 0
    for batch in file.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text:
                yield f"{item.name}:{row}", text, True
            row += 1


def _hash_unit(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64


def _input_hash(inputs: list[Input], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for item in inputs:
        h.update(f"\n{item.name}\0{item.kind}\0".encode())
        with open(item.path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


class _Split:
    """Which documents are validation: those whose name hashes under `val_fraction`, else (one
    split empty) the document of the smallest (or largest) hash moves across."""

    def __init__(self, inputs: list[Input], field: str, val_fraction: float, bar):
        self.val_fraction, n, n_val = val_fraction, 0, 0
        lowest, highest = (2.0, ""), (-1.0, "")
        for name, _, last in documents(inputs, field, bar.advance):
            if last:
                u = _hash_unit(name)
                n, n_val = n + 1, n_val + (u < val_fraction)
                lowest, highest = min(lowest, (u, name)), max(highest, (u, name))
        if n == 0:
            raise DataError(f"no text in {_where(inputs)}: every document is empty")
        if n < 2:
            raise DataError(f"{_where(inputs)} holds 1 document; expected at least 2, so that train and "
                            "validation are different documents")
        self.forced_val = lowest[1] if n_val == 0 else None
        self.forced_train = highest[1] if n_val == n else None
        self.rule = f"by document: sha256(name) < {val_fraction!r} is val"
        if self.forced_val or self.forced_train:
            self.rule += f" ({'the smallest hash to val' if self.forced_val else 'the largest hash to train'}, " \
                         f"of {n} documents)"
        self.n_documents = n

    def __call__(self, name: str) -> str:
        if name == self.forced_val:
            return "val"
        if name == self.forced_train:
            return "train"
        return "val" if _hash_unit(name) < self.val_fraction else "train"


def _where(inputs: list[Input]) -> str:
    return inputs[0].name if len(inputs) == 1 else f"{inputs[0].name} (and {len(inputs) - 1} more inputs)"


def prepare(inputs: list[str], out: str | Path, *, tokenizer: str = BYTES, vocab_size: int | None = None,
            field: str = "text", val_fraction: float = 0.02, bar=None, log: Callable[[str], None] = print) -> dict:
    """Write the prepared corpus of `inputs` to `out` (or find it there already): its metadata.
    `tokenizer` is ``bytes``, ``bpe`` (with `vocab_size`) or the path of a tokenizer.json."""
    bar = bar or _NoBar()
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1), got {val_fraction!r}")
    if tokenizer == BPE and vocab_size is None:
        raise DataError("--tokenizer bpe needs --vocab-size (e.g. 8192)")
    if tokenizer != BPE and vocab_size is not None:
        raise DataError(f"--vocab-size is for --tokenizer bpe; the {tokenizer} tokenizer has its own vocabulary")
    files = resolve_inputs(list(inputs))
    out = Path(out)
    tokenizer_file = None if tokenizer in (BYTES, BPE) else Path(tokenizer).expanduser()
    settings = {"format_version": corpus.FORMAT_VERSION, "tokenizer": tokenizer if tokenizer_file is None else "file",
                "vocab_size": vocab_size, "field": field, "val_fraction": val_fraction,
                "tokenizer_json": tokenizer_file.read_text(errors="replace") if tokenizer_file
                and tokenizer_file.is_file() else None}
    _check_target(out)
    bar.start("hashing", sum(f.path.stat().st_size for f in files))
    input_hash = _input_hash(files, settings)
    existing = _existing(out)
    if existing is not None and existing.metadata.get("input_hash") == input_hash:
        log(f"{out}: up to date (input hash {input_hash[:16]}): nothing to do")
        return existing.metadata
    tok = BytesTokenizer() if tokenizer == BYTES else load_tokenizer_file(tokenizer_file) if tokenizer_file else None
    bar.start("splitting", sum(f.path.stat().st_size for f in files))
    split = _Split(files, field, val_fraction, bar)
    if tok is None:
        bar.start("training BPE", sum(f.path.stat().st_size for f in files))
        tok = train_bpe((text for name, text, _ in documents(files, field, bar.advance) if split(name) == "train"),
                        vocab_size, progress=False)
    dtype = token_dtype(tok.vocab_size, tokenizer)
    table = tok.token_bytes()
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        bar.start("encoding", sum(f.path.stat().st_size for f in files))
        counts, content_hash = _encode(files, field, split, tok, dtype, table, tmp, bar)
        for name in corpus.SPLITS:
            if counts[name]["tokens"] == 0:
                raise DataError(f"{_where(files)}: the {name} split is empty")
        bytes_exact = all(counts[s]["table_bytes"] == counts[s]["bytes"] for s in corpus.SPLITS)
        np.save(tmp / corpus.TOKEN_BYTES, table)
        tok.save(tmp)
        metadata = {
            "format": corpus.FORMAT, "format_version": corpus.FORMAT_VERSION,
            "tokenizer": {"name": tok.name, **tok.describe()}, "vocab_size": int(tok.vocab_size),
            "eot_id": tok.eot_id, "dtype": dtype, "input_hash": input_hash,
            "content_hash": hashlib.sha256(f"{split.rule}|{content_hash}".encode()).hexdigest()[:16],
            "inputs": [f.name for f in files], "field": field, "val_fraction": val_fraction,
            "split_rule": split.rule, "bytes_exact": bytes_exact,
            "splits": {s: {k: int(v) for k, v in counts[s].items() if k != "table_bytes"} for s in corpus.SPLITS},
        }
        (tmp / corpus.METADATA).write_text(json.dumps(metadata, indent=1))
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not bytes_exact:
        log(f"{out}: warning: the tokenizer's per-token byte table does not reproduce the text's UTF-8 bytes "
            f"(val: {counts['val']['table_bytes']:,} against {counts['val']['bytes']:,}); val_bits_per_byte "
            "counts the table's bytes")
    return metadata


def _encode(files, field, split, tok, dtype, table, tmp: Path, bar) -> tuple[dict, str]:
    counts = {s: {"documents": 0, "tokens": 0, "bytes": 0, "table_bytes": 0} for s in corpus.SPLITS}
    hashers = {s: hashlib.sha256() for s in corpus.SPLITS}
    eot = None if tok.eot_id is None else np.asarray([tok.eot_id], dtype=dtype)
    with open(tmp / "train.bin", "wb") as f_train, open(tmp / "val.bin", "wb") as f_val:
        sinks = {"train": f_train, "val": f_val}

        def write(s: str, ids: np.ndarray) -> None:
            data = np.asarray(ids, dtype=dtype).tobytes()
            sinks[s].write(data)
            hashers[s].update(data)
            counts[s]["tokens"] += len(ids)
            counts[s]["table_bytes"] += int(table[ids].sum()) if len(ids) else 0

        def flush(batch: list) -> None:
            for (name, text, last), ids in zip(batch, tok.encode_batch([t for _, t, _ in batch])):
                s = split(name)
                write(s, ids)
                counts[s]["bytes"] += len(text.encode("utf-8"))
                if last:
                    counts[s]["documents"] += 1
                    if eot is not None:
                        write(s, eot)
            batch.clear()

        batch, chars = [], 0
        for piece in documents(files, field, bar.advance):
            batch.append(piece)
            chars += len(piece[1])
            if chars >= _ENCODE_BATCH_CHARS:
                flush(batch)
                chars = 0
        flush(batch)
    return counts, "|".join(hashers[s].hexdigest() for s in corpus.SPLITS)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; expected a folder to write the prepared corpus to")
    if out.is_dir() and any(out.iterdir()) and not (out / corpus.METADATA).is_file():
        raise DataError(f"--out {out} holds files but no {corpus.METADATA}: not a prepared corpus; "
                        "give an empty or new folder")


def _existing(out: Path) -> corpus.Prepared | None:
    try:
        return corpus.read(out) if (out / corpus.METADATA).is_file() else None
    except DataError:
        return None  # damaged: prepared again


def _move_into_place(tmp: Path, out: Path) -> None:
    """`tmp` becomes `out`; an older `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _NoBar:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


class _Bar:
    """One rich progress bar per pass, over the inputs' bytes, on stderr."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description:>13}"), BarColumn(), DownloadColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.task = None

    def start(self, description: str, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()


def prepare_command(args) -> int:
    """`scaling prepare`'s work, from its parsed arguments: the corpus, then one line per split."""
    bar = _Bar() if not args.quiet and sys.stderr.isatty() else None
    with bar or contextlib.nullcontext():
        meta = prepare(args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       field=args.field, val_fraction=args.val_fraction, bar=bar)
    tok = meta["tokenizer"]["name"]
    print(f"{args.out}: {tok} tokenizer, vocab_size {meta['vocab_size']:,}, {meta['dtype']}, "
          f"content hash {meta['content_hash']}")
    for name in corpus.SPLITS:
        s = meta["splits"][name]
        print(f"  {name:5} {s['documents']:>10,} documents {s['tokens']:>14,} tokens {s['bytes']:>15,} bytes "
              f"({s['bytes'] / max(1, s['tokens']):.2f} bytes/token)")
    print(f'use it with [data] source = "tokens", paths = ["{args.out}"]')
    return 0
