"""Quality of both hash versions: loads, sign balance, collisions, independence, estimate error."""
import numpy as np
import pytest
from scipy import stats

from sketchlib import CountSketch, SketchError
from sketchlib._hash import buckets_and_signs, row_keys

N = 200_000
HV = pytest.mark.parametrize("hv", [1, 2], ids=["hash1", "hash2"])


def _cols(cols, hv):
    """``cols`` for version 1; rounded up to a multiple of 4 for version 2."""
    return cols if hv == 1 else -(-cols // 4) * 4


@pytest.mark.parametrize("cols", [7, 1000, 65_536, 500_000])
@HV
def test_bucket_loads_are_uniform(cols, hv):
    cols = _cols(cols, hv)
    keys = row_keys(0, 3)
    for a, b in keys:
        buckets, _ = buckets_and_signs(np.arange(N), a, b, cols, hv)
        assert buckets.min() >= 0 and buckets.max() < cols
        if cols <= 65_536:
            loads = np.bincount(buckets, minlength=cols)
            p = stats.chisquare(loads).pvalue
            assert p > 1e-4, f"bucket loads not uniform (p={p})"


@HV
def test_bucket_loads_for_indices_beyond_2_32(hv):
    keys = row_keys(123, 2)
    idx = np.arange(2**33, 2**33 + N, dtype=np.int64) * 3
    for a, b in keys:
        buckets, signs = buckets_and_signs(idx, a, b, 1000, hv)
        assert stats.chisquare(np.bincount(buckets, minlength=1000)).pvalue > 1e-4
        assert abs(signs.mean()) < 5 / np.sqrt(N)


@HV
def test_sign_balance_and_independence_from_bucket(hv):
    for a, b in row_keys(7, 4):
        buckets, signs = buckets_and_signs(np.arange(N), a, b, 100, hv)
        assert abs(signs.astype(float).mean()) < 5 / np.sqrt(N)
        # signs within each bucket are balanced too: a chi-square over (bucket, sign)
        table = np.zeros((100, 2))
        np.add.at(table, (buckets, (signs > 0).astype(int)), 1)
        assert stats.chi2_contingency(table).pvalue > 1e-4


@HV
def test_pairwise_collision_rate_is_one_over_cols(hv):
    cols = 1000
    rng = np.random.default_rng(0)
    i = rng.integers(0, 2**40, 400_000)
    j = rng.integers(0, 2**40, 400_000)
    keep = i != j
    a, b = row_keys(5, 1)[0]
    bi, _ = buckets_and_signs(i[keep], a, b, cols, hv)
    bj, _ = buckets_and_signs(j[keep], a, b, cols, hv)
    rate = (bi == bj).mean()
    n = keep.sum()
    assert abs(rate - 1 / cols) < 5 * np.sqrt(1 / cols / n)


@pytest.mark.parametrize("seeds", [(0, 0), (0, 1), (42, 2**63 + 5)])
@HV
def test_rows_and_seeds_are_independent(seeds, hv):
    cols = _cols(50, hv)
    keys = np.concatenate([row_keys(seeds[0], 2), row_keys(seeds[1], 2)[1:]])
    idx = np.arange(N)
    bs = [buckets_and_signs(idx, a, b, cols, hv) for a, b in keys]
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


# ------------------------------------------------------------------ version 2 only
def test_v2_groups_fill_aligned_bucket_groups():
    """The four coordinates of a block take the four slots of one aligned bucket group."""
    a, b = row_keys(9, 1)[0]
    buckets, _ = buckets_and_signs(np.arange(N), a, b, 1000, 2)
    groups = buckets.reshape(-1, 4)
    assert (groups // 4 == groups[:, :1] // 4).all()
    assert (np.sort(groups % 4, axis=1) == np.arange(4)).all()


@pytest.mark.parametrize("same_offset", [True, False])
def test_v2_collision_rate_does_not_depend_on_offsets(same_offset):
    """The XOR shuffle: coordinates of two blocks collide with probability 1/cols whatever their
    offsets (without it, equal offsets would collide 4/cols and different ones never)."""
    cols = 1000
    rng = np.random.default_rng(3)
    bi = rng.integers(0, 2**38, 400_000)
    bj = rng.integers(0, 2**38, 400_000)
    oi = rng.integers(0, 4, bi.size)
    oj = oi if same_offset else (oi + rng.integers(1, 4, bi.size)) % 4
    keep = bi != bj
    i, j = (bi * 4 + oi)[keep], (bj * 4 + oj)[keep]
    a, b = row_keys(5, 1)[0]
    rate = (buckets_and_signs(i, a, b, cols, 2)[0] == buckets_and_signs(j, a, b, cols, 2)[0]).mean()
    assert abs(rate - 1 / cols) < 5 * np.sqrt(1 / cols / keep.sum())


def test_v2_signs_within_a_block_are_independent():
    a, b = row_keys(4, 1)[0]
    _, signs = buckets_and_signs(np.arange(4 * N), a, b, 1000, 2)
    s = signs.reshape(-1, 4).astype(float)
    corr = np.corrcoef(s.T)
    off_diagonal = corr[~np.eye(4, dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / np.sqrt(N)


@pytest.mark.parametrize("pattern", ["dense", "every_fourth", "heavy_tailed"])
def test_v2_estimate_error_matches_v1(pattern):
    """Per-row estimate error: version 2's mean squared error equals version 1's, within
    sampling noise, also for a vector whose mass sits on one offset of every block."""
    d, cols, trials = 40_000, 400, 6
    rng = np.random.default_rng(17)
    x = rng.standard_normal(d)
    if pattern == "every_fourth":
        x[np.arange(d) % 4 != 0] = 0
    elif pattern == "heavy_tailed":
        x = rng.standard_t(1.5, d)
    mse = {}
    for hv in (1, 2):
        errs = []
        for seed in range(trials):
            sk = CountSketch(d, 1, cols, seed=seed, dtype="float64", hash_version=hv, backend="numpy").insert(x)
            errs.append(np.mean((sk.estimate_all() - x) ** 2))
        mse[hv] = np.mean(errs)
    expected = (np.sum(x ** 2) - np.mean(x ** 2)) / cols       # E[error^2] of one row
    if pattern != "heavy_tailed":   # a few huge entries make the heavy-tailed mean noisy: compare only
        for hv in (1, 2):
            assert abs(mse[hv] / expected - 1) < 0.1, (hv, mse, expected)
    assert 0.7 < mse[2] / mse[1] < 1.4, mse


def test_v2_recovers_planted_heavy_hitters():
    d, k = 200_003, 50
    rng = np.random.default_rng(8)
    x = rng.standard_normal(d).astype(np.float32)
    planted = rng.choice(d, k, replace=False)
    x[planted] = rng.choice([-1, 1], k) * rng.uniform(200, 400, k)
    sk = CountSketch(d, 5, 20_000, seed=1, hash_version=2, backend="numpy").insert(x)
    idx, val = sk.topk(k)
    assert set(idx.tolist()) == set(planted.tolist())
    np.testing.assert_allclose(val, x[idx], atol=30)


def test_v2_needs_cols_divisible_by_4():
    with pytest.raises(SketchError, match="divisible by 4"):
        CountSketch(100, 3, 10, hash_version=2)
    with pytest.raises(SketchError, match="hash_version"):
        CountSketch(100, 3, 12, hash_version=3)
    with pytest.raises(SketchError, match="hash_version"):
        CountSketch(100, 3, 12, hash_version=True)
