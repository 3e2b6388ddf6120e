"""`[data] unique_tokens` (repeated data, scaling/data/batches.py) resolved against the runs and the
source: at least one batch of distinct tokens, no more than the train split holds, and a limit that a
run never reaches is no limit.

A run whose trained tokens fit in its unique tokens reads epoch 0's first windows once, exactly the
batches of the same run without the key (a repeated run's windows are the first of epoch 0's order),
so its `unique_tokens` is dropped: it is that run, with its run_id and records, and a grid of tokens
crossed with `[axes] "data.unique_tokens"` trains each such point once.

The split's size is known only once the source is open, so a sweep that sets `unique_tokens` opens
its source while it is read (byte sources are built once into the cache; token files are memory
mapped); a sweep that does not set it opens nothing here.
"""
from __future__ import annotations

import dataclasses

from scaling.config import ConfigError, RunSpec

KEY = "data.unique_tokens"


def resolve_unique_tokens(file: str, runs: tuple[RunSpec, ...]) -> tuple[RunSpec, ...]:
    """The runs, each limit it never reaches dropped (two runs that then agree are one). Raises
    ConfigError (naming data.unique_tokens) for a run whose unique tokens are below one batch or above
    the train split."""
    _check(file, runs)
    out: dict[str, RunSpec] = {}
    for spec in runs:
        unique = spec.data.unique_tokens
        if unique is not None and unique // spec.model.seq_len >= spec.steps * spec.batch_size:
            spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, unique_tokens=None))
        out.setdefault(spec.run_id, spec)
    return tuple(out.values())


def _check(file: str, runs: tuple[RunSpec, ...]) -> None:
    repeated = [spec for spec in runs if spec.data.unique_tokens is not None]
    for spec in repeated:
        unique, batch = spec.data.unique_tokens, spec.batch_size * spec.model.seq_len
        if unique // spec.model.seq_len < spec.batch_size:
            raise ConfigError(file, KEY, f"{unique:,} tokens is below one batch of {batch:,} tokens (run "
                              f"{spec.run_id}): expected at least train.batch_tokens")
    split_tokens: dict[tuple, int] = {}
    for spec in repeated:
        key = (spec.data.source, spec.data.paths, spec.data.dtype, spec.data.val_fraction, spec.data.base_dir,
               repr(spec.data.synthetic), repr(spec.data.facts), repr(spec.data.tasks), repr(spec.data.recipe),
               spec.model.vocab_size,
               spec.model.seq_len)
        if key not in split_tokens:
            split_tokens[key] = _train_windows(file, spec) * spec.model.seq_len
        if spec.data.unique_tokens > split_tokens[key]:
            raise ConfigError(file, KEY, f"{spec.data.unique_tokens:,} exceeds the {split_tokens[key]:,} tokens of "
                              f"the train split of source {spec.data.source!r} (in windows of seq_len "
                              f"{spec.model.seq_len}): expected at most that")


def _train_windows(file: str, spec: RunSpec) -> int:
    from scaling.data import DataError, open_source
    d = spec.data
    try:
        source = open_source(d.source, paths=d.paths, dtype=d.dtype, vocab_size=spec.model.vocab_size,
                             val_fraction=d.val_fraction, base_dir=d.base_dir, synthetic=d.synthetic,
                             tasks=d.tasks, facts=d.facts, recipe=d.recipe)
    except DataError as e:
        raise ConfigError(file, "data", str(e)) from None
    return (len(source.train) - 1) // spec.model.seq_len
