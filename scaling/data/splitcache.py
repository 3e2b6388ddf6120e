"""One cached train/validation split on disk: `<stem>.train.bin`, `<stem>.val.bin`, `<stem>.json`.

Each file is written to a unique temporary name and `os.replace`d, the manifest last, so a reader
that finds the manifest finds complete token files, and two processes building the same split at
once cannot corrupt it (they write identical bytes).
"""

from __future__ import annotations

import contextlib
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
