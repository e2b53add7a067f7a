"""Server rules: one small class per rule, its state in a dataclass.

:data:`RULES` maps a config name to its class.
"""
from ._base import ServerRule
from .fedavg import FedAvg
from .fetchsgd import FetchSGD
from .local_topk import LocalTopK
from .true_topk import TrueTopK
from .uncompressed import Uncompressed

__all__ = ["RULES", "ServerRule", "FetchSGD", "Uncompressed", "TrueTopK", "LocalTopK", "FedAvg", "make_rule"]

RULES = {cls.name: cls for cls in (FetchSGD, Uncompressed, TrueTopK, LocalTopK, FedAvg)}


def make_rule(cfg, d, **kw):
    """Instantiate the rule named ``cfg.name`` for a model of dimension ``d``."""
    from ..errors import ConfigError
    if cfg.name not in RULES:
        raise ConfigError(f"unknown rule {cfg.name!r}; choose one of {sorted(RULES)}")
    return RULES[cfg.name](cfg, d, **kw)
