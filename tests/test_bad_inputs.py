"""Every bad input raises a clear error and leaves the sketch unchanged."""
import subprocess
import sys

import numpy as np
import pytest

from sketchlib import CountSketch, IncompatibleSketches, SerializationError, SketchError


@pytest.fixture
def sketch(host_backend):
    sk = CountSketch(100, 3, 16, seed=1, backend=host_backend)
    sk.insert(np.linspace(-1, 1, 100))
    return sk


def unchanged(sk, call, exc, match):
    before = np.array(sk.table, copy=True)
    with pytest.raises(exc, match=match):
        call()
    np.testing.assert_array_equal(sk.table, before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d=0, rows=1, cols=1), "d must be positive"),
    (dict(d=10, rows=0, cols=1), "rows must be positive"),
    (dict(d=10, rows=1, cols=0), "cols must be positive"),
    (dict(d=10, rows=33, cols=1), "rows must be at most 32"),
    (dict(d=10.5, rows=1, cols=1), "d must be an integer"),
    (dict(d=10, rows=1, cols=1, seed=-1), "seed"),
    (dict(d=10, rows=1, cols=1, seed=2**64), "seed"),
    (dict(d=10, rows=1, cols=1, dtype="int32"), "dtype"),
    (dict(d=10, rows=1, cols=1, dtype="float16"), "dtype"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(SketchError, match=match):
        CountSketch(**kwargs)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        CountSketch(10, 1, 1, backend="tpu")


def test_bad_dense_inserts(sketch):
    unchanged(sketch, lambda: sketch.insert(np.ones(99)), SketchError, r"shape \(100,\)")
    unchanged(sketch, lambda: sketch.insert(np.ones((100, 1))), SketchError, "shape")
    unchanged(sketch, lambda: sketch.insert(np.ones(100, dtype=np.int64)), SketchError, "floating dtype")
    unchanged(sketch, lambda: sketch.insert(np.ones(100, dtype=complex)), SketchError, "floating dtype")
    unchanged(sketch, lambda: sketch.insert([1.0] * 100), SketchError, "must be a numpy array")
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(100)
        x[37] = bad
        unchanged(sketch, lambda: sketch.insert(x), SketchError, "NaN or infinity")
        unchanged(sketch, lambda: sketch.insert_batch(np.stack([np.ones(100), x])), SketchError, "NaN")


def test_bad_sparse_inserts(sketch):
    ok = np.array([1.0, 2.0])
    unchanged(sketch, lambda: sketch.insert_sparse(np.array([0, 100]), ok), SketchError, r"\[0, 100\)")
    unchanged(sketch, lambda: sketch.insert_sparse(np.array([-1, 3]), ok), SketchError, "must lie in")
    unchanged(sketch, lambda: sketch.insert_sparse(np.array([1.0, 3.0]), ok), SketchError, "integer dtype")
    unchanged(sketch, lambda: sketch.insert_sparse(np.array([1, 2, 3]), ok), SketchError, "shape")
    unchanged(sketch, lambda: sketch.insert_sparse(np.array([[1, 2]]), ok), SketchError, "1-D")
    unchanged(sketch, lambda: sketch.insert_sparse(np.array([1, 2]), np.array([1.0, np.nan])),
              SketchError, "NaN")


def test_bad_batches(sketch):
    unchanged(sketch, lambda: sketch.insert_batch(np.ones(100)), SketchError, "shape")
    unchanged(sketch, lambda: sketch.insert_batch(np.ones((2, 99))), SketchError, "shape")
    with pytest.raises(SketchError, match="shape"):
        sketch.sketch_each(np.ones((3, 5)))


def test_bad_queries(sketch):
    for k in (0, -1, 101, 2.5, True):
        unchanged(sketch, lambda: sketch.topk(k), SketchError, "k must be an integer")
    for tau in (-0.1, np.nan, np.inf, "1"):
        unchanged(sketch, lambda: sketch.heavy_hitters(tau), SketchError, "threshold")
    unchanged(sketch, lambda: sketch.query(np.array([100])), SketchError, "must lie in")
    unchanged(sketch, lambda: sketch.unsketch(), SketchError, "exactly one")
    unchanged(sketch, lambda: sketch.unsketch(3, threshold=1.0), SketchError, "exactly one")
    unchanged(sketch, lambda: sketch.zero_coordinates(np.array([-3])), SketchError, "must lie in")


@pytest.mark.parametrize("other_kwargs, field", [
    (dict(d=101, rows=3, cols=16, seed=1), "d"),
    (dict(d=100, rows=4, cols=16, seed=1), "rows"),
    (dict(d=100, rows=3, cols=17, seed=1), "cols"),
    (dict(d=100, rows=3, cols=16, seed=2), "seed"),
    (dict(d=100, rows=3, cols=16, seed=1, dtype="float64"), "dtype"),
])
def test_mismatched_merges(sketch, other_kwargs, field):
    other = CountSketch(backend=sketch.backend, **other_kwargs)
    unchanged(sketch, lambda: sketch.merge(other), IncompatibleSketches, f"differ in {field}")
    unchanged(sketch, lambda: sketch + other, IncompatibleSketches, field)
    unchanged(sketch, lambda: sketch.add_scaled(other, 2.0), IncompatibleSketches, field)


def test_bad_scalars(sketch):
    for alpha in (np.nan, np.inf):
        unchanged(sketch, lambda: sketch.scale(alpha), SketchError, "finite real")
        unchanged(sketch, lambda: sketch.add_scaled(sketch.copy(), alpha), SketchError, "finite")
    with pytest.raises(TypeError):
        sketch * "2"
    with pytest.raises(TypeError):
        sketch + 1.0


def test_bad_bytes(sketch):
    good = sketch.to_bytes()
    with pytest.raises(SerializationError, match="truncated"):
        CountSketch.from_bytes(good[:-1])
    with pytest.raises(SerializationError, match="truncated"):
        CountSketch.from_bytes(good[:10])
    with pytest.raises(SerializationError, match="truncated or padded"):
        CountSketch.from_bytes(good + b"\0")
    with pytest.raises(SerializationError, match="magic"):
        CountSketch.from_bytes(b"PK\x03\x04" + good[4:])
    for pos in (60, len(good) // 2, len(good) - 2):
        corrupt = bytearray(good)
        corrupt[pos] ^= 0x10
        with pytest.raises(SerializationError):
            CountSketch.from_bytes(bytes(corrupt))
    bumped = bytearray(good)
    bumped[8] = 99  # format version
    with pytest.raises(SerializationError, match="format version"):
        CountSketch.from_bytes(bytes(bumped))
    bumped = bytearray(good)
    bumped[10] = 7  # hash version
    with pytest.raises(SerializationError, match="hash version"):
        CountSketch.from_bytes(bytes(bumped))


def test_importing_sketchlib_imports_no_optional_library():
    code = ("import sys, sketchlib, sketchlib.sketch, sketchlib.serialize; "
            "import adapters; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('numba', 'cupy', 'torch', 'hypothesis')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_missing_backend_says_what_to_install(monkeypatch):
    from sketchlib import _backends
    monkeypatch.setitem(_backends._usable, "cupy", False)
    with pytest.raises(_backends.BackendUnavailable, match="pip install"):
        CountSketch(10, 1, 1, backend="cupy")


def test_hash_versions_do_not_mix():
    one = CountSketch(1000, 3, 64, hash_version=1, backend="numpy")
    two = CountSketch(1000, 3, 64, hash_version=2, backend="numpy").insert(np.ones(1000))
    before = two.table.copy()
    with pytest.raises(IncompatibleSketches, match="hash_version: 2 != 1"):
        two.merge(one)
    np.testing.assert_array_equal(two.table, before)
    back = CountSketch.from_bytes(two.to_bytes(), backend="numpy")
    assert back.hash_version == 2 and back.signature() == two.signature()
    np.testing.assert_array_equal(back.table, before)
    with pytest.raises(SketchError, match="divisible by 4"):
        CountSketch.from_table(np.zeros((3, 10), np.float32), 100, hash_version=2)


def test_auto_hash_version_is_a_function_of_cols():
    assert CountSketch(100, 3, 12, backend="numpy").hash_version == 2
    assert CountSketch(100, 3, 10, backend="numpy").hash_version == 1
    assert CountSketch(100, 3, 12, hash_version=1, backend="numpy").hash_version == 1
    assert CountSketch.from_table(np.zeros((3, 12), np.float32), 100).hash_version == 2
    assert "hash_version=2" in repr(CountSketch(100, 3, 12, backend="numpy"))
    with pytest.raises(SketchError, match="hash_version must be 'auto' or one of"):
        CountSketch(100, 3, 12, hash_version="fast")
