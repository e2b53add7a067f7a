"""The "dev" top-k chain, the batched-each and the group kernels, run from the real CUDA source on CPU threads.

CI has no GPU.  ``_cuda_emu.h`` maps the CUDA features these kernels use onto C++20
threads (a block's threads are real threads, ``__syncthreads`` a barrier, warp ballots and
shuffles exchange through a per-warp barrier; blocks run one after another, a valid CUDA
schedule for kernels that never wait on other blocks; inline PTX is dropped and the table
reductions become atomics).  So the selection logic, the last-block picks, the chunked
compaction and its warp scans are checked against the NumPy reference wherever g++
builds C++20; speed and memory ordering on a device are the GPU tests' business.
The source is built once per hash version (``-DSK_HASH_VERSION``, as the backend
compiles it), so version 2's group kernels (the XOR shuffle of a group into its
bucket slots, the 16-byte loads and stores) are checked against the reference too.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sketchlib import CountSketch
from sketchlib._backends import _cuda_src
from sketchlib._hash import buckets_and_signs

HARNESS = r'''
// Throws (the test then fails cleanly) where a wrong kernel would otherwise write out of bounds.
static void check_state(const u64* st, i64 k) {
    if (st[SKT_NEED] < 1 || st[SKT_ABOVE] + st[SKT_NEED] != (u64)k || st[SKT_EQ] < st[SKT_NEED]) throw 1;
}
template <typename T, int R>
static void run_topk(const T* table, const u32* keys, int rows, u32 cols, i64 d, i64 k, i64 cap, int grid,
                     int kbits, int ib, i64* out_idx, T* out_val, u64* out_key, int groups, T* dense = nullptr) {
    std::vector<T> est(d);
    std::vector<u64> work(SK_HIST_SIZE + 16, 0);
    u64* hist = work.data(); u64* st = work.data() + SK_HIST_SIZE;
    std::vector<i64> cidx(cap); std::vector<T> cval(cap);
    // Outputs with room for d extra entries (no slot can pass d + k once the state checks
    // hold), filled with a sentinel that must survive past k.
    const i64 room = d + k;
    std::vector<i64> oi(out_idx ? room : 0, -7); std::vector<T> ov(out_val ? room : 0); std::vector<u64> ok(out_key ? room : 0, 7ULL);
    i64* pi = out_idx ? oi.data() : nullptr; T* pv = out_val ? ov.data() : nullptr; u64* pk = out_key ? ok.data() : nullptr;
    if (dense) { pi = nullptr; pk = nullptr; pv = nullptr; }   // the unsketch: est is masked in place
    emu_launch(grid, 256, [&] {
        if (groups) skt_estimates<T, R, true>(table, keys, rows, cols, d, est.data(), hist, st, (u64)k, kbits, ib);
        else skt_estimates<T, R, false>(table, keys, rows, cols, d, est.data(), hist, st, (u64)k, kbits, ib);
    });
    check_state(st, k);
    emu_launch(grid, 256, [&] { skt_compact<T>(est.data(), d, st, cidx.data(), cval.data(), cap, pi, pv, pk, ib); });
    for (int p = 0; p < (kbits + ib - 1) / 12; ++p) {   // as the host: ceil((kbits + ib - 12) / 12)
        emu_launch(grid, 256, [&] { skt_refine<T>(est.data(), d, cidx.data(), cval.data(), cap, hist, st, ib); });
        check_state(st, k);
    }
    if (dense) {
        emu_launch(grid, 256, [&] { skt_mask<T>(est.data(), d, st, ib); });
        std::copy(est.begin(), est.end(), dense);
        return;
    }
    emu_launch(grid, 256, [&] { skt_select<T>(est.data(), d, cidx.data(), cval.data(), cap, st, pi, pv, pk, ib); });
    for (int i = 0; i < SK_HIST_SIZE; ++i) if (hist[i]) throw 2;   // each pick clears the histogram
    if (st[SKT_NSURE] != st[SKT_ABOVE]) throw 3;
    for (i64 i = k; i < room; ++i) if ((pi && oi[i] != -7) || (pk && ok[i] != 7ULL)) throw 4;
    for (i64 i = 0; i < k; ++i) {
        if (out_idx) { out_idx[i] = oi[i]; out_val[i] = ov[i]; }
        if (out_key) out_key[i] = ok[i];
    }
}
extern "C" int topk_f32(const float* table, const u32* keys, int rows, u32 cols, i64 d, i64 k, i64 cap, int grid,
                        int groups, int ib, i64* out_idx, float* out_val, u64* out_key) {
    try {
        if (rows == 3) run_topk<float, 3>(table, keys, rows, cols, d, k, cap, grid, 31, ib, out_idx, out_val, out_key, groups);
        else run_topk<float, 0>(table, keys, rows, cols, d, k, cap, grid, 31, ib, out_idx, out_val, out_key, groups);
    } catch (...) { return 1; }
    return 0;
}
extern "C" int topk_f64(const double* table, const u32* keys, int rows, u32 cols, i64 d, i64 k, i64 cap, int grid,
                        int groups, i64* out_idx, double* out_val) {
    try {
        if (rows == 5) run_topk<double, 5>(table, keys, rows, cols, d, k, cap, grid, 63, 0, out_idx, out_val, nullptr, groups);
        else run_topk<double, 0>(table, keys, rows, cols, d, k, cap, grid, 63, 0, out_idx, out_val, nullptr, groups);
    }
    catch (...) { return 1; }
    return 0;
}
extern "C" int unsketch_f32(const float* table, const u32* keys, int rows, u32 cols, i64 d, i64 k, i64 cap, int grid,
                            int groups, int ib, float* dense) {
    try { run_topk<float, 0>(table, keys, rows, cols, d, k, cap, grid, 31, ib, nullptr, nullptr, nullptr, groups, dense); }
    catch (...) { return 1; }
    return 0;
}
extern "C" void unpack_f32(const u64* keys, i64 k, i64* idx, float* val) {
    emu_launch(2, 256, [&] { skt_unpack(keys, k, idx, val); });
}
extern "C" void each_v4r(const float* stack, i64 n, i64 d, float* tables, const u32* keys, int rows, u32 cols, int per) {
    std::vector<float> scratch((size_t)per * cols * 4, 0.0f);
    const i64 rc = (i64)rows * cols;
    for (i64 n0 = 0; n0 < n; n0 += 4) {
        const int ng = (int)std::min<i64>(4, n - n0);
        for (int j0 = 0; j0 < rows; j0 += per) {
            const int j1 = std::min(rows, j0 + per);
            emu_launch(2, 64, [&] { sk_stack_each_v4r(stack, n0, ng, d, scratch.data(), keys, j0, j1, cols); });
            const i64 m = (i64)(j1 - j0) * cols;
            emu_launch(2, 64, [&] { sk_deinterleave_at(scratch.data(), m, tables, rc, (i64)j0 * cols, n0, ng); });
        }
    }
}
extern "C" void locate(const i64* idx, i64 n, const u32* keys, int rows, u32 cols, i64* buckets, signed char* signs) {
    for (i64 t = 0; t < n; ++t)
        for (int j = 0; j < rows; ++j) {
            const SkLoc l = sk_locate(idx[t], keys[2 * j], keys[2 * j + 1], cols);
            buckets[(i64)j * n + t] = l.bucket; signs[(i64)j * n + t] = l.neg ? -1 : 1;
        }
}
// The group kernels, and the estimates both ways: groups = 1 (four per thread) or 0 (one
// per thread, over idx when it is not null).
template <typename T>
static void run_groups(const T* x, const T* stack, i64 n, i64 d, T* table, T* table_sum, const u32* keys, int rows,
                       u32 cols, int groups, const i64* idx, i64 n_est, T* est, u64* hist, int shift, u64* count,
                       T thr) {
    if (x) emu_launch(2, 64, [&] { sk_insert_vec<T, 2, true>(x, d, table, keys, rows, cols); });
    if (stack) emu_launch(2, 64, [&] { sk_stack_sum_vec<T>(stack, n, d, table_sum, keys, rows, cols); });
    emu_launch(2, 64, [&] {
        if (groups && rows == 5) sk_estimates<T, 5, true>(table, keys, rows, cols, nullptr, n_est, est, hist, 0, shift, 12, count, thr);
        else if (groups) sk_estimates<T, 0, true>(table, keys, rows, cols, nullptr, n_est, est, hist, 0, shift, 12, count, thr);
        else if (rows == 5) sk_estimates<T, 5, false>(table, keys, rows, cols, idx, n_est, est, hist, 0, shift, 12, count, thr);
        else sk_estimates<T, 0, false>(table, keys, rows, cols, idx, n_est, est, hist, 0, shift, 12, count, thr);
    });
}
extern "C" void groups_f32(const float* x, const float* stack, i64 n, i64 d, float* table, float* table_sum,
                           const u32* keys, int rows, u32 cols, int groups, const i64* idx, i64 n_est, float* est,
                           u64* hist, u64* count, float thr) {
    run_groups<float>(x, stack, n, d, table, table_sum, keys, rows, cols, groups, idx, n_est, est, hist, 31 - 12,
                      count, thr);
}
extern "C" void groups_f64(const double* x, const double* stack, i64 n, i64 d, double* table, double* table_sum,
                           const u32* keys, int rows, u32 cols, int groups, const i64* idx, i64 n_est, double* est,
                           u64* hist, u64* count, double thr) {
    run_groups<double>(x, stack, n, d, table, table_sum, keys, rows, cols, groups, idx, n_est, est, hist, 63 - 12,
                       count, thr);
}
'''

_P = ctypes.c_void_p
_I64 = ctypes.c_longlong


def _ptr(a):
    return a.ctypes.data_as(_P)


@pytest.fixture(scope="module", params=[1, 2], ids=["hash1", "hash2"])
def lib(request, tmp_path_factory):
    """The kernels' device code + a launch harness for one hash version, built as a shared library with g++."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not on PATH")
    src = _cuda_src.SOURCE
    dev = src[:src.index('extern "C" {')]   # the device code; the __global__ entry points are for NVRTC
    # With inline PTX dropped, the table reductions become plain atomics.
    for ptx, typ in (("f32", "f"), ("f64", "d")):
        red = f'asm volatile("red.global.add.{ptx} [%0], %1;" :: "l"(__cvta_generic_to_global(p)), "{typ}"(v));'
        assert red in dev, "the reduction's PTX changed: update this test"
        dev = dev.replace(red, "atomicAdd(p, v);")
    work = tmp_path_factory.mktemp("cuda_emu")
    cpp = work / "kernels.cpp"
    header = Path(__file__).with_name("_cuda_emu.h")
    cpp.write_text(f'#include "{header}"\n#define __CUDA_ARCH__ 800\n#define SK_HASH_VERSION {request.param}\n'
                   + dev + HARNESS)
    so = work / "kernels.so"
    proc = subprocess.run(["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-w", "-o", str(so), str(cpp)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    handle = ctypes.CDLL(str(so))
    handle.version = request.param
    return handle


def _emu_topk(lib, table, keys, d, k, cap, packed=True):
    """The chain as ``cupy_gpu._topk_dev`` runs it, with NumPy's sort for thrust's (version 2:
    the group estimates, as on a device)."""
    rows, cols = table.shape
    kk = np.ascontiguousarray(keys, dtype=np.uint32).ravel()
    args = (_ptr(table), _ptr(kk), rows, ctypes.c_uint(cols), _I64(d), _I64(k), _I64(cap), 3, int(lib.version == 2))
    if table.dtype == np.float64:
        idx, val = np.zeros(k, np.int64), np.zeros(k, np.float64)
        assert lib.topk_f64(*args, _ptr(idx), _ptr(val)) == 0
        first = np.argsort(idx, kind="stable")
        order = first[np.argsort(-np.abs(val[first]), kind="stable")]
        return idx[order], val[order]
    ib = (d - 1).bit_length()
    if not packed:
        idx, val = np.zeros(k, np.int64), np.zeros(k, np.float32)
        assert lib.topk_f32(*args, ib, _ptr(idx), _ptr(val), None) == 0
        return idx, val
    keys_out = np.zeros(k, np.uint64)
    assert lib.topk_f32(*args, ib, None, None, _ptr(keys_out)) == 0
    keys_out.sort()
    idx, val = np.zeros(k, np.int64), np.zeros(k, np.float32)
    lib.unpack_f32(_ptr(keys_out), _I64(k), _ptr(idx), _ptr(val))
    return idx, val


@pytest.mark.parametrize("dtype,rows,kind", [("float32", 3, "rounded"), ("float32", 5, "zeros"),
                                             ("float64", 5, "rounded"), ("float64", 2, "zeros")])
def test_emulated_dev_topk_equals_exact(lib, dtype, rows, kind):
    rng = np.random.default_rng(rows)
    d, cols = 7001, 152
    table = rng.standard_normal((rows, cols))
    if kind == "rounded":      # many exact ties of |v|, both signs
        table = np.round(table, 1)
    else:                      # ties at zero
        table[rng.random((rows, cols)) < 0.5] = 0
    table = table.astype(dtype)
    ref = CountSketch.from_table(table, d, seed=rows, hash_version=lib.version, backend="numpy")
    est = ref.estimate_all()
    order = np.lexsort((np.arange(d), -np.abs(est)))
    for k in (1, 1234, d):
        for cap in (max(2 * k, 1 << 16), 5):      # 5: the candidates overflow, passes rescan all
            idx, val = _emu_topk(lib, table, ref.keys, d, k, cap)
            assert len(np.unique(idx)) == k
            np.testing.assert_array_equal(val, est[idx])
            np.testing.assert_array_equal(np.abs(val), np.abs(est[order[:k]]))   # the k largest, ordered
            np.testing.assert_array_equal(np.lexsort((idx, -np.abs(val))), np.arange(k))
            if dtype == "float32":   # exactly the first k by (|v| desc, index asc)
                np.testing.assert_array_equal(idx, order[:k])
                plain_idx, plain_val = _emu_topk(lib, table, ref.keys, d, k, cap, packed=False)
                np.testing.assert_array_equal(np.sort(plain_idx), np.sort(order[:k]))
                np.testing.assert_array_equal(plain_val, est[plain_idx])


def test_emulated_v4rows_each(lib):
    rng = np.random.default_rng(2)
    n, d, rows, cols = 6, 3001, 5, 36
    stack = rng.standard_normal((n, d)).astype(np.float32)
    stack[:, rng.random(d) < 0.2] = 0
    keys = CountSketch(d, rows, cols, seed=3, backend="numpy").keys
    start = rng.standard_normal((n, rows, cols)).astype(np.float32)
    tables = start.copy()
    lib.each_v4r(_ptr(stack), _I64(n), _I64(d), _ptr(tables), _ptr(np.ascontiguousarray(keys, np.uint32).ravel()),
                 rows, ctypes.c_uint(cols), 2)      # rows in groups of 2, 2, 1; vectors in groups of 4, 2
    for i in range(n):
        want = CountSketch(d, rows, cols, seed=3, hash_version=lib.version, backend="numpy").insert(stack[i]).table
        np.testing.assert_allclose(tables[i] - start[i], want, rtol=1e-4, atol=1e-4)


def test_emulated_locate_matches_spec(lib):
    rows, cols = 4, 1000
    keys = CountSketch(10, rows, cols, seed=11, backend="numpy").keys
    idx = np.array([0, 1, 2, 3, 4, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 3, 2**62 - 1], np.int64)
    buckets, signs = np.zeros((rows, idx.size), np.int64), np.zeros((rows, idx.size), np.int8)
    lib.locate(_ptr(idx), _I64(idx.size), _ptr(np.ascontiguousarray(keys, np.uint32).ravel()), rows,
               ctypes.c_uint(cols), _ptr(buckets), _ptr(signs))
    for j in range(rows):
        want_b, want_s = buckets_and_signs(idx, keys[j, 0], keys[j, 1], cols, lib.version)
        np.testing.assert_array_equal(buckets[j], want_b)
        np.testing.assert_array_equal(signs[j], want_s)


@pytest.mark.parametrize("dtype,rows,d", [("float32", 5, 4003), ("float32", 3, 4000), ("float64", 5, 4002)])
def test_emulated_group_kernels(lib, dtype, rows, d):
    """Group insert, group stack-sum, and the estimate kernel both ways (four coordinates per
    thread, and one per thread over all or over given indices), with histogram and count,
    equal the reference."""
    rng = np.random.default_rng(d)
    cols, n = 64, 3
    x = rng.standard_normal(d).astype(dtype)
    x[rng.random(d) < 0.3] = 0                     # whole zero groups are skipped
    x[:8] = 0
    stack = rng.standard_normal((n, d)).astype(dtype)
    ref = CountSketch(d, rows, cols, seed=5, dtype=dtype, hash_version=lib.version, backend="numpy")
    kk = np.ascontiguousarray(ref.keys, np.uint32).ravel()
    table, table_sum = np.zeros((rows, cols), dtype), np.zeros((rows, cols), dtype)
    fn = lib.groups_f32 if dtype == "float32" else lib.groups_f64
    ctype = ctypes.c_float if dtype == "float32" else ctypes.c_double
    thr = np.float64(0.5)
    # The stack rows must each be 16-byte aligned, as the backend requires: d * itemsize % 16 == 0.
    use_stack = (d * stack.itemsize) % 16 == 0

    def run(groups, idx, first):
        n_est = d if idx is None else idx.size
        est = np.zeros(n_est, dtype)
        hist, count = np.zeros(1 << 12, np.uint64), np.zeros(1, np.uint64)
        fn(_ptr(x) if first else None, _ptr(stack) if first and use_stack else None, _I64(n), _I64(d),
           _ptr(table), _ptr(table_sum), _ptr(kk), rows, ctypes.c_uint(cols), groups,
           None if idx is None else _ptr(idx), _I64(n_est), _ptr(est), _ptr(hist), _ptr(count), ctype(thr))
        return est, hist, count

    est, hist, count = run(1, None, first=True)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(table, ref.copy().insert(x).table, **tol)
    if use_stack:
        np.testing.assert_allclose(table_sum, ref.copy().insert_batch(stack).table, **tol)
    on_table = CountSketch.from_table(table, d, seed=5, hash_version=lib.version, backend="numpy")
    idx = np.array([0, 3, 4, d - 1, 7, 7, d // 2], np.int64)
    for groups, which in ((1, None), (0, None), (0, idx)):
        est, hist, count = run(groups, which, first=False) if (groups, which) != (1, None) else (est, hist, count)
        want = on_table.estimate_all() if which is None else on_table.query(which)
        np.testing.assert_array_equal(est, want)
        bits = est.view(np.uint32 if dtype == "float32" else np.uint64) & (0x7FFFFFFF if dtype == "float32" else
                                                                              0x7FFFFFFFFFFFFFFF)
        top = (bits >> (19 if dtype == "float32" else 51)).astype(np.int64)
        np.testing.assert_array_equal(hist, np.bincount(top, minlength=1 << 12))
        assert int(count[0]) == int(np.sum(np.abs(want) >= thr))


@pytest.mark.parametrize("kind", ["rounded", "zeros"])
def test_emulated_dev_unsketch_writes_exactly_the_top_k(lib, kind):
    """The "dev" chain in dense mode (the unsketch): the estimate buffer, masked to the top k."""
    rng = np.random.default_rng(4)
    d, rows, cols = 5003, 4, 152
    table = rng.standard_normal((rows, cols))
    table = np.round(table, 1) if kind == "rounded" else np.where(rng.random((rows, cols)) < 0.5, 0, table)
    table = table.astype(np.float32)
    ref = CountSketch.from_table(table, d, seed=8, hash_version=lib.version, backend="numpy")
    est = ref.estimate_all()
    order = np.lexsort((np.arange(d), -np.abs(est)))
    kk = np.ascontiguousarray(ref.keys, dtype=np.uint32).ravel()
    for k in (1, 777, d):
        for cap in (max(2 * k, 1 << 16), 5):
            dense = np.full(d, 0.0, np.float32)
            assert lib.unsketch_f32(_ptr(table), _ptr(kk), rows, ctypes.c_uint(cols), _I64(d), _I64(k), _I64(cap), 3,
                                    int(lib.version == 2), (d - 1).bit_length(), _ptr(dense)) == 0
            want = np.zeros(d, np.float32)
            want[order[:k]] = est[order[:k]]
            np.testing.assert_array_equal(dense, want)
