"""One cached train/validation split on disk: `<stem>.train.bin`, `<stem>.val.bin`, `<stem>.json`.

Each file is written to a unique temporary name and `os.replace`d, the manifest last, so a reader
that finds the manifest finds complete token files, and two processes building the same split at
once cannot corrupt it (they write identical bytes).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np


def write_split(stem: Path, train: np.ndarray, val: np.ndarray, manifest: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    tmp = {s: Path(f"{stem}.{s}.tmp-{tag}") for s in ("train", "val", "json")}
    try:
        tmp["train"].write_bytes(train.tobytes())
        tmp["val"].write_bytes(val.tobytes())
        tmp["json"].write_text(json.dumps(manifest, indent=1))
        os.replace(tmp["train"], f"{stem}.train.bin")
        os.replace(tmp["val"], f"{stem}.val.bin")
        os.replace(tmp["json"], f"{stem}.json")  # last: its presence marks a complete build
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
