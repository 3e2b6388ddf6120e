"""`RecipeConfig`: a data recipe, sources mixed by weight and filtered by document (scaling/data/recipe.py
builds it; sweeps/README.md `[recipes.<name>]`). Kept beside scaling/config.py, which imports it, so that
the data package's builder and the run specs share one frozen, self-checking dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from scaling.config_checks import (
    ConfigValueError, check, choice, entries, flag, instance, integer, number, strings, text,
)

RECIPE_SOURCES = ("stdlib", "text")  # byte sources whose documents are files: what the filters read
CHARSETS = ("ascii", "printable")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a record value and part of a cache file's name


@dataclass(frozen=True)
class RecipeComponent:
    """One source of a recipe and its share of the training bytes (weights are normalised)."""

    source: str
    paths: tuple[str, ...] = ()
    weight: float = 1.0

    def __post_init__(self):
        check(self, source=choice(RECIPE_SOURCES), paths=strings("expected a list of strings (files or globs)"),
              weight=number(gt=0))
        if self.source == "text" and not self.paths:
            raise ConfigValueError("paths", 'expected at least one file or glob for source = "text"')
        if self.source == "stdlib" and self.paths:
            raise ConfigValueError("paths", 'source = "stdlib" takes no paths (use source = "text" for your files)')


@dataclass(frozen=True)
class RecipeFilters:
    """Document filters, applied to the training documents of every component before packing.

    min_chars: a document of fewer characters (UTF-8, undecodable bytes counted as one each) is dropped.
    dedup: exact deduplication: a document whose bytes (sha256) were already kept, or that equal a
        validation document, is dropped (the first copy in the component order is kept).
    charset: a document is kept only if at least `charset_fraction` of its characters are in the set:
        "ascii" (code points below 128) or "printable" (`str.isprintable`, plus tab, newline, return).
    """

    min_chars: int = 0
    dedup: bool = False
    charset: str | None = None
    charset_fraction: float = 1.0

    def __post_init__(self):
        check(self, min_chars=integer(ge=0), dedup=flag,
              charset=lambda value: None if value is None else choice(CHARSETS)(value),
              charset_fraction=number(gt=0, le=1))


@dataclass(frozen=True)
class RecipeConfig:
    """A named recipe: its components, their filters, and the validation yardstick.

    val_from: the index of the component whose own validation documents, unfiltered, are the
        recipe's validation set, so recipes that share that component are measured on the same text.
    seed: the order in which each component's documents are packed."""

    name: str
    components: tuple[RecipeComponent, ...]
    filters: RecipeFilters = field(default_factory=RecipeFilters)
    val_from: int = 0
    seed: int = 0

    def __post_init__(self):
        check(self, name=text("expected a recipe name"))
        if not _NAME.fullmatch(self.name):
            raise ConfigValueError("name", f"expected letters, digits, '_', '-' or '.' (not first), got {self.name!r}")
        check(self, components=entries(instance(RecipeComponent)), filters=instance(RecipeFilters),
              val_from=integer(ge=0), seed=integer(ge=0))
        if not self.components:
            raise ConfigValueError("components", 'expected a non-empty list such as [{ source = "stdlib" }]')
        if self.val_from >= len(self.components):
            raise ConfigValueError("val_from", f"expected the index of a component (0 to {len(self.components) - 1}), "
                                   f"got {self.val_from}")
