"""A small TOML writer for fedsim's configs: every value a config can hold survives dump -> load.

The standard library reads TOML (``tomllib``) but does not write it.  Configs hold
tables of scalars (str, int, float, bool), lists of scalars and one array of
tables (``[[methods]]``); this module writes exactly that, escaping strings the
way TOML's basic strings require (``\\``, ``"``, control characters and DEL).
Characters outside the Basic Multilingual Plane are written as themselves (UTF-8),
never as surrogate pairs, which ``tomllib`` rejects.
"""
import math
import re

from .errors import ConfigError

__all__ = ["dumps", "format_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _string(text):
    """A TOML basic string for ``text``."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ConfigError(f"string {text!r} holds a lone surrogate (U+{code:04X}), which no TOML "
                              f"file can store; remove it")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key):
    """A bare key when possible, else a quoted one."""
    if not isinstance(key, str):
        raise ConfigError(f"TOML keys must be strings, got {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def format_value(value):
    """One value in TOML syntax.

    Parameters
    ----------
    value : bool, int, float, str or list of those

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        For a value TOML cannot hold (None inside a list, a dict, a lone surrogate, ...).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest repr that round-trips, always with '.' or 'e'
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def dumps(sections, arrays=()):
    """TOML text for named tables of scalars and named arrays of tables.

    Parameters
    ----------
    sections : dict of str -> dict
        ``{"data": {...}, "train": {...}}``: each becomes ``[name]``; keys whose
        value is None are left out (TOML has no null; absent means default).
    arrays : iterable of (str, list of dict)
        ``[("methods", [{...}, ...])]``: each dict becomes ``[[name]]``.

    Returns
    -------
    str
    """
    lines = []
    for name, table in sections.items():
        lines.append(f"[{_key(name)}]")
        lines.extend(f"{_key(k)} = {format_value(v)}" for k, v in table.items() if v is not None)
        lines.append("")
    for name, entries in arrays:
        for entry in entries:
            lines.append(f"[[{_key(name)}]]")
            lines.extend(f"{_key(k)} = {format_value(v)}" for k, v in entry.items() if v is not None)
            lines.append("")
    return "\n".join(lines)
