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
