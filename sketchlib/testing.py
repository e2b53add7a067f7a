"""Hypothesis strategies for property-testing code that uses the sketch.

Importing this module imports hypothesis (install ``sketchgrad[test]``).

Examples
--------
>>> from hypothesis import given
>>> from sketchlib.testing import sketch_params, dense_vectors
>>> @given(sketch_params(), st.data())
... def test_mine(params, data):
...     x = data.draw(dense_vectors(params["d"]))
"""
import numpy as np

from .errors import MissingDependency

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - exercised only without hypothesis
    raise MissingDependency("sketchlib.testing needs hypothesis: pip install hypothesis") from exc

from .sketch import CountSketch  # noqa: E402

__all__ = ["sketch_params", "dense_vectors", "sparse_updates", "sketches", "scalars"]


def sketch_params(*, max_d=2000, max_rows=7, max_cols=300, dtypes=("float32", "float64"), hash_versions=(1, 2)):
    """Dictionaries of valid ``CountSketch`` keyword arguments.

    Parameters
    ----------
    max_d, max_rows, max_cols : int
        Upper bounds of the drawn sizes (hash version 2 rounds ``cols`` up to a
        multiple of 4, so it may pass ``max_cols`` by up to 3).
    dtypes : tuple of str
        Table dtypes to draw from.
    hash_versions : tuple of int
        Hash versions to draw from.

    Returns
    -------
    SearchStrategy of dict with keys d, rows, cols, seed, dtype, hash_version.
    """
    return st.fixed_dictionaries({
        "d": st.integers(1, max_d),
        "rows": st.integers(1, max_rows),
        "cols": st.integers(1, max_cols),
        "seed": st.integers(0, 2**64 - 1),
        "dtype": st.sampled_from(dtypes),
        "hash_version": st.sampled_from(hash_versions),
    }).map(_valid_cols)


def _valid_cols(params):
    """Round ``cols`` up to a multiple of 4 under hash version 2."""
    if params["hash_version"] == 2:
        params = {**params, "cols": -(-params["cols"] // 4) * 4}
    return params


def scalars(max_magnitude=1e3):
    """Finite float scalars of bounded magnitude (for linear combinations).

    Parameters
    ----------
    max_magnitude : float, default 1e3

    Returns
    -------
    SearchStrategy of float
    """
    return st.floats(-max_magnitude, max_magnitude, allow_nan=False, allow_infinity=False, width=32)


def dense_vectors(d, *, dtype="float64", max_magnitude=1e3):
    """Finite dense vectors of length ``d``.

    Parameters
    ----------
    d : int
    dtype : str
    max_magnitude : float
        Bound on each element's magnitude.

    Returns
    -------
    SearchStrategy of numpy.ndarray
    """
    elements = st.floats(-max_magnitude, max_magnitude, allow_nan=False, allow_infinity=False,
                         width=32)
    return hnp.arrays(np.dtype(dtype), d, elements=elements)


@st.composite
def sparse_updates(draw, d, *, max_nnz=50, dtype="float64", max_magnitude=1e3):
    """``(indices, values)`` pairs with indices in ``[0, d)``, duplicates allowed.

    Parameters
    ----------
    d : int
    max_nnz : int, default 50
    dtype : str, default "float64"
    max_magnitude : float, default 1e3

    Returns
    -------
    SearchStrategy of (int64 array, float array)
    """
    n = draw(st.integers(0, max_nnz))
    idx = draw(hnp.arrays(np.int64, n, elements=st.integers(0, d - 1)))
    vals = draw(dense_vectors(n, dtype=dtype, max_magnitude=max_magnitude))
    return idx, vals


@st.composite
def sketches(draw, *, backend="numpy", filled=True, **param_bounds):
    """``CountSketch`` objects on ``backend``, optionally holding a random dense vector.

    Parameters
    ----------
    backend : str, default "numpy"
    filled : bool, default True
    **param_bounds
        Passed to :func:`sketch_params`.

    Returns
    -------
    SearchStrategy of CountSketch
    """
    params = draw(sketch_params(**param_bounds))
    sk = CountSketch(backend=backend, **params)
    if filled:
        sk.insert(draw(dense_vectors(params["d"], dtype=params["dtype"])))
    return sk
