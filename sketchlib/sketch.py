"""The CountSketch class: parameters, validation and dispatch.

Every table operation lives in a backend (the contract is documented in
:mod:`sketchlib.backends`); this module validates every input once at the
edge, so a bad call raises before anything is modified, and then calls the
backend, whose functions trust what they get.  No array arithmetic happens here.
"""
import numbers

import numpy as np

from . import _backends
from ._hash import BLOCKED_WIDTH, HASH_VERSIONS, auto_hash_version, row_keys
from .errors import IncompatibleSketches, SketchError
from .validation import finite_scalar, positive_int

__all__ = ["CountSketch", "MAX_ROWS", "SUPPORTED_DTYPES"]

MAX_ROWS = 32
MAX_COLS = 2**31 - 1
SUPPORTED_DTYPES = ("float32", "float64")


class CountSketch:
    """A Count Sketch of a d-dimensional vector: ``rows`` x ``cols`` table of floats.

    Coordinates are hashed on the fly from ``(index, row key)``; nothing per
    coordinate is stored.  Two sketches with the same ``(d, rows, cols, seed,
    hash_version, dtype)`` use the same hashes wherever they were built, and
    combine linearly.

    Parameters
    ----------
    d : int
        Dimension of the sketched vectors (may exceed 2**31; indices are int64).
    rows : int
        Number of independent hash rows, 1 to ``MAX_ROWS`` (32).
    cols : int
        Buckets per row, 1 to 2**31 - 1.
    seed : int, default 0
        Hash seed in ``[0, 2**64)``.  The default is fixed so that sketches made
        in different processes merge unless told otherwise.
    dtype : {"float32", "float64"}, default "float32"
        Table dtype.
    hash_version : {"auto", 1, 2}, default "auto"
        Hash family (see ``sketchlib._hash``).  Version 2 hashes aligned blocks
        of four coordinates into aligned groups of four buckets, with the same
        collision probability per pair of coordinates as version 1; a GPU
        inserts with one 16-byte atomic per block and row instead of four
        scalar ones (3.4x faster inserts, 3x faster estimates on an H100).
        It needs ``cols`` divisible by 4.  ``"auto"`` takes 2 when ``cols`` is
        divisible by 4, else 1: a function of the parameters only, so equal
        parameters give equal hashes everywhere.  The version is part of
        :meth:`signature`; sketches of different versions never combine.
    backend : {"auto", "numpy", "numba", "cupy"} or a registered name, default "auto"
        Where the table lives.  ``"auto"`` picks the GPU (CuPy) when a CUDA
        device is usable, else Numba, else the NumPy reference (the usable
        backend of highest priority, :func:`sketchlib.backends.auto_backend`);
        the choice is in :attr:`backend`.

    Raises
    ------
    SketchError
        A bad parameter (``UnknownBackend`` for an unregistered backend name).
    BackendUnavailable
        The backend cannot run here (its library or device is missing).

    Notes
    -----
    Estimates are the median over rows of ``s_j(i) * T[j, h_j(i)]``; with an
    even number of rows it is the mean of the two middle values.  Inputs with
    NaN or infinity are rejected (``SketchError``) unless ``check_finite=False``
    is passed to the insert, in which case they poison the buckets they touch.
    Likewise ``check_bounds=False`` (``insert_sparse``, ``query``,
    ``zero_coordinates``) skips the index range check, for internal callers
    whose indices are valid by construction; types, shapes and devices are
    always checked.
    """

    __slots__ = ("_d", "_rows", "_cols", "_seed", "_dtype", "_backend", "_keys", "_hv", "_table")

    def __init__(self, d, rows, cols, *, seed=0, dtype="float32", hash_version="auto", backend="auto"):
        d = positive_int(d, "d", upper=2**62)
        rows = positive_int(rows, "rows", upper=MAX_ROWS)
        cols = positive_int(cols, "cols", upper=MAX_COLS)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
            raise SketchError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        try:
            dtype = np.dtype(dtype)
        except TypeError as exc:
            raise SketchError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}") from exc
        if dtype.name not in SUPPORTED_DTYPES:
            raise SketchError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype.name!r}")
        if isinstance(hash_version, str) and hash_version == "auto":
            hash_version = auto_hash_version(cols)
        if isinstance(hash_version, bool) or hash_version not in HASH_VERSIONS:
            raise SketchError(f"hash_version must be 'auto' or one of {HASH_VERSIONS}, got {hash_version!r}")
        if hash_version == 2 and cols % BLOCKED_WIDTH:
            raise SketchError(f"hash_version=2 needs cols divisible by {BLOCKED_WIDTH}, got cols={cols}")
        name = _backends.auto_backend() if backend == "auto" else backend
        self._backend = _backends.get_backend(name)
        self._d, self._rows, self._cols, self._seed, self._dtype = d, rows, cols, int(seed), dtype
        self._keys, self._hv = row_keys(self._seed, rows), int(hash_version)
        self._table = self._backend.zeros((rows, cols), dtype)

    # ------------------------------------------------------------------ identity
    d = property(lambda self: self._d, doc="Dimension of the sketched vectors.")
    rows = property(lambda self: self._rows, doc="Number of hash rows.")
    cols = property(lambda self: self._cols, doc="Buckets per row.")
    seed = property(lambda self: self._seed, doc="Hash seed.")
    dtype = property(lambda self: self._dtype, doc="Table dtype (numpy.dtype).")
    hash_version = property(lambda self: self._hv, doc="Version of the hash family (1 or 2).")
    backend = property(lambda self: self._backend.NAME, doc="Name of the backend holding the table.")

    @property
    def device(self):
        """Where the table lives: ``"cpu"`` or ``"cuda:N"``."""
        return self._backend.device_of(self._table)

    @property
    def table(self):
        """The ``(rows, cols)`` table as an array of the backend, without a copy."""
        return self._table

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Export the table through DLPack without a copy (``torch.from_dlpack(sketch)``)."""
        kwargs = {"stream": stream, "max_version": max_version, "dl_device": dl_device, "copy": copy}
        return self._table.__dlpack__(**{k: v for k, v in kwargs.items() if v is not None})

    def __dlpack_device__(self):
        """DLPack ``(device type, index)`` of the table."""
        return self._table.__dlpack_device__()

    @property
    def keys(self):
        """Per-row hash keys, a ``(rows, 2)`` uint32 NumPy array (read-only copy)."""
        keys = self._keys.copy()
        keys.flags.writeable = False
        return keys

    @property
    def nbytes(self):
        """Size of the table in bytes (what a client uploads)."""
        return self._rows * self._cols * self._dtype.itemsize

    def signature(self):
        """The tuple that must match for two sketches to combine.

        Returns
        -------
        tuple
            ``(d, rows, cols, seed, hash_version, dtype name)``.
        """
        return (self._d, self._rows, self._cols, self._seed, self._hv, self._dtype.name)

    def __repr__(self):
        return (f"CountSketch(d={self._d}, rows={self._rows}, cols={self._cols}, seed={self._seed}, "
                f"dtype={self._dtype.name!r}, hash_version={self._hv}, backend={self.backend!r}, device={self.device!r})")

    # -------------------------------------------------------------- construction
    def _with_table(self, table, backend=None):
        """A sketch with this one's parameters over ``table`` (no copy, no check)."""
        new = object.__new__(CountSketch)
        new._d, new._rows, new._cols, new._seed = self._d, self._rows, self._cols, self._seed
        new._dtype, new._keys, new._hv = self._dtype, self._keys, self._hv
        new._backend = backend or self._backend
        new._table = table
        return new

    def _keep(self, updated):
        """Adopt the table a backend returns (immutable arrays); None means it updated in place."""
        if updated is not None:
            self._table = updated

    def empty_like(self):
        """A zero sketch with the same parameters and backend.

        Returns
        -------
        CountSketch
        """
        return self._with_table(self._backend.zeros((self._rows, self._cols), self._dtype))

    def copy(self):
        """A deep copy (same backend).

        Returns
        -------
        CountSketch
        """
        return self._with_table(self._backend.copy_table(self._table))

    def to(self, backend):
        """A copy of this sketch on another backend (``"numpy"``, ``"numba"``, ``"cupy"``, ...).

        This is the one explicit way to move a sketch between devices; nothing
        is ever transferred implicitly.

        Parameters
        ----------
        backend : str
            A registered backend name.

        Returns
        -------
        CountSketch

        Raises
        ------
        UnknownBackend, BackendUnavailable
            As :func:`sketchlib.backends.get_backend`.
        """
        target = _backends.get_backend(backend)
        return self._with_table(target.from_numpy(self._backend.to_numpy(self._table)), target)

    @classmethod
    def from_table(cls, table, d, *, seed=0, hash_version="auto", backend=None):
        """Wrap an existing ``(rows, cols)`` table (no copy) as a sketch.

        The table's array type picks the backend unless ``backend`` names one
        that holds the same kind of array.

        Parameters
        ----------
        table : array of shape (rows, cols)
            C-contiguous, float32 or float64; the sketch writes into it.
        d : int
        seed : int, default 0
        hash_version : {"auto", 1, 2}, default "auto"
        backend : str, optional
            Default: :func:`sketchlib.backends.backend_for_array` of ``table``.

        Returns
        -------
        CountSketch

        Raises
        ------
        SketchError
            A table of another library than the backend's, not 2-D, not
            C-contiguous, or bad parameters (``UnsupportedArray`` for an array
            no backend holds).
        """
        name = backend or _backends.backend_for_array(table)
        lib = _backends.array_library_of(table)
        if _backends.library_of_backend(name) != lib:
            raise SketchError(f"a table from {lib!r} cannot back a {name!r} sketch")
        if getattr(table, "ndim", None) != 2:
            raise SketchError(f"table must be 2-D (rows, cols), got shape {getattr(table, 'shape', None)}")
        rows, cols = table.shape
        new = cls(d, rows, cols, seed=seed, dtype=table.dtype, hash_version=hash_version, backend=name)
        if not table.flags.c_contiguous:
            raise SketchError("table must be C-contiguous")
        new._table = table
        return new

    # ----------------------------------------------------------------- validation
    def _check_array(self, x, what):
        """Reject arrays of another library or device than the table's."""
        lib = _backends.array_library_of(x)
        mine = self._backend.ARRAY_LIBRARY
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise SketchError(f"{what} must be a {mine} array, got {type(x).__name__}")
        if lib != mine:
            raise SketchError(
                f"{what} is a {lib!r} array but this sketch lives on backend {self.backend!r} "
                f"({mine} arrays, device {self.device}); move one explicitly (sketch.to(...))")
        if self._backend.device_of(x) != self.device:
            raise SketchError(f"{what} is on {self._backend.device_of(x)} but the sketch is on {self.device}")

    def _floating(self, x, what, shape, check_finite):
        """Validate a floating input of the given shape; return it in the table dtype."""
        self._check_array(x, what)
        if x.dtype.kind != "f":
            raise SketchError(f"{what} must have a floating dtype, got {x.dtype}")
        if tuple(x.shape) != tuple(shape):
            raise SketchError(f"{what} must have shape {tuple(shape)}, got {tuple(x.shape)}")
        if check_finite and not self._backend.all_finite(x):
            raise SketchError(f"{what} contains NaN or infinity; the sketch is unchanged")
        return self._backend.as_input(x, self._dtype)

    def _indices(self, indices, what="indices", check_bounds=True):
        """Validate coordinate indices (their range only with ``check_bounds``); return contiguous int64."""
        self._check_array(indices, what)
        if indices.ndim != 1:
            raise SketchError(f"{what} must be 1-D, got shape {tuple(indices.shape)}")
        if indices.dtype.kind not in "iu":
            raise SketchError(f"{what} must have an integer dtype, got {indices.dtype}")
        if check_bounds and indices.shape[0]:
            lo, hi = self._backend.index_range(indices)
            if lo < 0 or hi >= self._d:
                raise SketchError(f"{what} must lie in [0, {self._d}), got values in [{lo}, {hi}]")
        return self._backend.as_input(indices, np.int64)

    def _same_kind(self, other):
        """Raise unless ``other`` is a sketch this one can combine with."""
        if not isinstance(other, CountSketch):
            raise IncompatibleSketches(f"expected a CountSketch, got {type(other).__name__}")
        if other.signature() != self.signature():
            names = ("d", "rows", "cols", "seed", "hash_version", "dtype")
            diff = [f"{n}: {a!r} != {b!r}" for n, a, b in zip(names, self.signature(), other.signature()) if a != b]
            raise IncompatibleSketches("sketches differ in " + ", ".join(diff))
        if other._backend.ARRAY_LIBRARY != self._backend.ARRAY_LIBRARY or other.device != self.device:
            raise IncompatibleSketches(
                f"sketches live on different devices/backends ({self.backend} on {self.device} vs "
                f"{other.backend} on {other.device}); move one with .to(...)")

    # -------------------------------------------------------------------- inserts
    def insert(self, x, *, check_finite=True):
        """Add the sketch of a dense vector: ``S += S(x)``.

        Parameters
        ----------
        x : array of shape (d,)
            Floating array of the sketch's array library and device.
        check_finite : bool, default True
            Reject NaN/inf (the sketch stays unchanged).

        Returns
        -------
        CountSketch
            ``self``, for chaining.

        Raises
        ------
        SketchError
            An array of another library or device, a wrong shape, a
            non-floating dtype, or (with ``check_finite``) NaN/inf; nothing is modified.
        """
        x = self._floating(x, "x", (self._d,), check_finite)
        self._keep(self._backend.insert_dense(self._table, x, self._keys, self._hv))
        return self

    def insert_sparse(self, indices, values, *, check_finite=True, check_bounds=True):
        """Add the sketch of a sparse vector given as ``(indices, values)``.

        Duplicated indices accumulate, as ``numpy.add.at`` would.

        Parameters
        ----------
        indices : integer array of shape (n,)
            Coordinates in ``[0, d)``.
        values : floating array of shape (n,)
        check_finite : bool, default True
        check_bounds : bool, default True
            Check that the indices lie in ``[0, d)`` (one host read on a GPU).
            Pass False only for indices valid by construction (e.g. from
            :meth:`topk` of a sketch of the same ``d``): an index out of range
            is then undefined behaviour (a wrong bucket or a memory error).

        Returns
        -------
        CountSketch
            ``self``.

        Raises
        ------
        SketchError
            As :meth:`insert`, and for indices that are not 1-D integers (with
            ``check_bounds``, not in ``[0, d)``).
        """
        if getattr(indices, "shape", None) is None or getattr(values, "shape", None) is None:
            raise SketchError("indices and values must be arrays")
        idx = self._indices(indices, check_bounds=check_bounds)
        vals = self._floating(values, "values", (idx.shape[0],), check_finite)
        if idx.shape[0]:
            self._keep(self._backend.insert_sparse(self._table, idx, vals, self._keys, self._hv))
        return self

    def insert_batch(self, stack, *, check_finite=True):
        """Add the sketch of the sum of the rows of an ``(n, d)`` stack, in one call.

        By linearity this equals inserting each row in turn.

        Parameters
        ----------
        stack : floating array of shape (n, d)
        check_finite : bool, default True

        Returns
        -------
        CountSketch
            ``self``.

        Raises
        ------
        SketchError
            An array of another library or device, a wrong shape, a
            non-floating dtype, or (with ``check_finite``) NaN/inf; nothing is modified.
        """
        stack = self._floating(stack, "stack", (getattr(stack, "shape", (0,))[0], self._d), check_finite)
        self._keep(self._backend.insert_stack_sum(self._table, stack, self._keys, self._hv))
        return self

    def sketch_each(self, stack, *, check_finite=True):
        """Sketch each row of an ``(n, d)`` stack into its own new sketch, in one call.

        Parameters
        ----------
        stack : floating array of shape (n, d)
        check_finite : bool, default True

        Returns
        -------
        list of CountSketch
            n sketches with this sketch's parameters; their tables are views of
            one allocation (the backend's ``zeros_tables``).

        Raises
        ------
        SketchError
            As :meth:`insert_batch`.
        """
        stack = self._floating(stack, "stack", (getattr(stack, "shape", (0,))[0], self._d), check_finite)
        tables = self._backend.zeros_tables(stack.shape[0], self._rows, self._cols, self._dtype)
        filled = self._backend.insert_stack_each(tables, stack, self._keys, self._hv)
        tables = tables if filled is None else filled
        return [self._with_table(table) for table in tables]

    # ---------------------------------------------------------- linear algebra
    def zero(self):
        """Set every bucket to zero (in place).

        Returns
        -------
        CountSketch
            ``self``.
        """
        self._keep(self._backend.fill_zero(self._table))
        return self

    def merge(self, other):
        """Add another sketch into this one (in place): the sketch of the sum.

        Parameters
        ----------
        other : CountSketch
            Same signature, backend library and device.

        Returns
        -------
        CountSketch
            ``self``.

        Raises
        ------
        IncompatibleSketches
            If ``other`` cannot be combined with this sketch.
        """
        return self.add_scaled(other, 1.0)

    def add_scaled(self, other, alpha):
        """``S += alpha * other`` in place.

        Parameters
        ----------
        other : CountSketch
            Same signature, backend library and device.
        alpha : real
            Finite.

        Returns
        -------
        CountSketch
            ``self``.

        Raises
        ------
        IncompatibleSketches
            If ``other`` cannot be combined with this sketch.
        SketchError
            If ``alpha`` is not a finite real number.
        """
        self._same_kind(other)
        self._keep(self._backend.add_scaled(self._table, other._table, finite_scalar(alpha)))
        return self

    def scale(self, alpha):
        """``S *= alpha`` in place.

        Parameters
        ----------
        alpha : real
            Finite.

        Returns
        -------
        CountSketch
            ``self``.

        Raises
        ------
        SketchError
            If ``alpha`` is not a finite real number.
        """
        self._keep(self._backend.scale(self._table, finite_scalar(alpha)))
        return self

    def _combined(self, other, alpha):
        """New sketch ``self + alpha * other`` (``alpha`` = 1 or -1: exactly ``a + b``, ``a - b``)."""
        self._same_kind(other)
        new = self.copy()
        new._keep(self._backend.add_scaled(new._table, other._table, alpha))
        return new

    def __add__(self, other):
        if not isinstance(other, CountSketch):
            return NotImplemented
        return self._combined(other, 1.0)

    def __sub__(self, other):
        if not isinstance(other, CountSketch):
            return NotImplemented
        return self._combined(other, -1.0)

    def __iadd__(self, other):
        if not isinstance(other, CountSketch):
            return NotImplemented
        return self.merge(other)

    def __isub__(self, other):
        if not isinstance(other, CountSketch):
            return NotImplemented
        return self.add_scaled(other, -1.0)

    def __mul__(self, alpha):
        if not isinstance(alpha, numbers.Real):
            return NotImplemented
        return self.copy().scale(alpha)

    __rmul__ = __mul__

    def __imul__(self, alpha):
        if not isinstance(alpha, numbers.Real):
            return NotImplemented
        return self.scale(alpha)

    def __neg__(self):
        return self * -1.0

    # ------------------------------------------------------------------ queries
    def query(self, indices, *, check_bounds=True):
        """Point estimates of the given coordinates (median over rows).

        Parameters
        ----------
        indices : integer array of shape (n,)
        check_bounds : bool, default True
            As in :meth:`insert_sparse`: False skips the range check (one host
            read on a GPU) for indices valid by construction.

        Returns
        -------
        array of shape (n,), the table dtype

        Raises
        ------
        SketchError
            Indices that are not a 1-D integer array of this sketch's library and device
            (with ``check_bounds``, in ``[0, d)``).
        """
        idx = self._indices(indices, check_bounds=check_bounds)
        return self._backend.query(self._table, idx, self._keys, self._hv)

    def estimate_all(self):
        """Estimates of all d coordinates as one d-length array.

        Returns
        -------
        array of shape (d,), the table dtype
        """
        return self._backend.estimate_all(self._table, self._d, self._keys, self._hv)

    def _k(self, k):
        """Validate a top-k count."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 < k <= self._d:
            raise SketchError(f"k must be an integer in [1, d={self._d}], got {k!r}")
        return int(k)

    def _threshold(self, threshold):
        """Validate a heavy-hitter threshold."""
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (
                np.isfinite(threshold) and threshold >= 0):
            raise SketchError(f"threshold must be a finite number >= 0, got {threshold!r}")
        return float(threshold)

    def topk(self, k):
        """The k coordinates with the largest ``|estimate|``.

        Parameters
        ----------
        k : int
            In ``[1, d]``.

        Returns
        -------
        indices : int64 array of shape (k,)
            Sorted by ``|estimate|`` descending (ties in any order).
        values : array of shape (k,)
            Their estimates, signs included.

        Raises
        ------
        SketchError
            If ``k`` is not an integer in ``[1, d]``.
        """
        return self._backend.topk(self._table, self._d, self._k(k), self._keys, self._hv)

    def heavy_hitters(self, threshold):
        """Coordinates with ``|estimate| >= threshold``, as ``(indices, values)``.

        Parameters
        ----------
        threshold : float
            Finite, ``>= 0``.

        Returns
        -------
        indices : int64 array
            Ascending.
        values : array
            Their estimates, negative heavy hitters included.

        Raises
        ------
        SketchError
            A threshold that is not a finite number ``>= 0``.
        """
        return self._backend.heavy(self._table, self._d, self._threshold(threshold), self._keys, self._hv)

    def unsketch(self, k=None, *, threshold=None):
        """Dense d-vector holding only the heavy hitters (top-k or by threshold).

        Parameters
        ----------
        k : int, optional
            Keep the top k (as :meth:`topk`).
        threshold : float, optional
            Keep every estimate with ``|estimate| >= threshold`` (as :meth:`heavy_hitters`).

        Returns
        -------
        array of shape (d,)
            The kept estimates in place, zeros elsewhere.

        Raises
        ------
        SketchError
            Neither or both of ``k`` and ``threshold``, or a bad value of either.
        """
        if (k is None) == (threshold is None):
            raise SketchError("give exactly one of k or threshold")
        if threshold is None:
            return self._backend.unsketch_topk(self._table, self._d, self._k(k), self._keys, self._hv)
        idx, vals = self.heavy_hitters(threshold)
        return self._backend.scatter_dense(self._d, idx, vals, self._dtype)

    def l2_estimate(self):
        """Estimate of the l2 norm of the sketched vector: ``sqrt(median_j sum_b T[j,b]^2)``.

        Returns
        -------
        float
        """
        return self._backend.l2_estimate(self._table)

    def zero_coordinates(self, indices, *, check_bounds=True):
        """Zero, in every row, each bucket that one of ``indices`` hashes to (in place).

        This is the reference FetchSGD code's way of removing an update from the
        error sketch (it also clears whatever else shares those buckets).

        Parameters
        ----------
        indices : integer array of shape (n,)
            In ``[0, d)``.
        check_bounds : bool, default True
            As in :meth:`insert_sparse`: False skips the range check (one host
            read on a GPU) for indices valid by construction.

        Returns
        -------
        CountSketch
            ``self``.

        Raises
        ------
        SketchError
            As :meth:`query`.
        """
        idx = self._indices(indices, check_bounds=check_bounds)
        if idx.shape[0]:
            self._keep(self._backend.zero_buckets(self._table, idx, self._keys, self._hv))
        return self

    # ------------------------------------------------------------ serialization
    def to_bytes(self):
        """Serialize to bytes (versioned header, table, CRC32). See ``sketchlib.serialize``.

        Returns
        -------
        bytes
        """
        from .serialize import sketch_to_bytes
        return sketch_to_bytes(self)

    @classmethod
    def from_bytes(cls, data, *, backend="auto"):
        """Rebuild a sketch from :meth:`to_bytes` output.

        Parameters
        ----------
        data : bytes-like
        backend : str, default "auto"

        Returns
        -------
        CountSketch

        Raises
        ------
        SerializationError
            Truncated, corrupted or foreign bytes.
        UnknownBackend, BackendUnavailable
            A bad ``backend``.
        """
        from .serialize import sketch_from_bytes
        return sketch_from_bytes(data, backend=backend)

    def save(self, path):
        """Write the sketch to a file atomically (temporary file + rename).

        Parameters
        ----------
        path : str or os.PathLike

        Raises
        ------
        OSError
            If the folder cannot be written.
        """
        from .serialize import save
        save(self, path)

    @classmethod
    def load(cls, path, *, backend="auto"):
        """Read a sketch written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
        backend : str, default "auto"

        Returns
        -------
        CountSketch

        Raises
        ------
        SerializationError
            A file that does not hold a valid sketch.
        """
        from .serialize import load
        return load(path, backend=backend)
