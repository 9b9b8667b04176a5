// The CUDA simulator's view of the CUDA language: this header is included (by the shims that
// build.rs generates) in front of an unchanged kernels/*.cu file, so that the host C++ compiler
// builds the very same kernel text and the kernels can run on the CPU with no GPU.
//
// Execution model (implemented in sim_runtime.cpp):
//   * the blocks of a grid are spread over host threads; each block runs to completion on ONE
//     host thread before that thread takes the next block;
//   * the threads of a block are cooperative fibers on that host thread; a fiber runs until it
//     reaches a barrier (__syncthreads, or a warp-level exchange: shuffles, ballots, __syncwarp)
//     or finishes, and the scheduler then picks the next fiber in a shuffled order, so a kernel
//     that reads shared memory before another thread's write (a missing barrier) sees a stale
//     value and gives a wrong answer instead of passing by luck;
//   * `__shared__` is `static thread_local`: all fibers of a block live on one host thread, so
//     they share it, and blocks on the same host thread run one after another, like blocks
//     reusing an SM's shared memory on a GPU (stale contents included).
// Supported: threadIdx/blockIdx/blockDim/gridDim, __syncthreads, static __shared__ arrays,
// __shfl_{xor,down,up,}_sync, __ballot_sync/__any_sync/__all_sync, __syncwarp, atomics on
// int/unsigned/unsigned long long/float/double, and the math intrinsics used by the kernels.
// Not supported (yet): `extern __shared__` dynamic shared memory, cooperative groups, textures.
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define __CUDA_SIM__ 1

// The profiled kernel variant (sim_profile.h) is a second copy of every kernel in the same
// binary, built with -fsanitize=thread, and a build.rs variant (conv.cu's TF32 build) is another
// copy of one file's kernels with different code: their helpers and __device__ functions get
// internal linkage there, so the linker never merges one copy's inline function (or the one
// `__shared__` array a function-local static is program-wide) with another's.
#if defined(GALA_SIM_PROFILE_BUILD) || defined(GALA_SIM_VARIANT_BUILD)
#define GALA_SIM_INLINE static inline
#else
#define GALA_SIM_INLINE inline
#endif
#define __global__
#define __device__ GALA_SIM_INLINE
#define __host__
#define __forceinline__ __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
// Aligned to 16 bytes as on a GPU (the NVPTX backend raises a __shared__ array's alignment so
// that ptxas can emit 128-bit LDS/STS on it), so the profiler's vector accesses line up the same.
#define __shared__ static thread_local __attribute__((aligned(16)))
#define __constant__ static
#define __launch_bounds__(...)

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

namespace gala_sim {

// What a fiber (one simulated CUDA thread) knows about itself; the runtime keeps the rest.
struct ThreadState {
    uint3 thread_idx;
    unsigned int lane;
    unsigned int lanes_in_warp;
    // Index of this thread's warp in its block (linear thread index / 32).
    unsigned int warp;
    // 32 exchange slots of this thread's warp (shuffles, ballots).
    unsigned long long* warp_slots;
};

// `__thread` (not C++ thread_local): plain TLS without dynamic-initialisation wrappers.
extern __thread ThreadState* current_thread;
extern __thread uint3 current_block_idx;
extern __thread dim3 current_block_dim;
extern __thread dim3 current_grid_dim;

// Yield until every live thread of the block has arrived (fibers that finished count as arrived).
void block_barrier();
// Yield until every live lane of this thread's warp has arrived.
void warp_barrier();

template <class T>
GALA_SIM_INLINE unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "the simulator exchanges at most 8 bytes per lane");
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T>
GALA_SIM_INLINE T from_bits(unsigned long long bits) {
    T v;
    memcpy(&v, &bits, sizeof(T));
    return v;
}

// Every lane publishes `v`, then reads the value of lane `src` (its own when `src` is not a lane
// of the warp), then waits again so that no lane overwrites its slot before all have read.
template <class T>
GALA_SIM_INLINE T exchange(T v, unsigned int src) {
    ThreadState* t = current_thread;
    t->warp_slots[t->lane] = to_bits(v);
    warp_barrier();
    unsigned long long bits = src < t->lanes_in_warp ? t->warp_slots[src] : t->warp_slots[t->lane];
    warp_barrier();
    return from_bits<T>(bits);
}

}  // namespace gala_sim

#define threadIdx (::gala_sim::current_thread->thread_idx)
#define blockIdx (::gala_sim::current_block_idx)
#define blockDim (::gala_sim::current_block_dim)
#define gridDim (::gala_sim::current_grid_dim)
#define warpSize 32

GALA_SIM_INLINE void __syncthreads() { gala_sim::block_barrier(); }
GALA_SIM_INLINE void __syncwarp(unsigned int = 0xffffffffu) { gala_sim::warp_barrier(); }
GALA_SIM_INLINE void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
GALA_SIM_INLINE void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- warp shuffles and votes (the mask is taken as "all live lanes", as the kernels use it) ----
template <class T>
GALA_SIM_INLINE T __shfl_sync(unsigned int, T v, int src_lane, int width = 32) {
    unsigned int lane = gala_sim::current_thread->lane;
    unsigned int src = (lane / width) * width + ((unsigned int)src_lane % width);
    return gala_sim::exchange(v, src);
}
template <class T>
GALA_SIM_INLINE T __shfl_xor_sync(unsigned int, T v, int lane_mask, int width = 32) {
    unsigned int lane = gala_sim::current_thread->lane;
    unsigned int src = lane ^ (unsigned int)lane_mask;
    if (src / width != lane / width) src = lane;
    return gala_sim::exchange(v, src);
}
template <class T>
GALA_SIM_INLINE T __shfl_down_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    unsigned int lane = gala_sim::current_thread->lane;
    unsigned int src = (lane % width) + delta < (unsigned int)width ? lane + delta : lane;
    return gala_sim::exchange(v, src);
}
template <class T>
GALA_SIM_INLINE T __shfl_up_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    unsigned int lane = gala_sim::current_thread->lane;
    unsigned int src = (lane % width) >= delta ? lane - delta : lane;
    return gala_sim::exchange(v, src);
}
GALA_SIM_INLINE unsigned int __ballot_sync(unsigned int mask, int predicate) {
    gala_sim::ThreadState* t = gala_sim::current_thread;
    t->warp_slots[t->lane] = predicate ? 1u : 0u;
    gala_sim::warp_barrier();
    unsigned int bits = 0;
    for (unsigned int l = 0; l < t->lanes_in_warp; ++l)
        if (t->warp_slots[l]) bits |= 1u << l;
    gala_sim::warp_barrier();
    return bits & mask;
}
GALA_SIM_INLINE int __any_sync(unsigned int mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
GALA_SIM_INLINE int __all_sync(unsigned int mask, int predicate) {
    unsigned int live = gala_sim::current_thread->lanes_in_warp;
    unsigned int all = live == 32 ? 0xffffffffu : ((1u << live) - 1u);
    return __ballot_sync(mask, predicate) == (all & mask);
}
GALA_SIM_INLINE unsigned int __activemask() {
    unsigned int live = gala_sim::current_thread->lanes_in_warp;
    return live == 32 ? 0xffffffffu : ((1u << live) - 1u);
}

// ---- atomics: blocks run on several host threads, so these are real atomics ----
#define GALA_SIM_INT_ATOMICS(T)                                                                    \
    GALA_SIM_INLINE T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }           \
    GALA_SIM_INLINE T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }           \
    GALA_SIM_INLINE T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }           \
    GALA_SIM_INLINE T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }             \
    GALA_SIM_INLINE T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }           \
    GALA_SIM_INLINE T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }         \
    GALA_SIM_INLINE T atomicCAS(T* a, T expected, T desired) {                                              \
        __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
        return expected;                                                                           \
    }                                                                                              \
    GALA_SIM_INLINE T atomicMax(T* a, T v) {                                                                \
        T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                              \
        while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {} \
        return old;                                                                                \
    }                                                                                              \
    GALA_SIM_INLINE T atomicMin(T* a, T v) {                                                                \
        T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                              \
        while (old > v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {} \
        return old;                                                                                \
    }
GALA_SIM_INT_ATOMICS(int)
GALA_SIM_INT_ATOMICS(unsigned int)
GALA_SIM_INT_ATOMICS(unsigned long long)
#undef GALA_SIM_INT_ATOMICS

template <class F, class U>
GALA_SIM_INLINE F gala_sim_atomic_add_float(F* a, F v) {
    U* bits = reinterpret_cast<U*>(a);
    U old = __atomic_load_n(bits, __ATOMIC_SEQ_CST);
    for (;;) {
        F cur;
        memcpy(&cur, &old, sizeof(F));
        F next = cur + v;
        U next_bits;
        memcpy(&next_bits, &next, sizeof(F));
        if (__atomic_compare_exchange_n(bits, &old, next_bits, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return cur;
    }
}
GALA_SIM_INLINE float atomicAdd(float* a, float v) { return gala_sim_atomic_add_float<float, unsigned int>(a, v); }
GALA_SIM_INLINE double atomicAdd(double* a, double v) { return gala_sim_atomic_add_float<double, unsigned long long>(a, v); }

// ---- math and bit intrinsics ----
// (plain `inline` even in the profiled build: libm declares some of these names, and they touch
// no memory, so a merged copy changes nothing)
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
// Round-to-nearest product and sum that the CUDA compiler never contracts into an FMA; the
// simulator is built with -ffp-contract=off (build.rs), so the plain operators match.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __int_as_float(int x) { return gala_sim::from_bits<float>((unsigned int)x); }
inline int __float_as_int(float x) { return (int)(unsigned int)gala_sim::to_bits(x); }
inline float __uint_as_float(unsigned int x) { return gala_sim::from_bits<float>(x); }
inline unsigned int __float_as_uint(float x) { return (unsigned int)gala_sim::to_bits(x); }
inline long long __double_as_longlong(double x) { return (long long)gala_sim::to_bits(x); }
inline double __longlong_as_double(long long x) { return gala_sim::from_bits<double>((unsigned long long)x); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * (unsigned long long)b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * (unsigned __int128)b) >> 64);
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T>
GALA_SIM_INLINE T __ldg(const T* p) { return *p; }

// ---- TF32 tensor-core instructions (prelude.cuh's gala_tf32_round / gala_mma_m16n8k8_tf32_x4) ----
// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest, ties away from zero (add half a TF32
// ulp to the magnitude, drop the 13 low bits); infinities and NaNs pass unchanged.
GALA_SIM_INLINE unsigned int gala_tf32_round(float x) {
    unsigned int u = (unsigned int)gala_sim::to_bits(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;
}
namespace gala_sim {
// Four mma.sync m16n8k8 .tf32 (f32 accumulators) sharing the A fragment, for the calling lane's
// warp (sim_runtime.cpp: the lanes publish their fragments, meet at a warp barrier, and each
// computes its 16 outputs as d + the 8 products in ascending k, every step rounded to FP32; a
// product of two TF32 values is exact in FP32). Like the hardware it reads only the TF32 bits of
// the operands. Every lane of a full warp must call it; in a partial warp the outputs are NaN.
void mma_m16n8k8_tf32_x4(float d[4][4], const unsigned int a[4], const unsigned int b[4][2]);
}  // namespace gala_sim
GALA_SIM_INLINE void gala_mma_m16n8k8_tf32_x4(float d[4][4], const unsigned int a[4], const unsigned int b[4][2]) {
    gala_sim::mma_m16n8k8_tf32_x4(d, a, b);
}

// CUDA's device-side min/max overloads (host C++ has only std::min/std::max).
#define GALA_SIM_MINMAX(T)                                  \
    GALA_SIM_INLINE T min(T a, T b) { return a < b ? a : b; }        \
    GALA_SIM_INLINE T max(T a, T b) { return a > b ? a : b; }
GALA_SIM_MINMAX(int)
GALA_SIM_MINMAX(unsigned int)
GALA_SIM_MINMAX(long long)
GALA_SIM_MINMAX(unsigned long long)
#undef GALA_SIM_MINMAX
GALA_SIM_INLINE float min(float a, float b) { return fminf(a, b); }
GALA_SIM_INLINE float max(float a, float b) { return fmaxf(a, b); }
GALA_SIM_INLINE double min(double a, double b) { return fmin(a, b); }
GALA_SIM_INLINE double max(double a, double b) { return fmax(a, b); }
