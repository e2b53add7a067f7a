"""Exceptions raised by sketchlib."""

__all__ = ["SketchError", "IncompatibleSketches", "SerializationError"]


class SketchError(ValueError):
    """A bad argument to a sketch operation; the sketch is left unchanged."""


class IncompatibleSketches(SketchError):
    """Two sketches that cannot be combined (different d, rows, cols, seed, ...)."""


class SerializationError(SketchError):
    """Bytes that are not a valid serialized sketch (truncated, corrupted, foreign)."""
