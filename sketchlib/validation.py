"""Validators for scalar arguments, shared by the sketch and by sketch-like objects.

Code that implements the sketch API on its own table (e.g. an exact stand-in
compressor) uses these to reject bad arguments exactly as ``CountSketch`` does.
"""
import numbers

import numpy as np

from .errors import SketchError

__all__ = ["finite_scalar", "positive_int"]


def positive_int(value, name, upper=None):
    """Validate a positive integer parameter.

    Parameters
    ----------
    value : object
        The argument.
    name : str
        Its name, for the error message.
    upper : int, optional
        Largest allowed value.

    Returns
    -------
    int

    Raises
    ------
    SketchError
        If ``value`` is not an integer (bools are refused), not positive, or above ``upper``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SketchError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value <= 0:
        raise SketchError(f"{name} must be positive, got {value}")
    if upper is not None and value > upper:
        raise SketchError(f"{name} must be at most {upper}, got {value}")
    return value


def finite_scalar(value, name="scalar"):
    """Validate a finite real scalar (a factor of ``scale`` or ``add_scaled``).

    Parameters
    ----------
    value : object
        The argument.
    name : str, default "scalar"
        Its name, for the error message.

    Returns
    -------
    float

    Raises
    ------
    SketchError
        If ``value`` is a bool, not a real number, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise SketchError(f"{name} must be a finite real number, got {value!r}")
    return float(value)
