"""What a config value may be: the rules that each frozen config of scaling/config.py checks on
construction, worded as the sweep file reads (a tuple is "a list", a bool "true or false").

A rule maps a value to what is wrong with it, or None; `check` raises `ConfigValueError` naming the
dataclass field. The sweep reader (scaling/sweep/reader.py) adds the file and the TOML key path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing


class ConfigValueError(ValueError):
    """A value that a config refuses on construction. `field` is the dataclass field to blame (with an
    index for one entry of a tuple: `orders[1]`); `message` says what was expected."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def check(config, **rules) -> None:
    """Raise ConfigValueError for the first field of `config` (in the order given) that its rule refuses."""
    for name, rule in rules.items():
        problem = rule(getattr(config, name))
        if isinstance(problem, tuple):  # (index, problem) from `entries`: one entry is to blame
            index, problem = problem
            name = f"{name}[{index}]"
        if problem:
            raise ConfigValueError(name, problem)


def integer_problem(value, ge=None, le=None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {value!r}"
    if ge is not None and value < ge:
        return f"expected an integer >= {ge}, got {value}"
    if le is not None and value > le:
        return f"expected an integer <= {le:,}, got {value:,}"
    return None


def number_problem(value, ge=None, gt=None, le=None, lt=None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"expected a number, got {value!r}"
    for sign, bound, refused in ((">=", ge, ge is not None and value < ge), (">", gt, gt is not None and value <= gt),
                                 ("<=", le, le is not None and value > le), ("<", lt, lt is not None and value >= lt)):
        if refused:
            return f"expected a number {sign} {bound}, got {value}"
    return None


def integer(ge=None, le=None, *, optional=False):
    return lambda value: None if optional and value is None else integer_problem(value, ge, le)


def number(ge=None, gt=None, le=None, lt=None, *, optional=False):
    return lambda value: None if optional and value is None else number_problem(value, ge, gt, le, lt)


def flag(value) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def text(blank: str | None = None, *, optional=False):
    """A string; `blank`, when given, is the complaint about an empty one."""
    def rule(value):
        if optional and value is None:
            return None
        if not isinstance(value, str):
            return f"expected a string, got {value!r}"
        return blank if blank and not value.strip() else None
    return rule


def choice(options: tuple[str, ...]):
    def rule(value):
        if isinstance(value, str) and value in options:
            return None
        return f"expected one of {', '.join(options)}, got {value!r}"
    return rule


def strings(expected: str):
    """A tuple of strings; `expected` says what they are."""
    def rule(value):
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return None
        return f"{expected}, got {list(value) if isinstance(value, tuple) else value!r}"
    return rule


def instance(kind: type, *, optional=False):
    def rule(value):
        if (optional and value is None) or isinstance(value, kind):
            return None
        return f"expected a {kind.__name__}, got {type(value).__name__}"
    return rule


def entries(rule):
    """A tuple whose every entry passes `rule`; an entry refused is blamed as `field[i]`."""
    def check_entries(value):
        if not isinstance(value, tuple):
            return f"expected a list, got {value!r}"
        for i, entry in enumerate(value):
            problem = rule(entry)
            if problem:
                return i, problem
        return None
    return check_entries


def task_name_problem(name) -> str | None:
    if not isinstance(name, str):
        return f"expected a string, got {name!r}"
    if not name or not set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_"):
        return "a task name is lowercase letters, digits and _ (it names record columns)"
    return None


# ------------------------------------------------------------------------------------------------
# Dataclass fields: their types and defaults, and configs rebuilt from plain data (JSON).


@functools.cache
def field_types(cls) -> dict[str, type]:
    """Each field's type, `X | None` read as X (a None value needs no conversion)."""
    out = {}
    for name, kind in typing.get_type_hints(cls).items():
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        out[name] = kind
    return out


def field_default(cls, name: str):
    """The default that dataclass `cls` gives field `name`."""
    (found,) = (f for f in dataclasses.fields(cls) if f.name == name)
    return found.default_factory() if found.default_factory is not dataclasses.MISSING else found.default


def from_dict(cls, data):
    """The config `cls` whose `dataclasses.asdict` is `data`, also after a JSON round trip: nested
    configs rebuilt, lists back to tuples. A key that is not a field raises ConfigValueError."""
    if not isinstance(data, dict):
        raise ConfigValueError(cls.__name__, f"expected a dict, got {type(data).__name__}")
    kinds = field_types(cls)
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        raise ConfigValueError(unknown[0], f"not a field of {cls.__name__}")
    return cls(**{name: _from_json(kinds[name], value) for name, value in data.items()})


def _from_json(kind, value):
    if value is None:
        return None
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value)
    if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(kind)
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        if len(kinds) == len(value):  # otherwise the config refuses the tuple as it is
            return tuple(_from_json(k, v) for k, v in zip(kinds, value))
        return tuple(value)
    return value
