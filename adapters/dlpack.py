"""Use a CountSketch from any array library that speaks DLPack.

Anything with ``__dlpack__`` and ``__dlpack_device__`` (NumPy, CuPy, torch,
JAX, TensorFlow, ...) is accepted where the sketch wants an array.  It is
imported without a copy: host memory becomes a NumPy array, CUDA memory a CuPy
array (CuPy then passes its current stream to the producer, which orders the
hand-off as the protocol prescribes).  Results come back as NumPy or CuPy
arrays, which are DLPack producers themselves, so ``jax.dlpack.from_dlpack``,
``torch.from_dlpack`` or ``tf.experimental.dlpack.from_dlpack`` read them
without a copy; :func:`export_table` does the same for a sketch's table.

Accepted
--------
Devices
    CPU (``kDLCPU``) and CUDA pinned host memory (``kDLCUDAHost``) go to NumPy;
    CUDA (``kDLCUDA``) and CUDA managed memory (``kDLCUDAManaged``) go to CuPy,
    which must be installed.  Any other device (ROCm, Metal, Vulkan, oneAPI,
    ...) is refused.
Dtypes
    Values: float16, float32, float64 (float16 is widened to the table dtype,
    which copies).  Indices: any signed or unsigned integer.  bfloat16,
    complex, bool and anything NumPy cannot represent are refused.

Every refusal raises :class:`sketchlib.SketchError` (or
:class:`sketchlib.BackendUnavailable` when CuPy is missing) naming the problem,
and no sketch is modified.
"""
import numpy as np

from sketchlib import BackendUnavailable, CountSketch, SketchError, backends

__all__ = [
    "DLPackTable",
    "as_array",
    "backend_for",
    "device_of",
    "estimate_all",
    "export_table",
    "heavy_hitters",
    "insert",
    "insert_batch",
    "insert_sparse",
    "new_sketch_like",
    "query",
    "sketch_from_table",
    "topk",
    "unsketch",
]

# DLPack DLDeviceType codes (dlpack.h).
_DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal",
                 9: "vpi", 10: "rocm", 11: "rocm_host", 12: "ext_dev", 13: "cuda_managed",
                 14: "oneapi", 15: "webgpu", 16: "hexagon", 17: "maia"}
_HOST = (1, 3)
_CUDA = (2, 13)
_CUPY_HINT = ("install CuPy for your CUDA (pip install 'sketchgrad[cuda12x]' or "
              "'sketchgrad[cuda13x]')")


def device_of(obj):
    """Where a DLPack producer keeps its data.

    Parameters
    ----------
    obj : object with ``__dlpack_device__``

    Returns
    -------
    str
        ``"cpu"`` for host memory, ``"cuda:N"`` for CUDA device ``N``, else the
        DLPack device name with its index (e.g. ``"rocm:0"``).

    Raises
    ------
    SketchError
        If ``obj`` has no ``__dlpack_device__``.
    """
    if not hasattr(obj, "__dlpack_device__"):
        raise SketchError(f"expected an array that supports DLPack (__dlpack_device__), "
                          f"got {type(obj).__name__}")
    kind, index = obj.__dlpack_device__()
    kind = int(kind)
    if kind in _HOST:
        return "cpu"
    name = "cuda" if kind in _CUDA else _DEVICE_NAMES.get(kind, f"dlpack-device-{kind}")
    return f"{name}:{int(index)}"


def _import_cupy():
    """Import CuPy, or say what is missing (CuPy itself, or a usable CUDA device)."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(f"this array lives on a CUDA device, which needs CuPy: {_CUPY_HINT}") from exc
    if "cupy" not in backends.available_backends():
        raise BackendUnavailable("this array lives on a CUDA device, but CuPy cannot use a CUDA "
                                 "device here (no device visible, or driver too old for this CuPy)")
    return cupy


def _check_writable(array, what):
    """Refuse a read-only buffer that is about to be written."""
    # CuPy arrays have no writeable flag: device memory is always writable.
    if not getattr(getattr(array, "flags", None), "writeable", True):
        raise SketchError(f"{what} is a read-only buffer but must be written; pass a writable copy")


def as_array(obj, *, writable=False, what="array"):
    """Import a DLPack producer as a NumPy (host) or CuPy (CUDA) array, without a copy.

    Parameters
    ----------
    obj : NumPy/CuPy array or any object with ``__dlpack__`` and ``__dlpack_device__``
    writable : bool, default False
        Refuse read-only buffers (the caller will write into the result).
    what : str
        Name of the argument, for error messages.

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        Sharing memory with ``obj``.

    Raises
    ------
    SketchError
        Not a DLPack producer, an unsupported device or dtype, or a read-only
        buffer when ``writable``.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    lib = backends.array_library_of(obj)
    if lib in ("numpy", "cupy") and hasattr(obj, "shape"):
        if writable:
            _check_writable(obj, what)
        return obj
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise SketchError(f"{what} must be an array that supports DLPack (__dlpack__ and "
                          f"__dlpack_device__), got {type(obj).__name__}")
    kind = int(obj.__dlpack_device__()[0])
    if kind in _HOST:
        importer = np.from_dlpack
    elif kind in _CUDA:
        importer = _import_cupy().from_dlpack
    else:
        raise SketchError(f"{what} lives on {device_of(obj)}; only CPU and CUDA arrays are supported")
    try:
        array = importer(obj)
    except BufferError as exc:
        raise SketchError(f"{what} cannot be shared through DLPack: {exc}") from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        dtype = getattr(obj, "dtype", "unknown")
        raise SketchError(f"{what} has a dtype ({dtype}) that cannot be imported: {exc}; "
                          f"supported: float16/32/64 values, integer indices") from exc
    if writable:
        _check_writable(array, what)
    return array


def backend_for(obj):
    """Name of the backend whose tables live where ``obj`` lives (``"numba"``, ``"numpy"`` or ``"cupy"``).

    Parameters
    ----------
    obj : NumPy/CuPy array or DLPack producer

    Returns
    -------
    str

    Raises
    ------
    SketchError
        Not an array, or on a device other than the CPU and CUDA.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    device = device_of(obj) if backends.array_library_of(obj) not in ("numpy", "cupy") else None
    if device is None:
        return backends.backend_for_array(obj)
    if device == "cpu":
        return backends.backend_for_array(np.empty(0))
    if device.startswith("cuda:"):
        _import_cupy()
        return "cupy"
    raise SketchError(f"no sketch backend for arrays on {device}; only CPU and CUDA are supported")


def _cuda_index(obj):
    """CUDA device ordinal of a producer (None when it is not on a CUDA device)."""
    if backends.array_library_of(obj) == "cupy":
        return obj.device.id
    if hasattr(obj, "__dlpack_device__"):
        kind, index = obj.__dlpack_device__()
        if int(kind) in _CUDA:
            return int(index)
    return None


def new_sketch_like(obj, rows, cols, *, d=None, seed=0, dtype=None, hash_version="auto"):
    """A zero sketch whose table lives on the same device as ``obj``.

    Parameters
    ----------
    obj : DLPack producer
        Decides the device (and, unless given, ``d`` = its size and the dtype).
    rows, cols : int
    d : int, optional
        Dimension; defaults to the number of elements of ``obj``.
    seed : int, default 0
    dtype : {"float32", "float64"}, optional
        Defaults to ``obj``'s dtype when it is float32/float64, else float32.
    hash_version : {"auto", 1, 2}, default "auto"
        See ``sketchlib.CountSketch``.

    Returns
    -------
    CountSketch

    Raises
    ------
    SketchError
        An argument that is not a DLPack producer, lives on an unsupported
        device, has an unsupported dtype, or that the sketch refuses (see
        :class:`sketchlib.CountSketch`); nothing is modified.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    array = as_array(obj, what="obj")
    if d is None:
        d = int(array.size)
    if dtype is None:
        dtype = array.dtype.name if array.dtype.name in ("float32", "float64") else "float32"
    name = backend_for(obj)
    index = _cuda_index(obj)
    if index is None:
        return CountSketch(d, rows, cols, seed=seed, dtype=dtype, hash_version=hash_version, backend=name)
    with _import_cupy().cuda.Device(index):
        return CountSketch(d, rows, cols, seed=seed, dtype=dtype, hash_version=hash_version, backend=name)


def insert(sketch, x, *, check_finite=True):
    """``sketch += S(x)`` for a dense DLPack vector of length ``sketch.d``.

    Parameters
    ----------
    sketch : CountSketch
    x : DLPack producer of shape (d,)
        Floating, on the sketch's device.
    check_finite : bool, default True

    Returns
    -------
    CountSketch
        ``sketch``.

    Raises
    ------
    SketchError
        An argument that is not a DLPack producer, lives on an unsupported
        device, has an unsupported dtype, or that the sketch refuses (see
        :class:`sketchlib.CountSketch`); nothing is modified.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    return sketch.insert(as_array(x, what="x"), check_finite=check_finite)


def insert_sparse(sketch, indices, values, *, check_finite=True):
    """Add a sparse vector given as DLPack ``(indices, values)``.

    Parameters
    ----------
    sketch : CountSketch
    indices : DLPack producer of integers, shape (n,)
    values : DLPack producer of floats, shape (n,)
    check_finite : bool, default True

    Returns
    -------
    CountSketch
        ``sketch``.

    Raises
    ------
    SketchError
        An argument that is not a DLPack producer, lives on an unsupported
        device, has an unsupported dtype, or that the sketch refuses (see
        :class:`sketchlib.CountSketch`); nothing is modified.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    return sketch.insert_sparse(as_array(indices, what="indices"), as_array(values, what="values"),
                                check_finite=check_finite)


def insert_batch(sketch, stack, *, check_finite=True):
    """Add the sketch of the sum of the rows of an ``(n, d)`` DLPack stack.

    Parameters
    ----------
    sketch : CountSketch
    stack : DLPack producer of shape (n, d)
    check_finite : bool, default True

    Returns
    -------
    CountSketch
        ``sketch``.

    Raises
    ------
    SketchError
        An argument that is not a DLPack producer, lives on an unsupported
        device, has an unsupported dtype, or that the sketch refuses (see
        :class:`sketchlib.CountSketch`); nothing is modified.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    return sketch.insert_batch(as_array(stack, what="stack"), check_finite=check_finite)


def query(sketch, indices):
    """Point estimates at DLPack ``indices``.

    Parameters
    ----------
    sketch : CountSketch
    indices : DLPack producer of integers, shape (n,)

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        An array of the sketch's library (a DLPack producer).

    Raises
    ------
    SketchError
        An argument that is not a DLPack producer, lives on an unsupported
        device, has an unsupported dtype, or that the sketch refuses (see
        :class:`sketchlib.CountSketch`); nothing is modified.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    return sketch.query(as_array(indices, what="indices"))


def estimate_all(sketch):
    """Estimates of all coordinates.

    Parameters
    ----------
    sketch : CountSketch

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        Of shape (d,), a DLPack producer.
    """
    return sketch.estimate_all()


def topk(sketch, k):
    """``(indices, values)`` of the k largest estimates by magnitude.

    Parameters
    ----------
    sketch : CountSketch
    k : int

    Returns
    -------
    indices, values : numpy.ndarray or cupy.ndarray
        DLPack producers, by magnitude descending.

    Raises
    ------
    SketchError
        A bad ``k``.
    """
    return sketch.topk(k)


def heavy_hitters(sketch, threshold):
    """``(indices, values)`` of the estimates with magnitude >= threshold.

    Parameters
    ----------
    sketch : CountSketch
    threshold : float

    Returns
    -------
    indices, values : numpy.ndarray or cupy.ndarray
        DLPack producers, indices ascending.

    Raises
    ------
    SketchError
        A bad threshold.
    """
    return sketch.heavy_hitters(threshold)


def unsketch(sketch, k=None, *, threshold=None):
    """Dense vector of the heavy hitters (top-k or by threshold).

    Parameters
    ----------
    sketch : CountSketch
    k : int, optional
    threshold : float, optional
        Exactly one of ``k`` and ``threshold``.

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        Of shape (d,), a DLPack producer.

    Raises
    ------
    SketchError
        Neither or both of ``k`` and ``threshold``, or a bad value.
    """
    return sketch.unsketch(k, threshold=threshold)


class DLPackTable:
    """A DLPack view of a sketch's table: ``from_dlpack(export_table(s))`` shares its memory.

    Writes through the imported array change the sketch, which is the point
    (e.g. an in-place all-reduce); the view holds a reference to the sketch.

    Parameters
    ----------
    sketch : CountSketch

    Raises
    ------
    SketchError
        If ``sketch`` is not a CountSketch.
    """

    __slots__ = ("sketch",)

    def __init__(self, sketch):
        if not isinstance(sketch, CountSketch):
            raise SketchError(f"expected a CountSketch, got {type(sketch).__name__}")
        self.sketch = sketch

    shape = property(lambda self: tuple(self.sketch.table.shape), doc="``(rows, cols)``.")
    dtype = property(lambda self: self.sketch.dtype, doc="Table dtype.")
    device = property(lambda self: self.sketch.device, doc='``"cpu"`` or ``"cuda:N"``.')

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Export the table; the arguments are passed through to the table's own ``__dlpack__``."""
        kwargs = {"stream": stream, "max_version": max_version, "dl_device": dl_device, "copy": copy}
        return self.sketch.table.__dlpack__(**{k: v for k, v in kwargs.items() if v is not None})

    def __dlpack_device__(self):
        """The table's DLPack ``(device type, index)``."""
        return self.sketch.table.__dlpack_device__()

    def __repr__(self):
        return f"DLPackTable({self.sketch!r})"


def export_table(sketch):
    """A :class:`DLPackTable` over ``sketch``'s table, for any ``from_dlpack`` consumer (no copy).

    Parameters
    ----------
    sketch : CountSketch

    Returns
    -------
    DLPackTable

    Raises
    ------
    SketchError
        If ``sketch`` is not a CountSketch.
    """
    return DLPackTable(sketch)


def sketch_from_table(table, d, *, seed=0):
    """Wrap a writable ``(rows, cols)`` DLPack table as a sketch, without a copy.

    The inverse of :func:`export_table`: a table received from another library
    (e.g. after a collective) becomes a sketch that writes into the same memory.

    Parameters
    ----------
    table : DLPack producer of shape (rows, cols)
        Writable, C-contiguous, float32 or float64.
    d : int
    seed : int, default 0

    Returns
    -------
    CountSketch

    Raises
    ------
    SketchError
        An argument that is not a DLPack producer, lives on an unsupported
        device, has an unsupported dtype, or that the sketch refuses (see
        :class:`sketchlib.CountSketch`); nothing is modified.
    BackendUnavailable
        A CUDA array while CuPy is missing.
    """
    return CountSketch.from_table(as_array(table, writable=True, what="table"), d, seed=seed)
