"""Server rules: one small class per rule, its knobs and its state in dataclasses.

A rule module in this package defines a ``Params`` dataclass (a
:class:`RuleParams` subclass whose fields are the rule's knobs) and a
:class:`ServerRule` subclass decorated with :func:`register_rule`.  Every
public module of the package is imported here, so a new rule file registers
itself: its knobs appear in the config (``[rule]`` and ``[[methods]]``), in
``fedsim config``, ``fedsim list``, ``--help`` and the README table
(``fedsim list --markdown``) with no central list to edit.

:data:`RULES` maps a config name to its class; :func:`make_rule` builds a rule
from its parameters and ``d``; :func:`rule_params` builds parameters by rule name.
"""
import importlib
import pkgutil

from ._base import ServerRule
from ._params import ErrorFeedbackParams, MomentumParams, RuleParams, TopKParams, knob
from ._registry import RULES, all_knobs, knobs_markdown, make_rule, register_rule, rule_params, rules_with_knob

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")

from .fedavg import FedAvg, FedAvgParams  # noqa: E402  (re-exports; registered above)
from .fetchsgd import FetchSGD, FetchSGDParams  # noqa: E402
from .local_topk import LocalTopK, LocalTopKParams  # noqa: E402
from .true_topk import TrueTopK, TrueTopKParams  # noqa: E402
from .uncompressed import Uncompressed, UncompressedParams  # noqa: E402

__all__ = [
    "RULES", "ServerRule", "RuleParams", "MomentumParams", "TopKParams", "ErrorFeedbackParams", "knob",
    "register_rule", "make_rule", "rule_params", "all_knobs", "rules_with_knob", "knobs_markdown",
    "FetchSGD", "FetchSGDParams", "Uncompressed", "UncompressedParams", "TrueTopK", "TrueTopKParams",
    "LocalTopK", "LocalTopKParams", "FedAvg", "FedAvgParams",
]
