"""Registry of sketch backends (private implementation of ``sketchlib.backends``).

The contract a backend implements, and how to register one, are documented in
the public module :mod:`sketchlib.backends`; this package holds the built-in
backends (``numpy_ref``, ``numba_cpu``, ``cupy_gpu``) and the registry behind
that module.  Dispatch looks at ``type(x).__module__`` only, so no array
library is imported to classify an array.
"""
import contextlib
import dataclasses
import importlib
import threading
import types

from ..errors import BackendUnavailable, SketchError, UnknownBackend, UnsupportedArray

__all__ = [
    "CONTRACT",
    "BackendUnavailable",
    "HostTransfers",
    "array_library_of",
    "auto_backend",
    "available_backends",
    "backend_for_array",
    "backends_for_library",
    "count_host_transfers",
    "get_backend",
    "library_of_backend",
    "record_host_transfer",
    "register_backend",
    "registered_backends",
    "unregister_backend",
]

# What a backend module must define (documented one by one in sketchlib.backends).
CONTRACT = (
    "NAME", "ARRAY_LIBRARY",
    # plumbing
    "available", "array_module", "device_of", "zeros", "zeros_tables", "from_numpy", "to_numpy",
    "to_host_scalars", "as_input", "all_finite", "abs_stats", "index_range",
    # table arithmetic
    "fill_zero", "scale", "add_scaled", "copy_table", "scatter_dense",
    # sketch kernels
    "insert_dense", "insert_sparse", "insert_stack_sum", "insert_stack_each", "query", "estimate_all",
    "topk", "unsketch_topk", "heavy", "zero_buckets", "l2_estimate",
)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One registered backend: how to load it and what it holds."""

    loader: object            # a module, a dotted module path, or a zero-argument callable
    array_library: str
    priority: int
    install_hint: str


_registry = {}
_loaded = {}
_usable = {}
_lock = threading.RLock()


def register_backend(name, module_or_loader, *, array_library, priority=0, install_hint=None, replace=False):
    """Register a backend under ``name``; see :mod:`sketchlib.backends` for the contract.

    Parameters
    ----------
    name : str
        The name users pass as ``CountSketch(..., backend=name)``.
    module_or_loader : module, str or callable
        The backend module, its dotted import path (imported on first use), or a
        zero-argument callable returning the module (called on first use).
    array_library : str
        Top-level module name of the arrays holding its tables (``"numpy"``,
        ``"cupy"``, ``"jax"``...): ``type(table).__module__.split(".")[0]``.
    priority : int, default 0
        Higher is preferred by :func:`auto_backend` and :func:`backend_for_array`
        (built-ins: cupy 30, numba 20, numpy 10).
    install_hint : str, optional
        What to install when the backend is unusable (shown in ``BackendUnavailable``).
    replace : bool, default False
        Allow replacing a backend already registered under ``name``.

    Raises
    ------
    SketchError
        A bad name or library, or ``name`` already registered without ``replace``.
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise SketchError(f"a backend name must be a non-empty string other than 'auto', got {name!r}")
    if not isinstance(array_library, str) or not array_library:
        raise SketchError(f"array_library must be a module name such as 'numpy', got {array_library!r}")
    if not (isinstance(module_or_loader, (str, types.ModuleType)) or callable(module_or_loader)):
        raise SketchError(f"backend {name!r}: expected a module, a dotted module path or a callable, "
                          f"got {type(module_or_loader).__name__}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise SketchError(f"priority must be an integer, got {priority!r}")
    with _lock:
        if name in _registry and not replace:
            raise SketchError(f"backend {name!r} is already registered (pass replace=True to replace it)")
        _registry[name] = _Entry(module_or_loader, array_library, priority,
                                 install_hint or f"backend {name!r} reports that it cannot run here")
        _loaded.pop(name, None)
        _usable.pop(name, None)


def unregister_backend(name):
    """Remove a registered backend (sketches already made with it keep working).

    Parameters
    ----------
    name : str

    Raises
    ------
    UnknownBackend
        If ``name`` is not registered.
    """
    with _lock:
        if name not in _registry:
            raise UnknownBackend(f"unknown backend {name!r}")
        del _registry[name]
        _loaded.pop(name, None)
        _usable.pop(name, None)


def registered_backends():
    """Names of all registered backends, usable or not, highest priority first.

    Returns
    -------
    tuple of str
    """
    return tuple(sorted(_registry, key=lambda n: -_registry[n].priority))


def _load(name):
    """Import a backend module (once) and check that it implements the contract."""
    if name not in _loaded:
        loader = _registry[name].loader
        if isinstance(loader, types.ModuleType):
            module = loader
        elif isinstance(loader, str):
            module = importlib.import_module(loader)
        else:
            module = loader()
        missing = [attr for attr in CONTRACT if not hasattr(module, attr)]
        if missing:
            raise SketchError(f"backend {name!r} ({getattr(module, '__name__', module)!r}) does not implement "
                              f"the backend contract: missing {', '.join(missing)}")
        if module.NAME != name or module.ARRAY_LIBRARY != _registry[name].array_library:
            raise SketchError(f"backend {name!r}: module says NAME={module.NAME!r}, ARRAY_LIBRARY="
                              f"{module.ARRAY_LIBRARY!r}, registered as {name!r} holding "
                              f"{_registry[name].array_library!r} arrays")
        _loaded[name] = module
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
    name : str
        A registered name (built-in: ``"numpy"``, ``"numba"``, ``"cupy"``).

    Returns
    -------
    module
        Implementing every function of the contract.

    Raises
    ------
    UnknownBackend
        If the name is not registered.
    BackendUnavailable
        If the backend's library is missing or cannot run (e.g. no CUDA device).
    """
    if not isinstance(name, str) or name not in _registry:
        raise UnknownBackend(f"unknown backend {name!r}; choose one of {', '.join(registered_backends())}")
    if not _is_usable(name):
        raise BackendUnavailable(f"backend {name!r} is not usable here: {_registry[name].install_hint}")
    return _load(name)


def available_backends():
    """Names of the backends usable on this machine, highest priority (fastest) first.

    Returns
    -------
    tuple of str
    """
    return tuple(n for n in registered_backends() if _is_usable(n))


def auto_backend():
    """The backend a sketch gets when none is named: the usable one of highest priority.

    Returns
    -------
    str
        With the built-ins: ``"cupy"`` when a GPU is usable, else ``"numba"``, else ``"numpy"``.
    """
    return available_backends()[0]


def array_library_of(x):
    """Top-level module name of an array's type (``"numpy"``, ``"cupy"``, ...), importing nothing.

    Parameters
    ----------
    x : object

    Returns
    -------
    str
    """
    return type(x).__module__.split(".", 1)[0]


def backends_for_library(library):
    """Registered backends whose tables are arrays of ``library``, highest priority first.

    Parameters
    ----------
    library : str

    Returns
    -------
    tuple of str
    """
    return tuple(n for n in registered_backends() if _registry[n].array_library == library)


def library_of_backend(name):
    """Array library whose arrays backend ``name`` holds.

    Parameters
    ----------
    name : str

    Returns
    -------
    str

    Raises
    ------
    UnknownBackend
        If the name is not registered.
    """
    if name not in _registry:
        raise UnknownBackend(f"unknown backend {name!r}; choose one of {', '.join(registered_backends())}")
    return _registry[name].array_library


def backend_for_array(x):
    """Name of the preferred usable backend for arrays of ``x``'s type.

    Parameters
    ----------
    x : array

    Returns
    -------
    str

    Raises
    ------
    UnsupportedArray
        If no registered backend holds arrays of ``x``'s library.
    BackendUnavailable
        If such backends exist but none is usable here.
    """
    lib = array_library_of(x)
    names = backends_for_library(lib)
    if not names:
        hint = ""
        if hasattr(x, "__dlpack__"):
            hint = " (it speaks DLPack: use adapters.dlpack or adapters.torch)"
        raise UnsupportedArray(f"cannot sketch an array of type {type(x).__name__} from {lib!r}{hint}")
    for name in names:
        if _is_usable(name):
            return name
    raise BackendUnavailable(f"arrays of {lib!r} need backend {names[0]!r}: {_registry[names[0]].install_hint}")


# ------------------------------------------------------------ host transfers
class HostTransfers:
    """Counts of device-to-host reads recorded while a :func:`count_host_transfers` block runs.

    Attributes
    ----------
    count : int
        Number of reads (each a host synchronisation on a device backend).
    nbytes : int
        Bytes read.
    """

    __slots__ = ("count", "nbytes")

    def __init__(self):
        self.count = 0
        self.nbytes = 0

    def __repr__(self):
        return f"HostTransfers(count={self.count}, nbytes={self.nbytes})"


_counters = []


def record_host_transfer(nbytes=0):
    """Record one device-to-host read in every active counter (backends call this).

    Parameters
    ----------
    nbytes : int, default 0
        Bytes read.
    """
    if _counters:   # one list test on the hot path when nobody counts
        with _lock:
            for counter in _counters:
                counter.count += 1
                counter.nbytes += int(nbytes)


@contextlib.contextmanager
def count_host_transfers():
    """Count the device-to-host reads backends make inside the block (all threads).

    Yields
    ------
    HostTransfers
        Updated live; read it after the block.

    Examples
    --------
    >>> with count_host_transfers() as n:
    ...     sketch.insert(x)
    >>> n.count        # 1: the finiteness flag
    """
    counter = HostTransfers()
    with _lock:
        _counters.append(counter)
    try:
        yield counter
    finally:
        with _lock:
            _counters.remove(counter)


_CUPY_HINT = ("install CuPy for your CUDA (pip install 'sketchgrad[cuda12x]' or "
              "'sketchgrad[cuda13x]') and make sure a CUDA device is visible")
register_backend("cupy", "sketchlib._backends.cupy_gpu", array_library="cupy", priority=30,
                 install_hint=_CUPY_HINT)
register_backend("numba", "sketchlib._backends.numba_cpu", array_library="numpy", priority=20,
                 install_hint="install numba: pip install 'sketchgrad[numba]'")
register_backend("numpy", "sketchlib._backends.numpy_ref", array_library="numpy", priority=10)
