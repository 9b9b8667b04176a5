// Kernels that test the CUDA simulator itself (tests/kernels.rs), not the engine.
//
// selftest_reverse_{with,missing}_barrier: out[b*B + t] = in[b*B + (B-1-t)] through a shared
//   tile (0 where the mirrored index is past n). The "missing" version omits the __syncthreads
//   between the tile write and the read: a data race that the simulator's shuffled fiber order
//   must expose as wrong output (on a GPU it may pass by luck, which is why the simulator
//   schedules adversarially). Shapes: in, out [n] f32; grid ceil(n/B) blocks of B = 128.
// selftest_warp_ops: per warp, out[w] = sum of in over the warp by __shfl_down_sync, and
//   counts[w] = popcount of __ballot_sync(in > 0). Shapes: in [32*warps], out [warps] f32,
//   counts [warps] u32; grid of blocks of 64 threads (2 warps).
// selftest_divergent_barrier: half a warp waits at __syncthreads while the other half waits at
//   a shuffle (undefined behaviour on a GPU; never launched there): the simulator must report a
//   deadlock as an error instead of hanging. Shapes: out [32] f32; one block of 32 threads.

#define SELFTEST_BLOCK 128

extern "C" __global__ void selftest_reverse_with_barrier(const float* __restrict__ in, float* __restrict__ out,
                                                         unsigned int n) {
    __shared__ float tile[SELFTEST_BLOCK];
    const unsigned int base = blockIdx.x * blockDim.x, t = threadIdx.x;
    tile[t] = base + t < n ? in[base + t] : 0.0f;
    __syncthreads();
    if (base + t < n) out[base + t] = tile[blockDim.x - 1 - t];
}

extern "C" __global__ void selftest_reverse_missing_barrier(const float* __restrict__ in, float* __restrict__ out,
                                                            unsigned int n) {
    __shared__ float tile[SELFTEST_BLOCK];
    const unsigned int base = blockIdx.x * blockDim.x, t = threadIdx.x;
    tile[t] = base + t < n ? in[base + t] : 0.0f;
    // BUG (deliberate): no __syncthreads() here.
    if (base + t < n) out[base + t] = tile[blockDim.x - 1 - t];
}

extern "C" __global__ void selftest_warp_ops(const float* __restrict__ in, float* __restrict__ out,
                                             unsigned int* __restrict__ counts) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = in[i];
    const unsigned int positive = __ballot_sync(0xffffffffu, v > 0.0f);
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31u) == 0) {
        out[i / 32] = v;
        counts[i / 32] = __popc(positive);
    }
}

extern "C" __global__ void selftest_divergent_barrier(float* __restrict__ out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    out[threadIdx.x] = v;
}
