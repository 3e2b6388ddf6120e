"""The extra evaluation sets of a run (`[eval.sets.<name>]`, scaling/config_evals.py): their windows,
opened once per shape, and their record columns at every evaluation.

Each set is scored by the same compiled evaluation as the run's own split (`step.evaluate`), in
blocks of the same number of windows, so a set adds no compile: its window count is a multiple of
the evaluation chunk wherever its split holds that many (`step.n_eval_windows`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling import data as data_mod
from scaling.config import RunSpec
from scaling.config_evals import METRICS
from scaling.training import step as tr


@dataclass(frozen=True, eq=False)
class OpenSet:
    name: str
    windows: np.ndarray  # int32 [n, seq_len + 1], spread evenly over the set's validation split
    token_bytes: np.ndarray | None  # the bytes of each token id (None: unknown, bits per byte NaN)
    content_hash: str
    split_rule: str


class EvalSets:
    """The sets of one spec (none when it has no `[eval]`)."""

    def __init__(self, spec: RunSpec, n_devices: int):
        self.sets: list[OpenSet] = []
        if spec.eval is None:
            return
        m = spec.model
        for s in spec.eval.sets:
            source = data_mod.open_source(s.source, paths=s.paths, dtype=s.dtype, vocab_size=m.vocab_size,
                                          val_fraction=s.val_fraction, base_dir=spec.data.base_dir,
                                          synthetic=s.synthetic, facts=s.facts)
            n = tr.n_eval_windows(spec, n_devices, len(source.val) // m.seq_len, sequences=s.sequences)
            windows = data_mod.validation_windows(source.val, m.seq_len, max(n, 1))
            self.sets.append(OpenSet(s.name, windows, source.token_bytes, source.content_hash, source.split_rule))

    def blank(self) -> dict:
        """Every set's columns as NaN: a row without an evaluation (a diverged step) still has them."""
        return {f"val/{s.name}/{metric}": math.nan for s in self.sets for metric in METRICS}

    def evaluate(self, program, params, chunk: int) -> dict:
        """`val/<set>/<metric>` for every set, as the run's own split records val_loss and the like."""
        out = {}
        for s in self.sets:
            ev = tr.evaluate(program, params, s.windows, chunk)
            bpb = (data_mod.bits_per_byte(ev["val_loss"], s.windows, s.token_bytes) if s.token_bytes is not None
                   else math.nan)
            out.update({f"val/{s.name}/loss": ev["val_loss"], f"val/{s.name}/bits_per_byte": bpb,
                        f"val/{s.name}/entropy": ev["val_entropy"], f"val/{s.name}/ece": ev["val_ece"]})
        return out

    def describe(self) -> dict:
        """What config.json records of each set: its data's identity and the windows scored."""
        return {s.name: {"content_hash": s.content_hash, "split_rule": s.split_rule, "sequences": len(s.windows)}
                for s in self.sets}
