"""Quality of the hash family: loads, sign balance, collisions, independence."""
import numpy as np
import pytest
from scipy import stats

from sketchlib._hash import buckets_and_signs, row_keys

N = 200_000


@pytest.mark.parametrize("cols", [7, 1000, 65_536, 500_000])
def test_bucket_loads_are_uniform(cols):
    keys = row_keys(0, 3)
    for a, b in keys:
        buckets, _ = buckets_and_signs(np.arange(N), a, b, cols)
        assert buckets.min() >= 0 and buckets.max() < cols
        if cols <= 65_536:
            loads = np.bincount(buckets, minlength=cols)
            p = stats.chisquare(loads).pvalue
            assert p > 1e-4, f"bucket loads not uniform (p={p})"


def test_bucket_loads_for_indices_beyond_2_32():
    keys = row_keys(123, 2)
    idx = np.arange(2**33, 2**33 + N, dtype=np.int64) * 3
    for a, b in keys:
        buckets, signs = buckets_and_signs(idx, a, b, 1000)
        assert stats.chisquare(np.bincount(buckets, minlength=1000)).pvalue > 1e-4
        assert abs(signs.mean()) < 5 / np.sqrt(N)


def test_sign_balance_and_independence_from_bucket():
    for a, b in row_keys(7, 4):
        buckets, signs = buckets_and_signs(np.arange(N), a, b, 100)
        assert abs(signs.astype(float).mean()) < 5 / np.sqrt(N)
        # signs within each bucket are balanced too: a chi-square over (bucket, sign)
        table = np.zeros((100, 2))
        np.add.at(table, (buckets, (signs > 0).astype(int)), 1)
        assert stats.chi2_contingency(table).pvalue > 1e-4


def test_pairwise_collision_rate_is_one_over_cols():
    cols = 1000
    rng = np.random.default_rng(0)
    i = rng.integers(0, 2**40, 400_000)
    j = rng.integers(0, 2**40, 400_000)
    keep = i != j
    a, b = row_keys(5, 1)[0]
    bi, _ = buckets_and_signs(i[keep], a, b, cols)
    bj, _ = buckets_and_signs(j[keep], a, b, cols)
    rate = (bi == bj).mean()
    n = keep.sum()
    assert abs(rate - 1 / cols) < 5 * np.sqrt(1 / cols / n)


@pytest.mark.parametrize("seeds", [(0, 0), (0, 1), (42, 2**63 + 5)])
def test_rows_and_seeds_are_independent(seeds):
    cols = 50
    keys = np.concatenate([row_keys(seeds[0], 2), row_keys(seeds[1], 2)[1:]])
    idx = np.arange(N)
    bs = [buckets_and_signs(idx, a, b, cols) for a, b in keys]
    for p in range(len(bs)):
        for q in range(p + 1, len(bs)):
            if seeds[0] == seeds[1] and (p, q) == (1, 2):
                continue  # same seed, same row: identical by design
            joint = np.zeros((cols, cols))
            np.add.at(joint, (bs[p][0], bs[q][0]), 1)
            assert stats.chi2_contingency(joint).pvalue > 1e-4
            sign_corr = np.corrcoef(bs[p][1], bs[q][1])[0, 1]
            assert abs(sign_corr) < 5 / np.sqrt(N)


def test_same_seed_same_hashes_different_seed_different():
    assert (row_keys(3, 4) == row_keys(3, 4)).all()
    assert (row_keys(3, 4) != row_keys(4, 4)).all()
    assert (row_keys(3, 4)[:2] == row_keys(3, 2)).all()


def test_hash_is_a_bijection_below_2_32_for_fixed_keys():
    from sketchlib._hash import hash32
    a, b = row_keys(1, 1)[0]
    h = hash32(np.arange(1 << 20), a, b)
    assert len(np.unique(h)) == 1 << 20
