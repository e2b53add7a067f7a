"""CUDA source of the GPU backend, compiled at run time by CuPy (NVRTC), and its interface.

One translation unit, no headers.  Kernels are ``__global__`` C++ templates over the
element type ``T`` (float / double) and, for the estimates, the row count ``R`` (0: any)
and the per-group form; ``KERNELS`` lists every instantiation by its C++ name expression
(``"sk_insert_vec<float>"``).  That one table is what the backend hands CuPy
(``RawModule(name_expressions=KERNELS)``, then ``get_function(expr)``), what the nvcc test
instantiates and checks in the PTX, and what the CPU emulation builds.  ``kernel`` writes
the expression of one instantiation (and refuses one not in the table), so no kernel
name is composed anywhere else.

The constants shared with Python (``BLOCK``, ``PICK_BLOCK``, ``HIST_BITS``, ``MAX_ROWS``,
``TOPK_WORDS``) are defined here only and reach the source as ``-D`` defines
(``compile_options``); the source stops with an error if one is missing.

Conventions shared by every kernel:

* grid-stride loops over 64-bit indices, so any ``d`` and any grid size work;
* the row keys ``(a_j, b_j)`` arrive as a device array of ``2*rows`` uint32 and
  are copied into shared memory once per block;
* the hash is the version of ``sketchlib/_hash.py`` named by the macro
  ``SK_HASH_VERSION``, bit for bit: the backend compiles the source once per
  version, so kernels never branch on it;
* "group" kernels handle aligned groups of four coordinates: under version 2 a
  group lands in one aligned group of four buckets per row, added with a single
  16-byte ``red.global.add.v4.f32`` and read with one 16-byte load (the host
  launches them only on a 16-byte-aligned table); under version 1 the same
  code does four scalar operations, which keeps one code path for both;
* table offsets ``j*cols + bucket`` are 64-bit (``rows*cols`` may pass 2**31);
* additions into the table are ``red.global.add`` (inline PTX): fire-and-forget
  atomics, never a returning ``atom``.
"""

__all__ = []

BLOCK = 256          # threads per block of every grid-stride kernel
PICK_BLOCK = 1024    # threads of the one-block sk_radix_pick
MAX_ROWS = 32        # most hash rows of a sketch (shared-memory key arrays); sketch.py uses it
HIST_BITS = 12       # radix digit of the top-k select: 4096-bin histograms
TOPK_WORDS = 16      # u64 state words of the "dev" top-k (SKT_* in the source)
MEDIAN_ROWS = (1, 2, 3, 4, 5, 6, 7, 8)   # rows with a register-only median; others use R = 0

CTYPES = {"float32": "float", "float64": "double"}


def compile_options(version):
    """Compiler options for hash ``version``: C++17 and every shared constant as a define."""
    return ("-std=c++17", f"-DSK_HASH_VERSION={int(version)}", f"-DSK_BLOCK={BLOCK}", f"-DSK_PICK_BLOCK={PICK_BLOCK}",
            f"-DSK_MAX_ROWS={MAX_ROWS}", f"-DSK_HIST_BITS={HIST_BITS}", f"-DSK_TOPK_WORDS={TOPK_WORDS}")


def _expr(name, dtype=None, *params):
    """The C++ name expression of one instantiation (the spelling c++filt prints)."""
    targs = ([CTYPES[dtype]] if dtype is not None else []) + [
        ("true" if p else "false") if isinstance(p, bool) else str(int(p)) for p in params]
    return f"{name}<{', '.join(targs)}>" if targs else name


def _instantiations():
    """Every kernel the backend launches, as name expressions."""
    out = [_expr(n) for n in ("sk_radix_pick", "sk_hash_rows", "sk_stack_each_v4r", "sk_deinterleave_at",
                              "skt_unpack")]
    for dt in CTYPES:
        out += [_expr(n, dt) for n in (
            "sk_insert_simple", "sk_insert_vec", "sk_insert_sparse", "sk_stack_sum_simple", "sk_stack_sum_vec",
            "sk_stack_each_simple", "sk_radix_hist", "sk_radix_compact", "sk_threshold_compact", "sk_zero_buckets",
            "sk_all_finite", "skt_compact", "skt_refine", "skt_select", "skt_mask")]
        out += [_expr(n, dt, r, g) for n in ("sk_estimates", "skt_estimates")
                for r in (0,) + MEDIAN_ROWS for g in (False, True)]
    return tuple(out)


KERNELS = _instantiations()
_KERNEL_SET = frozenset(KERNELS)


def kernel(name, dtype=None, *params):
    """The name expression of kernel ``name`` for ``dtype`` (a NumPy dtype name) and template
    ``params`` (ints and bools), e.g. ``kernel("sk_estimates", "float32", 5, True)`` is
    ``"sk_estimates<float, 5, true>"``; a KeyError if that instantiation is not in ``KERNELS``."""
    expr = _expr(name, dtype, *params)
    if expr not in _KERNEL_SET:
        raise KeyError(f"no compiled kernel {expr!r}: add it to _cuda_src._instantiations")
    return expr


def median_rows(rows):
    """The ``R`` template argument of the estimate kernels for ``rows`` rows (0: the generic median)."""
    return int(rows) if int(rows) in MEDIAN_ROWS else 0


SOURCE = r"""
// Every constant shared with Python comes from the compiler command line (-D, built by
// sketchlib/_backends/_cuda_src.py: compile_options): none is written here.
#ifndef SK_HASH_VERSION
#error "SK_HASH_VERSION is not defined (compile with _cuda_src.compile_options)"
#endif
#ifndef SK_BLOCK
#error "SK_BLOCK is not defined (compile with _cuda_src.compile_options)"
#endif
#ifndef SK_PICK_BLOCK
#error "SK_PICK_BLOCK is not defined (compile with _cuda_src.compile_options)"
#endif
#ifndef SK_MAX_ROWS
#error "SK_MAX_ROWS is not defined (compile with _cuda_src.compile_options)"
#endif
#ifndef SK_HIST_BITS
#error "SK_HIST_BITS is not defined (compile with _cuda_src.compile_options)"
#endif
#ifndef SK_TOPK_WORDS
#error "SK_TOPK_WORDS is not defined (compile with _cuda_src.compile_options)"
#endif
#define SK_HIST_SIZE (1 << SK_HIST_BITS)

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// ---------------------------------------------------------------- hash
__device__ __forceinline__ u32 sk_mix32(u32 x) {
    x ^= x >> 16; x *= 0x7feb352dU;
    x ^= x >> 15; x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

__device__ __forceinline__ u32 sk_hash(i64 i, u32 a, u32 b) {
    u64 u = (u64)i;
    return sk_mix32(sk_mix32((u32)u ^ a) ^ (u32)(u >> 32) ^ b);
}

// Lemire's range map: high word of the 64-bit product h * cols.
__device__ __forceinline__ u32 sk_bucket(u32 h, u32 cols) { return __umulhi(h, cols); }

// Bucket and sign bit of coordinate i in the row with keys (a, b).
struct SkLoc { u32 bucket; u32 neg; };
__device__ __forceinline__ SkLoc sk_locate(i64 i, u32 a, u32 b, u32 cols) {
#if SK_HASH_VERSION == 1
    const u32 h = sk_hash(i, a, b);
    return {sk_bucket(h, cols), h & 1u};
#else
    const u32 off = (u32)i & 3u;
    const u32 h = sk_hash((i64)((u64)i >> 2), a, b);
    return {4u * __umulhi(h, cols >> 2) + (off ^ (h & 3u)), (h >> (2u + off)) & 1u};
#endif
}

#if SK_HASH_VERSION == 2
// Version 2, group g = coordinates [4g, 4g + 4): first bucket of its group of buckets,
// the XOR mask that shuffles offsets into slots, and the four sign bits (bit o: offset o).
struct SkGroup { u32 base; u32 mask; u32 negs; };
__device__ __forceinline__ SkGroup sk_group(i64 g, u32 a, u32 b, u32 cols) {
    const u32 h = sk_hash(g, a, b);
    return {4u * __umulhi(h, cols >> 2), h & 3u, (h >> 2) & 15u};
}

// v[o] -> v[o ^ mask] in registers (two conditional swaps, no local memory); an
// involution, so it maps offsets to slots and slots back to offsets.
template <typename T>
__device__ __forceinline__ void sk_xor_shuffle(T* v, u32 mask) {
    if (mask & 1u) { T t = v[0]; v[0] = v[1]; v[1] = t; t = v[2]; v[2] = v[3]; v[3] = t; }
    if (mask & 2u) { T t = v[0]; v[0] = v[2]; v[2] = t; t = v[1]; v[1] = v[3]; v[3] = t; }
}
#endif

__device__ __forceinline__ void sk_load_keys(u32* sk, const u32* __restrict__ keys, int rows) {
    for (int t = threadIdx.x; t < 2 * rows; t += blockDim.x) sk[t] = keys[t];
    __syncthreads();
}

__device__ __forceinline__ i64 sk_tid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 sk_nthreads() { return (i64)gridDim.x * blockDim.x; }

// Fire-and-forget atomic add (RED): the result is never needed.
__device__ __forceinline__ void sk_red(float* p, float v) {
    asm volatile("red.global.add.f32 [%0], %1;" :: "l"(__cvta_generic_to_global(p)), "f"(v));
}
__device__ __forceinline__ void sk_red(double* p, double v) {
    asm volatile("red.global.add.f64 [%0], %1;" :: "l"(__cvta_generic_to_global(p)), "d"(v));
}
__device__ __forceinline__ void sk_red4(float* p, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};"
                 :: "l"(__cvta_generic_to_global(p)), "f"(a), "f"(b), "f"(c), "f"(d));
#else
    sk_red(p, a); sk_red(p + 1, b); sk_red(p + 2, c); sk_red(p + 3, d);
#endif
}
// No 4-wide double reduction exists: four scalar ones (same bucket group, one L2 line).
__device__ __forceinline__ void sk_red4(double* p, double a, double b, double c, double d) {
    sk_red(p, a); sk_red(p + 1, b); sk_red(p + 2, c); sk_red(p + 3, d);
}

// All rows of one coordinate: table[j, h_j(i)] += s_j(i) * v.  Zeros are skipped:
// they change nothing and sparse gradients are common.
template <typename T>
__device__ __forceinline__ void sk_scatter(T* __restrict__ table, const u32* sk, int rows, u32 cols,
                                           i64 i, T v) {
    if (v == T(0)) return;
    for (int j = 0; j < rows; ++j) {
        const SkLoc l = sk_locate(i, sk[2 * j], sk[2 * j + 1], cols);
        sk_red(table + (i64)j * cols + l.bucket, l.neg ? -v : v);
    }
}

// 16-byte vector loads: 4 floats or 2 doubles.  CS = streaming ("evict first") loads,
// so an input read once does not push the table out of L2, where the atomics land.
template <typename T> struct SkVec;
template <> struct SkVec<float> {
    static const int W = 4;
    template <bool CS>
    static __device__ __forceinline__ void load(const float* p, i64 c, float* out) {
        const float4* q = reinterpret_cast<const float4*>(p) + c;
        float4 v = CS ? __ldcs(q) : __ldg(q);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    }
};
template <> struct SkVec<double> {
    static const int W = 2;
    template <bool CS>
    static __device__ __forceinline__ void load(const double* p, i64 c, double* out) {
        const double2* q = reinterpret_cast<const double2*>(p) + c;
        double2 v = CS ? __ldcs(q) : __ldg(q);
        out[0] = v.x; out[1] = v.y;
    }
};

// One group of four coordinates from 16-byte-aligned memory: one float4 or two double2.
template <bool CS>
__device__ __forceinline__ void sk_load4(const float* p, i64 g, float* out) { SkVec<float>::load<CS>(p, g, out); }
template <bool CS>
__device__ __forceinline__ void sk_load4(const double* p, i64 g, double* out) {
    SkVec<double>::load<CS>(p, 2 * g, out);
    SkVec<double>::load<CS>(p, 2 * g + 1, out + 2);
}
__device__ __forceinline__ void sk_store4cs(float* p, i64 g, const float* v) {
    __stcs(reinterpret_cast<float4*>(p) + g, make_float4(v[0], v[1], v[2], v[3]));
}
__device__ __forceinline__ void sk_store4cs(double* p, i64 g, const double* v) {
    __stcs(reinterpret_cast<double2*>(p) + 2 * g, make_double2(v[0], v[1]));
    __stcs(reinterpret_cast<double2*>(p) + 2 * g + 1, make_double2(v[2], v[3]));
}

// All rows of group g (coordinates 4g..4g+3, values v): version 2 adds the group with one
// vector reduction per row (slot s takes offset s ^ mask); version 1 scatters each value.
template <typename T>
__device__ __forceinline__ void sk_scatter_group(T* __restrict__ table, const u32* sk, int rows, u32 cols,
                                                 i64 g, const T* v) {
#if SK_HASH_VERSION == 2
    if (v[0] == T(0) && v[1] == T(0) && v[2] == T(0) && v[3] == T(0)) return;
    for (int j = 0; j < rows; ++j) {
        const SkGroup q = sk_group(g, sk[2 * j], sk[2 * j + 1], cols);
        T w[4];
#pragma unroll
        for (int o = 0; o < 4; ++o) w[o] = ((q.negs >> o) & 1u) ? -v[o] : v[o];
        sk_xor_shuffle(w, q.mask);
        sk_red4(table + (i64)j * cols + q.base, w[0], w[1], w[2], w[3]);
    }
#else
#pragma unroll
    for (int o = 0; o < 4; ++o) sk_scatter(table, sk, rows, cols, 4 * g + o, v[o]);
#endif
}

// ---------------------------------------------------------------- dense insert variants
// "simple": one coordinate per thread, every row.
template <typename T>
__global__ void sk_insert_simple(const T* __restrict__ x, i64 d, T* __restrict__ table,
                                 const u32* __restrict__ keys, int rows, u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, rows);
    for (i64 i = sk_tid(); i < d; i += sk_nthreads()) sk_scatter(table, sk, rows, cols, i, x[i]);
}

// "vec" (the default; "veccs" in bench/RESULTS.md): one group of four coordinates per thread per step, loaded as a
// 16-byte vector with a streaming load (x is read once: it should not push the table out of
// L2, where the atomics land); x must be 16-byte aligned and, under version 2, the table too
// (the host checks, else "simple").  The tail past the last whole group is scalar.
template <typename T>
__global__ void sk_insert_vec(const T* __restrict__ x, i64 d, T* __restrict__ table,
                              const u32* __restrict__ keys, int rows, u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, rows);
    const i64 ngroups = d / 4;
    for (i64 g = sk_tid(); g < ngroups; g += sk_nthreads()) {
        T v[4];
        sk_load4<true>(x, g, v);
        sk_scatter_group(table, sk, rows, cols, g, v);
    }
    for (i64 i = ngroups * 4 + sk_tid(); i < d; i += sk_nthreads())
        sk_scatter(table, sk, rows, cols, i, x[i]);
}

// ---------------------------------------------------------------- sparse insert
template <typename T>
__global__ void sk_insert_sparse(const i64* __restrict__ idx, const T* __restrict__ vals, i64 n,
                                 T* __restrict__ table, const u32* __restrict__ keys, int rows,
                                 u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, rows);
    for (i64 t = sk_tid(); t < n; t += sk_nthreads()) sk_scatter(table, sk, rows, cols, idx[t], vals[t]);
}

// ---------------------------------------------------------------- batched inserts
// Sum of the n rows of a (n, d) stack: sum each coordinate in registers, then one
// atomic per row (linearity).  Scalar version: any d, any alignment.
template <typename T>
__global__ void sk_stack_sum_simple(const T* __restrict__ stack, i64 n, i64 d, T* __restrict__ table,
                                    const u32* __restrict__ keys, int rows, u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, rows);
    for (i64 i = sk_tid(); i < d; i += sk_nthreads()) {
        T acc = T(0);
#pragma unroll 4
        for (i64 r = 0; r < n; ++r) acc += __ldcs(stack + r * d + i);
        sk_scatter(table, sk, rows, cols, i, acc);
    }
}

// Group version: needs every row 16-byte aligned (aligned base, d * sizeof(T) % 16 == 0)
// and, under version 2, an aligned table; the tail past the last whole group is scalar.
template <typename T>
__global__ void sk_stack_sum_vec(const T* __restrict__ stack, i64 n, i64 d, T* __restrict__ table,
                                 const u32* __restrict__ keys, int rows, u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, rows);
    const i64 ngroups = d / 4;
    for (i64 g = sk_tid(); g < ngroups; g += sk_nthreads()) {
        T acc[4], v[4];
#pragma unroll
        for (int o = 0; o < 4; ++o) acc[o] = T(0);
#pragma unroll 4
        for (i64 r = 0; r < n; ++r) {
            sk_load4<true>(stack + r * d, g, v);
#pragma unroll
            for (int o = 0; o < 4; ++o) acc[o] += v[o];
        }
        sk_scatter_group(table, sk, rows, cols, g, acc);
    }
    for (i64 i = ngroups * 4 + sk_tid(); i < d; i += sk_nthreads()) {
        T acc = T(0);
        for (i64 r = 0; r < n; ++r) acc += __ldcs(stack + r * d + i);
        sk_scatter(table, sk, rows, cols, i, acc);
    }
}

// Each row of the stack into its own table: tables is (n, rows, cols).  The hash of
// (i, j) is recomputed per vector: cheaper than the local memory to keep it.
template <typename T>
__global__ void sk_stack_each_simple(const T* __restrict__ stack, i64 n, i64 d, T* __restrict__ tables,
                                     const u32* __restrict__ keys, int rows, u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, rows);
    const i64 rc = (i64)rows * cols;
    for (i64 i = sk_tid(); i < d; i += sk_nthreads()) {
        for (i64 r = 0; r < n; ++r) sk_scatter(tables + r * rc, sk, rows, cols, i, __ldcs(stack + r * d + i));
    }
}

// float32 batched-each ("v4rows"): four rows of the stack at once, for the table rows
// [j0, j1) only, into an interleaved (j1 - j0, cols, 4) scratch table with one 16-byte vector
// atomic per (coordinate, row) (sm_90: red.global.add.v4.f32); sk_deinterleave_at then
// spreads the scratch into the four tables.  ng < 4 pads with zeros.  The host sizes the row
// groups so that the scratch stays in L2: with all rows at once, a 500k-column scratch
// (40 MB) spilled the vector atomics to DRAM (1.6x slower on an H100).
__global__ void sk_stack_each_v4r(const float* __restrict__ stack, i64 n0, int ng, i64 d,
                                  float* __restrict__ scratch, const u32* __restrict__ keys,
                                  int j0, int j1, u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, j1);
    for (i64 i = sk_tid(); i < d; i += sk_nthreads()) {
        float v[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) v[g] = g < ng ? __ldcs(stack + (n0 + g) * d + i) : 0.0f;
        if (v[0] == 0.0f && v[1] == 0.0f && v[2] == 0.0f && v[3] == 0.0f) continue;
        for (int j = j0; j < j1; ++j) {
            const SkLoc l = sk_locate(i, sk[2 * j], sk[2 * j + 1], cols);
            const float s = l.neg ? -1.0f : 1.0f;
            float* p = scratch + ((i64)(j - j0) * cols + l.bucket) * 4;
            sk_red4(p, s * v[0], s * v[1], s * v[2], s * v[3]);
        }
    }
}

// tables[n0 + g][off + e] += scratch[e, g] for e < m, g < ng (tables are rc apart), and
// zero the scratch for the next group.
__global__ void sk_deinterleave_at(float* __restrict__ scratch, i64 m, float* __restrict__ tables, i64 rc,
                                   i64 off, i64 n0, int ng) {
    float4* s4 = reinterpret_cast<float4*>(scratch);
    for (i64 e = sk_tid(); e < m; e += sk_nthreads()) {
        float4 t = s4[e];
        s4[e] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float v[4] = {t.x, t.y, t.z, t.w};
        for (int g = 0; g < ng; ++g) tables[(n0 + g) * rc + off + e] += v[g];
    }
}

// ---------------------------------------------------------------- estimates
// Median over rows of s_j(i) * T[j, h_j(i)]: for even rows the mean of the two middle
// values computed as (lo + hi) * 0.5 in T, which is what numpy.median gives.
// Median of R values in registers: insertion sort as a fixed network of compare-exchanges.
// A NaN in any row makes the estimate NaN, as numpy.median and the host backends give
// (the compare network alone would move NaNs around and return a finite middle value).
template <typename T, int R>
__device__ __forceinline__ T sk_median_regs(T* v) {
    bool has_nan = false;
    T nan_value = T(0);
#pragma unroll
    for (int j = 0; j < R; ++j) if (v[j] != v[j]) { has_nan = true; nan_value = v[j]; }
#pragma unroll
    for (int a = 1; a < R; ++a) {
#pragma unroll
        for (int b = a; b > 0; --b) {
            T lo = v[b - 1] < v[b] ? v[b - 1] : v[b];
            T hi = v[b - 1] < v[b] ? v[b] : v[b - 1];
            v[b - 1] = lo; v[b] = hi;
        }
    }
    if (has_nan) return nan_value;
    return (R & 1) ? v[R / 2] : (v[R / 2 - 1] + v[R / 2]) * T(0.5);
}

template <typename T, int R>
__device__ __forceinline__ T sk_median_fixed(const T* __restrict__ table, const u32* sk, u32 cols, i64 i) {
    T v[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
        const SkLoc l = sk_locate(i, sk[2 * j], sk[2 * j + 1], cols);
        const T t = __ldg(table + (i64)j * cols + l.bucket);
        v[j] = l.neg ? -t : t;
    }
    return sk_median_regs<T, R>(v);
}

template <typename T>
__device__ __forceinline__ T sk_median_any(const T* __restrict__ table, const u32* sk, int rows,
                                           u32 cols, i64 i) {
    T v[SK_MAX_ROWS];
    bool has_nan = false;
    T nan_value = T(0);
    for (int j = 0; j < rows; ++j) {
        const SkLoc l = sk_locate(i, sk[2 * j], sk[2 * j + 1], cols);
        const T t = __ldg(table + (i64)j * cols + l.bucket);
        T x = l.neg ? -t : t;
        if (x != x) { has_nan = true; nan_value = x; }
        int b = j;
        while (b > 0 && x < v[b - 1]) { v[b] = v[b - 1]; --b; }
        v[b] = x;
    }
    if (has_nan) return nan_value;
    return (rows & 1) ? v[rows / 2] : (v[rows / 2 - 1] + v[rows / 2]) * T(0.5);
}

template <typename T, int R>
__device__ __forceinline__ T sk_estimate(const T* __restrict__ table, const u32* sk, int rows, u32 cols, i64 i) {
    if (R > 0) return sk_median_fixed<T, (R > 0 ? R : 1)>(table, sk, cols, i);
    return sk_median_any<T>(table, sk, rows, cols, i);
}

// Estimates of the four coordinates of group g into e.  Under version 2 with a fixed row
// count, each row's group of buckets is one 16-byte load (the table must be aligned).
template <typename T, int R>
__device__ __forceinline__ void sk_estimate_group(const T* __restrict__ table, const u32* sk, int rows, u32 cols,
                                                  i64 g, T* e) {
#if SK_HASH_VERSION == 2
    if (R > 0) {
        constexpr int RR = R > 0 ? R : 1;
        T v[4][RR];
#pragma unroll
        for (int j = 0; j < RR; ++j) {
            const SkGroup q = sk_group(g, sk[2 * j], sk[2 * j + 1], cols);
            T t[4];
            sk_load4<false>(table + (i64)j * cols + q.base, 0, t);
            sk_xor_shuffle(t, q.mask);
#pragma unroll
            for (int o = 0; o < 4; ++o) v[o][j] = ((q.negs >> o) & 1u) ? -t[o] : t[o];
        }
#pragma unroll
        for (int o = 0; o < 4; ++o) e[o] = sk_median_regs<T, RR>(v[o]);
    } else
#endif
    {
#pragma unroll
        for (int o = 0; o < 4; ++o) e[o] = sk_estimate<T, R>(table, sk, rows, cols, 4 * g + o);
    }
}

// |v| as an order-preserving unsigned key (sign bit cleared): 31 bits for float,
// 63 for double.
__device__ __forceinline__ u64 sk_key(float v) { return (u64)(__float_as_uint(v) & 0x7fffffffU); }
__device__ __forceinline__ u64 sk_key(double v) { return (u64)__double_as_longlong(v) & 0x7fffffffffffffffULL; }

// Append to a global list with one atomic per warp.  Every lane of the warp must call it.
__device__ __forceinline__ i64 sk_warp_append(u64* counter, bool pred) {
    const u32 m = __ballot_sync(0xffffffffU, pred);
    if (m == 0) return -1;
    const int lane = threadIdx.x & 31, leader = __ffs(m) - 1;
    u64 base = 0;
    if (lane == leader) base = atomicAdd(counter, (u64)__popc(m));
    base = __shfl_sync(0xffffffffU, base, leader);
    return pred ? (i64)(base + __popc(m & ((1U << lane) - 1U))) : -1;
}

// Estimates of idx[t] (or of t itself when idx is null) for t < n, written to out[t].
// Optional, in the same pass:
//   hist != null: histogram of the digit (key >> shift) & (2**width - 1) over the
//                 estimates whose key >> (shift + width) == prefix (radix select);
//   count != null: number of estimates with |v| >= thr.
// GROUPS (idx null, out 16-byte aligned): a group of four coordinates per thread, the form
// that version 2's 16-byte gathers need.  Loops are warp-uniform (the warp shares one
// 32-aligned window) for the ballots.
template <typename T, int R, bool GROUPS>
__global__ void sk_estimates(const T* __restrict__ table, const u32* __restrict__ keys, int rows, u32 cols,
                             const i64* __restrict__ idx, i64 n, T* __restrict__ out,
                             u64* __restrict__ hist, u64 prefix, int shift, int width,
                             u64* __restrict__ count, T thr) {
    constexpr int W = GROUPS ? 4 : 1;
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    __shared__ u32 sh[SK_HIST_SIZE];
    if (hist != nullptr)
        for (int t = threadIdx.x; t < SK_HIST_SIZE; t += blockDim.x) sh[t] = 0;
    sk_load_keys(sk, keys, rows);  // includes __syncthreads
    const u64 mask = (1ULL << width) - 1ULL;
    const int lane = threadIdx.x & 31;
    const i64 items = (n + W - 1) / W;
    u64 mine = 0;
    for (i64 base = sk_tid() - lane; base < items; base += sk_nthreads()) {
        const i64 g = base + lane;
        const int m = g < items ? (int)min((i64)W, n - W * g) : 0;  // coordinates of this item below n
        T e[W];
#pragma unroll
        for (int o = 0; o < W; ++o) e[o] = T(0);
        if (m > 0) {
            if constexpr (GROUPS) {
                sk_estimate_group<T, R>(table, sk, rows, cols, g, e);
                if (m == 4) sk_store4cs(out, g, e);
                else for (int o = 0; o < m; ++o) __stcs(out + 4 * g + o, e[o]);
            } else {
                e[0] = sk_estimate<T, R>(table, sk, rows, cols, idx != nullptr ? idx[g] : g);
                __stcs(out + g, e[0]);  // streamed: keep the table in L2 for the gathers
            }
            if (hist != nullptr)
                for (int o = 0; o < m; ++o) {
                    const u64 key = sk_key(e[o]);
                    if ((key >> (shift + width)) == prefix) atomicAdd(&sh[(key >> shift) & mask], 1U);
                }
        }
        if (count != nullptr)
#pragma unroll
            for (int o = 0; o < W; ++o)
                mine += __popc(__ballot_sync(0xffffffffU, o < m && !(e[o] < thr && -e[o] < thr)));
    }
    if (count != nullptr && lane == 0 && mine) atomicAdd(count, mine);
    if (hist != nullptr) {
        __syncthreads();
        for (int t = threadIdx.x; t <= (int)mask; t += blockDim.x)
            if (sh[t]) atomicAdd(hist + t, (u64)sh[t]);
    }
}

// Radix-select histogram pass over a stored estimate buffer (no new estimates).
template <typename T>
__global__ void sk_radix_hist(const T* __restrict__ est, i64 n, u64* __restrict__ hist, u64 prefix,
                              int shift, int width) {
    __shared__ u32 sh[SK_HIST_SIZE];
    for (int t = threadIdx.x; t < SK_HIST_SIZE; t += blockDim.x) sh[t] = 0;
    __syncthreads();
    const u64 mask = (1ULL << width) - 1ULL;
    for (i64 t = sk_tid(); t < n; t += sk_nthreads()) {
        const u64 key = sk_key(est[t]);
        if ((key >> (shift + width)) == prefix) atomicAdd(&sh[(key >> shift) & mask], 1U);
    }
    __syncthreads();
    for (int t = threadIdx.x; t <= (int)mask; t += blockDim.x)
        if (sh[t]) atomicAdd(hist + t, (u64)sh[t]);
}

// Split a stored estimate buffer by key relative to a radix prefix, into one output list
// (index, value, -|value| as the sort key):
//   key >> pshift >  prefix -> "sure" (all belong to the top k): slots [0, n_sure);
//   key >> pshift == prefix -> candidate: slots [n_sure, n_sure + cand_cap), extras dropped.
// counters[0] / counters[1] count the two kinds.
template <typename T>
__global__ void sk_radix_compact(const T* __restrict__ est, i64 n, u64 prefix, int pshift,
                                 i64* __restrict__ out_idx, T* __restrict__ out_val, T* __restrict__ out_key,
                                 u64* counters, i64 n_sure, i64 cand_cap) {
    const int lane = threadIdx.x & 31;
    for (i64 base = sk_tid() - lane; base < n; base += sk_nthreads()) {
        const i64 t = base + lane;
        T v = T(0);
        u64 top = 0;
        bool in = t < n;
        if (in) { v = __ldcs(est + t); top = sk_key(v) >> pshift; }
        i64 slot = sk_warp_append(counters, in && top > prefix);
        const i64 c = sk_warp_append(counters + 1, in && top == prefix);
        if (c >= 0) slot = c < cand_cap ? n_sure + c : -1;
        if (slot >= 0) { out_idx[slot] = t; out_val[slot] = v; out_key[slot] = v < T(0) ? v : -v; }
    }
}

// ---------------------------------------------------------------- top-k without host round-trips
// The "dev" top-k keeps its whole radix select in device memory: a state of SKT_WORDS
// u64 (zeroed by the host together with the histogram) that every kernel of the chain
// reads and the last block of each histogram pass updates, so the host enqueues the
// whole chain at once and the output is exactly k entries (no count to read back).
#define SKT_PREFIX 0    // key bits resolved so far: the range is key >> pshift == prefix
#define SKT_PSHIFT 1    // key bits not yet resolved
#define SKT_ABOVE 2     // entries with key >> pshift > prefix: all in the top k
#define SKT_NEED 3      // k - above: how many entries of the range the top k takes
#define SKT_EQ 4        // entries in the range
#define SKT_DONE 5      // blocks finished with the current pass (last-block detection)
#define SKT_PREFIX1 6   // prefix and pshift after the first pass: what candidates share
#define SKT_PSHIFT1 7
#define SKT_NCAND 8     // candidates counted by the compaction; more than cap: rescan est
#define SKT_NSURE 9     // output slots taken by entries above the final range
#define SKT_NTIE 10     // entries of the final range seen by the selection
static_assert(SKT_NTIE < SK_TOPK_WORDS, "the top-k state needs more words than SK_TOPK_WORDS");

// Every block calls this with its finished shared histogram sh (2**width bins of the digit
// below the current range): it adds sh to the global hist, and the last block to finish
// finds the bin where the count from the top reaches need, narrows the range to it in
// the state, and clears hist for the next pass.  Blocks are SK_BLOCK threads.
__device__ void skt_flush_and_pick(const u32* sh, int width, u64* __restrict__ hist, u64* st, u64 prefix,
                                   u64 pshift, u64 above, u64 need, bool first) {
    __shared__ u64 part[SK_BLOCK];
    __shared__ int last;
    const int nbins = 1 << width, t = threadIdx.x;
    for (int b = t; b < nbins; b += blockDim.x)
        if (sh[b]) atomicAdd(hist + b, (u64)sh[b]);
    __threadfence();
    __syncthreads();
    if (t == 0) last = atomicAdd(st + SKT_DONE, 1ULL) == (u64)(gridDim.x - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Thread t owns the bins of rank [t*per, (t+1)*per) counted from the top bin down.
    const int per = nbins >= (int)blockDim.x ? nbins / (int)blockDim.x : 1;
    u64 s = 0;
    for (int q = 0; q < per; ++q) {
        const int r = t * per + q;
        if (r < nbins) s += __ldcg(hist + (nbins - 1 - r));
    }
    part[t] = s;
    __syncthreads();
    for (int off = 1; off < (int)blockDim.x; off <<= 1) {  // inclusive prefix over threads
        const u64 add = t >= off ? part[t - off] : 0ULL;
        __syncthreads();
        part[t] += add;
        __syncthreads();
    }
    u64 run = part[t] - s;  // count in the bins above mine
    for (int q = 0; q < per; ++q) {
        const int r = t * per + q;
        if (r >= nbins) break;
        const int b = nbins - 1 - r;
        const u64 c = __ldcg(hist + b);
        if (run < need && run + c >= need) {
            st[SKT_PREFIX] = (prefix << width) | (u64)b;
            st[SKT_PSHIFT] = pshift - (u64)width;
            st[SKT_ABOVE] = above + run;
            st[SKT_NEED] = need - run;
            st[SKT_EQ] = c;
            if (first) { st[SKT_PREFIX1] = (prefix << width) | (u64)b; st[SKT_PSHIFT1] = pshift - (u64)width; }
        }
        run += c;
        hist[b] = 0ULL;
    }
    if (t == 0) st[SKT_DONE] = 0ULL;
}

// The radix-select key of an entry: |v|'s key, then, in the low ib bits, the index
// reversed (2**ib - 1 - i), so that among equal |v| the smaller index ranks higher and
// every key is distinct: the k taken are then exactly the first k by (|v| desc, index
// asc), whatever order the atomics run in.  ib = 0 (float64, whose 63 key bits leave no
// room): ties at the k-th magnitude are taken in atomic order.
template <typename T>
__device__ __forceinline__ u64 skt_ckey(T v, i64 i, int ib) {
    return ib == 0 ? sk_key(v) : (sk_key(v) << ib) | (((1ULL << ib) - 1ULL) - (u64)i);
}

// One output entry.  Packed (out_key != null, float32 with index < 2**32): one u64 whose
// ascending order is |v| descending, then index ascending:
// (0x7fffffff - |v| bits) << 33 | index << 1 | sign bit.  Else index and value; with all
// three null, nothing (the unsketch keeps its entries in place: skt_mask).
template <typename T>
__device__ __forceinline__ void skt_emit(i64 slot, i64 i, T v, i64* out_idx, T* out_val, u64* out_key) {
    if (out_key != nullptr) {
        const u64 bits = (u64)sk_key(v);
        out_key[slot] = ((0x7fffffffULL - bits) << 33) | ((u64)i << 1) | (signbit(v) ? 1ULL : 0ULL);
    } else if (out_idx != nullptr) {
        out_idx[slot] = i;
        out_val[slot] = v;
    }
}

// Pass 1: the estimates of all n coordinates into out, and the histogram of their top
// 12 key bits, then the pick (range = the bin holding the k-th largest).  GROUPS: a group
// of four coordinates per thread (version 2's 16-byte gathers; table and out aligned).
template <typename T, int R, bool GROUPS>
__global__ void skt_estimates(const T* __restrict__ table, const u32* __restrict__ keys, int rows, u32 cols,
                              i64 n, T* __restrict__ out, u64* __restrict__ hist, u64* st, u64 k, int kbits,
                              int ib) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    __shared__ u32 sh[SK_HIST_SIZE];
    for (int t = threadIdx.x; t < SK_HIST_SIZE; t += blockDim.x) sh[t] = 0;
    sk_load_keys(sk, keys, rows);  // includes __syncthreads
    const int shift = kbits - SK_HIST_BITS;
    if constexpr (GROUPS) {
        const i64 ngroups = (n + 3) / 4;
        for (i64 g = sk_tid(); g < ngroups; g += sk_nthreads()) {
            T e[4];
            sk_estimate_group<T, R>(table, sk, rows, cols, g, e);
            const int m = (int)min((i64)4, n - 4 * g);
            if (m == 4) sk_store4cs(out, g, e);
            else for (int o = 0; o < m; ++o) __stcs(out + 4 * g + o, e[o]);
            for (int o = 0; o < m; ++o) atomicAdd(&sh[sk_key(e[o]) >> shift], 1U);
        }
    } else {
        for (i64 t = sk_tid(); t < n; t += sk_nthreads()) {
            const T v = sk_estimate<T, R>(table, sk, rows, cols, t);
            __stcs(out + t, v);
            atomicAdd(&sh[sk_key(v) >> shift], 1U);
        }
    }
    __syncthreads();
    // The digit is the top 12 bits of the (kbits + ib)-bit key: those of |v|'s key.
    skt_flush_and_pick(sh, SK_HIST_BITS, hist, st, 0ULL, (u64)(kbits + ib), 0ULL, k, true);
}

// After pass 1: entries above the range go to the output (slots counted by NSURE), those
// in it to the candidate buffer (the first cap of them; NCAND counts them all).  Each warp
// takes chunks of 32 x 32 consecutive entries, counts its hits, and reserves their slots
// with one atomic per counter and chunk: one atomic per warp and 32 entries (what
// sk_warp_append does) made the two same-address counters a bottleneck.
#define SKT_ITEMS 32
template <typename T>
__global__ void skt_compact(const T* __restrict__ est, i64 n, u64* st, i64* __restrict__ cand_idx,
                            T* __restrict__ cand_val, i64 cap, i64* out_idx, T* out_val, u64* out_key, int ib) {
    const u64 prefix = st[SKT_PREFIX], pshift = st[SKT_PSHIFT];
    const int lane = threadIdx.x & 31;
    const i64 warp = sk_tid() >> 5, nwarps = sk_nthreads() >> 5;
    const i64 chunk = 32 * SKT_ITEMS;
    for (i64 base = warp * chunk; base < n; base += nwarps * chunk) {
        T v[SKT_ITEMS];
        u32 ns = 0, nc = 0;
#pragma unroll
        for (int q = 0; q < SKT_ITEMS; ++q) {
            const i64 t = base + q * 32 + lane;
            v[q] = t < n ? __ldcs(est + t) : T(0);
            const u64 top = skt_ckey(v[q], t, ib) >> pshift;
            ns += (t < n && top > prefix) ? 1U : 0U;
            nc += (t < n && top == prefix) ? 1U : 0U;
        }
        u32 is = ns, ic = nc;  // inclusive scans over the lanes
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const u32 a = __shfl_up_sync(0xffffffffU, is, off), b = __shfl_up_sync(0xffffffffU, ic, off);
            if (lane >= off) { is += a; ic += b; }
        }
        const u32 ts = __shfl_sync(0xffffffffU, is, 31), tc = __shfl_sync(0xffffffffU, ic, 31);
        u64 bs = 0, bc = 0;
        if (lane == 0) {
            if (ts) bs = atomicAdd(st + SKT_NSURE, (u64)ts);
            if (tc) bc = atomicAdd(st + SKT_NCAND, (u64)tc);
        }
        i64 s = (i64)__shfl_sync(0xffffffffU, bs, 0) + is - ns;
        i64 c = (i64)__shfl_sync(0xffffffffU, bc, 0) + ic - nc;
        if (ns == 0 && nc == 0) continue;
#pragma unroll
        for (int q = 0; q < SKT_ITEMS; ++q) {
            const i64 t = base + q * 32 + lane;
            if (t >= n) break;
            const u64 top = skt_ckey(v[q], t, ib) >> pshift;
            if (top > prefix) skt_emit<T>(s++, t, v[q], out_idx, out_val, out_key);
            else if (top == prefix) {
                if (c < cap) { cand_idx[c] = t; cand_val[c] = v[q]; }
                ++c;
            }
        }
    }
}

// One more 12-bit (or the last, narrower) digit of the range: histogram over the
// candidates (over est, filtered by the range, when they overflowed the buffer), then
// the pick.  Nothing to do once the range is one key or the whole range is taken;
// the condition is read from the state, so it is the same in every block.
template <typename T>
__global__ void skt_refine(const T* __restrict__ est, i64 n, const i64* __restrict__ cand_idx,
                           const T* __restrict__ cand_val, i64 cap, u64* __restrict__ hist, u64* st, int ib) {
    __shared__ u32 sh[SK_HIST_SIZE];
    const u64 pshift = st[SKT_PSHIFT], need = st[SKT_NEED], eq = st[SKT_EQ];
    if (pshift == 0 || eq == need) return;
    const u64 prefix = st[SKT_PREFIX], above = st[SKT_ABOVE], ncand = st[SKT_NCAND];
    const int width = pshift < (u64)SK_HIST_BITS ? (int)pshift : SK_HIST_BITS;
    const int shift = (int)pshift - width;
    const u64 mask = (1ULL << width) - 1ULL;
    for (int t = threadIdx.x; t < (1 << width); t += blockDim.x) sh[t] = 0;
    __syncthreads();
    const bool from_cand = ncand <= (u64)cap;
    const i64 m = from_cand ? (i64)ncand : n;
    for (i64 t = sk_tid(); t < m; t += sk_nthreads()) {
        const u64 key = from_cand ? skt_ckey(cand_val[t], cand_idx[t], ib) : skt_ckey(est[t], t, ib);
        if ((key >> pshift) == prefix) atomicAdd(&sh[(key >> shift) & mask], 1U);
    }
    __syncthreads();
    skt_flush_and_pick(sh, width, hist, st, prefix, pshift, above, need, false);
}

// Last: from the candidates (or est, filtered by the first range), entries above the
// final range take the next NSURE slots, and the first `need` in it take the slots
// [above, k): exactly k outputs.
template <typename T>
__global__ void skt_select(const T* __restrict__ est, i64 n, const i64* __restrict__ cand_idx,
                           const T* __restrict__ cand_val, i64 cap, u64* st, i64* out_idx, T* out_val,
                           u64* out_key, int ib) {
    const u64 prefix = st[SKT_PREFIX], pshift = st[SKT_PSHIFT], above = st[SKT_ABOVE], need = st[SKT_NEED];
    const u64 prefix1 = st[SKT_PREFIX1], pshift1 = st[SKT_PSHIFT1], ncand = st[SKT_NCAND];
    const bool from_cand = ncand <= (u64)cap;
    const i64 m = from_cand ? (i64)ncand : n;
    const int lane = threadIdx.x & 31;
    for (i64 base = sk_tid() - lane; base < m; base += sk_nthreads()) {
        const i64 t = base + lane;
        bool in = t < m;
        T v = T(0);
        i64 i = t;
        if (in) {
            if (from_cand) { i = cand_idx[t]; v = cand_val[t]; }
            else { v = est[t]; in = (skt_ckey(v, i, ib) >> pshift1) == prefix1; }
        }
        const u64 top = in ? skt_ckey(v, i, ib) >> pshift : 0ULL;
        const i64 s = sk_warp_append(st + SKT_NSURE, in && top > prefix);
        if (s >= 0) skt_emit<T>(s, i, v, out_idx, out_val, out_key);
        const i64 c = sk_warp_append(st + SKT_NTIE, in && top == prefix);
        if (c >= 0 && (u64)c < need) skt_emit<T>((i64)above + c, i, v, out_idx, out_val, out_key);
    }
}

// The top-k unsketch in place, after the refinement passes (ib > 0: every select key is
// distinct, so the final range is one key or wholly taken): the top k are exactly the
// entries with key >> pshift >= prefix.  Every other estimate is zeroed, and est becomes
// the dense result: no output buffer, no sort.
template <typename T>
__global__ void skt_mask(T* __restrict__ est, i64 n, const u64* st, int ib) {
    const u64 prefix = st[SKT_PREFIX], pshift = st[SKT_PSHIFT];
    for (i64 t = sk_tid(); t < n; t += sk_nthreads())
        if ((skt_ckey(est[t], t, ib) >> pshift) < prefix) est[t] = T(0);
}

// Packed keys (sorted) back to index and value: the value's bits are exact.
__global__ void skt_unpack(const u64* __restrict__ keys, i64 k, i64* __restrict__ out_idx,
                           float* __restrict__ out_val) {
    for (i64 t = sk_tid(); t < k; t += sk_nthreads()) {
        const u64 c = keys[t];
        out_idx[t] = (i64)((c >> 1) & 0xffffffffULL);
        out_val[t] = __uint_as_float((0x7fffffffU - (u32)(c >> 33)) | ((u32)(c & 1ULL) << 31));
    }
}

// Entries of a stored estimate buffer with |v| >= thr (in no particular order).
template <typename T>
__global__ void sk_threshold_compact(const T* __restrict__ est, i64 n, T thr, i64* __restrict__ out_idx,
                                     T* __restrict__ out_val, u64* out_n, i64 cap) {
    const int lane = threadIdx.x & 31;
    for (i64 base = sk_tid() - lane; base < n; base += sk_nthreads()) {
        const i64 t = base + lane;
        T v = T(0);
        bool in = t < n;
        if (in) v = __ldcs(est + t);
        i64 s = sk_warp_append(out_n, in && !(v < thr && -v < thr));
        if (s >= 0 && s < cap) { out_idx[s] = t; out_val[s] = v; }
    }
}

// ---------------------------------------------------------------- misc
template <typename T>
__global__ void sk_zero_buckets(const i64* __restrict__ idx, i64 n, T* __restrict__ table,
                                const u32* __restrict__ keys, int rows, u32 cols) {
    __shared__ u32 sk[2 * SK_MAX_ROWS];
    sk_load_keys(sk, keys, rows);
    for (i64 t = sk_tid(); t < n; t += sk_nthreads()) {
        const i64 i = idx[t];
        for (int j = 0; j < rows; ++j)
            table[(i64)j * cols + sk_locate(i, sk[2 * j], sk[2 * j + 1], cols).bucket] = T(0);
    }
}

template <typename T>
__global__ void sk_all_finite(const T* __restrict__ x, i64 n, int* __restrict__ bad) {
    for (i64 t = sk_tid(); t < n; t += sk_nthreads())
        if (!isfinite(x[t])) { *bad = 1; return; }
}

// One block: in a histogram of nbins counts, find the bin b where the running count
// from the top bin down reaches `need`.  state <- {b, count above b, count in b}.
__global__ void sk_radix_pick(const u64* __restrict__ hist, int nbins, u64 need, u64* __restrict__ state) {
    __shared__ u64 part[SK_PICK_BLOCK];
    const int t = threadIdx.x, per = (nbins + blockDim.x - 1) / blockDim.x;
    // Thread t owns bins [t*per, (t+1)*per); suffix sums over threads, Hillis-Steele.
    u64 s = 0;
    for (int q = 0; q < per; ++q) { int b = t * per + q; if (b < nbins) s += hist[b]; }
    part[t] = s;
    __syncthreads();
    for (int off = 1; off < (int)blockDim.x; off <<= 1) {
        u64 add = (t + off < (int)blockDim.x) ? part[t + off] : 0;
        __syncthreads();
        part[t] += add;
        __syncthreads();
    }
    u64 run = part[t] - s;  // count in bins above mine
    for (int q = per - 1; q >= 0; --q) {
        int b = t * per + q;
        if (b >= nbins) continue;
        u64 c = hist[b];
        if (run < need && run + c >= need) { state[0] = (u64)b; state[1] = run; state[2] = c; }
        run += c;
    }
}

// Buckets and signs of indices, for tests against the NumPy hash specification.
__global__ void sk_hash_rows(const i64* __restrict__ idx, i64 n, const u32* __restrict__ keys, int rows,
                             u32 cols, i64* __restrict__ buckets, signed char* __restrict__ signs) {
    for (i64 t = sk_tid(); t < n; t += sk_nthreads())
        for (int j = 0; j < rows; ++j) {
            const SkLoc l = sk_locate(idx[t], keys[2 * j], keys[2 * j + 1], cols);
            buckets[(i64)j * n + t] = (i64)l.bucket;
            signs[(i64)j * n + t] = l.neg ? -1 : 1;
        }
}
"""
