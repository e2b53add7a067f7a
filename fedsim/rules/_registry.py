"""The rule registry: :func:`register_rule` adds a rule class, :func:`make_rule` builds one."""
import dataclasses

from .._fields import field_type
from ..errors import ConfigError
from ._params import RuleParams

__all__ = ["RULES", "register_rule", "make_rule", "rule_params", "all_knobs", "rules_with_knob",
           "knobs_markdown"]

#: Rule name -> rule class, filled by :func:`register_rule` (in registration order).
RULES = {}


def register_rule(cls):
    """Class decorator: add a rule to :data:`RULES` and bind its ``Params`` class to it.

    Parameters
    ----------
    cls : type
        A :class:`~fedsim.rules.ServerRule` subclass with a unique ``name`` and
        a ``Params`` attribute (a :class:`RuleParams` dataclass used by no other rule).

    Returns
    -------
    type
        ``cls`` unchanged.

    Raises
    ------
    ConfigError
        The name is taken, ``Params`` is missing or shared, or a knob has another
        type than the knob of the same name in an already registered rule (``[rule]``
        holds one value per key for every rule).
    """
    name, params = getattr(cls, "name", None), getattr(cls, "Params", None)
    if not isinstance(name, str) or not name or name in RULES:
        raise ConfigError(f"rule class {cls.__name__}: name {name!r} is empty or already registered")
    if not (isinstance(params, type) and issubclass(params, RuleParams) and dataclasses.is_dataclass(params)):
        raise ConfigError(f"rule {name!r}: Params must be a RuleParams dataclass, got {params!r}")
    if params.__dict__.get("rule_name") not in (None, name):
        raise ConfigError(f"rule {name!r}: {params.__name__} already belongs to rule {params.rule_name!r}")
    for key in params.knobs():
        for other in rules_with_knob(key):
            if field_type(params, key) != field_type(RULES[other].Params, key):
                raise ConfigError(f"rule {name!r}: knob {key!r} has another type than in rule {other!r}")
    params.rule_name = name
    RULES[name] = cls
    return cls


def _rule_class(name):
    """The class registered as ``name``."""
    if name not in RULES:
        raise ConfigError(f"unknown rule {name!r}; choose one of {sorted(RULES)}")
    return RULES[name]


def rule_params(name, **knobs):
    """The validated parameters of rule ``name`` (defaults for the knobs not given).

    Parameters
    ----------
    name : str
        A key of :data:`RULES`.
    **knobs
        Values of that rule's knobs.

    Returns
    -------
    RuleParams
        An instance of ``RULES[name].Params``.

    Raises
    ------
    ConfigError
        Unknown rule, a knob the rule does not have, a bad type or value.
    """
    params = _rule_class(name).Params
    for key in knobs:
        if key not in params.knobs():
            raise ConfigError(_foreign_knob_message(name, key, "rule"))
    return params(**knobs)


def make_rule(params, d, **kw):
    """Build the rule that ``params`` belong to, for a model of dimension ``d``.

    Parameters
    ----------
    params : RuleParams
        E.g. ``FetchSGDParams(k=50, cols=1000)`` or ``rule_params("fetchsgd", k=50)``.
    d : int
        Number of trainable parameters.
    **kw
        ``device`` (default "cpu"), ``value_bytes``, ``index_bytes``, ``world_size``
        (see :class:`~fedsim.rules.ServerRule`).

    Returns
    -------
    ServerRule

    Raises
    ------
    ConfigError
        ``params`` is not registered rule parameters, or does not fit ``d`` (e.g. ``k > d``).
    """
    if not isinstance(params, RuleParams):
        raise ConfigError(f"make_rule needs rule parameters (a RuleParams), got {type(params).__name__}")
    return _rule_class(params.name)(params, d, **kw)


def all_knobs():
    """Every knob of every registered rule, sorted.

    Returns
    -------
    list of str
    """
    return sorted({k for cls in RULES.values() for k in cls.Params.knobs()})


def rules_with_knob(key):
    """The registered rules that have knob ``key``.

    Parameters
    ----------
    key : str

    Returns
    -------
    list of str
    """
    return [n for n, cls in RULES.items() if key in cls.Params.knobs()]


def _foreign_knob_message(rule, key, where):
    """Why ``key`` is refused for ``rule`` (unknown everywhere, or another rule's knob)."""
    mine = ", ".join(_rule_class(rule).Params.knobs()) or "none"
    owners = rules_with_knob(key)
    if owners:
        return (f"{where}.{key}: rule {rule!r} has no knob {key!r} (it belongs to {', '.join(owners)}); "
                f"{rule}'s knobs: {mine}")
    return f"unknown key {where}.{key}; valid keys: {mine}"


def knobs_markdown():
    """A Markdown table of every rule's knobs, defaults and help (the README's table).

    Returns
    -------
    str
    """
    lines = ["| rule | knob | type | default | meaning |", "|---|---|---|---|---|"]
    for name, cls in RULES.items():
        for f in dataclasses.fields(cls.Params):
            base, optional = field_type(cls.Params, f.name)
            kind = base.__name__ + (" or none" if optional else "")
            default = "none" if f.default is None else repr(f.default).replace("'", '"')
            if isinstance(f.default, bool):
                default = str(f.default).lower()
            lines.append(f"| `{name}` | `{f.name}` | {kind} | `{default}` | {f.metadata.get('help', '')} |")
    return "\n".join(lines)
