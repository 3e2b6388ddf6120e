"""`EvalConfig`: the extra evaluation sets of a run (`[eval.sets.<name>]`, sweeps/README.md "Evaluation
sets"). Beside its own validation split, a run scores the validation split of each set at every
evaluation and records `val/<name>/loss`, `val/<name>/bits_per_byte`, `val/<name>/entropy` and
`val/<name>/ece` (scaling/training/evalsets.py), so calibration away from the training distribution is
measured rather than assumed.

A set is opened as a run's own data is (scaling/data/sources.py), and its validation split is what is
scored: for a prepared folder its val.bin, for a text folder the files its split puts in validation.
Kept beside scaling/config.py, which imports it; it needs nothing from there."""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config_checks import (
    ConfigValueError, check, choice, entries, instance, integer, number, strings, task_name_problem,
)
from scaling.config_facts import FactsConfig
from scaling.config_synthetic import SyntheticConfig

# The sources a set can be (scaling/data/sources.py SOURCES; tests check they agree).
EVAL_SOURCES = ("stdlib", "text", "tokens", "synthetic", "facts")
EVAL_DTYPES = ("uint16", "uint32")
MAX_SET_SEQUENCES = 1 << 20  # as [train] eval_sequences: a typo must not exhaust memory


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: a source and its settings, as `[data]` gives them, and how many validation
    windows to score (None: the run's `[train] eval_sequences`)."""

    name: str
    source: str
    paths: tuple[str, ...] = ()
    dtype: str = "uint16"
    val_fraction: float = 0.02
    synthetic: SyntheticConfig | None = None  # source "synthetic" only (None: its default process)
    facts: FactsConfig | None = None  # source "facts" only (None: its default facts)
    sequences: int | None = None

    def __post_init__(self):
        problem = task_name_problem(self.name)
        if problem:  # the name is part of record columns, as a task's is
            raise ConfigValueError("name", problem.replace("a task name", "a set name"))
        check(self, source=choice(EVAL_SOURCES), paths=strings("expected a list of strings (files, globs or a "
                                                               "prepared folder)"))
        if self.source in ("text", "tokens") and not self.paths:
            raise ConfigValueError("paths", f"expected at least one path for source = {self.source!r}")
        if self.source not in ("text", "tokens") and self.paths:
            raise ConfigValueError("paths", f"source = {self.source!r} takes no paths")
        check(self, dtype=choice(EVAL_DTYPES), val_fraction=number(gt=0, le=0.5),
              synthetic=instance(SyntheticConfig, optional=True), facts=instance(FactsConfig, optional=True),
              sequences=integer(ge=1, le=MAX_SET_SEQUENCES, optional=True))
        for name in ("synthetic", "facts"):
            if getattr(self, name) is not None and self.source != name:
                raise ConfigValueError(name, f'settings for source = "{name}", but source = {self.source!r}')

    def columns(self) -> tuple[str, ...]:
        """The record columns of this set, in the order they are written."""
        return tuple(f"val/{self.name}/{metric}" for metric in METRICS)


# A set's metrics, as the run's own split records them: val_loss, val_bits_per_byte, val_entropy, val_ece.
METRICS = ("loss", "bits_per_byte", "entropy", "ece")


@dataclass(frozen=True)
class EvalConfig:
    """`[eval]`: the sets, in the order the file gives them."""

    sets: tuple[EvalSet, ...] = ()

    def __post_init__(self):
        check(self, sets=entries(instance(EvalSet)))
        if not self.sets:
            raise ConfigValueError("sets", "no sets: add a table per set, e.g. [eval.sets.shakespeare]")
        names = [s.name for s in self.sets]
        if len(set(names)) < len(names):
            raise ConfigValueError("sets", f"expected distinct set names, got {names}")
