"""The Numba backend against the NumPy reference, operation by operation.

Tolerance: hashes, bucket/sign assignments, and every estimate computed from a
given table are bit-identical.  Tables built by inserts may differ by float
rounding only, because additions happen in another order (the reference sums
each bucket in float64 and rounds once; the kernels add into the table's
dtype).  The bound used is the one of recursive summation:
``|error| <= (n_b + 1) * eps * sum_b |x_i|`` for a bucket with ``n_b`` terms.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("numba")

from sketchlib import CountSketch  # noqa: E402
from sketchlib._backends import numba_cpu, numpy_ref  # noqa: E402
from sketchlib._hash import buckets_and_signs, row_keys  # noqa: E402



@pytest.fixture(scope="module", autouse=True)
def always_parallel():
    """Run every call on all threads, even tiny ones, so the parallel paths (row
    parts with private buffers, per-task histograms and offsets) are the ones
    tested; ``test_serial_and_parallel_paths_agree`` covers the one-thread path."""
    saved = numba_cpu._PARALLEL_WORK
    numba_cpu._PARALLEL_WORK = 0
    yield
    numba_cpu._PARALLEL_WORK = saved


PARAMS = st.fixed_dictionaries({
    "d": st.integers(1, 3000),
    "rows": st.integers(1, 8),
    "cols": st.integers(1, 400),
    "seed": st.integers(0, 2**64 - 1),
    "dtype": st.sampled_from(["float32", "float64"]),
    "hash_version": st.sampled_from([1, 2]),
}).map(lambda p: {**p, "cols": -(-p["cols"] // 4) * 4} if p["hash_version"] == 2 else p)


def pair(params):
    """The same empty sketch on both backends."""
    return CountSketch(**params, backend="numpy"), CountSketch(**params, backend="numba")


def vector(seed, n, dtype, scale=10.0):
    """A reproducible random vector with a few planted large entries."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * scale
    x[rng.integers(0, n, size=max(1, n // 100))] *= 50
    return x.astype(dtype)


def rounding_bound(d_indices, values, sketch):
    """Per-bucket bound on the difference of two summation orders, shape (rows, cols)."""
    keys, cols, dtype = sketch.keys, sketch.cols, sketch.dtype
    eps = np.finfo(dtype).eps
    bound = np.empty((keys.shape[0], cols))
    mag = np.abs(values.astype(np.float64))
    for j in range(keys.shape[0]):
        b, _ = buckets_and_signs(d_indices, keys[j, 0], keys[j, 1], cols, sketch.hash_version)
        count = np.bincount(b, minlength=cols)
        bound[j] = (count + 2) * eps * np.bincount(b, weights=mag, minlength=cols)
    return bound + np.finfo(dtype).tiny


def assert_tables_close(a, b, bound):
    """Tables agree within the rounding bound."""
    diff = np.abs(a.table.astype(np.float64) - b.table.astype(np.float64))
    assert (diff <= bound).all(), f"max excess {np.max(diff - bound)}"


# ---------------------------------------------------------------------- hashes
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=200), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(1, 2**31 - 1), st.sampled_from([1, 2]))
def test_hash_bit_identical(indices, a, b, cols, version):
    idx = np.array(indices, dtype=np.int64)
    cols = max(4, cols // 4 * 4) if version == 2 else cols
    got_b, got_s = numba_cpu._k().hash_many(idx, a, b, cols, version)
    want_b, want_s = buckets_and_signs(idx, a, b, cols, version)
    np.testing.assert_array_equal(got_b, want_b)
    np.testing.assert_array_equal(got_s, want_s)


@given(PARAMS)
def test_unit_vectors_land_in_the_reference_buckets(params):
    ref, fast = pair(params)
    idx = np.arange(params["d"], dtype=np.int64)
    steps = np.arange(1, params["d"] + 1, dtype=params["dtype"])  # distinct weights
    ref.insert_sparse(idx, steps)
    fast.insert(steps)
    assert_tables_close(ref, fast, rounding_bound(idx, steps, ref))


# --------------------------------------------------------------------- inserts
@given(PARAMS, st.integers(0, 2**32))
def test_insert_dense_matches_reference(params, vseed):
    ref, fast = pair(params)
    x = vector(vseed, params["d"], params["dtype"])
    ref.insert(x)
    fast.insert(x)
    idx = np.arange(params["d"], dtype=np.int64)
    assert_tables_close(ref, fast, rounding_bound(idx, x, ref))


@pytest.mark.parametrize("rows", [1, 2, 5, 6])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parallel_insert_paths_match_reference(rows, dtype):
    """Long enough to split rows into parts with private buffers (and to use many tasks)."""
    d, cols = 200_003, 4099
    ref = CountSketch(d, rows, cols, seed=11, dtype=dtype, backend="numpy")
    fast = CountSketch(d, rows, cols, seed=11, dtype=dtype, backend="numba")
    x = vector(3, d, dtype)
    ref.insert(x)
    fast.insert(x)
    idx = np.arange(d, dtype=np.int64)
    assert_tables_close(ref, fast, rounding_bound(idx, x, ref))
    np.testing.assert_array_equal(ref.query(idx[::97]), CountSketch.from_table(
        ref.table.copy(), d, seed=11, backend="numba").query(idx[::97]))


@given(PARAMS, st.integers(0, 2**32), st.integers(0, 300))
def test_insert_sparse_with_duplicates(params, vseed, n):
    ref, fast = pair(params)
    rng = np.random.default_rng(vseed)
    idx = rng.integers(0, params["d"], size=n)
    idx = np.concatenate([idx, idx[: n // 2]])  # duplicates must accumulate
    vals = vector(vseed, idx.shape[0], params["dtype"]) if idx.shape[0] else np.zeros(0, params["dtype"])
    ref.insert_sparse(idx, vals)
    fast.insert_sparse(idx, vals)
    assert_tables_close(ref, fast, rounding_bound(idx, vals, ref))


@given(st.integers(0, 2**64 - 1), st.integers(1, 6), st.integers(1, 1000),
       st.lists(st.integers(2**32 - 5, 2**34 - 1), min_size=1, max_size=60))
def test_indices_beyond_2_pow_32(seed, rows, cols, big):
    d = 2**34
    ref = CountSketch(d, rows, cols, seed=seed, dtype="float64", backend="numpy")
    fast = CountSketch(d, rows, cols, seed=seed, dtype="float64", backend="numba")
    idx = np.array(big, dtype=np.int64)
    vals = np.linspace(1.0, 2.0, idx.shape[0])
    ref.insert_sparse(idx, vals)
    fast.insert_sparse(idx, vals)
    assert_tables_close(ref, fast, rounding_bound(idx, vals, ref))
    # Same table on both sides: estimates are bit-identical.
    fast.table[...] = ref.table
    probe = np.concatenate([idx, idx + 1 - (idx + 1 >= d)])
    np.testing.assert_array_equal(fast.query(probe), ref.query(probe))


@given(PARAMS, st.integers(0, 2**32), st.integers(0, 4))
def test_insert_batch_and_sketch_each(params, vseed, n):
    ref, fast = pair(params)
    stack = np.stack([vector(vseed + m, params["d"], params["dtype"]) for m in range(n)]) if n else \
        np.zeros((0, params["d"]), params["dtype"])
    ref.insert_batch(stack)
    fast.insert_batch(stack)
    idx = np.tile(np.arange(params["d"], dtype=np.int64), n)
    bound = rounding_bound(idx, stack.reshape(-1), ref)
    assert_tables_close(ref, fast, bound)
    each_ref, each_fast = ref.sketch_each(stack), fast.sketch_each(stack)
    assert len(each_fast) == n
    for m, (a, b) in enumerate(zip(each_ref, each_fast)):
        one = np.arange(params["d"], dtype=np.int64)
        assert_tables_close(a, b, rounding_bound(one, stack[m], ref))


@pytest.mark.parametrize("rows", [1, 5])
def test_serial_and_parallel_paths_agree(rows, monkeypatch):
    d, cols = 50_001, 977
    x = vector(2, d, "float64")
    stack = np.stack([x, 2 * x[::-1]])
    idx = np.arange(d, dtype=np.int64)
    results = []
    for work in (0, 2**62):
        monkeypatch.setattr(numba_cpu, "_PARALLEL_WORK", work)
        s = CountSketch(d, rows, cols, seed=4, dtype="float64", backend="numba").insert(x)
        results.append((s, s.topk(100), s.heavy_hitters(1.0), s.estimate_all(),
                        s.empty_like().insert_batch(stack), s.sketch_each(stack)))
    (a, ta, ha, ea, ba, sa), (b, tb, hb, eb, bb, sb) = results
    assert_tables_close(a, b, rounding_bound(idx, x, a))
    b.table[...] = a.table
    for u, v in zip(ta + ha + (ea,), b.topk(100) + b.heavy_hitters(1.0) + (b.estimate_all(),)):
        np.testing.assert_array_equal(u, v)
    both = np.concatenate([idx, idx])
    assert_tables_close(ba, bb, rounding_bound(both, stack.reshape(-1), a))
    for u, v, row in zip(sa, sb, stack):
        assert_tables_close(u, v, rounding_bound(idx, row, a))


@pytest.mark.parametrize("chunk", [4099, 1 << 22])
def test_insert_batch_parallel_path_equals_one_by_one(chunk, monkeypatch):
    """Summed a chunk of coordinates at a time (offsets into the hash) or in one go."""
    monkeypatch.setattr(numba_cpu, "SUM_CHUNK", chunk)
    d, rows, cols = 150_000, 5, 3001
    stack = np.stack([vector(m, d, "float64") for m in range(3)])
    batch = CountSketch(d, rows, cols, dtype="float64", backend="numba").insert_batch(stack)
    single = CountSketch(d, rows, cols, dtype="float64", backend="numba")
    for x in stack:
        single.insert(x)
    idx = np.tile(np.arange(d, dtype=np.int64), 3)
    assert_tables_close(batch, single, rounding_bound(idx, stack.reshape(-1), batch))


# -------------------------------------------------------------------- queries
def loaded_pair(params, vseed):
    """Both backends holding the very same table (so estimates must be bit-identical)."""
    ref, fast = pair(params)
    ref.insert(vector(vseed, params["d"], params["dtype"]))
    fast.table[...] = ref.table
    return ref, fast


@given(PARAMS, st.integers(0, 2**32), st.data())
def test_query_and_estimate_all_bit_identical(params, vseed, data):
    ref, fast = loaded_pair(params, vseed)
    idx = np.array(data.draw(st.lists(st.integers(0, params["d"] - 1), max_size=100)), dtype=np.int64)
    np.testing.assert_array_equal(fast.query(idx), ref.query(idx))
    assert fast.query(idx).dtype == ref.query(idx).dtype
    np.testing.assert_array_equal(fast.estimate_all(), ref.estimate_all())


@pytest.mark.parametrize("rows", range(1, 10))
def test_median_matches_numpy_for_every_row_count(rows):
    """Small-network medians (1, 3, 5 rows) and the sorting path, with ties and signs."""
    d, cols = 5000, 7
    rng = np.random.default_rng(rows)
    table = rng.integers(-3, 4, size=(rows, cols)).astype(np.float32)  # many ties
    ref = CountSketch.from_table(table, d, seed=rows, backend="numpy")
    fast = CountSketch.from_table(table.copy(), d, seed=rows, backend="numba")
    np.testing.assert_array_equal(fast.estimate_all(), ref.estimate_all())


@given(PARAMS, st.integers(0, 2**32), st.data())
def test_topk_matches_reference(params, vseed, data):
    ref, fast = loaded_pair(params, vseed)
    k = data.draw(st.integers(1, params["d"]))
    ri, rv = ref.topk(k)
    fi, fv = fast.topk(k)
    assert fi.dtype == np.int64 and fi.shape == (k,) and np.unique(fi).shape == (k,)
    np.testing.assert_array_equal(np.abs(fv), np.abs(rv))  # equal as multisets of |v|, in order
    np.testing.assert_array_equal(fv, fast.query(fi))  # values are the estimates of the indices
    # Ordered by |v| descending, ties by index ascending.
    order = np.lexsort((fi, -np.abs(fv)))
    np.testing.assert_array_equal(order, np.arange(k))
    # Every coordinate left out is no larger than the smallest one taken.
    est = ref.estimate_all()
    mask = np.ones(params["d"], bool)
    mask[fi] = False
    if mask.any():
        assert np.abs(est[mask]).max() <= np.abs(fv).min()


def test_topk_with_mostly_zero_estimates():
    """The k-th largest falls in the zero bin: a large candidate set, still exact."""
    d = 100_000
    ref = CountSketch(d, 3, 50_000, seed=5, backend="numpy")
    ref.insert_sparse(np.array([7, 70, 700, 7000]), np.array([5.0, -4.0, 3.0, 2.0], np.float32))
    fast = ref.to("numba")
    for k in (3, 4, 10, 5000, d):
        fi, fv = fast.topk(k)
        ri, rv = ref.topk(k)
        np.testing.assert_array_equal(np.abs(fv), np.abs(rv))
        np.testing.assert_array_equal(fv, ref.query(fi))
        np.testing.assert_array_equal(np.lexsort((fi, -np.abs(fv))), np.arange(k))


@pytest.mark.parametrize("store", [True, False])
def test_topk_and_heavy_with_and_without_estimate_buffer(store, monkeypatch):
    monkeypatch.setattr(numba_cpu, "STORE_ESTIMATES", store)
    d, cols = 300_000, 20_000
    ref = CountSketch(d, 5, cols, seed=9, backend="numpy")
    ref.insert(vector(1, d, "float32"))
    fast = ref.to("numba")
    fi, fv = fast.topk(2000)
    ri, rv = ref.topk(2000)
    np.testing.assert_array_equal(np.abs(fv), np.abs(rv))
    for a, b in zip(fast.heavy_hitters(float(np.abs(rv[-1]))), ref.heavy_hitters(float(np.abs(rv[-1])))):
        np.testing.assert_array_equal(a, b)


@given(PARAMS, st.integers(0, 2**32), st.floats(0, 2000))
def test_heavy_hitters_bit_identical(params, vseed, threshold):
    ref, fast = loaded_pair(params, vseed)
    ri, rv = ref.heavy_hitters(threshold)
    fi, fv = fast.heavy_hitters(threshold)
    np.testing.assert_array_equal(fi, ri)
    np.testing.assert_array_equal(fv, rv)
    assert fi.dtype == np.int64 and fv.dtype == rv.dtype


@given(PARAMS, st.integers(0, 2**32), st.data())
def test_zero_coordinates_bit_identical(params, vseed, data):
    ref, fast = loaded_pair(params, vseed)
    idx = np.array(data.draw(st.lists(st.integers(0, params["d"] - 1), max_size=50)), dtype=np.int64)
    ref.zero_coordinates(idx)
    fast.zero_coordinates(idx)
    np.testing.assert_array_equal(fast.table, ref.table)
    if idx.shape[0]:
        assert (fast.query(idx) == 0).all()


@given(PARAMS, st.integers(0, 2**32))
def test_l2_estimate_and_unsketch(params, vseed):
    ref, fast = loaded_pair(params, vseed)
    assert fast.l2_estimate() == pytest.approx(ref.l2_estimate(), rel=1e-12)
    k = max(1, params["d"] // 10)
    u_fast, u_ref = fast.unsketch(k), ref.unsketch(k)
    np.testing.assert_array_equal(np.sort(np.abs(u_fast)), np.sort(np.abs(u_ref)))


# ------------------------------------------------------------------- finiteness
@pytest.mark.parametrize("n", [10, 70_000, 1_000_003])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_every_position(n, bad):
    x = np.ones(n, np.float32)
    assert numba_cpu.all_finite(x)
    for pos in (0, n // 3, n - 1):
        y = x.copy()
        y[pos] = bad
        assert not numba_cpu.all_finite(y)
        assert not numba_cpu.all_finite(y.astype(np.float64).reshape(1, -1))


def test_nonfinite_insert_is_rejected_and_leaves_the_sketch_unchanged():
    s = CountSketch(100_000, 3, 100, backend="numba")
    x = np.ones(100_000, np.float32)
    s.insert(x)
    before = s.table.copy()
    x[77_777] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        s.insert(x)
    np.testing.assert_array_equal(s.table, before)


def test_backend_reports_itself():
    assert numba_cpu.available()
    s = CountSketch(10, 2, 3, backend="numba")
    assert s.backend == "numba" and s.device == "cpu"
    assert numba_cpu.NAME == "numba" and numba_cpu.ARRAY_LIBRARY == "numpy"
    np.testing.assert_array_equal(row_keys(0, 2), s.keys)
    assert numpy_ref.device_of(s.table) == numba_cpu.device_of(s.table) == "cpu"


def test_insert_stack_each_into_non_contiguous_tables():
    """The backend writes back when handed a strided (n, rows, cols) array."""
    d, rows, cols = 5000, 3, 64
    stack = np.stack([vector(m, d, "float64") for m in range(3)])
    shape = CountSketch(d, rows, cols, seed=1, dtype="float64", hash_version=2, backend="numpy")
    want = np.zeros((3, rows, cols))
    numpy_ref.insert_stack_each(want, stack, shape.keys, 2)
    big = np.zeros((3, rows, 2 * cols))
    numba_cpu.insert_stack_each(big[:, :, ::2], stack, shape.keys, 2)
    idx = np.arange(d, dtype=np.int64)
    for m in range(3):
        bound = rounding_bound(idx, stack[m], shape)
        assert (np.abs(big[m, :, ::2] - want[m]) <= bound).all()
    assert not big[:, :, 1::2].any()
