"""Type checks of dataclass fields against their annotations (shared by config sections and rule params)."""
import dataclasses
import math
import typing

from .errors import ConfigError

__all__ = ["field_type", "coerce_field", "check"]


def field_type(cls, key):
    """The declared type of a dataclass field, as (base type, optional)."""
    hint = typing.get_type_hints(cls)[key]
    args = typing.get_args(hint)
    if type(None) in args:
        return [a for a in args if a is not type(None)][0], True
    return hint, False


def coerce_field(cls, key, value, where, valid=None):
    """Check one value against a field's type (ints widen to floats, floats must be finite); returns the value.

    ``where`` prefixes the key in messages (``rule``, ``methods[2]``); ``valid``
    lists the keys named when ``key`` is unknown (default: the fields of ``cls``).
    """
    names = [f.name for f in dataclasses.fields(cls)]
    if key not in names:
        raise ConfigError(f"unknown key {where}.{key}; valid keys: {', '.join(valid or names)}")
    base, optional = field_type(cls, key)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}.{key} may not be empty")
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}.{key} must be {base.__name__}{' or none' if optional else ''}, "
                          f"got {value!r}")
    if base is float and not math.isfinite(value):
        # No knob means anything at NaN/inf; letting one through breaks a run rounds later.
        raise ConfigError(f"{where}.{key} must be a finite number, got {value!r}")
    return value


def check(cond, msg):
    """Raise ConfigError(msg) unless cond."""
    if not cond:
        raise ConfigError(msg)
