"""Typed reads from one TOML table, each mistake a `ConfigError` naming the file and the key path."""
from __future__ import annotations

import math
from typing import Any

from scaling.config import (
    ConfigError,
)


BYTE_VOCAB = 256
MISSING = object()

# Upper bounds on settings that the parent or a run allocates for before training starts, so that
# a typo (1e9 for 1e3) is refused up front instead of exhausting memory. Each is far above what a
# scaling sweep uses.
MAX_SEQ_LEN = 1 << 16
MAX_EVAL_POINTS = 10_000
MAX_EVAL_SEQUENCES = 1 << 20
MAX_PROBE_ITEMS = 100_000
MAX_PROMPTS = 4096
MAX_BEAM = 64

class Table:
    """Typed reads from one TOML table, remembering which keys were used so leftovers are errors."""

    def __init__(self, file: str, prefix: str, data: Any):
        self.file, self.prefix = file, prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, f"expected a table, got {type(data).__name__}")
        self.data, self.used = data, set()

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def error(self, k: str, msg: str) -> ConfigError:
        return ConfigError(self.file, self.key(k), msg)

    def raw(self, k: str, default=MISSING):
        self.used.add(k)
        if k in self.data:
            return self.data[k]
        if default is MISSING:
            raise self.error(k, "is required")
        return default

    def int(self, k, default=MISSING, *, min=None, max=None) -> int:
        return as_int(self, k, self.raw(k, default), min, max)

    def float(self, k, default=MISSING, *, min=None, max=None, min_open=False, max_open=False) -> float:
        return as_float(self, k, self.raw(k, default), min, max, min_open, max_open)

    def str(self, k, default=MISSING, *, choices=None) -> str:
        v = self.raw(k, default)
        if not isinstance(v, str):
            raise self.error(k, f"expected a string, got {v!r}")
        if choices and v not in choices:
            raise self.error(k, f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def bool(self, k, default=MISSING) -> bool:
        v = self.raw(k, default)
        if not isinstance(v, bool):
            raise self.error(k, f"expected true or false, got {v!r}")
        return v

    def list(self, k, default=MISSING) -> list:
        v = self.raw(k, default)
        if not isinstance(v, list):
            raise self.error(k, f"expected a list, got {v!r}")
        if not v:
            raise self.error(k, "expected a non-empty list")
        return v

    def optional(self, k, read):
        """`read(k)` if the key is present, else None (for settings whose default is "not given")."""
        self.used.add(k)
        return read(k) if k in self.data else None

    def sub(self, k, default=MISSING) -> "Table":
        return Table(self.file, self.key(k), self.raw(k, {} if default is MISSING else default))

    def finish(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.error(extra[0], f"unknown key (known here: {', '.join(sorted(self.used)) or 'none'})")


def as_int(t: Table, k, v, min, max=None) -> int:
    # TOML writes 1e6 as a float; accept any integral number, reject bools and fractions.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise t.error(k, f"expected an integer, got {v!r}")
    v = int(v)
    if min is not None and v < min:
        raise t.error(k, f"expected an integer >= {min}, got {v}")
    if max is not None and v > max:
        raise t.error(k, f"expected an integer <= {max:,}, got {v:,}")
    return v


def as_float(t: Table, k, v, min, max, min_open, max_open=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise t.error(k, f"expected a number, got {v!r}")
    v = float(v)
    if min is not None and (v < min or (min_open and v == min)):
        raise t.error(k, f"expected a number {'>' if min_open else '>='} {min}, got {v}")
    if max is not None and (v > max or (max_open and v == max)):
        raise t.error(k, f"expected a number {'<' if max_open else '<='} {max}, got {v}")
    return v


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder's name inside results/, or None."""
    if not name.strip():
        return "expected a non-empty name"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a control character (newline, tab, ...) in the name"
    if "/" in name or "\\" in name:
        return "a path separator in the name"
    if name in (".", "..") or name.startswith("."):
        return "a name that starts with '.'"
    return None


def unique(t: Table, key: str, values: list, show=repr) -> None:
    """A list whose entries must differ (grid axes: a repeated entry would be the same run twice)."""
    for i, v in enumerate(values):
        first = values.index(v)
        if first < i:
            raise t.error(f"{key}[{i}]", f"repeats {t.key(f'{key}[{first}]')} ({show(v)}): each grid point is one run; "
                          "expected distinct values (use [sweep] seeds for repeats)")


def int_list(t: Table, k, *, min=1) -> list[int]:
    return [as_int(t, f"{k}[{i}]", v, min) for i, v in enumerate(t.list(k))]


def float_list(t: Table, k) -> list[float]:
    return [as_float(t, f"{k}[{i}]", v, 0.0, None, True) for i, v in enumerate(t.list(k))]


