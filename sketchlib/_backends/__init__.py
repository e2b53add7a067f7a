"""The one place where array types meet backends.

A backend is a module with the same small API (see ``numpy_ref`` for the
reference implementation and the contract of each function)::

    NAME, ARRAY_LIBRARY, DEVICE_KIND
    available() -> bool
    array_module()                          numpy or cupy
    device_of(array) -> str                 "cpu" or "cuda:N"
    zeros(shape, dtype) -> array
    to_numpy(array) -> numpy.ndarray
    from_numpy(ndarray) -> array
    all_finite(x) -> bool
    insert_dense(table, x, keys, version)   table[r, c] += S(x)
    insert_sparse(table, indices, values, keys, version)
    insert_stack_sum(table, stack, keys, version)    table += S(sum of the rows of stack)
    insert_stack_each(tables, stack, keys, version)  tables[n] += S(stack[n])
    query(table, indices, keys, version) -> values
    estimate_all(table, d, keys, version) -> values
    topk(table, d, k, keys, version) -> (indices, values)     by |value|, descending
    unsketch_topk(table, d, k, keys, version) -> dense d-vector of the top-k, zeros elsewhere
    heavy(table, d, threshold, keys, version) -> (indices, values)   ascending indices
    zero_buckets(table, indices, keys, version)
    l2_estimate(table) -> float

``keys`` are the ``(rows, 2)`` uint32 row keys and ``version`` the hash
version (1 or 2) of ``sketchlib._hash``.  Inputs reach a backend already validated (shapes, dtypes, ranges, finiteness):
kernels trust them.  Dispatch looks at ``type(x).__module__`` only, so no
array library is imported to classify an array.
"""
import importlib

__all__ = [
    "BACKEND_NAMES",
    "BackendUnavailable",
    "available_backends",
    "auto_backend",
    "get_backend",
    "array_library_of",
    "backend_for_array",
]

_MODULES = {
    "numpy": "sketchlib._backends.numpy_ref",
    "numba": "sketchlib._backends.numba_cpu",
    "cupy": "sketchlib._backends.cupy_gpu",
}
_INSTALL_HINTS = {
    "numba": "install numba: pip install 'sketchgrad[numba]'",
    "cupy": "install CuPy for your CUDA (pip install 'sketchgrad[cuda12x]' or "
    "'sketchgrad[cuda13x]') and make sure a CUDA device is visible",
}
# Array library -> backends that hold their tables in arrays of that library, in
# order of preference.
_BY_LIBRARY = {"numpy": ("numba", "numpy"), "cupy": ("cupy",)}
BACKEND_NAMES = tuple(_MODULES)


class BackendUnavailable(ImportError):
    """A backend was asked for but cannot run here; the message says what to install."""


_loaded = {}
_usable = {}


def _load(name):
    """Import a backend module (once) without checking that it can run."""
    if name not in _loaded:
        _loaded[name] = importlib.import_module(_MODULES[name])
    return _loaded[name]


def _is_usable(name):
    """Whether a backend imports and can run here (cached)."""
    if name not in _usable:
        try:
            _usable[name] = bool(_load(name).available())
        except ImportError:
            _usable[name] = False
    return _usable[name]


def get_backend(name):
    """Return the backend module called ``name``.

    Parameters
    ----------
    name : {"numpy", "numba", "cupy"}

    Raises
    ------
    ValueError
        If the name is unknown.
    BackendUnavailable
        If the backend's library is missing or cannot run (no CUDA device).
    """
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if not _is_usable(name):
        raise BackendUnavailable(f"backend {name!r} is not usable here: {_INSTALL_HINTS[name]}")
    return _load(name)


def available_backends():
    """Names of the backends usable on this machine, fastest first."""
    order = ("cupy", "numba", "numpy")
    return tuple(n for n in order if _is_usable(n))


def auto_backend():
    """The backend a sketch gets when none is named: GPU, else Numba, else NumPy."""
    return available_backends()[0]


def array_library_of(x):
    """Top-level module name of an array's type (``"numpy"``, ``"cupy"``, ...)."""
    return type(x).__module__.split(".", 1)[0]


def backend_for_array(x):
    """Name of the preferred usable backend for arrays of ``x``'s type.

    Raises
    ------
    TypeError
        If ``x`` is not an array of a supported library.
    """
    lib = array_library_of(x)
    if lib not in _BY_LIBRARY:
        hint = ""
        if hasattr(x, "__dlpack__"):
            hint = " (it speaks DLPack: use adapters.dlpack or adapters.torch)"
        raise TypeError(f"cannot sketch an array of type {type(x).__name__} from {lib!r}{hint}")
    for name in _BY_LIBRARY[lib]:
        if _is_usable(name):
            return name
    raise BackendUnavailable(f"arrays of {lib!r} need backend {_BY_LIBRARY[lib][0]!r}: "
                             f"{_INSTALL_HINTS.get(_BY_LIBRARY[lib][0], '')}")


def library_of_backend(name):
    """Array library whose arrays backend ``name`` holds."""
    for lib, names in _BY_LIBRARY.items():
        if name in names:
            return lib
    raise ValueError(f"unknown backend {name!r}")
