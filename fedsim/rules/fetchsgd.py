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
import typing
from dataclasses import dataclass

import torch

from adapters.torch import backend_for_device, cuda_stream_scope, from_array, to_array

from .._fields import check
from ..compressors import make_compressor
from ..errors import ConfigError
from ._base import ServerRule
from ._params import ErrorFeedbackParams, knob
from ._registry import register_rule

__all__ = ["FetchSGD", "FetchSGDParams", "FetchSGDState"]

SKETCH_KINDS = ("count", "identity")
SKETCH_BACKENDS = ("auto", "numpy", "numba", "cupy")
ZEROINGS = ("buckets", "subtract")


@dataclass
class FetchSGDParams(ErrorFeedbackParams):
    """FetchSGD: the sketch's shape and kind, zeroing, lr placement, second round."""

    rows: int = knob(5, "sketch rows")
    cols: int = knob(1000, "sketch columns")
    sketch: str = knob("count", "'count' (Count Sketch) or 'identity' (exact: FetchSGD becomes true top-k)")
    sketch_seed: int = knob(0, "seed of the sketch's hashes")
    sketch_backend: str = knob("auto", "auto, numpy, numba or cupy (auto: by the run's device)")
    sketch_hash_version: typing.Optional[int] = knob(None, "1 or 2; none: 2 when cols % 4 == 0, else 1")
    zeroing: str = knob("buckets", "'buckets' (zero the touched buckets, reference code) or 'subtract' "
                                   "(Algorithm 1)")
    second_round: int = knob(0, "p > 0 fetches the exact values of p*k candidates")

    def validate(self):
        """Positive sketch shape, known kinds, hash version 2 only with cols % 4 == 0."""
        super().validate()
        check(self.rows > 0, f"rule.rows must be positive, got {self.rows}")
        check(self.cols > 0, f"rule.cols must be positive, got {self.cols}")
        check(self.sketch in SKETCH_KINDS, f"rule.sketch must be one of {SKETCH_KINDS}, got {self.sketch!r}")
        check(self.sketch_backend in SKETCH_BACKENDS,
              f"rule.sketch_backend must be auto, numpy, numba or cupy, got {self.sketch_backend!r}")
        check(self.sketch_hash_version in (None, 1, 2),
              f"rule.sketch_hash_version must be 1 or 2, got {self.sketch_hash_version!r}")
        check(self.sketch_hash_version != 2 or self.cols % 4 == 0,
              f"rule.sketch_hash_version=2 needs rule.cols divisible by 4, got {self.cols}")
        check(self.zeroing in ZEROINGS, f"rule.zeroing must be one of {ZEROINGS}, got {self.zeroing!r}")
        check(self.second_round >= 0, f"rule.second_round must be >= 0, got {self.second_round}")


@dataclass
class FetchSGDState:
    """Momentum and error sketches (any linear compressor with the CountSketch API)."""

    momentum: object
    error: object


@register_rule
class FetchSGD(ServerRule):
    """Sketched momentum and error feedback; stateless clients upload one sketch each.

    Parameters
    ----------
    params : FetchSGDParams
    d : int
        Number of trainable parameters.
    **kw
        See :class:`~fedsim.rules.ServerRule`.

    Raises
    ------
    ConfigError
        ``k > d``.
    """

    name = "fetchsgd"
    Params = FetchSGDParams

    def __init__(self, params, d, **kw):
        super().__init__(params, d, **kw)
        p = params
        backend = p.sketch_backend
        if backend == "auto":
            backend = backend_for_device(self.device)
        self._new = lambda: make_compressor(p.sketch, d, rows=p.rows, cols=p.cols,
                                            seed=p.sketch_seed, backend=backend,
                                            hash_version=p.sketch_hash_version or "auto")
        self.state = FetchSGDState(self._new(), self._new())
        self._round_sketch = self._new()

    def upload_bytes(self):
        """The sketch table (plus p k exact values with a second round).

        Returns
        -------
        int
        """
        extra = self.params.second_round * self.params.k * self.value_bytes
        return self._round_sketch.rows * self._round_sketch.cols * self.value_bytes + extra

    def extra_download_bytes(self):
        """The p k candidate indices of the second round.

        Returns
        -------
        int
        """
        return self.params.second_round * self.params.k * self.index_bytes

    def round(self, ctx):
        """One FetchSGD step; returns the sparse update as a dense d-vector.

        Parameters
        ----------
        ctx : fedsim.RoundContext

        Returns
        -------
        torch.Tensor
            The update (``w <- w - update``).
        """
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
        s.insert(to_array(g), check_finite=False)   # the round context has checked g (all ranks agree)
        ctx.allreduce_(from_array(s.table))
        exact = (lambda cand_t: ctx.allreduce_(g[cand_t].clone())) if self.params.second_round else None
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
        cfg = self.params
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
            # idx comes from a top-k of a sketch of this d: in range by construction, so the trusted
            # path skips the range checks (a host read each on a GPU).  Non-finite vals mean the
            # run diverged; the simulator's check of the new weights reports it.
            if cfg.zeroing == "subtract":
                se.insert_sparse(idx, -vals, check_finite=False, check_bounds=False)
            else:
                se.zero_coordinates(idx, check_bounds=False)
                su.zero_coordinates(idx, check_bounds=False)
            update = self.zeros()
            idx_t, vals_t = from_array(idx), from_array(vals).to(torch.float32)
            update[idx_t] = vals_t if inside else vals_t * lr
            return update

    def _second_round(self, exact_values, s, c):
        """Exact top-k among p k candidates (see the module docstring)."""
        p = self.params
        cand, _ = self.state.error.topk(min(self.d, p.second_round * p.k))
        cand_t = from_array(cand)
        exact = exact_values(cand_t)
        rest = self.state.error.copy().add_scaled(s, -c)
        est = from_array(rest.query(cand, check_bounds=False)).to(torch.float32) + c * exact
        order = torch.topk(est.abs(), p.k, sorted=True).indices
        idx_t, vals_t = cand_t[order].contiguous(), est[order].contiguous()
        return to_array(idx_t), to_array(vals_t.to(dtype=torch.float32))
