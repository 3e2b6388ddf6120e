"""`[eval.sets.<name>]` tables (sweeps/README.md "Evaluation sets") -> `EvalConfig`.

Each set checks its own values (scaling/config_evals.py). Checked here, because they need the file
system or the run's data: the set's files exist and can be opened as its source (the same checks as
`[data]`), its vocabulary fits the model's, and its tokens are in the model's tokenizer (bytes for a
byte-level model; a prepared folder of the same tokenizer for a model trained on one), so that its
loss means something.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from scaling.config import DataConfig, FactsConfig, SyntheticConfig
from scaling.config_evals import EvalConfig, EvalSet
from scaling.sweep.table import Table

BYTES = "bytes"


def read_eval(root: Table, data: DataConfig, vocab_size: int) -> EvalConfig | None:
    root.used.add("eval")
    if "eval" not in root.data:
        return None
    table = root.sub("eval")
    sets_table = table.sub("sets")
    table.finish()
    sets = []
    for name, value in sets_table.data.items():
        if not isinstance(value, dict):
            raise sets_table.error(name, f"expected a table [eval.sets.{name}], got {value!r}")
        sets.append(_read_set(sets_table, name, data, vocab_size))
    if not sets:
        raise table.error("sets", 'no sets: add a table per set, e.g. [eval.sets.shakespeare] with source = "text"')
    return EvalConfig(sets=tuple(sets))


def _read_set(sets_table: Table, name: str, data: DataConfig, vocab_size: int) -> EvalSet:
    table = sets_table.sub(name)
    settings = table.values(EvalSet, ("source", "paths", "dtype", "val_fraction", "sequences"))
    if "source" not in table.data:
        raise table.error("source", "is required (one of stdlib, text, tokens, synthetic, facts)")
    source = settings.values["source"]
    sub = {}
    for key, cls in (("synthetic", SyntheticConfig), ("facts", FactsConfig)):
        table.used.add(key)
        if key in table.data:
            sub[key] = table.sub(key).config(cls)
        elif source == key:
            sub[key] = cls()  # the source's default, as [data] has it
    table.finish()
    spec = settings.build(EvalSet, name=name, **sub)
    _check_opens(table, spec, data, vocab_size)
    return spec


def _check_opens(table: Table, spec: EvalSet, data: DataConfig, vocab_size: int) -> None:
    from scaling.data.sources import DataError, check_source
    try:
        check_source(spec.source, paths=spec.paths, dtype=spec.dtype, vocab_size=vocab_size, base_dir=data.base_dir,
                     val_fraction=spec.val_fraction)
        model_tokenizer = tokenizer_of(data.source, data.paths, data.base_dir)
        set_tokenizer = tokenizer_of(spec.source, spec.paths, data.base_dir)
    except DataError as e:
        raise table.error("paths" if spec.paths else "source", str(e)) from None
    if model_tokenizer and set_tokenizer and model_tokenizer != set_tokenizer:
        raise table.error("paths" if spec.paths else "source",
                          f"its tokens are {_describe(set_tokenizer)}, the model's are {_describe(model_tokenizer)}: "
                          "expected a set in the model's tokenizer (prepare it with the same one)")


def tokenizer_of(source: str, paths, base_dir) -> str | None:
    """What a source's token ids mean: "bytes", a prepared folder's tokenizer (its kind and the hash of
    its tokenizer.json), or None for a bare .bin (unknown: only its ids are checked against the model)."""
    if source != "tokens":
        return BYTES
    from scaling.data import corpus
    folder = Path(os.path.expanduser(paths[0]))
    folder = folder if folder.is_absolute() else Path(base_dir).expanduser().resolve() / folder
    if not corpus.is_prepared(folder):
        return None
    kind = corpus.read(folder).metadata["tokenizer"].get("kind", BYTES)
    if kind == BYTES:
        return BYTES
    file = folder / "tokenizer.json"
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:12] if file.is_file() else "?"
    return f"{kind} tokenizer {digest}"


def _describe(tokenizer: str) -> str:
    return "bytes" if tokenizer == BYTES else f"ids of the {tokenizer}"
