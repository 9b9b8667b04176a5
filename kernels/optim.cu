// Per-agent gradient clipping and RMSprop on the arena [agents][P], PyTorch semantics
// (torch.nn.utils.clip_grad_norm_ then torch.optim.RMSprop, not centered, no momentum); the CPU
// twin is src/backend/cpu/optim.rs.
//
// For each agent r with gradient g_r = grads[r][0..P):
//   n_r = ||g_r||_2                              (pass 1 + start of pass 2, f64 accumulation)
//   c_r = min(1, max_norm / (n_r + 1e-6))
//   g   <- c_r * g                               (written back: the clipped gradient)
//   v   <- alpha * v + (1 - alpha) * g^2
//   th  <- th - lr * g / (sqrt(v) + eps)        (tf_form 0: torch.optim.RMSprop)
//   th  <- th - lr * g / sqrt(v + eps)          (tf_form 1: TensorFlow / SB3's RMSpropTFLike,
//                                                whose v starts at 1: the launcher's caller
//                                                fills square_avg; see src/backend/cpu/optim.rs)
//
// Shapes: params, grads, square_avg [agents][P] f32; partials [agents][chunks] f64;
//         norms [agents] f64 (the pre-clip norm); skip [1] u32 (non-zero: leave params, grads
//         and square_avg untouched; set on the device by heads_loss_guard).
//
// optim_find_nonfinite (the trainer's after-update safety check, so the arena need not come to
// the host): first[r][c] = the smallest index i among block (c, r)'s elements with params[r][i]
// NaN or infinite, or 0xffffffff when there is none; same grid as the optimizer. The host takes
// the minimum over an agent's chunks. Integer minimum: exact whatever the order.
// Grid: (chunks, agents) blocks of OPTIM_BLOCK threads for pass 1 and optim_find_nonfinite; block
//       (c, r) handles the elements i = c*OPTIM_BLOCK + t + k*chunks*OPTIM_BLOCK of agent r.
//       Pass 2 is elementwise, so its partition is free: (step_blocks, agents) blocks, about
//       OPTIM_STEP_ELEMS_PER_THREAD elements per thread (the launcher's choice), grid-stride over
//       gridDim.x; it still reads the `chunks` partials of pass 1. (With pass 1's 64 blocks per
//       agent it held too few loads in flight: 1.3 TB/s on an H200, Nsight Compute, 2026-12-04.)
// Accumulation contract: deterministic, no atomics. Pass 1 writes one f64 partial sum of squares
// per (agent, chunk) through a fixed shuffle tree; pass 2 sums an agent's partials in chunk order
// (every block recomputes the same sum, so no third launch is needed). The result depends on P
// and `chunks` only, which the launcher derives from P alone.

#include "prelude.cuh"

#define OPTIM_BLOCK 256

// Loads in flight per thread in the strided passes over an agent's row (pass 1 and
// optim_find_nonfinite). One at a time, pass 1 ran at 1.1 TB/s on an H200 (Nsight Compute,
// 2026-12-04: 27.8 MB in 24.7 us); eight per thread cover DRAM latency. A group's loads are
// issued together and consumed in ascending index, so the order and the bits are as before.
#define OPTIM_LOADS_IN_FLIGHT 8

// Elements per thread of pass 2 (the launcher sizes its grid to it: launch::OPTIM_STEP_ELEMS_PER_THREAD);
// a thread loads all of them before it stores any.
#define OPTIM_STEP_ELEMS_PER_THREAD 4

// Pass 1: partials[r][c] = sum of g^2 over block (c, r)'s elements.
extern "C" __global__ void __launch_bounds__(OPTIM_BLOCK) optim_sumsq_partials(
    const float* __restrict__ grads, double* __restrict__ partials, unsigned int param_count,
    unsigned int chunks) {
    __shared__ double warp_sums[32];
    const unsigned int agent = blockIdx.y, chunk = blockIdx.x;
    const float* g = grads + (unsigned long long)agent * param_count;
    const unsigned long long step = (unsigned long long)chunks * blockDim.x;
    unsigned long long i = (unsigned long long)chunk * blockDim.x + threadIdx.x;
    double acc = 0.0;
    for (; i + (OPTIM_LOADS_IN_FLIGHT - 1) * step < param_count; i += OPTIM_LOADS_IN_FLIGHT * step) {
        float x[OPTIM_LOADS_IN_FLIGHT];
        GALA_UNROLL
        for (int u = 0; u < OPTIM_LOADS_IN_FLIGHT; ++u) x[u] = g[i + u * step];
        GALA_UNROLL
        for (int u = 0; u < OPTIM_LOADS_IN_FLIGHT; ++u) acc += (double)x[u] * (double)x[u];
    }
    for (; i < param_count; i += step) acc += (double)g[i] * (double)g[i];
    acc = gala_block_reduce<GALA_REDUCE_SUM>(acc, warp_sums, 0.0);
    if (threadIdx.x == 0) partials[(unsigned long long)agent * chunks + chunk] = acc;
}

// Pass 2: the agent's norm from its partials, then clip + RMSprop on block (c, r)'s elements.
extern "C" __global__ void __launch_bounds__(OPTIM_BLOCK) optim_clip_rmsprop(
    float* __restrict__ params, float* __restrict__ grads, float* __restrict__ square_avg,
    const double* __restrict__ partials, double* __restrict__ norms, const unsigned int* __restrict__ skip,
    unsigned int param_count, unsigned int chunks, double max_norm, float lr, float alpha, float eps,
    unsigned int tf_form) {
    __shared__ float clip_coef;
    const unsigned int agent = blockIdx.y, chunk = blockIdx.x;
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (unsigned int c = 0; c < chunks; ++c) sum += partials[(unsigned long long)agent * chunks + c];
        const double norm = sqrt(sum);
        const double coef = max_norm / (norm + 1e-6);
        clip_coef = (float)(coef < 1.0 ? coef : 1.0);
        if (chunk == 0) norms[agent] = norm;
    }
    __syncthreads();
    // skip[0] != 0 (heads_loss_guard: a non-finite loss): no step, nothing written but the norm.
    if (skip[0] != 0u) return;
    const float coef = clip_coef;
    const unsigned long long base = (unsigned long long)agent * param_count;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    // A group's loads (gradient, square average, parameter of each element) all go out before
    // its first store. Written element by element, every load waited for the previous stores
    // (SASS: three serial DRAM round trips per element; the H200 measured 1.3 TB/s).
    for (unsigned long long i0 = (unsigned long long)chunk * blockDim.x + threadIdx.x; i0 < param_count;
         i0 += OPTIM_STEP_ELEMS_PER_THREAD * stride) {
        float g[OPTIM_STEP_ELEMS_PER_THREAD], v[OPTIM_STEP_ELEMS_PER_THREAD], th[OPTIM_STEP_ELEMS_PER_THREAD];
        GALA_UNROLL
        for (int u = 0; u < OPTIM_STEP_ELEMS_PER_THREAD; ++u) {
            const unsigned long long i = i0 + u * stride;
            if (i < param_count) {
                g[u] = grads[base + i];
                v[u] = square_avg[base + i];
                th[u] = params[base + i];
            }
        }
        GALA_UNROLL
        for (int u = 0; u < OPTIM_STEP_ELEMS_PER_THREAD; ++u) {
            const unsigned long long i = i0 + u * stride;
            if (i < param_count) {
                const float gc = g[u] * coef;
                grads[base + i] = gc;
                const float vn = alpha * v[u] + (1.0f - alpha) * gc * gc;
                square_avg[base + i] = vn;
                params[base + i] = th[u] - lr * gc / (tf_form ? sqrtf(vn + eps) : sqrtf(vn) + eps);
            }
        }
    }
}

// first[r][c] = smallest non-finite index of block (c, r)'s elements, or 0xffffffff.
extern "C" __global__ void __launch_bounds__(OPTIM_BLOCK) optim_find_nonfinite(
    const float* __restrict__ params, unsigned int* __restrict__ first, unsigned int param_count,
    unsigned int chunks) {
    __shared__ unsigned int warp_mins[32];
    const unsigned int agent = blockIdx.y, chunk = blockIdx.x;
    const float* th = params + (unsigned long long)agent * param_count;
    const unsigned long long step = (unsigned long long)chunks * blockDim.x;
    unsigned long long i = (unsigned long long)chunk * blockDim.x + threadIdx.x;
    unsigned int found = 0xffffffffu;
    // Ascending per thread, so the first hit is this thread's smallest: stop there.
    for (; found == 0xffffffffu && i + (OPTIM_LOADS_IN_FLIGHT - 1) * step < param_count;
         i += OPTIM_LOADS_IN_FLIGHT * step) {
        float x[OPTIM_LOADS_IN_FLIGHT];
        GALA_UNROLL
        for (int u = 0; u < OPTIM_LOADS_IN_FLIGHT; ++u) x[u] = th[i + u * step];
        GALA_UNROLL
        for (int u = OPTIM_LOADS_IN_FLIGHT - 1; u >= 0; --u)
            if (!isfinite(x[u])) found = (unsigned int)(i + u * step);
    }
    for (; found == 0xffffffffu && i < param_count; i += step)
        if (!isfinite(th[i])) found = (unsigned int)i;
    found = gala_block_reduce<GALA_REDUCE_MIN>(found, warp_mins, 0xffffffffu);
    if (threadIdx.x == 0) first[(unsigned long long)agent * chunks + chunk] = found;
}
