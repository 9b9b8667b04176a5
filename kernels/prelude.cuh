// The kernels' shared prelude: `#include "prelude.cuh"` from any kernels/*.cu.
//
// One text for the three compilers that read the kernels: NVRTC gets it as an in-memory header
// (src/device/nvrtc.rs passes every kernels/*.cuh under its file name), the simulator build finds
// it next to the including .cu, and build.rs's kernel-signature parser skips it (it defines no
// `extern "C" __global__` kernel and must not: kernels live in .cu files, one table entry each).
//
// Reductions here have ONE fixed order that depends on blockDim only (the project's accumulation
// contract: deterministic, no atomics): a butterfly within each warp (xor offsets 16, 8, 4, 2, 1,
// every lane ends with the same value), then warp 0 combines the warps' results in the same
// butterfly, lanes past the last warp contributing the identity.
#pragma once

#define GALA_WARP_SIZE 32

// `#pragma unroll` for NVRTC; nothing for the simulator's host compiler (GCC warns on it), which
// keeps small fixed-size register arrays in registers anyway.
#ifdef __CUDA_SIM__
#define GALA_UNROLL
#else
#define GALA_UNROLL _Pragma("unroll")
#endif

enum GalaReduceOp { GALA_REDUCE_SUM, GALA_REDUCE_MIN };

template <GalaReduceOp OP, class T>
__device__ __forceinline__ T gala_reduce_combine(T a, T b) {
    // `b < a ? b : a` rather than min(): one spelling that NVRTC and the host compiler both take
    // for every T, and the same result as min() for the integers and non-NaN floats it sees.
    return OP == GALA_REDUCE_SUM ? a + b : (b < a ? b : a);
}

// The warp's reduction of `v`, in every lane (all 32 lanes must call it).
template <GalaReduceOp OP, class T>
__device__ __forceinline__ T gala_warp_reduce(T v) {
    for (int offset = GALA_WARP_SIZE / 2; offset > 0; offset >>= 1)
        v = gala_reduce_combine<OP>(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The block's reduction of `v`, valid in thread 0 (blockDim.x a multiple of 32, at most 1024;
// every thread must call it). `warp_partials` is a __shared__ T[32] of the caller's.
template <GalaReduceOp OP, class T>
__device__ __forceinline__ T gala_block_reduce(T v, T* warp_partials, T identity) {
    v = gala_warp_reduce<OP>(v);
    const unsigned int lane = threadIdx.x % GALA_WARP_SIZE, warp = threadIdx.x / GALA_WARP_SIZE;
    if (lane == 0) warp_partials[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const unsigned int warps = blockDim.x / GALA_WARP_SIZE;
        v = gala_warp_reduce<OP>(lane < warps ? warp_partials[lane] : identity);
    }
    return v;
}
