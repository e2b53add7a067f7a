"""Exceptions raised by sketchlib: every one a :class:`SketchError`.

``SketchError`` derives from ``ValueError`` so that code written before the
hierarchy existed (``except ValueError``) keeps working; the subclasses that
replace a former ``ImportError`` or ``TypeError`` derive from that too.
"""

__all__ = ["SketchError", "IncompatibleSketches", "SerializationError", "MissingDependency",
           "BackendUnavailable", "UnknownBackend", "UnsupportedArray", "UnsupportedOperand"]


class SketchError(ValueError):
    """A bad argument to a sketch operation; the sketch is left unchanged."""


class IncompatibleSketches(SketchError):
    """Two sketches that cannot be combined (different d, rows, cols, seed, ...)."""


class SerializationError(SketchError):
    """Bytes that are not a valid serialized sketch (truncated, corrupted, foreign)."""


class MissingDependency(SketchError, ImportError):
    """An optional library (torch, hypothesis, ...) is missing; the message says what to install.

    Also an ``ImportError``, so ``except ImportError`` keeps catching it.
    """


class BackendUnavailable(MissingDependency):
    """A backend was asked for but cannot run here; the message says what to install.

    Also an ``ImportError``, so ``except ImportError`` keeps catching it.
    """


class UnknownBackend(SketchError):
    """A backend name that is not registered (see ``sketchlib.backends.register_backend``)."""


class UnsupportedArray(SketchError, TypeError):
    """An array of a library no registered backend holds (also a ``TypeError``)."""


class UnsupportedOperand(SketchError, TypeError):
    """An operator applied to a sketch and something it does not combine with (``sketch + 1``); also a ``TypeError``."""
