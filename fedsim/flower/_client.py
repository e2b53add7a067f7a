"""The client side: one round of a torch model on local data, answered as a Flower reply."""
import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.nn import functional as F

from adapters.torch import (backend_for_device, flatten_grads, flatten_params, num_elements, sketch_model_grad,
                            to_array, unflatten_into)
from sketchlib import CountSketch

from ..compressors import make_compressor
from ..errors import ConfigError
from ._download import apply_download
from ._protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, UPLOAD

__all__ = ["client_train", "make_client_app"]


def _trainable(model):
    """The parameters of the flat layout (``requires_grad``, in ``parameters()`` order)."""
    return [p for p in model.parameters() if p.requires_grad]


def _loss_and_grad(model, x, y, loss_fn, weight_decay):
    """Mean loss at the model's weights; leaves ``grad + weight_decay * w`` in each ``.grad``."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    if weight_decay:
        with torch.no_grad():
            for p in _trainable(model):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(p, alpha=weight_decay)
    return float(loss.detach())


def _sketch_upload(model, cfg, device, backend):
    """FetchSGD: the model's gradient sketched with the server's sketch parameters."""
    d = num_elements(model, trainable_only=True)
    sketch = make_compressor(cfg["sketch-kind"], d, rows=int(cfg["sketch-rows"]), cols=int(cfg["sketch-cols"]),
                             seed=int(cfg["sketch-seed"]), backend=backend or backend_for_device(device),
                             hash_version=int(cfg["sketch-hash-version"]) or "auto")
    if isinstance(sketch, CountSketch):
        sketch_model_grad(model, sketch, trainable_only=True)
    else:  # the exact "identity" compressor: the gradient itself
        sketch.insert(to_array(flatten_grads(model, trainable_only=True, device=device)))
    table = sketch.table
    return {"table": np.ascontiguousarray(table if isinstance(table, np.ndarray) else table.get())}


def _local_sgd(model, x, y, cfg, loss_fn, client_id):
    """FedAvg: local SGD epochs (fedsim's sample orders) from the received weights; returns the change."""
    lr, wd = float(cfg["lr"]), float(cfg["weight-decay"])
    epochs, bs = int(cfg["local-epochs"]), int(cfg["local-batch-size"]) or x.shape[0]
    t, seed = int(cfg["server-round"]) - 1, int(cfg["seed"])
    start = flatten_params(model, trainable_only=True)
    for e in range(epochs):
        perm = torch.from_numpy(np.random.default_rng([seed, 3, t, int(client_id), e]).permutation(x.shape[0]))
        xe, ye = x[perm.to(x.device)], y[perm.to(y.device)]
        for lo in range(0, x.shape[0], bs):
            _loss_and_grad(model, xe[lo:lo + bs], ye[lo:lo + bs], loss_fn, wd)
            with torch.no_grad():
                for p in _trainable(model):
                    if p.grad is not None:
                        p.sub_(p.grad, alpha=lr)
    return {"delta": (flatten_params(model, trainable_only=True) - start).cpu().numpy()}


def client_train(message, model, x, y, *, context=None, loss_fn=None, client_id=0, sketch_backend=None):
    """Run the round a :class:`RuleStrategy` train message asks for; return the reply Message.

    Loads the message's flat weights into ``model`` (trainable parameters, in
    ``model.parameters()`` order, the layout of ``adapters.torch.flatten_params(...,
    trainable_only=True)``), computes the gradient of ``loss_fn`` on ``(x, y)`` plus
    ``weight_decay * w`` and uploads what the rule needs: FetchSGD the gradient's sketch
    (through ``adapters.torch.sketch_model_grad``, with the server's rows, cols, seed and
    hash version), local top-k the k largest entries, uncompressed / true top-k the
    gradient, FedAvg the weight change after local SGD.

    Parameters
    ----------
    message : flwr.app.Message
        The train message.
    model : torch.nn.Module
        The local model (its weights are overwritten); computation runs on its device.
    x, y : torch.Tensor
        The local batch (on the model's device).
    context : flwr.app.Context, optional
        The node's context; required when the strategy downloads changed weights only
        (``download="changed"``): the node keeps its weights in ``context.state``.
    loss_fn : callable, optional
        ``loss_fn(logits, y) -> scalar`` (default mean cross-entropy).
    client_id : int, default 0
        Seeds FedAvg's sample orders (fedsim draws them from (seed, round, client)).
    sketch_backend : str, optional
        sketchlib backend of the client's sketch (default: CuPy on CUDA, else Numba if
        installed, else NumPy); every backend computes the same table.

    Returns
    -------
    flwr.app.Message
        The reply: ArrayRecord ``"upload"`` and MetricRecord ``"metrics"`` (``num-examples``,
        ``train-loss``).

    Raises
    ------
    ConfigError
        The model's size differs from the server's weights, a change list for weights this
        node does not hold, or an unknown rule.
    """
    loss_fn = loss_fn or F.cross_entropy
    content = message.content
    cfg, arrays = content[CONFIG], content[ARRAYS]
    d = num_elements(model, trainable_only=True)
    w = apply_download(arrays, cfg, None if context is None else context.state, d)
    unflatten_into(model, w, trainable_only=True)
    device = _trainable(model)[0].device
    rule = cfg["rule"]
    if rule == "fedavg":
        loss = _loss_and_grad(model, x, y, loss_fn, 0.0)
        upload = _local_sgd(model, x, y, cfg, loss_fn, client_id)
    else:
        loss = _loss_and_grad(model, x, y, loss_fn, float(cfg["weight-decay"]))
        if rule == "fetchsgd":
            upload = _sketch_upload(model, cfg, device, sketch_backend)
        elif rule == "local_topk":
            g = flatten_grads(model, trainable_only=True)
            idx = torch.topk(g.abs(), int(cfg["k"]), sorted=True).indices
            upload = {"indices": idx.cpu().numpy().astype(np.int32 if d <= 2**31 else np.int64),
                      "values": g[idx].cpu().numpy()}
        elif rule in ("uncompressed", "true_topk"):
            upload = {"gradient": flatten_grads(model, trainable_only=True).cpu().numpy()}
        else:
            raise ConfigError(f"the server asked for rule {rule!r}, which this client does not know")
    record = RecordDict({UPLOAD: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in upload.items()}),
                         METRICS: MetricRecord({NUM_EXAMPLES: int(x.shape[0]), "train-loss": loss})})
    return Message(record, reply_to=message)


def make_client_app(load, *, sketch_backend=None):
    """A ClientApp whose train function is :func:`client_train` on the node's data.

    Parameters
    ----------
    load : callable
        ``load(context) -> (model, x, y)`` for this node (e.g. by
        ``context.node_config["partition-id"]``).
    sketch_backend : str, optional
        As in :func:`client_train`.

    Returns
    -------
    flwr.clientapp.ClientApp
    """
    app = ClientApp()

    @app.train()
    def train(message, context):
        model, x, y = load(context)
        cid = context.node_config.get("partition-id", context.node_id)
        return client_train(message, model, x, y, context=context, client_id=int(cid),
                            sketch_backend=sketch_backend)

    return app
