"""A prepared corpus: the folder that `scaling prepare` writes (scaling/data/prepare.py) and that
source ``tokens`` reads.

    <folder>/train.bin          token ids, flat, uint16 where the vocabulary fits, else uint32
    <folder>/val.bin            the same for the validation documents (no document is in both)
    <folder>/token_bytes.npy    int64 [vocab_size]: the UTF-8 bytes that each token id decodes to
                                (0 for the end-of-document token)
    <folder>/tokenizer.json     the tokenizer (absent for the bytes tokenizer)
    <folder>/metadata.json      tokenizer, vocab_size, dtype, per split documents / tokens / bytes,
                                the input hash (a rerun with the same inputs is a no-op), content_hash

`read` checks what a reader relies on, cheaply (no token is read): the metadata parses and has its
keys, both `.bin` files hold exactly the tokens it counts, and the byte table covers the vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.data.errors import DataError

FORMAT = "scaling-prepared-corpus"
FORMAT_VERSION = 1
METADATA = "metadata.json"
TOKEN_BYTES = "token_bytes.npy"
SPLITS = ("train", "val")
_KEYS = ("format", "format_version", "tokenizer", "vocab_size", "dtype", "content_hash", "split_rule", "splits")


@dataclass(frozen=True)
class Prepared:
    folder: Path
    metadata: dict

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])

    @property
    def dtype(self) -> str:
        return self.metadata["dtype"]

    def split(self, name: str) -> dict:
        return self.metadata["splits"][name]

    def tokens(self, name: str) -> np.ndarray:
        return np.memmap(self.folder / f"{name}.bin", dtype=np.dtype(self.dtype), mode="r")

    def token_bytes(self) -> np.ndarray:
        return np.load(self.folder / TOKEN_BYTES)


def is_prepared(path: Path) -> bool:
    """Whether `path` is meant as a prepared folder (a folder, or one holding a metadata file)."""
    return path.is_dir()


def read(folder: Path) -> Prepared:
    """The prepared corpus at `folder`, or DataError naming the file at fault and what was expected."""
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: expected a folder written by `scaling prepare` "
                        f"(train.bin, val.bin, {METADATA})")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path} is not readable JSON ({e})") from None
    missing = [k for k in _KEYS if not isinstance(metadata, dict) or k not in metadata]
    if missing:
        raise DataError(f"{meta_path} lacks {', '.join(missing)}: expected the metadata `scaling prepare` writes")
    if metadata["format"] != FORMAT or metadata["format_version"] != FORMAT_VERSION:
        raise DataError(f"{meta_path} is format {metadata['format']!r} version {metadata['format_version']!r}, "
                        f"expected {FORMAT!r} version {FORMAT_VERSION}: prepare the corpus again")
    prepared = Prepared(folder, metadata)
    itemsize = np.dtype(prepared.dtype).itemsize
    for name in SPLITS:
        path = folder / f"{name}.bin"
        expected = int(prepared.split(name)["tokens"]) * itemsize
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            found = "is missing" if size is None else f"holds {size:,} bytes"
            raise DataError(f"{path} {found}; {meta_path} expects {prepared.split(name)['tokens']:,} "
                            f"{prepared.dtype} tokens ({expected:,} bytes): prepare the corpus again")
    table_path = folder / TOKEN_BYTES
    try:
        table = np.load(table_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{table_path} is not readable ({e}): prepare the corpus again") from None
    if table.shape != (prepared.vocab_size,):
        raise DataError(f"{table_path} holds {table.shape} entries, expected ({prepared.vocab_size},) "
                        f"(vocab_size in {meta_path}): prepare the corpus again")
    return prepared
