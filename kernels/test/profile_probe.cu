// Kernels with hand-checkable memory-access patterns for the simulator's memory profiler
// (tests/sim_profile.rs pins its counts on them). All run as one block; every lane t of it:
//
// probe_smem_stride: s[t*stride] = in[t]; barrier; out[t] = s[t*stride].
//   stride 1: a warp's 32 words sit in 32 banks (1 wavefront per request); stride 32: all 32
//   words in bank 0 (32 wavefronts: a 32-way conflict); stride 0: one word (a broadcast read,
//   1 wavefront). Shapes: in, out [blockDim] f32; s holds 32*32 floats, so stride <= 32.
// probe_global_stride: out[t] = in[t*stride]. stride 1: a warp's 32 floats are 128 contiguous
//   bytes (4 sectors per request); stride 8 (32 bytes): one sector per lane (32 sectors).
//   Shapes: in [blockDim*stride] f32, out [blockDim] f32.
// probe_global_vec4: out[t] = in[4t] + in[4t+1] + in[4t+2] + in[4t+3]: four adjacent aligned
//   reads per lane, which nvcc turns into one 128-bit load (the profiler counts them as one
//   16-byte access: 512 bytes = 16 sectors per request). Shapes: in [4*blockDim], out [blockDim].
// probe_divergent: odd lanes only, a loop of t%4 + 1 iterations: out[t*4 + i] = in[t*4 + i]
//   for i < t%4 + 1 (divergence: a masked request per iteration). Shapes: in, out [4*blockDim].
// probe_smem_vec4_interleaved: 32 lanes; s[2][128] filled from in[0..256] (lane t stores
//   s[r][t + 32k], 8 conflict-free scalar stores), then lane t reads the four floats
//   s[0][4t..4t+3] and s[1][4t..4t+3] in the order a0 b0 a1 b1 a2 b2 a3 b3 (pinned on the
//   simulator by compiler barriers: the interleaving GCC's scheduler may choose for the GEMM
//   loops' two rows) and writes out[t] = a0*b0 + a1*b1 + a2*b2 + a3*b3. nvcc reads each row
//   with one LDS.128: 2 requests of 512 bytes, 4 wavefronts each. A 3-float array declared
//   first shows that __shared__ arrays are 16-byte aligned (as on a GPU) whatever precedes them:
//   out[32] = both arrays' addresses mod 16, summed (0). Shapes: in [256], out [33].

extern "C" __global__ void probe_smem_stride(const float* __restrict__ in, float* __restrict__ out, unsigned int stride) {
    __shared__ float s[32 * 32];
    const unsigned int t = threadIdx.x;
    s[(t % 32) * stride] = in[t];
    __syncthreads();
    out[t] = s[(t % 32) * stride];
}

extern "C" __global__ void probe_global_stride(const float* __restrict__ in, float* __restrict__ out, unsigned int stride) {
    const unsigned int t = threadIdx.x;
    out[t] = in[t * stride];
}

extern "C" __global__ void probe_global_vec4(const float* __restrict__ in, float* __restrict__ out) {
    const unsigned int t = threadIdx.x;
    const float* p = in + 4 * t;
    const float a = p[0], b = p[1], c = p[2], d = p[3];
    out[t] = (a + b) + (c + d);
}

extern "C" __global__ void probe_divergent(const float* __restrict__ in, float* __restrict__ out) {
    const unsigned int t = threadIdx.x;
    if (t % 2 == 1) {
        for (unsigned int i = 0; i < t % 4 + 1; ++i) out[t * 4 + i] = in[t * 4 + i];
    }
}

#ifdef __CUDA_SIM__
#define PROBE_ORDER() asm volatile("" ::: "memory")
#else
#define PROBE_ORDER()
#endif
extern "C" __global__ void probe_smem_vec4_interleaved(const float* __restrict__ in, float* __restrict__ out) {
    __shared__ float odd[3];
    __shared__ float s[2][128];
    const unsigned int t = threadIdx.x;
    if (t < 3) odd[t] = 0.0f;
    for (unsigned int r = 0; r < 2; ++r)
        for (unsigned int k = 0; k < 4; ++k) s[r][t + 32 * k] = in[128 * r + t + 32 * k];
    __syncthreads();
    const float* a = &s[0][4 * t];
    const float* b = &s[1][4 * t];
    const float a0 = a[0]; PROBE_ORDER();
    const float b0 = b[0]; PROBE_ORDER();
    const float a1 = a[1]; PROBE_ORDER();
    const float b1 = b[1]; PROBE_ORDER();
    const float a2 = a[2]; PROBE_ORDER();
    const float b2 = b[2]; PROBE_ORDER();
    const float a3 = a[3]; PROBE_ORDER();
    const float b3 = b[3];
    out[t] = (a0 * b0 + a1 * b1) + (a2 * b2 + a3 * b3) + odd[t % 3];
    if (t == 0) out[32] = (float)((size_t)&odd[0] % 16 + (size_t)&s[0][0] % 16);
}
