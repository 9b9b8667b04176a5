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

// ---- TF32 tensor-core instructions (sm_80 and later), for the GALA_TF32 build of conv.cu ----
// gala_tf32_round(x): x rounded to TF32 (10 mantissa bits, to nearest, ties away from zero), as
// the bits of an f32 with the low 13 mantissa bits zero: PTX cvt.rna.tf32.f32.
// gala_mma_m16n8k8_tf32_x4(d, a, b): d[t] += A * B_t for t = 0..3, four 16x8x8 tiles of the warp
// sharing the A fragment (every lane of a full warp calls it together): four PTX
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, fragments in the PTX ISA's layout (see
// conv.cu's conv_tile_fma). The simulator has its own (cuda_sim.h), which exchanges the four
// tiles' fragments between the lanes in one go.
#if defined(GALA_TF32) && !defined(__CUDA_SIM__)
__device__ __forceinline__ unsigned int gala_tf32_round(float x) {
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ void gala_mma_m16n8k8_tf32_x4(float d[4][4], const unsigned int a[4], const unsigned int b[4][2]) {
    GALA_UNROLL
    for (int t = 0; t < 4; ++t)
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};"
            : "+f"(d[t][0]), "+f"(d[t][1]), "+f"(d[t][2]), "+f"(d[t][3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[t][0]), "r"(b[t][1]));
}
#endif
