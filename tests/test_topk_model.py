"""A NumPy model of the GPU backend's "dev" top-k chain, checked against the exact top-k.

The kernels (``skt_*`` in ``sketchlib/_backends/_cuda_src.py``) keep the radix select's
state on the device; this model replays the same state machine step for step (pass-1
histogram and pick, compaction with a capped candidate buffer, refinement passes over
the candidates or, after an overflow, over all estimates, selection of exactly k, the
packed sort key) in NumPy, with atomics modelled as a random arrival order.  It runs
without a GPU, so the design is tested wherever the suite runs; the GPU tests check
the kernels themselves.
"""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sketchlib._backends._cuda_src import HIST_BITS
from sketchlib._backends._cuda_topk import KEY_BITS, refine_passes


def _keys(v):
    """|v| as the order-preserving unsigned key of the kernels (sign bit cleared)."""
    if v.dtype == np.float32:
        return (v.view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.uint64)
    return v.view(np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF)


def _pick(hist, width, s, prefix, pshift, above, need, first):
    """skt_flush_and_pick's last block: the bin where the count from the top reaches need."""
    run = 0
    for b in range((1 << width) - 1, -1, -1):
        c = int(hist[b])
        if run < need <= run + c:
            s.update(prefix=(prefix << width) | b, pshift=pshift - width, above=above + run,
                     need=need - run, eq=c)
            if first:
                s.update(prefix1=s["prefix"], pshift1=s["pshift"])
            return
        run += c
    raise AssertionError("no bin reaches need")


def model_topk(v, k, cap, rng):
    """The kernel chain on the host: (indices, values) of the k largest |v|, ordered."""
    d = v.shape[0]
    kbits = KEY_BITS[v.dtype.name]
    ib = (d - 1).bit_length() if v.dtype == np.float32 else 0   # skt_ckey: |v| key, then reversed index
    key = [(int(m) << ib) | ((1 << ib) - 1 - i) if ib else int(m) for i, m in enumerate(_keys(v))]
    s = dict(nsure=0, ncand=0, ntie=0)
    # pass 1: estimates + histogram of the top 12 bits of |v|'s key (= of the select key)
    hist = np.bincount((_keys(v) >> np.uint64(kbits - HIST_BITS)).astype(np.int64), minlength=1 << HIST_BITS)
    _pick(hist, HIST_BITS, s, 0, kbits + ib, 0, k, True)
    # compaction (arrival order of the atomics: random)
    out = {}
    cand = []
    for t in rng.permutation(d):
        top = key[t] >> s["pshift"]
        if top > s["prefix"]:
            out[s["nsure"]] = t
            s["nsure"] += 1
        elif top == s["prefix"]:
            if s["ncand"] < cap:
                cand.append(t)
            s["ncand"] += 1
    # refinement passes (launched a fixed number of times; no-ops once resolved)
    for _ in range(refine_passes(kbits, ib)):   # as the library's launch sequence
        if s["pshift"] == 0 or s["eq"] == s["need"]:
            continue
        width = min(HIST_BITS, s["pshift"])
        shift = s["pshift"] - width
        src = np.array(cand, dtype=np.int64) if s["ncand"] <= cap else np.arange(d)
        inr = [key[t] for t in src if key[t] >> s["pshift"] == s["prefix"]]
        hist = np.zeros(1 << width, dtype=np.int64)
        for x in inr:
            hist[(x >> shift) & ((1 << width) - 1)] += 1
        _pick(hist, width, s, s["prefix"], s["pshift"], s["above"], s["need"], False)
    # selection: exactly k outputs
    if s["ncand"] <= cap:
        src = rng.permutation(np.array(cand, dtype=np.int64))
    else:
        src = [t for t in rng.permutation(d) if key[t] >> s["pshift1"] == s["prefix1"]]
    for t in src:
        top = key[t] >> s["pshift"]
        if top > s["prefix"]:
            out[s["nsure"]] = t
            s["nsure"] += 1
        elif top == s["prefix"]:
            if s["ntie"] < s["need"]:
                out[s["above"] + s["ntie"]] = t
            s["ntie"] += 1
    assert sorted(out) == list(range(k)), "slots are not exactly 0..k-1"
    assert s["nsure"] == s["above"]
    idx = np.array([out[i] for i in range(k)], dtype=np.int64)
    if v.dtype == np.float32 and d <= 2**32:
        packed = np.sort(pack(idx, v[idx]))
        return unpack(packed)
    first = np.argsort(idx, kind="stable")
    order = first[np.argsort(-np.abs(v[idx][first]), kind="stable")]
    return idx[order], v[idx][order]


def pack(idx, vals):
    """skt_emit's packed key: ascending order = |v| descending, then index ascending."""
    bits = vals.astype(np.float32).view(np.uint32).astype(np.uint64)
    mag = bits & np.uint64(0x7FFFFFFF)
    return ((np.uint64(0x7FFFFFFF) - mag) << np.uint64(33)) | (idx.astype(np.uint64) << np.uint64(1)) \
        | (bits >> np.uint64(31))


def unpack(keys):
    """skt_unpack: packed keys back to (index, value), the value bit for bit."""
    idx = ((keys >> np.uint64(1)) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    mag = np.uint64(0x7FFFFFFF) - (keys >> np.uint64(33))
    bits = (mag | ((keys & np.uint64(1)) << np.uint64(31))).astype(np.uint32)
    return idx, bits.view(np.float32)


def _check(v, k, cap, seed):
    idx, vals = model_topk(v, k, cap, np.random.default_rng(seed))
    assert idx.shape == (k,) and len(np.unique(idx)) == k
    np.testing.assert_array_equal(vals.view(np.uint8), v[idx].view(np.uint8))   # bit for bit
    mags = np.sort(np.abs(v))[::-1]
    np.testing.assert_array_equal(np.abs(vals), mags[:k])                        # the k largest
    # ordered by |v| descending, ties by index ascending
    want = np.lexsort((idx, -np.abs(vals)))
    np.testing.assert_array_equal(want, np.arange(k))
    if v.dtype == np.float32:   # and exactly the first k of that order, whatever the atomics did
        np.testing.assert_array_equal(idx, np.lexsort((np.arange(v.shape[0]), -np.abs(v)))[:k])


@given(st.integers(1, 400), st.integers(0, 2**32), st.sampled_from(["float32", "float64"]),
       st.sampled_from([1, 3, 16, 10_000]), st.sampled_from(["normal", "rounded", "zeros", "narrow"]))
def test_model_equals_exact_topk(k, seed, dtype, cap, kind):
    rng = np.random.default_rng(seed)
    d = 400
    v = rng.standard_normal(d)
    if kind == "rounded":       # many exact ties, both signs
        v = np.round(v, 1)
    elif kind == "zeros":       # ties at zero, -0.0 among them
        v[rng.random(d) < 0.7] = 0.0
        v[rng.random(d) < 0.1] = -0.0
    elif kind == "narrow":      # all in one pass-1 bin: the candidate path does the work
        v = 1.0 + rng.random(d) * 2.0**-6 * rng.choice([-1, 1], d)
    _check(v.astype(dtype), k, cap, seed)


def test_model_resolves_adjacent_floats():
    # keys one ulp apart across a pass boundary: every refinement pass is needed
    for ft, it in ((np.float32, np.int32), (np.float64, np.int64)):
        base = np.array([1.5], dtype=ft).view(it)[0]
        v = (base + np.arange(-300, 300, dtype=it)).view(ft).copy()
        np.random.default_rng(0).shuffle(v)
        for k in (1, 128, 129, 300, 599, 600):
            for cap in (7, 10_000):          # overflow: rescans of all; else the candidates
                _check(v, k, cap, k)


def test_pack_roundtrip_and_order():
    rng = np.random.default_rng(1)
    vals = np.concatenate([rng.standard_normal(50), [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38]])
    vals = vals.astype(np.float32)
    idx = rng.choice(2**32, vals.shape[0], replace=False).astype(np.int64)
    idx[:2] = [0, 2**32 - 1]
    back_idx, back_vals = unpack(pack(idx, vals))
    np.testing.assert_array_equal(back_idx, idx)
    np.testing.assert_array_equal(back_vals.view(np.uint32), vals.view(np.uint32))
    order = np.argsort(pack(idx, vals), kind="stable")
    np.testing.assert_array_equal(order, np.lexsort((idx, -np.abs(vals))))
