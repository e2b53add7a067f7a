"""Batched client engine: the W clients of a round computed together.

Three paths, all on the device of the flat parameter vector:

* ``gradient_sum`` -- the weighted sum of the clients' gradients.  By linearity
  of the gradient, ``sum_i w_i grad L_i = grad sum_i w_i L_i``, so the whole
  round is ONE forward/backward over the concatenated client batches, each
  sample weighted by ``w_i / n_i``.  Exact (up to float summation order), and
  what a linear rule (FetchSGD, uncompressed, true top-k) needs: sum, then
  sketch once.
* ``gradients`` -- one gradient per client, an ``(W, d)`` stack, from
  ``torch.func.vmap(torch.func.grad(...))`` over clients (samples padded to the
  largest client and masked out of the mean).  For rules that need the
  per-client result (local top-k, per-client clipping).
* ``local_train`` -- FedAvg's local SGD, every client's parameters stacked and
  stepped together under ``vmap``.

Memory control: a round is cut into chunks of clients, of at most
``max_clients_per_chunk`` clients, or as many as fit ``memory_budget_mb`` by a
measured estimate (the bytes autograd saves for one client's forward, plus the
per-client gradient rows).  Chunks run one after another; nothing syncs with
the host per client.
"""
from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad, vmap

from adapters.torch import num_elements, param_views

from ._clip import clip_factor
from ._flat import fixed_tensors
from .errors import ConfigError
from ._loss import per_sample_cross_entropy

__all__ = ["VmapEngine", "chunk_size_for_budget"]


def _check_layout(model, flat_params):
    """Number of trainable parameters; raise unless ``flat_params`` matches it."""
    d = num_elements(model, trainable_only=True)
    if not isinstance(flat_params, torch.Tensor) or flat_params.ndim != 1:
        raise ConfigError("flat_params must be a 1-D torch tensor")
    if flat_params.shape[0] != d:
        raise ConfigError(f"flat_params has {flat_params.shape[0]} entries but the model has "
                          f"{d} trainable parameters")
    if not flat_params.is_floating_point():
        raise ConfigError(f"flat_params must be floating point, got {flat_params.dtype}")
    return d


def _flatten_into(grads, out):
    """Write a dict of (batched) parameter gradients into the columns of ``out`` (no d-sized temporaries).

    Differentiating with respect to the parameters, not to slices of the flat
    vector, matters under vmap: the backward of each slice would allocate a full
    (clients, d) buffer per parameter tensor.
    """
    col = 0
    lead = out.shape[:-1]
    for g in grads.values():
        n = g[0].numel() if lead else g.numel()
        out[..., col:col + n] = g.reshape(*lead, n)
        col += n
    return out


def chunk_size_for_budget(budget_bytes, per_client_bytes, num_clients):
    """How many clients fit a memory budget (at least one, at most all).

    Parameters
    ----------
    budget_bytes : int
        Memory the engine may use for one chunk.
    per_client_bytes : int
        Estimated bytes one client adds to a chunk.
    num_clients : int
        Clients in the round.

    Returns
    -------
    int
    """
    if per_client_bytes <= 0:
        return max(1, num_clients)
    return int(max(1, min(num_clients, budget_bytes // per_client_bytes)))


class VmapEngine:
    """Client engine that computes the clients of a round together.

    Parameters
    ----------
    max_clients_per_chunk : int, optional
        Upper bound on clients computed at once.
    memory_budget_mb : float, optional
        Memory budget for one chunk; the chunk size is derived from a measured
        per-client estimate (see :meth:`per_client_bytes`).  With both options
        the smaller chunk wins; with neither, a round is one chunk.
    loss : {"cross_entropy"}, default "cross_entropy"
        Per-sample loss; a client's loss is the mean over its samples (a sequence sample's
        loss is the mean over its positions, see ``fedsim._loss``).

    Notes
    -----
    The model must be free of cross-sample interactions (no batch norm) and of
    randomness (no dropout) for padding and vmap to be exact; the project's
    models are.
    """

    name = "vmap"

    def __init__(self, *, max_clients_per_chunk=None, memory_budget_mb=None, loss="cross_entropy"):
        if max_clients_per_chunk is not None and (
                isinstance(max_clients_per_chunk, bool) or not isinstance(max_clients_per_chunk, int)
                or max_clients_per_chunk <= 0):
            raise ConfigError(f"max_clients_per_chunk must be a positive integer, got {max_clients_per_chunk!r}")
        if memory_budget_mb is not None and (
                isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float))
                or not math.isfinite(memory_budget_mb) or memory_budget_mb <= 0):
            raise ConfigError(f"memory_budget_mb must be a positive number, got {memory_budget_mb!r}")
        if loss != "cross_entropy":
            raise ConfigError(f"unknown loss {loss!r}; choose 'cross_entropy'")
        self.max_clients_per_chunk = max_clients_per_chunk
        self.memory_budget_mb = memory_budget_mb
        self.loss = loss
        self._saved_cache = {}

    def __repr__(self):
        return (f"VmapEngine(max_clients_per_chunk={self.max_clients_per_chunk}, "
                f"memory_budget_mb={self.memory_budget_mb})")

    # ------------------------------------------------------------- validation
    @staticmethod
    def _check(model, flat_params, batches):
        """Validate the common arguments; return d."""
        d = _check_layout(model, flat_params)
        if len(batches) == 0:
            raise ConfigError("no client batches given (a round needs at least one client)")
        for i, batch in enumerate(batches):
            if len(batch) != 2:
                raise ConfigError(f"client batch {i} must be an (x, y) pair")
            x, y = batch
            if x.shape[0] != y.shape[0]:
                raise ConfigError(f"client batch {i}: {x.shape[0]} inputs but {y.shape[0]} labels")
            if x.shape[0] == 0:
                raise ConfigError(f"client batch {i} is empty")
            if tuple(x.shape[1:]) != tuple(batches[0][0].shape[1:]):
                raise ConfigError(f"client batch {i} has sample shape {tuple(x.shape[1:])}, "
                                  f"client 0 has {tuple(batches[0][0].shape[1:])}")
        return d

    def _weights(self, weights, n, flat_params):
        """Client weights as a tensor on the parameters' device (default 1/W)."""
        if weights is None:
            return torch.full((n,), 1.0 / n, dtype=flat_params.dtype, device=flat_params.device)
        w = torch.as_tensor(weights, dtype=flat_params.dtype).to(flat_params.device)
        if w.shape != (n,):
            raise ConfigError(f"weights must have shape ({n},), got {tuple(w.shape)}")
        return w

    # --------------------------------------------------------------- chunking
    def per_client_bytes(self, model, flat_params, batches, d_rows=3):
        """Estimated bytes one client adds to a chunk.

        Measured, not guessed: the bytes autograd saves for the forward of one
        client's (largest) batch, counted with ``saved_tensors_hooks`` and
        cached per sample shape, plus ``d_rows`` d-length rows per client (3 for
        the per-client paths: the gradient being built, the per-parameter
        gradient pieces and the output row; 0 for the summed path).

        Parameters
        ----------
        model, flat_params, batches
            As in :meth:`gradient_sum`.
        d_rows : int, default 3

        Returns
        -------
        int
        """
        n_max = max(int(x.shape[0]) for x, _ in batches)
        x0 = batches[0][0]
        key = (id(model), tuple(x0.shape[1:]), str(flat_params.device), n_max)
        if key not in self._saved_cache:
            saved = [0]

            def pack(t):
                saved[0] += t.numel() * t.element_size()
                return t

            fixed = fixed_tensors(model)
            probe = flat_params.detach().clone().requires_grad_(True)
            xs = torch.zeros((n_max,) + tuple(x0.shape[1:]), dtype=x0.dtype, device=flat_params.device)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = functional_call(model, {**param_views(model, probe, trainable_only=True), **fixed}, (xs,))
            del out, probe
            self._saved_cache[key] = saved[0]
        return self._saved_cache[key] + d_rows * flat_params.numel() * flat_params.element_size()

    def chunk_size(self, model, flat_params, batches, d_rows=3):
        """Clients per chunk for this round under the engine's limits (see :meth:`per_client_bytes`).

        Parameters
        ----------
        model, flat_params, batches, d_rows
            As in :meth:`per_client_bytes`.

        Returns
        -------
        int
            At least 1.
        """
        n = len(batches)
        size = n
        if self.max_clients_per_chunk is not None:
            size = min(size, self.max_clients_per_chunk)
        if self.memory_budget_mb is not None:
            per = self.per_client_bytes(model, flat_params, batches, d_rows)
            size = min(size, chunk_size_for_budget(int(self.memory_budget_mb * 2**20), per, n))
        return max(1, size)

    # ----------------------------------------------------------------- losses
    def _client_loss(self, model, fixed):
        """``loss(params, x, y, mask)``: masked mean cross entropy of one client."""
        def loss(params, x, y, mask):
            logits = functional_call(model, {**params, **fixed}, (x,))
            per = per_sample_cross_entropy(logits, y)
            return (per * mask).sum() / mask.sum()
        return loss

    @staticmethod
    def _pad(batches, device, dtype):
        """Stack client batches padded to the largest; mask ``(W, n_max)`` marks real samples."""
        n_max = max(int(x.shape[0]) for x, _ in batches)
        if all(int(x.shape[0]) == n_max for x, _ in batches):
            xs = torch.stack([x.to(device, non_blocking=True) for x, _ in batches])
            ys = torch.stack([y.to(device, non_blocking=True) for _, y in batches])
            mask = torch.ones(ys.shape[:2], dtype=dtype, device=device)
            return xs, ys, mask
        x0, y0 = batches[0]
        xs = torch.zeros((len(batches), n_max) + tuple(x0.shape[1:]), dtype=x0.dtype, device=device)
        ys = torch.zeros((len(batches), n_max) + tuple(y0.shape[1:]), dtype=y0.dtype, device=device)
        mask = torch.zeros((len(batches), n_max), dtype=dtype, device=device)
        for i, (x, y) in enumerate(batches):
            n = int(x.shape[0])
            xs[i, :n] = x.to(device, non_blocking=True)
            ys[i, :n] = y.to(device, non_blocking=True)
            mask[i, :n] = 1
        return xs, ys, mask

    # ------------------------------------------------------------------ paths
    def gradient_sum(self, model, flat_params, batches, weights=None):
        """Weighted sum of the clients' gradients, ``sum_i w_i grad L_i``.

        Parameters
        ----------
        model : torch.nn.Module
            Architecture; its own parameter values are ignored.
        flat_params : torch.Tensor of shape (d,)
            The point where gradients are taken.
        batches : sequence of (x, y) tensor pairs
            One local batch per client.
        weights : sequence or tensor of shape (W,), optional
            Client weights; default ``1/W`` each.

        Returns
        -------
        torch.Tensor of shape (d,)
            On ``flat_params``' device and dtype.
        """
        self._check(model, flat_params, batches)
        fixed = fixed_tensors(model)
        w = self._weights(weights, len(batches), flat_params)
        total = torch.zeros_like(flat_params)
        params = param_views(model, flat_params.detach(), trainable_only=True)
        part = torch.empty_like(flat_params)
        for x, y, per_sample in self._union_chunks(model, flat_params, batches, w):
            def loss(p, x=x, y=y, per_sample=per_sample):
                logits = functional_call(model, {**p, **fixed}, (x,))
                return (per_sample_cross_entropy(logits, y) * per_sample).sum()

            total += _flatten_into(grad(loss)(params), part)
        return total

    def _union_chunks(self, model, flat_params, batches, w):
        """``(x, y, per-sample weight w_i / n_i)`` of chunks of clients, concatenated."""
        device = flat_params.device
        step = self.chunk_size(model, flat_params, batches, d_rows=0)
        for start in range(0, len(batches), step):
            part = batches[start:start + step]
            x = torch.cat([b[0] for b in part]).to(device, non_blocking=True)
            y = torch.cat([b[1] for b in part]).to(device, non_blocking=True)
            sizes = [int(b[0].shape[0]) for b in part]
            wp = w[start:start + step]
            if len(set(sizes)) == 1:
                per_sample = (wp / sizes[0]).repeat_interleave(sizes[0])
            else:
                # Pinned + non_blocking: the sizes reach the device without a host sync.
                counts = torch.tensor(sizes)
                if device.type == "cuda":
                    counts = counts.pin_memory()
                counts = counts.to(device, non_blocking=True)
                per_sample = torch.repeat_interleave(wp / counts.to(w.dtype), counts, output_size=int(x.shape[0]))
            yield x, y, per_sample

    def gradients(self, model, flat_params, batches):
        """One gradient per client (mean loss over its samples), as a ``(W, d)`` stack.

        Parameters
        ----------
        model, flat_params, batches
            As in :meth:`gradient_sum`.

        Returns
        -------
        torch.Tensor
            Shape (W, d).

        Raises
        ------
        ConfigError
            A bad layout or batch (see :meth:`gradient_sum`).
        """
        d = self._check(model, flat_params, batches)
        fixed = fixed_tensors(model)
        device = flat_params.device
        step = self.chunk_size(model, flat_params, batches)
        per_client = vmap(grad(self._client_loss(model, fixed)), in_dims=(None, 0, 0, 0))
        out = torch.empty((len(batches), d), dtype=flat_params.dtype, device=device)
        params = param_views(model, flat_params.detach(), trainable_only=True)
        for start in range(0, len(batches), step):
            xs, ys, mask = self._pad(batches[start:start + step], device, flat_params.dtype)
            _flatten_into(per_client(params, xs, ys, mask), out[start:start + xs.shape[0]])
        return out

    def local_train(self, model, flat_params, batches, *, lr, epochs=1, batch_size=None,
                    orders=None, weight_decay=0.0, augments=None, clip_norm=None):
        """FedAvg's local training of every client together; returns the ``(W, d)`` deltas.

        Each client starts from ``flat_params`` and runs ``epochs`` passes of
        plain SGD over its own samples in minibatches of ``batch_size`` (all of
        them when None), in the sample order ``orders[i][epoch]`` (a permutation
        of its samples; identity when None).  Clients with fewer minibatches than
        the largest simply stop stepping (their extra steps are masked to zero).

        Parameters
        ----------
        model, flat_params, batches
            As in :meth:`gradient_sum`; ``batches[i]`` is client i's whole local data.
        lr : float
            Local learning rate.
        epochs : int, default 1
        batch_size : int, optional
        orders : sequence of sequences of index tensors, optional
            ``orders[i][e]``: the permutation client i uses in epoch e.
        weight_decay : float, default 0.0
            Added to each local gradient as ``weight_decay * w``.
        augments : sequence of callables, optional
            ``augments[i](x, e)`` augments client i's samples of epoch e (after ordering).
        clip_norm : float, optional
            Clip each client's loss gradient of every local step to this L2 norm (before
            weight decay), torch's ``clip_grad_norm_`` rule.

        Returns
        -------
        torch.Tensor of shape (W, d)
            ``w_i_final - flat_params`` per client.

        Raises
        ------
        ConfigError
            A bad layout, batch, learning rate, epoch count, batch size or orders.
        """
        d = self._check(model, flat_params, batches)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"lr must be a positive finite number, got {lr!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size <= 0):
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if orders is not None and len(orders) != len(batches):
            raise ConfigError(f"orders has {len(orders)} entries for {len(batches)} clients")
        if augments is not None and len(augments) != len(batches):
            raise ConfigError(f"augments has {len(augments)} entries for {len(batches)} clients")
        fixed = fixed_tensors(model)
        device, dtype = flat_params.device, flat_params.dtype
        step_grad = vmap(grad(self._client_loss(model, fixed)), in_dims=(0, 0, 0, 0))
        out = torch.empty((len(batches), d), dtype=dtype, device=device)
        chunk = self.chunk_size(model, flat_params, batches)
        for start in range(0, len(batches), chunk):
            part = batches[start:start + chunk]
            part_orders = None if orders is None else orders[start:start + chunk]
            part_aug = None if augments is None else augments[start:start + chunk]
            final = self._local_chunk(step_grad, param_views(model, flat_params.detach(), trainable_only=True), part,
                                      part_orders, lr, epochs, batch_size, weight_decay, device, dtype, part_aug,
                                      clip_norm)
            rows = out[start:start + len(part)]
            _flatten_into(final, rows)
            rows -= flat_params.detach()
        return out

    @staticmethod
    def _local_chunk(step_grad, start, part, orders, lr, epochs, batch_size, weight_decay, device, dtype,
                     augments=None, clip_norm=None):
        """Local SGD of one chunk of clients; returns their final parameters (dict of stacks)."""
        sizes = [int(x.shape[0]) for x, _ in part]
        n_max = max(sizes)
        bs = n_max if batch_size is None else batch_size
        params = {name: p.unsqueeze(0).repeat(len(part), *([1] * p.ndim)) for name, p in start.items()}
        for epoch in range(epochs):
            # Each client's samples in this epoch's order, padded to n_max.
            ordered = []
            for i, (x, y) in enumerate(part):
                perm = None if orders is None else torch.as_tensor(orders[i][epoch]).to(x.device)
                xo, yo = (x, y) if perm is None else (x[perm], y[perm])
                ordered.append((xo if augments is None else augments[i](xo, epoch), yo))
            xs, ys, mask = VmapEngine._pad(ordered, device, dtype)
            for lo in range(0, n_max, bs):
                m = mask[:, lo:lo + bs]
                # A client with no sample left in this step does not move; its
                # mask becomes all ones only to keep the mean finite.
                active = m.sum(dim=1) > 0
                m = torch.where(active.unsqueeze(1), m, torch.ones_like(m))
                grads = step_grad(params, xs[:, lo:lo + bs], ys[:, lo:lo + bs], m)
                if clip_norm is not None:
                    norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()))
                    factor = clip_factor(norms, clip_norm)
                    grads = {n: g * factor.view(-1, *([1] * (g.ndim - 1))) for n, g in grads.items()}
                scale = (lr * active.to(dtype))
                for name, p in params.items():
                    g = grads[name] + weight_decay * p if weight_decay else grads[name]
                    params[name] = p - scale.view(-1, *([1] * (p.ndim - 1))) * g
        return params
