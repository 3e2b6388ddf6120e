"""Data recipes (`[recipes.<name>]`, scaling/config_recipe.py): byte sources mixed by weight, their
training documents filtered, built once into the cache like every byte corpus.

A document is a file. Each component's documents are split as its source alone would split them
(validation iff sha256 of the document's name falls under `val_fraction`, scaling/data/sources.py).

- Validation is the `val_from` component's validation documents (default: the first component's),
  unfiltered: recipes that share that component are scored on the same text, so their losses, and
  the compute multiplier of one over another (`scaling compare`), have one yardstick; and a filter
  can never make its own recipe's validation set easier. Where a component's hash leaves it no
  validation document, that of the smallest hash is validation (at least 2 documents are needed).
- Training: each component's training documents, filtered (RecipeFilters: minimum length, exact
  deduplication, which also drops training copies of a validation document, a character set).
  With weights normalised to shares p_i and T_i training bytes left after filtering, the stream
  holds about p_i * min_j(T_j / p_j) bytes of component i: all of the scarcest component, no
  document twice. Documents are interleaved, each time from the component furthest below its
  share, so every prefix of the stream has the recipe's shares too (within one document); within
  a component the order is by sha256(seed, name). Shares count a document's bytes and its
  end-of-document byte.

The cache name hashes the recipe (components, weights, filters, val_from, seed), the split and
every input file's name, size and mtime, so all runs of a recipe share one build and a changed
recipe or input gets a fresh one. The manifest records what each filter dropped and the shares built.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from scaling.config_recipe import RecipeConfig, RecipeFilters
from scaling.data import splitcache
from scaling.data.errors import DataError

# Bumped when the build changes, so an old cache is never reused for a new layout.
FORMAT_VERSION = 1
_PRINTABLE_WHITESPACE = str.maketrans("", "", "\t\n\r")

Documents = list[tuple[str, Path]]  # (document name, file), as the component's source lists them


def cache_stem(recipe: RecipeConfig, components: list[tuple[str, Documents]], val_fraction: float,
               cache: Path) -> Path:
    """Where the recipe's build lives. `components`: (salt, documents) per component, the salt naming
    what else the documents depend on (the Python version for stdlib)."""
    key = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, "recipe": dataclasses.asdict(recipe),
                                     "val_fraction": val_fraction}, sort_keys=True).encode())
    for salt, docs in components:
        key.update(f"\n{salt}\n".encode())
        for name, path in docs:
            st = path.stat()
            key.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return cache / f"recipe-{recipe.name}-{key.hexdigest()[:16]}"


def build(stem: Path, recipe: RecipeConfig, components: list[Documents], in_val: Callable[[str], bool],
          separator: bytes) -> dict:
    """Write `stem.train.bin` / `stem.val.bin` and the manifest (module docstring); return the manifest."""
    val_docs = _val_documents(recipe, components[recipe.val_from], in_val)
    val_names = {name for name, _ in val_docs}
    seen = {_digest(path.read_bytes()) for _, path in val_docs} if recipe.filters.dedup else set()
    kept, stats = [], []
    for i, docs in enumerate(components):
        # By name, so a file that two components list is never in one's training and the other's validation.
        train_docs = [(name, path) for name, path in docs if name not in val_names
                      and (i == recipe.val_from or not in_val(name))]
        chosen, counts = _filtered(train_docs, recipe.filters, seen, len(separator))
        if not chosen:
            raise DataError(f"recipe {recipe.name!r}: components[{i}] ({_describe(recipe, i)}) has no training "
                            f"document left after its filters ({_dropped(counts)} of {len(train_docs)}); "
                            "expected at least one: loosen [recipes." + recipe.name + "].filters")
        order = sorted(chosen, key=lambda doc: hashlib.sha256(f"{recipe.seed}|{doc[0]}".encode()).digest())
        kept.append(order)
        stats.append(counts)
    weights = np.array([c.weight for c in recipe.components], dtype=np.float64)
    shares = weights / weights.sum()
    available = np.array([sum(size for _, _, size in docs) for docs in kept], dtype=np.float64)
    quota = shares * float(np.min(available / shares))
    stream = _interleave(kept, shares, quota)

    hashers = {"train": hashlib.sha256(), "val": hashlib.sha256()}
    counts = {"train": 0, "val": 0}
    used = np.zeros(len(kept))
    with splitcache.staged(stem) as tmp:
        for split, paths in (("train", [(i, path) for i, path in stream]),
                             ("val", [(recipe.val_from, path) for _, path in val_docs])):
            with open(tmp[split], "wb") as out:
                for i, path in paths:
                    data = path.read_bytes() + separator
                    out.write(data)
                    hashers[split].update(data)
                    counts[split] += len(data)
                    if split == "train":
                        used[i] += len(data)
        split_rule = f"recipe {recipe.name}; bytes; val: the documents of components[{recipe.val_from}] split by " \
                     f"sha256(path), unfiltered; train: the others', filtered and mixed by weight"
        content = hashlib.sha256(f"{split_rule}|{hashers['train'].hexdigest()}|{hashers['val'].hexdigest()}".encode())
        manifest = {
            "format_version": FORMAT_VERSION, "content_hash": content.hexdigest()[:16], "split_rule": split_rule,
            "separator": separator.hex(), "n_train": counts["train"], "n_val": counts["val"],
            "recipe": dataclasses.asdict(recipe), "val_documents": [name for name, _ in val_docs],
            "components": [{**stat, "share_asked": float(share), "train_bytes_used": int(u),
                            "share_built": float(u / used.sum())}
                           for stat, share, u in zip(stats, shares, used)],
        }
        tmp["json"].write_text(json.dumps(manifest, indent=1))
    return manifest


def _val_documents(recipe: RecipeConfig, docs: Documents, in_val) -> Documents:
    """The val_from component's validation documents, by name hash; where the hash gives none (or
    all), the document of the smallest hash is validation (the others train)."""
    if len(docs) < 2:
        raise DataError(f"recipe {recipe.name!r}: components[{recipe.val_from}] ({_describe(recipe, recipe.val_from)}) "
                        f"holds {len(docs)} document(s); its validation set needs at least 2, so that train and "
                        "validation are different documents")
    val = [doc for doc in docs if in_val(doc[0])]
    if 0 < len(val) < len(docs):
        return val
    return [min(docs, key=lambda doc: hashlib.sha256(doc[0].encode()).digest())]


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _filtered(docs: Documents, filters: RecipeFilters, seen: set, separator_bytes: int):
    """(kept documents as (name, path, bytes with the separator), counts of what each filter dropped).
    `seen`: the digests of documents kept so far (and of the validation documents), for dedup."""
    counts = {"documents": len(docs), "kept": 0, "dropped_min_chars": 0, "dropped_charset": 0,
              "dropped_dedup": 0, "train_bytes_available": 0}
    kept = []
    for name, path in docs:
        data = path.read_bytes()
        text = data.decode("utf-8", errors="surrogateescape")  # an undecodable byte: one character
        if len(text) < filters.min_chars:
            counts["dropped_min_chars"] += 1
            continue
        if filters.charset is not None and _charset_fraction(data, text, filters.charset) < filters.charset_fraction:
            counts["dropped_charset"] += 1
            continue
        if filters.dedup:
            digest = _digest(data)
            if digest in seen:
                counts["dropped_dedup"] += 1
                continue
            seen.add(digest)
        kept.append((name, path, len(data) + separator_bytes))
        counts["kept"] += 1
        counts["train_bytes_available"] += len(data) + separator_bytes
    return kept, counts


def _charset_fraction(data: bytes, text: str, charset: str) -> float:
    if not text:
        return 1.0
    if charset == "ascii":  # every byte below 128 is one ASCII character, and no other byte is
        return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) < 128)) / len(text)
    if text.translate(_PRINTABLE_WHITESPACE).isprintable():  # the common case, in C
        return 1.0
    return sum(1 for c in text if c.isprintable() or c in "\t\n\r") / len(text)


def _interleave(kept: list[list], shares: np.ndarray, quota: np.ndarray) -> list[tuple[int, Path]]:
    """(component, file) in stream order: each next document from the component furthest below its
    share that has documents and quota left."""
    position = [0] * len(kept)
    written = np.zeros(len(kept))
    stream = []
    while True:
        open_ = [i for i in range(len(kept)) if position[i] < len(kept[i]) and written[i] < quota[i]]
        if not open_:
            return stream
        i = min(open_, key=lambda j: (written[j] / shares[j], j))
        _, path, size = kept[i][position[i]]
        stream.append((i, path))
        written[i] += size
        position[i] += 1


def _describe(recipe: RecipeConfig, i: int) -> str:
    component = recipe.components[i]
    return component.source + (f" {', '.join(component.paths)}" if component.paths else "")


def _dropped(counts: dict) -> str:
    parts = [f"{counts[k]} by {k.removeprefix('dropped_')}" for k in ("dropped_min_chars", "dropped_charset",
                                                                      "dropped_dedup") if counts[k]]
    return "dropped " + (", ".join(parts) if parts else "none")
