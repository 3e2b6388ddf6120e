"""One cached train/validation split on disk: `<stem>.train.bin`, `<stem>.val.bin`, `<stem>.json`.

Each file is written to a unique temporary name and `os.replace`d, the manifest last, so a reader
that finds the manifest finds complete token files, and two processes building the same split at
once cannot corrupt it (they write identical bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def staged(stem: Path):
    """Unique temporary paths for a split's `train`, `val` and `json` files. When the block ends
    without an error they replace the cached files, the manifest last; temporaries never outlive it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex  # unique per writer, threads included
    tmp = {s: Path(f"{stem}.{s}.tmp-{tag}") for s in ("train", "val", "json")}
    try:
        yield tmp
        os.replace(tmp["train"], f"{stem}.train.bin")
        os.replace(tmp["val"], f"{stem}.val.bin")
        os.replace(tmp["json"], f"{stem}.json")  # last: its presence marks a complete build
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)


def write_split(stem: Path, train: np.ndarray, val: np.ndarray, manifest: dict) -> None:
    with staged(stem) as tmp:
        tmp["train"].write_bytes(train.tobytes())
        tmp["val"].write_bytes(val.tobytes())
        tmp["json"].write_text(json.dumps(manifest, indent=1))


def open_generated(stem: Path, config: dict, version: int, split_rule: str, generate) -> tuple:
    """(train, val, content_hash, split_rule) of a generated source (synthetic, facts), as uint8
    memmaps built at `stem` on first use. `generate()` returns the (train, val) token arrays; the
    content hash is of the split rule and both arrays. A manifest whose sizes disagree with its files
    is rebuilt."""
    try:
        manifest = json.loads(Path(f"{stem}.json").read_text())
        sizes = (os.path.getsize(f"{stem}.train.bin"), os.path.getsize(f"{stem}.val.bin"))
        if sizes != (manifest["n_train"], manifest["n_val"]):
            manifest = None
    except (OSError, ValueError, KeyError):
        manifest = None
    if manifest is None:
        train, val = generate()
        digest = hashlib.sha256(f"{split_rule}|".encode() + train.tobytes() + b"|" + val.tobytes()).hexdigest()[:16]
        manifest = {"format_version": version, "config": config, "content_hash": digest, "split_rule": split_rule,
                    "n_train": int(train.size), "n_val": int(val.size)}
        write_split(stem, train, val, manifest)
    train = np.memmap(f"{stem}.train.bin", dtype=np.uint8, mode="r")
    val = np.memmap(f"{stem}.val.bin", dtype=np.uint8, mode="r")
    return train, val, manifest["content_hash"], manifest["split_rule"]
