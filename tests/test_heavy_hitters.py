"""Recovery of planted heavy hitters, by top-k and by threshold, and the l2 estimate."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from sketchlib import CountSketch


def planted(d, k, seed, big=100.0):
    """Gaussian noise with k planted coordinates of magnitude ~big and random signs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d)
    idx = rng.choice(d, k, replace=False)
    x[idx] = rng.choice([-1.0, 1.0], k) * big * (1 + rng.random(k))
    return x, np.sort(idx)


@given(st.integers(0, 2**32 - 1), st.integers(1, 20))
def test_topk_recovers_planted(host_backend, seed, k):
    d = 20_000
    x, idx = planted(d, k, seed)
    # Width: a bucket's noise is ~|tail|/sqrt(cols); rows: a false hit needs collisions with
    # heavy hitters in 4 of 7 rows, ~C(7,4)(k/cols)^4 per coordinate, so < 1e-3 per example.
    cols = 4000
    sk = CountSketch(d, 7, cols, seed=seed, backend=host_backend).insert(x)
    got_idx, got_vals = sk.topk(k)
    np.testing.assert_array_equal(np.sort(got_idx), idx)
    tail = np.linalg.norm(np.delete(x, idx))
    np.testing.assert_allclose(got_vals, x[got_idx], atol=5 * tail / np.sqrt(cols))
    assert np.all(np.diff(np.abs(got_vals)) <= 0), "top-k must be ordered by |value| descending"
    assert (np.sign(got_vals) == np.sign(x[got_idx])).all()


@given(st.integers(0, 2**32 - 1), st.integers(1, 20))
def test_threshold_recovers_planted_including_negative(host_backend, seed, k):
    d = 20_000
    x, idx = planted(d, k, seed)
    sk = CountSketch(d, 7, 4000, seed=seed, backend=host_backend).insert(x)
    got_idx, got_vals = sk.heavy_hitters(50.0)
    np.testing.assert_array_equal(got_idx, idx)
    assert (np.sign(got_vals) == np.sign(x[idx])).all()


def test_unsketch_is_dense_with_only_heavy_hitters(host_backend):
    x, idx = planted(5000, 7, 1)
    sk = CountSketch(5000, 5, 1000, seed=2, backend=host_backend).insert(x)
    dense = sk.unsketch(7)
    assert dense.shape == (5000,)
    np.testing.assert_array_equal(np.flatnonzero(dense), idx)
    np.testing.assert_array_equal(sk.unsketch(threshold=50.0), dense)


def test_topk_matches_exact_topk_of_estimates(host_backend):
    rng = np.random.default_rng(0)
    sk = CountSketch(30_000, 3, 500, seed=5, backend=host_backend).insert(rng.standard_normal(30_000))
    est = sk.estimate_all()
    for k in (1, 10, 777, 30_000):
        idx, vals = sk.topk(k)
        assert len(np.unique(idx)) == k
        np.testing.assert_array_equal(vals, est[idx])
        kth = np.sort(np.abs(est))[::-1][k - 1]
        assert np.abs(vals).min() == kth


@pytest.mark.parametrize("rows", [1, 4, 5])
def test_l2_estimate(host_backend, rows):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal(50_000)
    sk = CountSketch(50_000, rows, 4000, seed=11, backend=host_backend).insert(x)
    assert sk.l2_estimate() == pytest.approx(np.linalg.norm(x), rel=0.1)


def test_zero_coordinates_clears_their_buckets_only(host_backend):
    rng = np.random.default_rng(3)
    sk = CountSketch(2000, 3, 100, seed=4, backend=host_backend).insert(rng.standard_normal(2000))
    before = sk.table.copy()
    sk.zero_coordinates(np.array([5, 17]))
    assert (sk.query(np.array([5, 17])) == 0).all()
    changed = before != sk.table
    assert 1 <= changed.sum(axis=1).max() <= 2
    assert (sk.table[changed] == 0).all()
