"""Reads from one TOML table, each mistake a `ConfigError` naming the file and the key path.

A config's own keys are read with `Table.values` (or `Table.config` for a table that is one whole
config): the values are only converted from TOML to the field's type, a key left out is left to the
dataclass default, and the config checks them on construction (`Settings.build`), its
`ConfigValueError` turned into a `ConfigError` with the key path. The typed reads (`Table.int`, ...)
are for the keys that belong to no config: grids, task settings.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from scaling.config import ConfigError, ConfigValueError
from scaling.config_checks import field_types, integer_problem, number_problem

MISSING = object()


def from_toml(value, kind):
    """`value` as a field of type `kind` holds it. TOML writes 1e6 as a float: an integer field takes
    any integral number. An integer for a float field becomes a float, so `lr = 1` and `lr = 1.0` are
    one run (run_id hashes the JSON). A list becomes a tuple. Anything else is left for the config to
    refuse."""
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is tuple and isinstance(value, list):
        args = typing.get_args(kind)
        return tuple(from_toml(v, args[0]) for v in value) if args[-1] is Ellipsis else tuple(value)
    return value


@dataclass
class Settings:
    """Values read from TOML for some fields of a config, and each field's key path (for errors)."""

    file: str
    prefix: str  # the table, for a field given in `build` rather than read
    values: dict[str, Any]
    keys: dict[str, str]

    def __or__(self, other: Settings) -> Settings:
        return Settings(self.file, self.prefix, {**self.values, **other.values}, {**self.keys, **other.keys})

    def key(self, field: str) -> str:
        return self.keys.get(field) or (f"{self.prefix}.{field}" if self.prefix else field)

    def error(self, e: ConfigValueError, message: str | None = None) -> ConfigError:
        """`e` with the TOML key of its field; `orders[1]` keeps its index."""
        name, bracket, index = e.field.partition("[")
        return ConfigError(self.file, self.key(name) + bracket + index, message or e.message)

    def build(self, cls, **given):
        """`cls(**values, **given)`; a field neither read nor given nor defaulted is required."""
        kwargs = {**self.values, **given}
        for f in dataclasses.fields(cls):
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in kwargs and no_default:
                raise ConfigError(self.file, self.key(f.name), "is required")
        try:
            return cls(**kwargs)
        except ConfigValueError as e:
            raise self.error(e) from None


class Table:
    """Reads from one TOML table, remembering which keys were used so leftovers are errors."""

    def __init__(self, file: str, prefix: str, data: Any):
        self.file, self.prefix = file, prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, f"expected a table, got {type(data).__name__}")
        self.data, self.used = data, set()

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def error(self, k: str, msg: str) -> ConfigError:
        return ConfigError(self.file, self.key(k), msg)

    def values(self, cls, names, rename: dict[str, str] | None = None) -> Settings:
        """Settings for the fields `names` of dataclass `cls`, each under its own name as the key unless
        `rename` says otherwise ({field: key}). Keys left out are left out (the field's default)."""
        kinds, values, keys = field_types(cls), {}, {}
        for name in names:
            k = (rename or {}).get(name, name)
            keys[name] = self.key(k)
            self.used.add(k)
            if k in self.data:
                values[name] = from_toml(self.data[k], kinds[name])
        return Settings(self.file, self.prefix, values, keys)

    def config(self, cls):
        """The table as one whole config: every field of `cls` is a key."""
        settings = self.values(cls, [f.name for f in dataclasses.fields(cls)])
        self.finish()
        return settings.build(cls)

    def raw(self, k: str, default=MISSING):
        self.used.add(k)
        if k in self.data:
            return self.data[k]
        if default is MISSING:
            raise self.error(k, "is required")
        return default

    def int(self, k, default=MISSING, *, ge=None, le=None) -> int:
        return as_int(self, k, self.raw(k, default), ge, le)

    def float(self, k, default=MISSING, **bounds) -> float:
        return as_float(self, k, self.raw(k, default), **bounds)

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

    def sub(self, k, default=MISSING) -> "Table":
        return Table(self.file, self.key(k), self.raw(k, {} if default is MISSING else default))

    def finish(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.error(extra[0], f"unknown key (known here: {', '.join(sorted(self.used)) or 'none'})")


def as_int(table: Table, k, value, ge=None, le=None) -> int:
    value = from_toml(value, int)
    problem = integer_problem(value, ge, le)
    if problem:
        raise table.error(k, problem)
    return value


def as_float(table: Table, k, value, **bounds) -> float:
    value = from_toml(value, float)
    problem = number_problem(value, **bounds)
    if problem:
        raise table.error(k, problem)
    return value


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


def unique(table: Table, key: str, values: list, show=repr) -> None:
    """A list whose entries must differ (grid axes: a repeated entry would be the same run twice)."""
    for i, value in enumerate(values):
        first = values.index(value)
        if first < i:
            raise table.error(f"{key}[{i}]", f"repeats {table.key(f'{key}[{first}]')} ({show(value)}): each grid point "
                              "is one run; expected distinct values (use [sweep] seeds for repeats)")


def int_list(table: Table, k, *, ge=1) -> list[int]:
    return [as_int(table, f"{k}[{i}]", value, ge) for i, value in enumerate(table.list(k))]


def float_list(table: Table, k) -> list[float]:
    return [as_float(table, f"{k}[{i}]", value, gt=0.0) for i, value in enumerate(table.list(k))]
