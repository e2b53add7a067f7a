"""Client engines: how the sampled clients of a round compute their updates.

Clients are stateless functions of the current weights and their local data
(FetchSGD's premise), so an engine is a pure function of
``(model, flat_params, batches)``.  The simulator picks one by name (config key
``train.engine``) from :data:`ENGINES`; engines are imported lazily so another
module can provide one (``fedsim.vmap_engine:VmapEngine``) without an edit here.

An engine implements:

``gradient_sum(model, flat_params, batches, weights=None) -> Tensor (d,)``
    ``sum_i w_i grad L_i(flat_params)`` with ``L_i`` client i's mean loss on its batch.
``gradients(model, flat_params, batches) -> Tensor (W, d)``
    One gradient per client.
``local_train(model, flat_params, batches, *, lr, epochs=1, batch_size=None, orders=None,
weight_decay=0.0, augments=None, clip_norm=None) -> Tensor (W, d)``
    FedAvg's local SGD; returns ``final_params - flat_params`` per client.
    ``orders[i][e]`` is the sample permutation of client i in epoch e;
    ``augments[i](x, e)`` (optional) augments client i's ordered samples of epoch e;
    ``clip_norm`` (optional) clips each local step's loss gradient to that L2 norm
    (before weight decay is added).
"""
import importlib

import torch
from torch.func import functional_call
from torch.nn import functional as F

from adapters.torch import param_views

from ._clip import clip_factor
from ._flat import fixed_tensors
from .errors import ConfigError

__all__ = ["ClientEngine", "LoopEngine", "ENGINES", "make_engine"]

ENGINES = {"loop": "fedsim.clients:LoopEngine", "vmap": "fedsim.vmap_engine:VmapEngine"}


class ClientEngine:
    """Interface of a client engine (see the module docstring)."""

    name = "abstract"

    def gradient_sum(self, model, flat_params, batches, weights=None):
        """Weighted sum of the clients' gradients, shape (d,).

        Parameters
        ----------
        model : torch.nn.Module
            The architecture, evaluated functionally at ``flat_params``.
        flat_params : torch.Tensor
            The flat trainable weights (layout of ``adapters.torch.flatten_params``).
        batches : list of (x, y)
            One batch per client.
        weights : torch.Tensor, optional
            One weight per client (default uniform).

        Raises
        ------
        NotImplementedError
            In the interface.
        """
        raise NotImplementedError

    def gradients(self, model, flat_params, batches):
        """Per-client gradients, shape (W, d).

        Parameters
        ----------
        model : torch.nn.Module
            The architecture, evaluated functionally at ``flat_params``.
        flat_params : torch.Tensor
            The flat trainable weights (layout of ``adapters.torch.flatten_params``).
        batches : list of (x, y)
            One batch per client.

        Raises
        ------
        NotImplementedError
            In the interface.
        """
        raise NotImplementedError

    def local_train(self, model, flat_params, batches, *, lr, epochs=1, batch_size=None, orders=None,
                    weight_decay=0.0, augments=None, clip_norm=None):
        """Per-client weight change after local SGD, shape (W, d).

        Parameters
        ----------
        model : torch.nn.Module
            The architecture, evaluated functionally at ``flat_params``.
        flat_params : torch.Tensor
            The flat trainable weights (layout of ``adapters.torch.flatten_params``).
        batches : list of (x, y)
            One batch per client.
        lr : float
            Local learning rate.
        epochs : int, default 1
        batch_size : int, optional
            Local minibatch size (default: the client's whole batch).
        orders : list of list of torch.Tensor, optional
            ``orders[i][e]``: client i's sample order in epoch e.
        weight_decay : float, default 0.0
        augments : list of callable, optional
            ``augments[i](x, epoch)``: client i's data augmentation, applied after ordering.
        clip_norm : float, optional
            Clip every local step's loss gradient to this L2 norm.

        Raises
        ------
        NotImplementedError
            In the interface.
        """
        raise NotImplementedError


def _loss_grad(model, flat, x, y):
    """Gradient of the mean cross-entropy at ``flat`` (one forward/backward)."""
    p = flat.detach().requires_grad_(True)
    logits = functional_call(model, {**param_views(model, p, trainable_only=True), **fixed_tensors(model)}, (x,))
    loss = F.cross_entropy(logits, y)
    (g,) = torch.autograd.grad(loss, p)
    return g


class LoopEngine(ClientEngine):
    """The reference engine: one forward/backward per client, in a Python loop.

    Chunking options (``max_clients_per_chunk``, ``memory_budget_mb``) are
    accepted and ignored: one client at a time is already the smallest chunk.
    """

    name = "loop"

    def __init__(self, **_options):
        pass

    @staticmethod
    def _weights(weights, n, like):
        """Client weights as a tensor (default 1/W)."""
        if weights is None:
            return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
        w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
        if w.shape != (n,):
            raise ConfigError(f"weights must have shape ({n},), got {tuple(w.shape)}")
        return w

    def gradient_sum(self, model, flat_params, batches, weights=None):
        """Weighted sum of per-client gradients, accumulated client by client.

        Parameters
        ----------
        model : torch.nn.Module
            The architecture, evaluated functionally at ``flat_params``.
        flat_params : torch.Tensor
            The flat trainable weights (layout of ``adapters.torch.flatten_params``).
        batches : list of (x, y)
            One batch per client.
        weights : torch.Tensor, optional
            One weight per client (default uniform).

        Returns
        -------
        torch.Tensor
            Shape (d,).
        """
        w = self._weights(weights, len(batches), flat_params)
        total = torch.zeros_like(flat_params)
        for i, (x, y) in enumerate(batches):
            total.add_(_loss_grad(model, flat_params, x, y) * w[i])
        return total

    def gradients(self, model, flat_params, batches):
        """Per-client gradients stacked as (W, d).

        Parameters
        ----------
        model : torch.nn.Module
            The architecture, evaluated functionally at ``flat_params``.
        flat_params : torch.Tensor
            The flat trainable weights (layout of ``adapters.torch.flatten_params``).
        batches : list of (x, y)
            One batch per client.

        Returns
        -------
        torch.Tensor
            Shape (W, d).
        """
        out = torch.empty((len(batches), flat_params.shape[0]), dtype=flat_params.dtype,
                          device=flat_params.device)
        for i, (x, y) in enumerate(batches):
            out[i] = _loss_grad(model, flat_params, x, y)
        return out

    def local_train(self, model, flat_params, batches, *, lr, epochs=1, batch_size=None, orders=None,
                    weight_decay=0.0, augments=None, clip_norm=None):
        """Plain local SGD per client (minibatches in the given orders); returns deltas.

        Parameters
        ----------
        model : torch.nn.Module
            The architecture, evaluated functionally at ``flat_params``.
        flat_params : torch.Tensor
            The flat trainable weights (layout of ``adapters.torch.flatten_params``).
        batches : list of (x, y)
            One batch per client.
        lr, epochs, batch_size, orders, weight_decay, augments, clip_norm
            As in :meth:`ClientEngine.local_train`.

        Returns
        -------
        torch.Tensor
            ``final - flat_params`` per client, shape (W, d).
        """
        out = torch.empty((len(batches), flat_params.shape[0]), dtype=flat_params.dtype,
                          device=flat_params.device)
        for i, (x, y) in enumerate(batches):
            p = flat_params.detach().clone()
            bs = x.shape[0] if batch_size is None else batch_size
            for e in range(epochs):
                if orders is not None:
                    perm = torch.as_tensor(orders[i][e], device=x.device)
                    xe, ye = x[perm], y[perm]
                else:
                    xe, ye = x, y
                if augments is not None:
                    xe = augments[i](xe, e)
                for lo in range(0, x.shape[0], bs):
                    g = _loss_grad(model, p, xe[lo:lo + bs], ye[lo:lo + bs])
                    if clip_norm is not None:
                        g = g * clip_factor(torch.linalg.vector_norm(g), clip_norm)
                    if weight_decay:
                        g = g + weight_decay * p
                    p = p - lr * g
            out[i] = p - flat_params
        return out


def make_engine(name, **options):
    """Instantiate the engine registered under ``name`` (options with value None are dropped).

    Parameters
    ----------
    name : str
        A key of :data:`ENGINES` ("loop", "vmap").
    **options
        Constructor options of the engine (``max_clients_per_chunk``, ``memory_budget_mb``).

    Returns
    -------
    ClientEngine

    Raises
    ------
    ConfigError
        Unknown engine, or one that cannot be imported.
    """
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    module, _, attr = ENGINES[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"engine {name!r} ({ENGINES[name]}) cannot be loaded: {exc}") from exc
    return cls(**{k: v for k, v in options.items() if v is not None})
