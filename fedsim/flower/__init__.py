"""fedsim's server rules in Flower (``flwr`` >= 1.21, Message API): FetchSGD, and the cheap baselines.

The strategy runs fedsim's own rule objects (the same code as :class:`fedsim.Simulation`):
clients sketch their gradient (FetchSGD), send their top-k (local top-k), their dense
gradient (uncompressed, true top-k) or their local-SGD weight change (FedAvg), with their
example count; the server merges the uploads weighted by examples and applies the rule,
whose state (FetchSGD's momentum and error sketches) stays on the server.

Pieces:

- :class:`RuleStrategy` (a ``flwr.serverapp.strategy.Strategy``), built from a rule object or
  from a fedsim run spec (:meth:`RuleStrategy.from_spec`);
- :func:`client_train` (a ClientApp's train function body for a torch model) and
  :func:`make_client_app`; :func:`make_server_app`;
- :class:`InProcessGrid`, a ``Grid`` that delivers messages to a ClientApp in this process
  (no network, no Ray), and :func:`run_in_process`.

Importing :mod:`fedsim` never imports this module; this module needs ``flwr``
(``pip install 'sketchgrad[flower]'``).
"""
try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fedsim.flower needs Flower (flwr >= 1.21): pip install 'sketchgrad[flower]'") from exc

from ._client import client_train, make_client_app
from ._context import UploadedRound
from ._grid import InProcessGrid, run_in_process
from ._protocol import FlowerRoundError, weights_from_record, weights_record
from ._strategy import SUPPORTED_RULES, RuleStrategy, make_server_app

__all__ = [
    "RuleStrategy", "UploadedRound", "SUPPORTED_RULES", "make_server_app",
    "client_train", "make_client_app",
    "InProcessGrid", "run_in_process",
    "FlowerRoundError", "weights_record", "weights_from_record",
]
