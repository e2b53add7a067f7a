"""Algebraic properties of CountSketch on every host backend (hypothesis)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from sketchlib import CountSketch
from sketchlib.testing import dense_vectors, scalars, sketch_params, sparse_updates


def tol(sk, scale):
    """Absolute tolerance for float comparisons of tables of this dtype."""
    eps = 1e-5 if sk.dtype == np.float32 else 1e-12
    return eps * max(1.0, scale)


@given(sketch_params(), st.data())
def test_linearity(host_backend, params, data):
    d = params["d"]
    x = data.draw(dense_vectors(d))
    y = data.draw(dense_vectors(d))
    a, b = data.draw(scalars(10)), data.draw(scalars(10))
    combined = CountSketch(backend=host_backend, **params).insert(a * x + b * y)
    sx = CountSketch(backend=host_backend, **params).insert(x)
    sy = CountSketch(backend=host_backend, **params).insert(y)
    expect = a * sx + b * sy
    scale = 20 * 1e3 * d
    np.testing.assert_allclose(combined.table, expect.table, atol=tol(combined, scale) * 10, rtol=1e-4)


@given(sketch_params(), st.data())
def test_merge_commutative_and_associative(host_backend, params, data):
    vecs = [data.draw(dense_vectors(params["d"])) for _ in range(3)]
    s = [CountSketch(backend=host_backend, **params).insert(v) for v in vecs]
    left = (s[0] + s[1]) + s[2]
    right = s[0] + (s[1] + s[2])
    swapped = s[2] + s[1] + s[0]
    atol = tol(left, 3e3 * params["d"])
    np.testing.assert_allclose(left.table, right.table, atol=atol, rtol=1e-5)
    np.testing.assert_allclose(left.table, swapped.table, atol=atol, rtol=1e-5)


@given(sketch_params(), st.data())
def test_sparse_insert_equals_dense_insert(host_backend, params, data):
    d = params["d"]
    idx, vals = data.draw(sparse_updates(d))
    dense = np.zeros(d)
    np.add.at(dense, idx, vals)
    a = CountSketch(backend=host_backend, **params).insert_sparse(idx, vals)
    b = CountSketch(backend=host_backend, **params).insert(dense)
    np.testing.assert_allclose(a.table, b.table, atol=tol(a, 1e3 * len(idx)), rtol=1e-5)


@given(sketch_params(max_d=400), st.integers(1, 5), st.data())
def test_batched_equals_one_by_one(host_backend, params, n, data):
    stack = np.stack([data.draw(dense_vectors(params["d"])) for _ in range(n)])
    one_by_one = CountSketch(backend=host_backend, **params)
    for row in stack:
        one_by_one.insert(row)
    summed = CountSketch(backend=host_backend, **params).insert_batch(stack)
    atol = tol(summed, 1e3 * n * params["d"])
    np.testing.assert_allclose(summed.table, one_by_one.table, atol=atol, rtol=1e-5)
    each = summed.sketch_each(stack)
    assert len(each) == n
    for row, sk in zip(stack, each):
        single = CountSketch(backend=host_backend, **params).insert(row)
        np.testing.assert_allclose(sk.table, single.table, atol=atol, rtol=1e-5)


@given(sketch_params(), st.data())
def test_scale_subtract_and_zero(host_backend, params, data):
    x = data.draw(dense_vectors(params["d"]))
    sk = CountSketch(backend=host_backend, **params).insert(x)
    double = sk * 2.0
    np.testing.assert_allclose((double - sk).table, sk.table, rtol=1e-6, atol=1e-6)
    neg = -sk
    np.testing.assert_array_equal((neg + sk).table, np.zeros_like(sk.table))
    sk.zero()
    assert not sk.table.any()


@given(sketch_params(), st.data())
def test_serialization_roundtrip(host_backend, params, data):
    sk = CountSketch(backend=host_backend, **params).insert(data.draw(dense_vectors(params["d"])))
    back = CountSketch.from_bytes(sk.to_bytes(), backend=host_backend)
    assert back.signature() == sk.signature()
    np.testing.assert_array_equal(back.table, sk.table)


def test_file_roundtrip(tmp_path, host_backend):
    sk = CountSketch(500, 3, 64, seed=9, backend=host_backend).insert(np.arange(500.0))
    sk.save(tmp_path / "s.sketch")
    back = CountSketch.load(tmp_path / "s.sketch", backend=host_backend)
    np.testing.assert_array_equal(back.table, sk.table)
    assert [p.name for p in tmp_path.iterdir()] == ["s.sketch"]


def test_query_of_isolated_coordinate_is_exact(host_backend):
    sk = CountSketch(10_000, 5, 1000, seed=3, backend=host_backend)
    idx = np.array([1234, 2**20 % 10_000])
    sk.insert_sparse(idx, np.array([3.5, -2.0]))
    np.testing.assert_allclose(sk.query(idx), [3.5, -2.0])


def test_even_rows_median_is_mean_of_middle_values(host_backend):
    # With 2 rows and a lone coordinate, both rows hold +-v, so the estimate is v;
    # add a colliding value in one row only and the estimate is the mean.
    sk = CountSketch(4, 2, 1, seed=1, backend=host_backend)
    sk.insert_sparse(np.array([0]), np.array([4.0]))
    sk._table[1, 0] += 2.0 * np.sign(sk.table[1, 0])
    assert sk.query(np.array([0]))[0] == pytest.approx(5.0)


def test_huge_dimension_indices_beyond_2_32(host_backend):
    d = 2**40
    sk = CountSketch(d, 5, 4096, seed=7, backend=host_backend)
    idx = np.array([0, 2**32, 2**32 + 1, d - 1, 2**35 + 17], dtype=np.int64)
    vals = np.array([1.0, 2.0, -3.0, 4.0, -5.0])
    sk.insert_sparse(idx, vals)
    np.testing.assert_allclose(sk.query(idx), vals)


def test_sketch_exports_its_table_through_dlpack(host_backend):
    sk = CountSketch(100, 3, 10, backend=host_backend).insert(np.ones(100))
    view = np.from_dlpack(sk)
    assert np.shares_memory(view, sk.table)
    np.testing.assert_array_equal(view, sk.table)
