"""The "dev" top-k chain, the batched-each and the group kernels, run from the real CUDA source on CPU threads.

CI has no GPU.  ``_cuda_emu.h`` maps the CUDA features these kernels use onto C++20
threads (a block's threads are real threads, ``__syncthreads`` a barrier, warp ballots and
shuffles exchange through a per-warp barrier; blocks run one after another, a valid CUDA
schedule for kernels that never wait on other blocks; inline PTX is dropped and the table
reductions become atomics).  So the selection logic, the last-block picks, the chunked
compaction and its warp scans are checked against the NumPy reference wherever g++
builds C++20; speed and memory ordering on a device are the GPU tests' business.

The whole source is built, once per hash version, with the backend's defines
(``_cuda_src.compile_options``), and every kernel of the instantiation table
(``_cuda_src.KERNELS``) can be launched by its name expression.  The "dev" top-k is not
re-written here: the tests run the library's own sequence (``_cuda_topk.topk_dev``, what
``cupy_gpu`` runs on a device) with NumPy arrays and an emulated launcher that checks
every argument against the kernel's parameters (count, size, pointer / integer / float),
guards every buffer against writes past its end, and checks the radix state after every
launch.  Version 2's group kernels (the XOR shuffle of a group into its bucket slots, the
16-byte loads and stores) are checked against the reference too.
"""
import contextlib
import ctypes
import shutil
import types
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sketchlib import CountSketch, SketchError
from sketchlib._backends import _cuda_src, _cuda_topk
from sketchlib._hash import buckets_and_signs

# The generic launcher: kernel i of _cuda_src.KERNELS with cuLaunchKernel-style arguments (an
# array of pointers to the values), and its signature (per parameter: size * 4 + kind, kind 0 for
# a pointer, 1 an integer, 2 a float), so that Python can check every argument it passes.
LAUNCHER = r"""
#include <type_traits>
#include <utility>
template <class... A, std::size_t... I>
static void emu_call(void (*f)(A...), void** p, std::index_sequence<I...>) { f(*static_cast<A*>(p[I])...); }
template <class A> constexpr int emu_kind() { return std::is_pointer_v<A> ? 0 : std::is_floating_point_v<A> ? 2 : 1; }
template <class... A>
static int emu_run(void (*f)(A...), unsigned grid, unsigned block, void** p, int* sig) {
    int n = 0;
    ((sig[n++] = (int)sizeof(A) * 4 + emu_kind<A>()), ...);
    if (p) emu_launch(grid, block, [&] { emu_call(f, p, std::index_sequence_for<A...>{}); });
    return n;
}
"""

HARNESS = r"""
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
    if (x) emu_launch(2, 64, [&] { sk_insert_vec<T>(x, d, table, keys, rows, cols); });
    if (stack) emu_launch(2, 64, [&] { sk_stack_sum_vec<T>(stack, n, d, table_sum, keys, rows, cols); });
    emu_launch(2, 64, [&] {
        if (groups && rows == 5) sk_estimates<T, 5, true>(table, keys, rows, cols, nullptr, n_est, est, hist, 0, shift, SK_HIST_BITS, count, thr);
        else if (groups) sk_estimates<T, 0, true>(table, keys, rows, cols, nullptr, n_est, est, hist, 0, shift, SK_HIST_BITS, count, thr);
        else if (rows == 5) sk_estimates<T, 5, false>(table, keys, rows, cols, idx, n_est, est, hist, 0, shift, SK_HIST_BITS, count, thr);
        else sk_estimates<T, 0, false>(table, keys, rows, cols, idx, n_est, est, hist, 0, shift, SK_HIST_BITS, count, thr);
    });
}
extern "C" void groups_f32(const float* x, const float* stack, i64 n, i64 d, float* table, float* table_sum,
                           const u32* keys, int rows, u32 cols, int groups, const i64* idx, i64 n_est, float* est,
                           u64* hist, u64* count, float thr) {
    run_groups<float>(x, stack, n, d, table, table_sum, keys, rows, cols, groups, idx, n_est, est, hist, 31 - SK_HIST_BITS,
                      count, thr);
}
extern "C" void groups_f64(const double* x, const double* stack, i64 n, i64 d, double* table, double* table_sum,
                           const u32* keys, int rows, u32 cols, int groups, const i64* idx, i64 n_est, double* est,
                           u64* hist, u64* count, double thr) {
    run_groups<double>(x, stack, n, d, table, table_sum, keys, rows, cols, groups, idx, n_est, est, hist, 63 - SK_HIST_BITS,
                       count, thr);
}
"""

_P = ctypes.c_void_p
_I64 = ctypes.c_longlong
_HB = 1 << _cuda_src.HIST_BITS


def _ptr(a):
    return a.ctypes.data_as(_P)


def _dispatch():
    """``emu_kernel``: kernel i of the table, by its name expression (generated from ``KERNELS``)."""
    cases = "\n".join(f"    case {i}: return emu_run(&{expr}, grid, block, p, sig);"
                      for i, expr in enumerate(_cuda_src.KERNELS))
    return ('extern "C" int emu_kernel(int i, unsigned grid, unsigned block, void** p, int* sig) {\n'
            f"  switch (i) {{\n{cases}\n    default: return -1;\n  }}\n}}\n")


@pytest.fixture(scope="module", params=[1, 2], ids=["hash1", "hash2"])
def lib(request, tmp_path_factory):
    """The whole CUDA source (every kernel of the table) + launchers for one hash version, built with g++
    and the backend's defines."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not on PATH")
    src = _cuda_src.SOURCE
    # With inline PTX dropped, the table reductions become plain atomics.
    for ptx, typ in (("f32", "f"), ("f64", "d")):
        red = f'asm volatile("red.global.add.{ptx} [%0], %1;" :: "l"(__cvta_generic_to_global(p)), "{typ}"(v));'
        assert red in src, "the reduction's PTX changed: update this test"
        src = src.replace(red, "atomicAdd(p, v);")
    work = tmp_path_factory.mktemp("cuda_emu")
    cpp = work / "kernels.cpp"
    header = Path(__file__).with_name("_cuda_emu.h")
    cpp.write_text(f'#include "{header}"\n#define __CUDA_ARCH__ 800\n' + src + LAUNCHER + _dispatch() + HARNESS)
    defines = [o for o in _cuda_src.compile_options(request.param) if o.startswith("-D")]
    so = work / "kernels.so"
    proc = subprocess.run(["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-w", *defines, "-o", str(so),
                           str(cpp)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    handle = ctypes.CDLL(str(so))
    handle.version = request.param
    return handle


class Emulator:
    """Launches kernels of the table on the CPU by name expression, checking each argument against the
    kernel's parameter (count, size, pointer or integer or float), as CuPy would pass it."""

    def __init__(self, lib):
        self.lib = lib
        self.index = {expr: i for i, expr in enumerate(_cuda_src.KERNELS)}

    def signature(self, expr):
        """``[(size, kind)]`` of the kernel's parameters (kind 0 pointer, 1 integer, 2 float)."""
        sig = (ctypes.c_int * 64)()
        n = self.lib.emu_kernel(self.index[expr], 0, 0, None, sig)
        return [(s // 4, s % 4) for s in sig[:n]]

    def launch(self, expr, args, grid=3, block=_cuda_src.BLOCK):
        sig = self.signature(expr)
        assert len(args) == len(sig), f"{expr}: {len(args)} arguments for {len(sig)} parameters"
        holders = []
        for pos, (a, (size, kind)) in enumerate(zip(args, sig)):
            if kind == 0:
                assert isinstance(a, np.ndarray) or (type(a) is np.uint64 and a == 0), f"{expr} #{pos}: not a pointer"
                holders.append(np.array([a.ctypes.data if isinstance(a, np.ndarray) else 0], np.uint64))
            else:
                assert isinstance(a, np.generic) and a.dtype.itemsize == size and (a.dtype.kind == "f") == (kind == 2), \
                    f"{expr} #{pos}: {a!r} passed for a {size}-byte {'float' if kind == 2 else 'integer'}"
                holders.append(np.array([a]))
        ptrs = (_P * len(args))(*[h.ctypes.data for h in holders])
        self.lib.emu_kernel(self.index[expr], grid, block, ptrs, (ctypes.c_int * 64)())


class GuardedNumpy:
    """NumPy as the array module of ``_cuda_topk.topk_dev``: every buffer is followed by a guard zone
    of sentinel bytes, so that a kernel writing past a buffer is caught (checked after each launch);
    ``empty`` buffers start as garbage (0xCD bytes), as on a device."""

    def __init__(self, pad):
        self.pad, self.bufs = pad, []

    def _alloc(self, shape, dtype, zero):
        n, dtype = int(np.prod(shape)), np.dtype(dtype)
        base = np.empty(n + self.pad, dtype)
        base.view(np.uint8)[:] = 0xA5
        base.view(np.uint8)[:n * dtype.itemsize] = 0 if zero else 0xCD
        self.bufs.append((base, n))
        return base[:n].reshape(shape)

    def zeros(self, shape, dtype):
        return self._alloc(shape, dtype, True)

    def empty(self, shape, dtype):
        return self._alloc(shape, dtype, False)

    def check(self):
        for base, n in self.bufs:
            assert np.all(base.view(np.uint8)[n * base.itemsize:] == 0xA5), "a kernel wrote past a buffer"

    def __getattr__(self, name):
        return getattr(np, name)


def _check_state(work, k):
    """The radix state after any top-k kernel: a range holding the k-th entry."""
    st = work[_HB:]
    need, above, eq = (int(st[i]) for i in (3, 2, 4))   # SKT_NEED, SKT_ABOVE, SKT_EQ
    assert need >= 1 and above + need == k and eq >= need, (need, above, eq)


def _emu_topk(lib, table, keys, d, k, cap, dense=False, packed=None):
    """The library's "dev" top-k sequence (``_cuda_topk.topk_dev``, as ``cupy_gpu`` runs it) on the
    emulated kernels, every buffer guarded and the state checked after every launch."""
    xp = GuardedNumpy(pad=d + k + 64)
    emu = Emulator(lib)
    works, seen = [], []

    def launch(expr, args):
        seen.append(expr)
        emu.launch(expr, args)
        xp.check()
        if not works:
            works.extend(b[:n] for b, n in xp.bufs if b.dtype == np.uint64 and n == _HB + _cuda_src.TOPK_WORDS)
        for work in works:
            _check_state(work, k)

    kk = np.ascontiguousarray(keys, dtype=np.uint32).ravel()
    groups = lib.version == 2
    assert not groups or table.ctypes.data % 16 == 0        # as the backend requires
    out = _cuda_topk.topk_dev(xp, launch, lambda a: np.argsort(a, kind="stable"), table, kk, d, k, groups, cap,
                              dense=dense, packed=packed)
    assert len(works) == 1
    assert not works[0][:_HB].any()                          # each pick clears the histogram
    if any(e.startswith("skt_select") for e in seen):
        assert works[0][_HB + 9] == works[0][_HB + 2]        # SKT_NSURE == SKT_ABOVE: every sure entry written
    return out


@pytest.mark.parametrize("dtype,rows,kind", [("float32", 3, "rounded"), ("float32", 5, "zeros"),
                                             ("float32", 9, "rounded"), ("float64", 5, "rounded"),
                                             ("float64", 2, "zeros")])
def test_emulated_dev_topk_equals_exact(lib, dtype, rows, kind):
    """The library's "dev" top-k on the emulated kernels equals the exact top-k (rows 9: the generic median)."""
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
        for cap in (_cuda_topk.default_cap(k), 5):      # 5: the candidates overflow, passes rescan all
            runs = [_emu_topk(lib, table, ref.keys, d, k, cap)]
            if dtype == "float32":   # also the index/value outputs float32 takes past 2**32 coordinates
                runs.append(_emu_topk(lib, table, ref.keys, d, k, cap, packed=False))
            for idx, val in runs:
                assert idx.dtype == np.int64 and idx.shape == (k,) and len(np.unique(idx)) == k
                np.testing.assert_array_equal(val, est[idx])
                np.testing.assert_array_equal(np.abs(val), np.abs(est[order[:k]]))   # the k largest, ordered
                np.testing.assert_array_equal(np.lexsort((idx, -np.abs(val))), np.arange(k))
            if dtype == "float32":   # packed keys: exactly the first k by (|v| desc, index asc)
                np.testing.assert_array_equal(runs[0][0], order[:k])


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
        hist, count = np.zeros(_HB, np.uint64), np.zeros(1, np.uint64)
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
        top = (bits >> ((31 if dtype == "float32" else 63) - _cuda_src.HIST_BITS)).astype(np.int64)
        np.testing.assert_array_equal(hist, np.bincount(top, minlength=_HB))
        assert int(count[0]) == int(np.sum(np.abs(want) >= thr))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["rounded", "zeros"])
def test_emulated_dev_unsketch_writes_exactly_the_top_k(lib, dtype, kind):
    """The "dev" chain in dense mode (the unsketch): float32 masks the estimate buffer to exactly the
    first k by (|v| desc, index asc); float64 scatters its top k (ties at the k-th in atomic order)."""
    rng = np.random.default_rng(4)
    d, rows, cols = 5003, 4, 152
    table = rng.standard_normal((rows, cols))
    table = np.round(table, 1) if kind == "rounded" else np.where(rng.random((rows, cols)) < 0.5, 0, table)
    table = table.astype(dtype)
    ref = CountSketch.from_table(table, d, seed=8, hash_version=lib.version, backend="numpy")
    est = ref.estimate_all()
    order = np.lexsort((np.arange(d), -np.abs(est)))
    for k in (1, 777, d):
        for cap in (_cuda_topk.default_cap(k), 5):
            got = _emu_topk(lib, table, ref.keys, d, k, cap, dense=True)
            want = np.zeros(d, dtype)
            want[order[:k]] = est[order[:k]]
            assert got.shape == (d,) and got.dtype == dtype
            if dtype == "float32":
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_array_equal(np.sort(np.abs(got)), np.sort(np.abs(want)))
                nz = got != 0
                np.testing.assert_array_equal(got[nz], est[nz])
                strict = np.abs(est) > np.abs(est[order[k - 1]])
                np.testing.assert_array_equal(got[strict], est[strict])


# ------------------------------------------------------------------ the whole backend, emulated
class _DevArray(np.ndarray):
    """A NumPy array posing as a CuPy one for ``cupy_gpu``: a device context, a data pointer, get()."""

    @property
    def device(self):
        return contextlib.nullcontext()

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def get(self):
        return np.array(self)


def _dev(a):
    return np.ascontiguousarray(a).view(_DevArray)


class _FakeCupy:
    """The part of CuPy that ``cupy_gpu`` uses, over NumPy (one "device" with one SM, so small grids)."""

    class _Device:
        id = 0
        attributes = {"MultiProcessorCount": 1, "L2CacheSize": 40 << 20}

        def __init__(self, *_):
            pass

    cuda = types.SimpleNamespace(Device=_Device)

    @staticmethod
    def empty(shape, dtype=np.float64):
        a = np.empty(shape, dtype)
        a.view(np.uint8)[...] = 0xCD          # garbage, as on a device
        return a.view(_DevArray)

    @staticmethod
    def zeros(shape, dtype=np.float64):
        return np.zeros(shape, dtype).view(_DevArray)

    @staticmethod
    def asarray(a):
        return _dev(a)

    @staticmethod
    def asnumpy(a):
        return np.array(a)

    @staticmethod
    def argsort(a):                            # CuPy's sort is stable
        return np.argsort(np.asarray(a), kind="stable").view(_DevArray)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def backend(lib, monkeypatch):
    """``cupy_gpu`` itself, its CuPy calls served by NumPy and its kernel launches by the emulated kernels
    (every argument checked against the kernel's parameters)."""
    from sketchlib._backends import cupy_gpu
    emu = Emulator(lib)
    launched = []

    def fn(expr, version=None):
        assert version in (None, lib.version)

        def run(grid, block, args):
            assert len(grid) == 1 and block[0] in (_cuda_src.BLOCK, _cuda_src.PICK_BLOCK)
            launched.append(expr)
            emu.launch(expr, args, grid=grid[0], block=block[0])
        return run

    monkeypatch.setattr(cupy_gpu, "_cp", _FakeCupy)
    monkeypatch.setattr(cupy_gpu, "_fn", fn)
    for cache in ("_keys_cache", "_sm_counts", "_l2_sizes"):
        monkeypatch.setattr(cupy_gpu, cache, {})
    cupy_gpu.launched = launched
    return cupy_gpu


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_backend_equals_reference(backend, lib, dtype, monkeypatch):
    """Every operation of the CuPy backend, run on the emulated kernels, equals the NumPy reference:
    tables up to summation order, everything computed from a table exactly."""
    hv = lib.version
    rng = np.random.default_rng(17)
    d, rows, cols, n = 1203, 5, 64, 5
    ref = CountSketch(d, rows, cols, seed=4, dtype=dtype, hash_version=hv, backend="numpy")
    keys = ref.keys
    x = rng.standard_normal(d + 1).astype(dtype)
    x[rng.random(d + 1) < 0.2] = 0
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    for off, kernel in ((0, "sk_insert_vec"), (1, "sk_insert_simple")):   # aligned, unaligned input
        table = backend.zeros((rows, cols), dtype)
        del backend.launched[:]
        backend.insert_dense(table, _dev(x)[off:off + d] if off else _dev(x[:d]), keys, hv)
        assert backend.launched == [_cuda_src.kernel(kernel, dtype)]
        np.testing.assert_allclose(table, ref.copy().insert(x[off:off + d]).table, **tol)
    idx = np.array([0, 5, 5, d - 1, 77], np.int64)
    vals = rng.standard_normal(idx.size).astype(dtype)
    backend.insert_sparse(table, _dev(idx), _dev(vals), keys, hv)
    want = ref.copy().insert(x[1:d + 1]).insert_sparse(idx, vals)
    np.testing.assert_allclose(table, want.table, **tol)
    stack = rng.standard_normal((n, d + 1)).astype(dtype)[:, :d].copy()
    summed = backend.zeros((rows, cols), dtype)
    backend.insert_stack_sum(summed, _dev(stack), keys, hv)
    np.testing.assert_allclose(summed, ref.copy().insert_batch(stack).table, **tol)
    monkeypatch.setattr(backend, "_l2_bytes", lambda: 3 * 16 * cols * 2)   # float32: rows in groups of 2
    each = backend.zeros((n, rows, cols), dtype)
    backend.insert_stack_each(each, _dev(stack), keys, hv)
    for i in range(n):
        np.testing.assert_allclose(each[i], ref.copy().insert(stack[i]).table, **tol)
    # queries on a given table: exact
    table = np.round(rng.standard_normal((rows, cols)), 1).astype(dtype)   # ties
    on = CountSketch.from_table(table, d, seed=4, hash_version=hv, backend="numpy")
    dt = _dev(table)
    est = on.estimate_all()
    np.testing.assert_array_equal(backend.estimate_all(dt, d, keys, hv), est)
    np.testing.assert_array_equal(backend.query(dt, _dev(idx), keys, hv), on.query(idx))
    order = np.lexsort((np.arange(d), -np.abs(est)))
    for k, caps in ((300, (None, 4)), (d, (None,))):    # cap 4: the extra passes and the overflow paths
        for tail in backend.TOPK_TAILS:
            for cap in caps:
                gi, gv = backend.topk(dt, d, k, keys, hv, tail=tail, cand_cap=cap)
                assert len(np.unique(gi)) == k
                np.testing.assert_array_equal(gv, est[gi])
                np.testing.assert_array_equal(np.abs(gv), np.abs(est[order[:k]]))
        for tail in backend.TOPK_TAILS + ("auto",) if k < d else ():
            got = np.asarray(backend.unsketch_topk(dt, d, k, keys, hv, tail=tail))
            want = np.zeros(d, dtype)
            want[order[:k]] = est[order[:k]]
            np.testing.assert_array_equal(np.sort(np.abs(got)), np.sort(np.abs(want)))
            np.testing.assert_array_equal(got[got != 0], est[got != 0])
            if tail != "sync" and dtype == "float32":   # "dev" ("auto" at this d): the first k by (|v|, index)
                np.testing.assert_array_equal(got, want)
    for thr in (0.5, 1e9):
        hi, hv_ = backend.heavy(dt, d, thr, keys, hv)
        ri, rv = on.heavy_hitters(thr)
        np.testing.assert_array_equal(hi, ri)
        np.testing.assert_array_equal(hv_, rv)
    zeroed = _dev(table.copy())
    backend.zero_buckets(zeroed, _dev(idx), keys, hv)
    np.testing.assert_array_equal(zeroed, on.copy().zero_coordinates(idx).table)
    assert backend.all_finite(_dev(x)) and not backend.all_finite(_dev(np.where(x == x.max(), np.inf, x)))
    with pytest.raises(SketchError, match="tail"):
        backend.topk(dt, d, 3, keys, hv, tail="fast")
    buckets, signs = backend._buckets_and_signs(_dev(idx), keys, cols, hv)
    for j in range(rows):
        want_b, want_s = buckets_and_signs(idx, keys[j, 0], keys[j, 1], cols, hv)
        np.testing.assert_array_equal(buckets[j], want_b)
        np.testing.assert_array_equal(signs[j], want_s)


@pytest.mark.parametrize("rows", [3, 4, 9])   # odd and even register medians, and the generic one
def test_emulated_median_propagates_nan_like_the_reference(backend, lib, rows):
    """A NaN in any row makes the CUDA estimate NaN, as numpy.median and the host backends give."""
    hv = lib.version
    d, cols = 999, 32
    rng = np.random.default_rng(rows)
    table = rng.standard_normal((rows, cols)).astype(np.float32)
    table[rng.random((rows, cols)) < 0.05] = np.nan
    table[0, 1], table[-1, 2] = np.inf, -np.inf
    ref = CountSketch.from_table(table.copy(), d, seed=3, hash_version=hv, backend="numpy")
    est = np.asarray(backend.estimate_all(_dev(table), d, ref.keys, hv))
    want = ref.estimate_all()
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(est, want)
