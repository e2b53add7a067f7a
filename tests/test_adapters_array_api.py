"""A sketch takes and returns arrays of a strict Array API library through adapters.dlpack.

``array_api_strict`` arrays are neither NumPy nor CuPy: they reach the sketch
only through DLPack, and results (NumPy arrays) go back through its
``from_dlpack``.  Skipped when array-api-strict is not installed.
"""
import numpy as np
import pytest

xp = pytest.importorskip("array_api_strict")

from adapters import dlpack  # noqa: E402
from sketchlib import CountSketch  # noqa: E402


def test_array_api_strict_arrays_in_and_out():
    d = 300
    host = np.random.default_rng(3).standard_normal(d).astype(np.float32)
    x = xp.asarray(host)
    sk = dlpack.new_sketch_like(x, 5, 64, seed=9)
    assert sk.d == d and sk.dtype == np.float32 and sk.device == "cpu"
    dlpack.insert(sk, x)
    ref = CountSketch(d, 5, 64, seed=9, backend="numpy").insert(host)
    np.testing.assert_allclose(sk.table, ref.table, rtol=1e-5, atol=1e-5)

    idx = xp.asarray(np.array([0, 17, 299], dtype=np.int64))
    q = xp.from_dlpack(dlpack.query(sk, idx))
    assert type(q) is type(x) and q.dtype == xp.float32
    np.testing.assert_array_equal(np.from_dlpack(q), sk.query(np.array([0, 17, 299])))
    top_idx, top_val = (xp.from_dlpack(a) for a in dlpack.topk(sk, 10))
    np.testing.assert_array_equal(np.from_dlpack(top_val), sk.estimate_all()[np.from_dlpack(top_idx)])

    table = xp.from_dlpack(dlpack.export_table(sk))
    np.testing.assert_array_equal(np.from_dlpack(table), sk.table)
