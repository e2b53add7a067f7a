"""FetchSGD (Rothchild et al., ICML 2020, Algorithm 1), with the reference code's variants.

Per round: ``S = sketch(sum_i w_i g_i)`` (sum-then-sketch: exact by linearity),
``S_u <- rho S_u + S``, ``S_e <- S_e + lr S_u`` (``lr_placement="inside"``) or
``S_e <- S_e + S_u`` (``"after"``, update scaled by lr), ``D = top-k(U(S_e))``,
then remove D from the error: ``S_e -= S(D)`` (``zeroing="subtract"``) or zero
every bucket D touches in ``S_e`` and ``S_u`` (``"buckets"``, the reference
code).  ``second_round = p > 0`` takes ``p k`` candidates from the sketch and
fetches the round's exact gradient values there (``p k`` indices down, ``p k``
values up per client); a candidate's value is the sketch's estimate of the
error without this round plus this round's exact contribution, and the exact
top-k of those is applied.
"""
from dataclasses import dataclass

import torch

from adapters.torch import backend_for_device, cuda_stream_scope, from_array, to_array

from ..compressors import make_compressor
from ..errors import ConfigError
from ._base import ServerRule

__all__ = ["FetchSGD", "FetchSGDState"]


@dataclass
class FetchSGDState:
    """Momentum and error sketches (any linear compressor with the CountSketch API)."""

    momentum: object
    error: object


class FetchSGD(ServerRule):
    """Sketched momentum and error feedback; stateless clients upload one sketch each."""

    name = "fetchsgd"

    def __init__(self, cfg, d, **kw):
        super().__init__(cfg, d, **kw)
        if cfg.k > d:
            raise ConfigError(f"rule.k = {cfg.k} exceeds the model's d = {d}")
        backend = cfg.sketch_backend
        if backend == "auto":
            backend = backend_for_device(self.device)
        self._new = lambda: make_compressor(cfg.sketch, d, rows=cfg.rows, cols=cfg.cols,
                                            seed=cfg.sketch_seed, backend=backend,
                                            hash_version=cfg.sketch_hash_version or "auto")
        self.state = FetchSGDState(self._new(), self._new())
        self._round_sketch = self._new()

    def upload_bytes(self):
        """The sketch table (plus p k exact values with a second round)."""
        extra = self.cfg.second_round * self.cfg.k * self.value_bytes
        return self._round_sketch.rows * self._round_sketch.cols * self.value_bytes + extra

    def extra_download_bytes(self):
        """The p k candidate indices of the second round."""
        return self.cfg.second_round * self.cfg.k * self.index_bytes

    def round(self, ctx):
        """One FetchSGD step; returns the sparse update as a dense d-vector."""
        # CuPy kernels must run on torch's current stream, or they race with torch's work.
        with cuda_stream_scope(self.device):
            return self._round(ctx)

    def new_sketch(self):
        """A zero sketch of this rule's kind and shape (what one client uploads).

        Returns
        -------
        compressor
            A new CountSketch (or IdentitySketch) with the rule's rows, cols, seed, hash version.
        """
        return self._new()

    def _round(self, ctx):
        """Sketch the round's gradient sum, then :meth:`step_from_sketch` (inside the stream scope)."""
        g = ctx.gradient_sum()
        s = self._round_sketch.zero()
        s.insert(to_array(g))
        ctx.allreduce_(from_array(s.table))
        exact = (lambda cand_t: ctx.allreduce_(g[cand_t].clone())) if self.cfg.second_round else None
        return self.step_from_sketch(s, ctx.lr, exact_values=exact)

    def step_from_sketch(self, s, lr, *, exact_values=None):
        """The server step from this round's summed sketch ``s`` (clients sketched, server merged).

        Parameters
        ----------
        s : compressor
            The weighted sum of the clients' sketches, like :meth:`new_sketch`; not kept.
        lr : float
            The round's learning rate.
        exact_values : callable, optional
            ``exact_values(indices_tensor) -> tensor``: the round's exact gradient sum at those
            coordinates; required when ``second_round > 0``.

        Returns
        -------
        torch.Tensor
            The sparse update as a dense d-vector (``w <- w - update``).

        Raises
        ------
        ConfigError
            ``second_round > 0`` without ``exact_values`` (nothing has changed then).
        """
        cfg = self.cfg
        if cfg.second_round and exact_values is None:
            raise ConfigError("rule.second_round > 0 needs the clients' exact values at the candidates "
                              "(a second exchange); this caller cannot provide them: set second_round = 0")
        with cuda_stream_scope(self.device):
            su, se = self.state.momentum, self.state.error
            su.scale(cfg.momentum).merge(s)
            inside = cfg.lr_placement == "inside"
            se.add_scaled(su, lr) if inside else se.merge(su)
            if cfg.second_round:
                idx, vals = self._second_round(exact_values, s, lr if inside else 1.0)
            else:
                idx, vals = se.topk(cfg.k)
            if cfg.zeroing == "subtract":
                se.insert_sparse(idx, -vals)
            else:
                se.zero_coordinates(idx)
                su.zero_coordinates(idx)
            update = self.zeros()
            idx_t, vals_t = from_array(idx), from_array(vals).to(torch.float32)
            update[idx_t] = vals_t if inside else vals_t * lr
            return update

    def _second_round(self, exact_values, s, c):
        """Exact top-k among p k candidates (see the module docstring)."""
        cfg = self.cfg
        cand, _ = self.state.error.topk(min(self.d, cfg.second_round * cfg.k))
        cand_t = from_array(cand)
        exact = exact_values(cand_t)
        rest = self.state.error.copy().add_scaled(s, -c)
        est = from_array(rest.query(cand)).to(torch.float32) + c * exact
        order = torch.topk(est.abs(), cfg.k, sorted=True).indices
        idx_t, vals_t = cand_t[order].contiguous(), est[order].contiguous()
        return to_array(idx_t), to_array(vals_t.to(dtype=torch.float32))
