"""The CountSketch class: parameters, validation and dispatch.

Every table operation lives in a backend (the contract is documented in
:mod:`sketchlib.backends`); this module validates every input once at the
edge, so a bad call raises before anything is modified, and then calls the
backend, whose functions trust what they get.  No array arithmetic happens here.
"""
import contextlib
import functools
import math
import numbers
import sys
import threading

import numpy as np

from . import _backends
from ._hash import BLOCKED_WIDTH, HASH_VERSIONS, auto_hash_version, row_keys
from .errors import IncompatibleSketches, SketchError, UnsupportedOperand
from .validation import finite_scalar, positive_int

__all__ = ["CountSketch", "MAX_ROWS", "SUPPORTED_DTYPES"]

from ._backends._cuda_src import MAX_ROWS  # noqa: E402  (one source for Python and CUDA)
MAX_COLS = 2**31 - 1
SUPPORTED_DTYPES = ("float32", "float64")
# abs_stats may sum |x| in x's dtype: its relative error is below this (contract).
_SUM_SLACK = 1e-3


def _locked(method):
    """Run a method under the sketch's lock (one table operation at a time)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class _Both:
    """Hold the locks of two sketches, taken in a global order (no deadlock between a.merge(b), b.merge(a))."""

    def __init__(self, a, b):
        self._locks = [a._lock] if a is b else [s._lock for s in sorted((a, b), key=id)]

    def __enter__(self):
        for lock in self._locks:
            lock.acquire()

    def __exit__(self, *exc):
        for lock in reversed(self._locks):
            lock.release()


def _adds(mass):
    """The bound update of an insert that adds at most ``mass`` to any bucket (None: unchecked)."""
    return None if mass is None else (lambda bound: bound + mass)


def _plain(x, what):
    """Refuse masked arrays; view other ndarray subclasses (np.matrix, memmap subclasses...) as ndarray."""
    ma = sys.modules.get("numpy.ma")
    if ma is not None and isinstance(x, ma.MaskedArray):
        raise SketchError(f"{what} is a masked array; sketches do not guess what a mask means: pass "
                          f"{what}.filled(0) (or the value you mean) explicitly")
    if isinstance(x, np.ndarray) and type(x) is not np.ndarray:
        return x.view(np.ndarray)
    return x


def _restore(params, backend, host_table, bound):
    """Unpickle a sketch: its table copied onto ``backend`` (see ``CountSketch.__reduce__``)."""
    d, rows, cols, seed, hv, dtype = params
    try:
        target = _backends.get_backend(backend)
    except SketchError as exc:
        raise type(exc)(f"cannot unpickle a sketch of backend {backend!r} here: {exc}; pickle "
                        f"sketch.to('numpy') instead, and move it with .to(...) after loading") from None
    new = object.__new__(CountSketch)
    new._d, new._rows, new._cols, new._seed, new._dtype = d, rows, cols, seed, np.dtype(dtype)
    new._keys, new._hv, new._backend = row_keys(seed, rows), hv, target
    new._table, new._bound, new._lock = target.from_numpy(host_table), bound, threading.RLock()
    return new


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

    Guarantees: every method is atomic with respect to the others (a
    per-sketch lock: concurrent inserts from several threads give the serial
    result, readers never see half an insert; only direct use of
    :attr:`table` bypasses it); a mutating call that raises, a bad argument or
    a ``KeyboardInterrupt``, leaves the table as before or fully updated; a
    finite input or factor whose result would overflow the table dtype is
    refused with ``SketchError`` (the table is unchanged) unless
    ``check_finite=False``.  Copies (``copy.copy`` included) never share the
    table; pickling copies the table to the host and back.

    ``check_bounds=False`` (``insert_sparse``, ``query``,
    ``zero_coordinates``) skips the index range check, for internal callers
    whose indices are valid by construction; types, shapes and devices are
    always checked.
    """

    __slots__ = ("_d", "_rows", "_cols", "_seed", "_dtype", "_backend", "_keys", "_hv", "_table",
                 "_bound", "_lock")

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
        dtype = np.dtype(dtype.name)    # native byte order: tables always are
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
        # An upper bound on max|table| kept by every operation (None: unknown, read when needed);
        # it makes the overflow check of an insert cost no pass over the table.
        self._bound = 0.0
        self._lock = threading.RLock()

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

    @_locked
    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Export the table through DLPack without a copy (``torch.from_dlpack(sketch)``)."""
        kwargs = {"stream": stream, "max_version": max_version, "dl_device": dl_device, "copy": copy}
        return self._table.__dlpack__(**{k: v for k, v in kwargs.items() if v is not None})

    @contextlib.contextmanager
    def writing_table(self):
        """Context manager for writing into the table from outside the sketch.

        For code that changes :attr:`table` directly (a collective through a
        DLPack view, another library's kernel): it holds the sketch's lock,
        so no sketch operation runs meanwhile, and on exit makes the sketch
        forget its bound on ``max |table|``, so the overflow check of the
        next operation reads the table again.

        Yields
        ------
        array
            The table (no copy).
        """
        with self._lock:
            try:
                yield self._table
            finally:
                self._bound = None

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
    def _with_table(self, table, backend=None, bound=None):
        """A sketch with this one's parameters over ``table`` (no copy, no check)."""
        new = object.__new__(CountSketch)
        new._d, new._rows, new._cols, new._seed = self._d, self._rows, self._cols, self._seed
        new._dtype, new._keys, new._hv = self._dtype, self._keys, self._hv
        new._backend = backend or self._backend
        new._table, new._bound, new._lock = table, bound, threading.RLock()
        return new

    def __reduce__(self):
        """Pickle the parameters, the backend name and a host copy of the table (never the lock)."""
        with self._lock:
            host = np.array(self._backend.to_numpy(self._table), copy=True)
            return _restore, (self.signature(), self.backend, host, self._bound)

    def __copy__(self):
        """A deep copy: a shallow one would share the mutable table."""
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

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
        return self._with_table(self._backend.zeros((self._rows, self._cols), self._dtype), bound=0.0)

    @_locked
    def copy(self):
        """A deep copy (same backend); ``copy.copy`` and ``copy.deepcopy`` make the same.

        Returns
        -------
        CountSketch
        """
        return self._with_table(self._backend.copy_table(self._table), bound=self._bound)

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
        with self._lock:
            return self._with_table(target.from_numpy(self._backend.to_numpy(self._table)), target, self._bound)

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
            C-contiguous, read-only, of non-native byte order, a masked array,
            or bad parameters (``UnsupportedArray`` for an array no backend holds).
        """
        table = _plain(table, "table")
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
        if not getattr(table.flags, "writeable", True):
            raise SketchError("table is read-only; the sketch writes into it (pass a writeable copy)")
        if not table.dtype.isnative:
            raise SketchError(f"table has non-native byte order ({table.dtype.str}); pass "
                              f"table.astype({table.dtype.name!r}) (native) instead")
        new._table, new._bound = table, None
        return new

    # ----------------------------------------------------------------- validation
    def _check_array(self, x, what):
        """Reject arrays of another library or device than the table's; return ``x`` (ndarray subclasses as ndarray)."""
        x = _plain(x, what)
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
        return x

    def _floating(self, x, what, shape, check_finite):
        """Validate a floating input of the given shape.

        Returns ``(x in the table dtype, mass)``: ``mass`` bounds what any bucket
        can gain (``sum |x|``, None when unchecked); the table's max ``|T|`` is
        read in the same host transfer when :attr:`_bound` is unknown.
        """
        x = self._check_array(x, what)
        if x.dtype.kind != "f":
            raise SketchError(f"{what} must have a floating dtype, got {x.dtype}")
        if len(shape) != x.ndim or tuple(x.shape) != tuple(shape):
            raise SketchError(f"{what} must have shape {tuple(shape)}, got {tuple(x.shape)}")
        mass = None
        if check_finite:
            mass, tmax = self._backend.abs_stats(x, self._table if self._bound is None else None)
            if not math.isfinite(mass):
                if not self._backend.all_finite(x):
                    raise SketchError(f"{what} contains NaN or infinity; the sketch is unchanged")
                mass = math.inf                 # finite but huge: the exact check decides
            mass *= 1.0 + _SUM_SLACK
            if self._bound is None:
                self._bound = tmax
        return self._backend.as_input(x, self._dtype), mass

    def _stack_shape(self, stack, what="stack"):
        """The ``(n, d)`` shape a stack must have (any n), or raise for a non-2-D one."""
        shape = getattr(stack, "shape", None)
        if shape is None or len(shape) != 2:
            raise SketchError(f"{what} must be a 2-D (n, d={self._d}) array, got shape {shape}")
        return (shape[0], self._d)

    # ------------------------------------------------------------------ overflow
    def _limit(self):
        """Largest table magnitude the overflow check allows without an exact look (2x margin for rounding)."""
        return float(np.finfo(self._dtype).max) / 2

    def _table_max(self, table=None):
        """Exact ``max |T|`` (one host read); sets :attr:`_bound` when it is this sketch's table."""
        value = self._backend.abs_stats(None, self._table if table is None else table)[1]
        if table is None:
            self._bound = value
        return value

    def _overflow(self, what):
        """The error of a refused operation."""
        return SketchError(f"{what} would overflow the {self._dtype.name} table (|values| beyond "
                           f"{np.finfo(self._dtype).max:.3g}); the sketch is unchanged")

    def _apply(self, op, grow, what, shrinks=False):
        """Run ``op(table)`` (returns None or the new table) unless its result would overflow.

        ``grow(bound)`` bounds ``max |T|`` after the operation given a bound
        before it (None: the caller chose not to check, ``check_finite=False``).
        ``shrinks``: the operation never increases ``max |T|`` (e.g. scaling by
        ``|alpha| <= 1``), so it cannot overflow and needs no bound (no host read).
        Cheap path: the tracked bound says nothing can overflow.  Else the
        exact max is read; if still in doubt, ``op`` runs on a copy first and
        the table is updated only if that copy is finite.  A table that
        already holds NaN/inf has nothing left to protect.
        """
        if grow is None or shrinks:
            bound, self._bound = self._bound, None   # unknown while the table changes (interrupts)
            self._keep(op(self._table))
            self._bound = grow(bound) if shrinks and bound is not None else None
            return
        limit = self._limit()
        bound = self._table_max() if self._bound is None else self._bound
        if not math.isfinite(bound):
            self._bound = None
            self._keep(op(self._table))
            return
        new_bound = grow(bound)
        if not new_bound <= limit:
            new_bound = grow(self._table_max())   # the tracked bound may be loose: read the exact one
            if not new_bound <= limit:
                trial = self._backend.copy_table(self._table)
                with np.errstate(over="ignore", invalid="ignore"):   # the overflow is what we look for
                    result = op(trial)
                new_bound = self._table_max(result if result is not None else trial)
                if not math.isfinite(new_bound):
                    raise self._overflow(what)
        self._bound = None                        # unknown while the table changes (interrupts)
        self._keep(op(self._table))
        self._bound = new_bound

    def _indices(self, indices, what="indices", check_bounds=True):
        """Validate coordinate indices (their range only with ``check_bounds``); return contiguous int64."""
        indices = self._check_array(indices, what)
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
    @_locked
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
            non-floating dtype, or (with ``check_finite``) NaN/inf or a result that
            would overflow the table dtype; nothing is modified.
        """
        x, mass = self._floating(x, "x", (self._d,), check_finite)
        self._apply(lambda t: self._backend.insert_dense(t, x, self._keys, self._hv), _adds(mass), "this insert")
        return self

    @_locked
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
        vals, mass = self._floating(values, "values", (idx.shape[0],), check_finite)
        if idx.shape[0]:
            self._apply(lambda t: self._backend.insert_sparse(t, idx, vals, self._keys, self._hv), _adds(mass),
                        "this insert")
        return self

    @_locked
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
            non-floating dtype, or (with ``check_finite``) NaN/inf or a result that
            would overflow the table dtype; nothing is modified.
        """
        stack, mass = self._floating(stack, "stack", self._stack_shape(stack), check_finite)
        self._apply(lambda t: self._backend.insert_stack_sum(t, stack, self._keys, self._hv), _adds(mass),
                    "this insert")
        return self

    @_locked
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
        stack, mass = self._floating(stack, "stack", self._stack_shape(stack), check_finite)
        tables = self._backend.zeros_tables(stack.shape[0], self._rows, self._cols, self._dtype)
        filled = self._backend.insert_stack_each(tables, stack, self._keys, self._hv)
        tables = tables if filled is None else filled
        if mass is not None and not mass <= self._limit() and stack.shape[0]:
            mass = self._table_max(tables)       # each table gains at most sum|x|; if in doubt, look
            if not math.isfinite(mass):
                raise self._overflow("sketching this stack")
        return [self._with_table(table, bound=mass) for table in tables]

    # ---------------------------------------------------------- linear algebra
    @_locked
    def zero(self):
        """Set every bucket to zero (in place).

        Returns
        -------
        CountSketch
            ``self``.
        """
        self._keep(self._backend.fill_zero(self._table))
        self._bound = 0.0
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

    def add_scaled(self, other, alpha):   # both locks, in a global order (_Both)
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
            If ``alpha`` is not a finite real number (in the table dtype), or the
            result would overflow the table dtype (the sketch is unchanged).
        """
        self._same_kind(other)
        alpha = self._factor(alpha)
        with _Both(self, other):
            grow = lambda b: b + abs(alpha) * (other._table_max() if other._bound is None else other._bound)  # noqa: E731
            if other is self:
                grow = lambda b: b * (1.0 + abs(alpha))  # noqa: E731
            self._apply(lambda t: self._backend.add_scaled(t, other._table, alpha), grow,
                        f"adding {alpha!r} times that sketch")
        return self

    @_locked
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
            If ``alpha`` is not a finite real number (in the table dtype), or the
            result would overflow the table dtype (the sketch is unchanged).
        """
        alpha = self._factor(alpha)
        self._apply(lambda t: self._backend.scale(t, alpha), lambda b: b * abs(alpha), f"scaling by {alpha!r}",
                    shrinks=abs(alpha) <= 1.0)
        return self

    def _factor(self, alpha):
        """A finite scalar that stays finite in the table dtype (the backends cast it)."""
        alpha = finite_scalar(alpha)
        if not math.isfinite(float(self._dtype.type(alpha))):
            raise self._overflow(f"the factor {alpha!r}")
        return alpha

    def _combined(self, other, alpha):
        """New sketch ``self + alpha * other`` (``alpha`` = 1 or -1: exactly ``a + b``, ``a - b``)."""
        self._same_kind(other)
        return self.copy().add_scaled(other, alpha)

    # NumPy must not broadcast over a sketch (``array + sketch``): let our operators answer.
    __array_ufunc__ = None

    def _refuse(self, op, other):
        """The error for an operand a sketch does not combine with."""
        return UnsupportedOperand(
            f"unsupported operand for {op}: CountSketch and {type(other).__name__}; a sketch adds to or "
            f"subtracts sketches of the same signature (+, -, +=, -=, merge, add_scaled) and multiplies "
            f"only by a real scalar (*, *=, scale)")

    def __add__(self, other):
        if not isinstance(other, CountSketch):
            raise self._refuse("+", other)
        return self._combined(other, 1.0)

    def __radd__(self, other):
        raise self._refuse("+", other)

    def __sub__(self, other):
        if not isinstance(other, CountSketch):
            raise self._refuse("-", other)
        return self._combined(other, -1.0)

    def __rsub__(self, other):
        raise self._refuse("-", other)

    def __iadd__(self, other):
        if not isinstance(other, CountSketch):
            raise self._refuse("+=", other)
        return self.merge(other)

    def __isub__(self, other):
        if not isinstance(other, CountSketch):
            raise self._refuse("-=", other)
        return self.add_scaled(other, -1.0)

    def __mul__(self, alpha):
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise self._refuse("*", alpha)
        return self.copy().scale(alpha)

    __rmul__ = __mul__

    def __imul__(self, alpha):
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise self._refuse("*=", alpha)
        return self.scale(alpha)

    def __neg__(self):
        return self * -1.0

    # ------------------------------------------------------------------ queries
    @_locked
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

    @_locked
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

    @_locked
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

    @_locked
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

    @_locked
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

    @_locked
    def l2_estimate(self):
        """Estimate of the l2 norm of the sketched vector: ``sqrt(median_j sum_b T[j,b]^2)``.

        Returns
        -------
        float
        """
        return self._backend.l2_estimate(self._table)

    @_locked
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
    @_locked
    def to_bytes(self):
        """Serialize to bytes (versioned header, table, CRC32). See ``sketchlib.serialize``.

        Returns
        -------
        bytes
        """
        from .serialize import sketch_to_bytes
        return sketch_to_bytes(self)

    @classmethod
    def from_bytes(cls, data, *, backend="auto", allow_nonfinite=False):
        """Rebuild a sketch from :meth:`to_bytes` output.

        Parameters
        ----------
        data : bytes-like
        backend : str, default "auto"
        allow_nonfinite : bool, default False
            Accept a table holding NaN/inf (refused by default).

        Returns
        -------
        CountSketch

        Raises
        ------
        SerializationError
            Truncated, corrupted or foreign bytes, or a table with NaN/inf.
        UnknownBackend, BackendUnavailable
            A bad ``backend``.
        """
        from .serialize import sketch_from_bytes
        return sketch_from_bytes(data, backend=backend, allow_nonfinite=allow_nonfinite)

    @_locked
    def save(self, path):
        """Write the sketch to a file atomically (temporary file + rename; a symlink is written through).

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
    def load(cls, path, *, backend="auto", allow_nonfinite=False):
        """Read a sketch written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
        backend : str, default "auto"
        allow_nonfinite : bool, default False
            Accept a table holding NaN/inf (refused by default).

        Returns
        -------
        CountSketch

        Raises
        ------
        SerializationError
            A file that does not hold a valid sketch.
        """
        from .serialize import load
        return load(path, backend=backend, allow_nonfinite=allow_nonfinite)
