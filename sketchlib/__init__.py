"""sketchlib: a framework-agnostic Count Sketch for gradient compression.

Importing this package needs only NumPy; Numba, CuPy and torch are imported
lazily by the backends and adapters that use them.  The backend contract and
registry are public in :mod:`sketchlib.backends`.
"""
from . import backends
from ._hash import HASH_VERSIONS
from .backends import auto_backend, available_backends, get_backend, register_backend
from .errors import (BackendUnavailable, IncompatibleSketches, MissingDependency, SerializationError, SketchError,
                     UnknownBackend, UnsupportedArray, UnsupportedOperand)
from .serialize import FORMAT_VERSION
from .sketch import MAX_ROWS, SUPPORTED_DTYPES, CountSketch
from .validation import finite_scalar

__all__ = [
    "CountSketch",
    "SketchError",
    "IncompatibleSketches",
    "SerializationError",
    "BackendUnavailable",
    "MissingDependency",
    "UnknownBackend",
    "UnsupportedArray",
    "UnsupportedOperand",
    "backends",
    "available_backends",
    "auto_backend",
    "get_backend",
    "register_backend",
    "finite_scalar",
    "HASH_VERSIONS",
    "FORMAT_VERSION",
    "MAX_ROWS",
    "SUPPORTED_DTYPES",
]
__version__ = "0.1.0"
