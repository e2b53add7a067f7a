"""The shared backend battery: every registered backend against the NumPy reference.

Runs on every usable backend, the built-ins and ``tests/_toy_backend.py`` (a
test-only backend that registers itself through the public API, proving that a
backend needs only its module, one registration and these tests).

Tolerance: estimates, top-k, heavy hitters, unsketch, zeroing and the
element-wise table arithmetic on a given table are exact (bit for bit); tables
built by inserts may differ by float rounding only (another summation order),
bounded per bucket by ``(n_b + 2) * eps * sum_b |x_i|`` for ``n_b`` terms.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _toy_backend  # noqa: F401  (registers "toy")
from sketchlib import CountSketch
from sketchlib.backends import CONTRACT, available_backends, count_host_transfers, get_backend
from sketchlib.hashing import buckets_and_signs
from sketchlib.testing import dense_vectors, sketch_params, sparse_updates

BACKENDS = available_backends()
assert "toy" in BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every usable backend, the toy one included."""
    return request.param


def _to_host(a):
    """A result as a NumPy array (CuPy results copied back)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _on(name, host):
    """A host array moved to the array library of backend ``name``."""
    return get_backend(name).from_numpy(np.ascontiguousarray(host))


def _bound(sk, indices, values):
    """Per-bucket bound on the difference between two summation orders, shape (rows, cols)."""
    keys, eps = sk.keys, np.finfo(sk.dtype).eps
    mass = np.zeros((sk.rows, sk.cols))
    count = np.zeros((sk.rows, sk.cols))
    for j in range(sk.rows):
        b, _ = buckets_and_signs(indices, keys[j, 0], keys[j, 1], sk.cols, sk.hash_version)
        np.add.at(mass[j], b, np.abs(values.astype(np.float64)))
        np.add.at(count[j], b, 1)
    return (count + 2) * eps * mass + np.finfo(sk.dtype).tiny


def _close(table, ref, bound):
    """A backend's table equals the reference's up to the rounding bound."""
    np.testing.assert_array_less(np.abs(_to_host(table).astype(np.float64) - ref.astype(np.float64)),
                                 bound + 1e-300)


def test_every_backend_implements_the_contract(backend):
    module = get_backend(backend)
    assert [name for name in CONTRACT if not hasattr(module, name)] == []
    assert module.NAME == backend


@settings(max_examples=15)
@given(sketch_params(max_d=600, max_rows=5, max_cols=64), st.data())
def test_inserts_agree_with_the_reference(backend, params, data):
    d, dt = params["d"], params["dtype"]
    x = data.draw(dense_vectors(d, dtype=dt))
    idx, vals = data.draw(sparse_updates(d, dtype=dt))
    n = data.draw(st.integers(0, 3))
    stack = np.stack([data.draw(dense_vectors(d, dtype=dt)) for _ in range(n)]) if n else np.zeros((0, d), dt)
    ref, sk = CountSketch(**params, backend="numpy"), CountSketch(**params, backend=backend)
    all_idx = np.arange(d, dtype=np.int64)

    ref.insert(x), sk.insert(_on(backend, x))
    _close(sk.table, ref.table, _bound(ref, all_idx, x))

    ref.zero(), sk.zero()
    assert not np.any(_to_host(sk.table))
    ref.insert_sparse(idx, vals), sk.insert_sparse(_on(backend, idx), _on(backend, vals))
    _close(sk.table, ref.table, _bound(ref, idx, vals))

    ref.zero(), sk.zero()
    ref.insert_batch(stack), sk.insert_batch(_on(backend, stack))
    _close(sk.table, ref.table, _bound(ref, np.tile(all_idx, n), stack.reshape(-1)))

    each_ref, each = ref.sketch_each(stack), sk.sketch_each(_on(backend, stack))
    assert len(each) == n
    for row, a, b in zip(stack, each_ref, each):
        assert b.backend == backend and b.signature() == sk.signature()
        _close(b.table, a.table, _bound(ref, all_idx, row))


def _filled_pair(backend, params, x):
    """The reference sketch of ``x`` and a copy of its table on ``backend`` (the same table)."""
    ref = CountSketch(**params, backend="numpy").insert(x)
    return ref, ref.to(backend)


@settings(max_examples=15)
@given(sketch_params(max_d=600, max_rows=6, max_cols=64), st.data())
def test_queries_on_a_given_table_are_exact(backend, params, data):
    d = params["d"]
    ref, sk = _filled_pair(backend, params, data.draw(dense_vectors(d, dtype=params["dtype"])))
    np.testing.assert_array_equal(_to_host(sk.table), ref.table)
    q = np.asarray(data.draw(st.lists(st.integers(0, d - 1), max_size=30)), dtype=np.int64)
    np.testing.assert_array_equal(_to_host(sk.query(_on(backend, q))), ref.query(q))
    est = ref.estimate_all()
    np.testing.assert_array_equal(_to_host(sk.estimate_all()), est)

    k = data.draw(st.integers(1, d))
    idx, vals = (_to_host(a) for a in sk.topk(k))
    ridx, rvals = ref.topk(k)
    assert idx.dtype == np.int64 and len(set(idx.tolist())) == k
    np.testing.assert_array_equal(vals, est[idx])                      # values are the estimates
    np.testing.assert_array_equal(np.abs(vals), np.abs(rvals))         # the same magnitudes, in order
    outside = np.setdiff1d(np.arange(d), idx)
    assert outside.size == 0 or np.abs(est[outside]).max() <= np.abs(vals).min()

    dense = _to_host(sk.unsketch(k))
    assert np.count_nonzero(dense) <= k
    nz = np.flatnonzero(dense)
    np.testing.assert_array_equal(dense[nz], est[nz])
    np.testing.assert_array_equal(np.sort(np.abs(dense))[::-1][:k], np.abs(rvals))

    thr = float(np.abs(est)[data.draw(st.integers(0, d - 1))])
    hidx, hvals = (_to_host(a) for a in sk.heavy_hitters(thr))
    ref_h = ref.heavy_hitters(thr)
    np.testing.assert_array_equal(hidx, ref_h[0])
    np.testing.assert_array_equal(hvals, ref_h[1])
    np.testing.assert_array_equal(_to_host(sk.unsketch(threshold=thr)), ref.unsketch(threshold=thr))
    assert sk.l2_estimate() == pytest.approx(ref.l2_estimate(), rel=1e-12, abs=1e-300)

    z = np.asarray(data.draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=10)), dtype=np.int64)
    ref.zero_coordinates(z), sk.zero_coordinates(_on(backend, z))
    np.testing.assert_array_equal(_to_host(sk.table), ref.table)


@settings(max_examples=15)
@given(sketch_params(max_d=300, max_rows=4, max_cols=48), st.data())
def test_linear_algebra_is_exact(backend, params, data):
    d, dt = params["d"], params["dtype"]
    ra, a = _filled_pair(backend, params, data.draw(dense_vectors(d, dtype=dt)))
    rb, b = _filled_pair(backend, params, data.draw(dense_vectors(d, dtype=dt)))
    alpha = data.draw(st.floats(-100, 100, allow_nan=False, allow_infinity=False))

    def same(mine, theirs):
        assert mine.backend == backend
        np.testing.assert_array_equal(_to_host(mine.table), theirs.table)

    same(a + b, ra + rb)
    same(a - b, ra - rb)
    same(-a, -ra)
    same(a * alpha, ra * alpha)
    same(a.copy().add_scaled(b, alpha), ra.copy().add_scaled(rb, alpha))
    same(a.copy().merge(b), ra.copy().merge(rb))
    c, rc = a.copy(), ra.copy()
    c += b
    rc += rb
    same(c, rc)
    c -= b
    rc -= rb
    same(c, rc)
    before = _to_host(a.table).copy()
    a.copy().scale(alpha).zero()                                       # a copy is independent
    np.testing.assert_array_equal(_to_host(a.table), before)
    same(a.scale(alpha), ra.scale(alpha))
    same(a.empty_like(), ra.empty_like())
    same(CountSketch.from_bytes(a.to_bytes(), backend=backend), ra)
    same(a.to(backend), ra)
    np.testing.assert_array_equal(a.to("numpy").table, ra.table)


def test_host_reads_at_the_contract_points(backend):
    """Each validation costs exactly its one host read on every backend that counts (not yet CuPy)."""
    if backend == "cupy":
        pytest.skip("cupy_gpu's kernel module reads its finiteness flag without to_host_scalars (yet)")
    sk = CountSketch(1000, 3, 64, backend=backend)
    x = _on(backend, np.linspace(-1, 1, 1000))
    idx = _on(backend, np.array([3, 999, 0], dtype=np.int64))
    for call, expected in [(lambda: sk.insert(x), 1),                 # finiteness flag
                           (lambda: sk.insert(x, check_finite=False), 0),
                           (lambda: sk.insert_sparse(idx, idx * 1.0), 2),  # index range + finiteness
                           (lambda: sk.query(idx), 1),                 # index range
                           (lambda: sk.zero_coordinates(idx), 1),
                           (lambda: sk.topk(5), 0),
                           (lambda: sk.scale(2.0).merge(sk.copy()), 0)]:
        with count_host_transfers() as n:
            call()
        assert n.count == expected, (call, n)
