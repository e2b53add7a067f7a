"""Linear compressors for FetchSGD: the Count Sketch and an exact stand-in.

FetchSGD needs only a linear compressor with the CountSketch API
(``insert``, ``insert_sparse``, ``merge``/``add_scaled``, ``scale``, ``zero``,
``copy``, ``query``, ``topk``, ``zero_coordinates``, ``table``).
:class:`IdentitySketch` implements that API exactly on a dense d-vector (its
"table" is ``(1, d)``): with it FetchSGD is true top-k with error feedback,
which is how the rule is tested against an independent oracle.
"""
import numbers

import numpy as np

from sketchlib import CountSketch, SketchError, finite_scalar
from sketchlib.backends import get_backend

__all__ = ["IdentitySketch", "make_compressor"]


class IdentitySketch:
    """The exact linear "sketch": stores the vector itself (table shape (1, d)).

    Parameters
    ----------
    d : int
        Dimension.
    dtype : {"float32", "float64"}, default "float32"
    backend : {"numpy", "numba", "cupy"}, default "numpy"
        Decides the array library (NumPy or CuPy) of the table; the table
        arithmetic goes through that backend's contract
        (:mod:`sketchlib.backends`).

    Raises
    ------
    SketchError
        A bad ``d`` or an unknown backend; ``BackendUnavailable`` for one that cannot run here.
    """

    def __init__(self, d, *, dtype="float32", backend="numpy"):
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0:
            raise SketchError(f"d must be a positive integer, got {d!r}")
        self._be = get_backend(backend)
        self._xp = self._be.array_module()
        self._d = int(d)
        self._dtype = np.dtype(dtype)
        self._table = self._be.zeros((1, self._d), self._dtype)

    d = property(lambda self: self._d)
    rows = property(lambda self: 1)
    cols = property(lambda self: self._d)
    dtype = property(lambda self: self._dtype)
    table = property(lambda self: self._table, doc="The (1, d) table (the vector), no copy.")
    backend = property(lambda self: self._be.NAME)
    device = property(lambda self: self._be.device_of(self._table))
    nbytes = property(lambda self: self._d * self._dtype.itemsize)

    def __repr__(self):
        return f"IdentitySketch(d={self._d}, backend={self.backend!r})"

    def signature(self):
        """Parameters that must match for two compressors to combine.

        Returns
        -------
        tuple
        """
        return ("identity", self._d, self._dtype.name)

    # ------------------------------------------------------------ construction
    def empty_like(self):
        """A zero compressor like this one.

        Returns
        -------
        IdentitySketch
        """
        return IdentitySketch(self._d, dtype=self._dtype, backend=self._be.NAME)

    def copy(self):
        """A deep copy.

        Returns
        -------
        IdentitySketch
        """
        new = IdentitySketch.__new__(IdentitySketch)
        new._be, new._xp, new._d, new._dtype = self._be, self._xp, self._d, self._dtype
        new._table = self._be.copy_table(self._table)
        return new

    def _keep(self, updated):
        """Adopt a table the backend returns (immutable arrays); None means updated in place."""
        if updated is not None:
            self._table = updated

    # ----------------------------------------------------------------- checks
    def _vec(self, x, shape, check_finite, what="x"):
        """Validate a floating array of the given shape."""
        if not hasattr(x, "shape") or tuple(x.shape) != tuple(shape):
            raise SketchError(f"{what} must have shape {tuple(shape)}, got {getattr(x, 'shape', None)}")
        if x.dtype.kind != "f":
            raise SketchError(f"{what} must have a floating dtype, got {x.dtype}")
        if check_finite and not self._be.all_finite(x):
            raise SketchError(f"{what} contains NaN or infinity; the sketch is unchanged")
        return x.astype(self._dtype, copy=False)

    def _idx(self, idx, check_bounds=True):
        """Validate coordinate indices (their range only with ``check_bounds``)."""
        if getattr(idx, "ndim", None) != 1 or idx.dtype.kind not in "iu":
            raise SketchError("indices must be a 1-D integer array")
        if check_bounds and idx.shape[0]:
            lo, hi = self._be.index_range(idx)
            if lo < 0 or hi >= self._d:
                raise SketchError(f"indices must lie in [0, {self._d})")
        return idx.astype(self._xp.int64, copy=False)

    def _same(self, other):
        """Raise unless ``other`` is an IdentitySketch of the same dimension."""
        if not isinstance(other, IdentitySketch) or other.signature() != self.signature():
            raise SketchError(f"cannot combine {self!r} with {other!r}")

    # ----------------------------------------------------------------- linear
    def insert(self, x, *, check_finite=True):
        """``v += x``.

        Parameters
        ----------
        x : floating array of shape (d,)
        check_finite : bool, default True

        Returns
        -------
        IdentitySketch
            ``self``.

        Raises
        ------
        SketchError
            A wrong shape, a non-floating dtype, or (with ``check_finite``) NaN/inf; nothing is modified.
        """
        self._table[0] += self._vec(x, (self._d,), check_finite)
        return self

    def insert_sparse(self, indices, values, *, check_finite=True, check_bounds=True):
        """``v[indices] += values`` (duplicates accumulate).

        Parameters
        ----------
        indices : integer array of shape (n,)
        values : floating array of shape (n,)
        check_finite : bool, default True
        check_bounds : bool, default True
            False skips the index range check (indices valid by construction), as in CountSketch.

        Returns
        -------
        IdentitySketch
            ``self``.

        Raises
        ------
        SketchError
            A wrong shape, a non-floating dtype, or (with ``check_finite``) NaN/inf, or bad indices; nothing is modified.
        """
        idx = self._idx(indices, check_bounds)
        vals = self._vec(values, (idx.shape[0],), check_finite, "values")
        if self._xp is np:
            np.add.at(self._table[0], idx, vals)
        else:  # CuPy
            import cupyx
            cupyx.scatter_add(self._table[0], idx, vals)
        return self

    def insert_batch(self, stack, *, check_finite=True):
        """``v += stack.sum(0)``.

        Parameters
        ----------
        stack : floating array of shape (n, d)
        check_finite : bool, default True

        Returns
        -------
        IdentitySketch
            ``self``.

        Raises
        ------
        SketchError
            A wrong shape, a non-floating dtype, or (with ``check_finite``) NaN/inf; nothing is modified.
        """
        stack = self._vec(stack, (getattr(stack, "shape", (0,))[0], self._d), check_finite, "stack")
        self._table[0] += stack.sum(axis=0)
        return self

    def zero(self):
        """``v = 0``.

        Returns
        -------
        IdentitySketch
            ``self``.
        """
        self._keep(self._be.fill_zero(self._table))
        return self

    def add_scaled(self, other, alpha):
        """``v += alpha * other``.

        Parameters
        ----------
        other : IdentitySketch
        alpha : real
            Finite.

        Returns
        -------
        IdentitySketch
            ``self``.

        Raises
        ------
        SketchError
            Another kind of compressor or dimension, or a non-finite ``alpha``.
        """
        self._same(other)
        self._keep(self._be.add_scaled(self._table, other._table, finite_scalar(alpha)))
        return self

    def merge(self, other):
        """``v += other``.

        Parameters
        ----------
        other : IdentitySketch

        Returns
        -------
        IdentitySketch
            ``self``.

        Raises
        ------
        SketchError
            Another kind of compressor or dimension.
        """
        return self.add_scaled(other, 1.0)

    def scale(self, alpha):
        """``v *= alpha``.

        Parameters
        ----------
        alpha : real
            Finite.

        Returns
        -------
        IdentitySketch
            ``self``.

        Raises
        ------
        SketchError
            A non-finite ``alpha``.
        """
        self._keep(self._be.scale(self._table, finite_scalar(alpha)))
        return self

    # ---------------------------------------------------------------- queries
    def query(self, indices, *, check_bounds=True):
        """Exact values at ``indices``.

        Parameters
        ----------
        indices : integer array of shape (n,)
        check_bounds : bool, default True
            False skips the range check (indices valid by construction).

        Returns
        -------
        array of shape (n,)

        Raises
        ------
        SketchError
            Indices that are not a 1-D integer array in ``[0, d)``.
        """
        return self._table[0][self._idx(indices, check_bounds)].copy()

    def estimate_all(self):
        """The whole vector (a copy).

        Returns
        -------
        array of shape (d,)
        """
        return self._table[0].copy()

    def topk(self, k):
        """Indices (by |value| descending) and values of the k largest magnitudes.

        Parameters
        ----------
        k : int
            In ``[1, d]``.

        Returns
        -------
        indices : int64 array of shape (k,)
        values : array of shape (k,)

        Raises
        ------
        SketchError
            A bad ``k``.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 < k <= self._d:
            raise SketchError(f"k must be an integer in [1, d={self._d}], got {k!r}")
        v = self._table[0]
        mag = self._xp.abs(v)
        part = self._xp.argpartition(-mag, k - 1)[:k] if k < self._d else self._xp.arange(self._d)
        order = self._xp.argsort(-mag[part], kind="stable")
        idx = part[order].astype(self._xp.int64)
        return idx, v[idx].copy()

    def zero_coordinates(self, indices, *, check_bounds=True):
        """Zero exactly the given coordinates (the exact analogue of bucket zeroing).

        Parameters
        ----------
        indices : integer array of shape (n,)
        check_bounds : bool, default True
            False skips the range check (indices valid by construction).

        Returns
        -------
        IdentitySketch
            ``self``.

        Raises
        ------
        SketchError
            Indices that are not a 1-D integer array in ``[0, d)``.
        """
        self._table[0][self._idx(indices, check_bounds)] = 0
        return self

    def l2_estimate(self):
        """Exact l2 norm.

        Returns
        -------
        float
        """
        return float(self._xp.linalg.norm(self._table[0]))


def make_compressor(kind, d, *, rows, cols, seed=0, backend="numpy", dtype="float32", hash_version="auto"):
    """A zero compressor: ``"count"`` (CountSketch) or ``"identity"`` (exact).

    Parameters
    ----------
    kind : {"count", "identity"}
    d : int
    rows, cols, seed, hash_version
        The CountSketch parameters (ignored by ``"identity"``).
    backend : str, default "numpy"
    dtype : {"float32", "float64"}, default "float32"

    Returns
    -------
    CountSketch or IdentitySketch

    Raises
    ------
    SketchError
        An unknown kind or bad parameters.
    """
    if kind == "count":
        return CountSketch(d, rows, cols, seed=seed, dtype=dtype, hash_version=hash_version, backend=backend)
    if kind == "identity":
        return IdentitySketch(d, dtype=dtype, backend=backend)
    raise SketchError(f"unknown compressor {kind!r}; choose 'count' or 'identity'")
