// CPU emulation of the CUDA features that the kernels of sketchlib/_backends/_cuda_src.py
// use (the whole source builds on it), for tests/test_cuda_emulated.py: each block's
// threads are real threads (__syncthreads is a barrier; warp ballots and shuffles exchange
// through a per-warp barrier), blocks run one after another, inline PTX is dropped
// (asm volatile(...) expands to nothing), __global__ kernels are plain functions.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#include <algorithm>
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define asm
#define volatile(...)
struct dim3e { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3e threadIdx, blockIdx;
inline dim3e blockDim, gridDim;
struct float4 { float x, y, z, w; };
struct double2 { double x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline double2 make_double2(double a, double b) { return {a, b}; }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(x); }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline long long __double_as_longlong(double d) { long long u; std::memcpy(&u, &d, 8); return u; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <class T, class U> inline T atomicAdd(T* p, U v) { return __atomic_fetch_add(p, (T)v, __ATOMIC_SEQ_CST); }
inline float atomicAdd(float* p, float v) { std::atomic_ref<float> r(*p); return r.fetch_add(v); }
inline double atomicAdd(double* p, double v) { std::atomic_ref<double> r(*p); return r.fetch_add(v); }
using std::min; using std::max; using std::isfinite; using std::signbit;
inline unsigned long long __cvta_generic_to_global(const void* p) { return (unsigned long long)p; }
// block barrier and warp exchange
inline std::barrier<>* g_block_bar = nullptr;
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
struct Warp { std::barrier<> bar{32}; unsigned long long slot[32]; };
inline std::vector<Warp*> g_warps;
inline Warp& my_warp() { return *g_warps[threadIdx.x / 32]; }
template <class T> inline unsigned long long to_bits(T v) { unsigned long long b = 0; std::memcpy(&b, &v, sizeof(T)); return b; }
template <class T> inline T from_bits(unsigned long long b) { T v; std::memcpy(&v, &b, sizeof(T)); return v; }
inline unsigned __ballot_sync(unsigned, bool pred) {
    Warp& w = my_warp(); int lane = threadIdx.x & 31;
    w.slot[lane] = pred; w.bar.arrive_and_wait();
    unsigned m = 0; for (int i = 0; i < 32; ++i) if (w.slot[i]) m |= 1u << i;
    w.bar.arrive_and_wait(); return m;
}
template <class T> inline T __shfl_sync(unsigned, T v, int src) {
    Warp& w = my_warp(); int lane = threadIdx.x & 31;
    w.slot[lane] = to_bits(v); w.bar.arrive_and_wait();
    T r = from_bits<T>(w.slot[src]); w.bar.arrive_and_wait(); return r;
}
template <class T> inline T __shfl_up_sync(unsigned, T v, int off) {
    Warp& w = my_warp(); int lane = threadIdx.x & 31;
    w.slot[lane] = to_bits(v); w.bar.arrive_and_wait();
    T r = lane >= off ? from_bits<T>(w.slot[lane - off]) : v; w.bar.arrive_and_wait(); return r;
}
// run a kernel: blocks one after another, each with blockDim.x real threads
inline void emu_launch(unsigned grid, unsigned block, const std::function<void()>& body) {
    gridDim.x = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        std::barrier<> bar((std::ptrdiff_t)block); g_block_bar = &bar;
        g_warps.clear(); for (unsigned w = 0; w < block / 32; ++w) g_warps.push_back(new Warp);
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([&, t, b] { threadIdx.x = t; blockIdx.x = b; body(); });
        for (auto& th : ts) th.join();
        for (auto* w : g_warps) delete w;
    }
}
