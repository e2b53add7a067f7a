"""sketchlib: a framework-agnostic Count Sketch for gradient compression.

Importing this package needs only NumPy; Numba, CuPy and torch are imported
lazily by the backends and adapters that use them.
"""
from ._backends import BackendUnavailable, auto_backend, available_backends
from ._hash import HASH_VERSIONS
from .errors import IncompatibleSketches, SerializationError, SketchError
from .serialize import FORMAT_VERSION
from .sketch import MAX_ROWS, SUPPORTED_DTYPES, CountSketch

__all__ = [
    "CountSketch",
    "SketchError",
    "IncompatibleSketches",
    "SerializationError",
    "BackendUnavailable",
    "available_backends",
    "auto_backend",
    "HASH_VERSIONS",
    "FORMAT_VERSION",
    "MAX_ROWS",
    "SUPPORTED_DTYPES",
]
__version__ = "0.1.0"
