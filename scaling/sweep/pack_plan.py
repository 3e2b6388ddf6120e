"""Which runs may train together in one packed program (`scaling/training/pack.py`): runs of one
shape that differ only in seed or scalar hyper-parameters."""
from __future__ import annotations

import dataclasses
import json

from scaling import records
from scaling.config import RunSpec


HYPER = ("lr", "weight_decay", "label_smoothing", "entropy_coef")
PACK_PRESET = "dp"  # the mesh preset a pack may split its batch over (parameters replicated)
DONE = records.DONE


def hyper_values(spec: RunSpec) -> dict[str, float]:
    return {"lr": spec.optim.lr, "weight_decay": spec.optim.weight_decay,
            "label_smoothing": spec.train.label_smoothing, "entropy_coef": spec.train.entropy_coef}


def pack_key(spec: RunSpec) -> str:
    """Equal for runs that may share a pack: the spec with what members may differ in blanked."""
    same = dataclasses.replace(spec, seed=0, optim=dataclasses.replace(spec.optim, lr=1.0, weight_decay=0.0),
                               train=dataclasses.replace(spec.train, label_smoothing=0.0, entropy_coef=0.0))
    return json.dumps(same.to_dict(), sort_keys=True, default=str)


def plan_packs(runs, pack_size: int) -> list[list[RunSpec]]:
    """Runs grouped into packs of at most `pack_size` runs that may train together (in the order
    given); a group larger than `pack_size` is split into near-equal packs."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in runs:
        groups.setdefault(pack_key(spec), []).append(spec)
    out = []
    for members in groups.values():
        n_packs = -(-len(members) // pack_size)
        size, extra = divmod(len(members), n_packs)
        start = 0
        for k in range(n_packs):
            end = start + size + (k < extra)
            out.append(members[start:end])
            start = end
    return out


