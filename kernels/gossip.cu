// Gossip mixing (lock-step on the arena, and from device mailboxes) and the consensus distance
// on the parameter arena [agents][P]; the CPU twin is src/backend/cpu/gossip.rs.
//
// Mixing (GALA's gpu_gossip_buffer.py): receiver r with in-peers S_r (k = |S_r|) computes
//   th_r <- th_r/(k+1) + sum_{s in S_r} th_s/(k+1)
// reading every th from `snapshot`, a copy of the arena taken before the round (the launcher
// copies it device-to-device), so no agent sees a half-mixed peer. k = 0 leaves th_r unchanged.
// Shapes: snapshot, params [agents][P] f32; in-peers in CSR form: peer_offsets [agents+1],
//         peers [peer_offsets[agents]] (agent indices, summed in list order).
// Grid: (chunks, agents) blocks of GOSSIP_BLOCK threads, grid-stride over P.
//
// Mailbox mixing (asynchronous gossip: every agent on its own backend and stream, messages are
// device-to-device copies of a sender's th into a device mailbox slot [P]): receiver `agent`
// computes, for the m = popcount(take_mask) slots picked by take_mask,
//   th_r <- th_r/(m+1) + sum_{j : bit j of take_mask} slot_j/(m+1)
// in place (each th_r element is read before it is written, by the same thread; the slots are
// other buffers). m = 0 leaves th_r unchanged.
// Shapes: params [agents][row_stride] f32 (the first P floats of row `agent` are mixed; the
//         arena pads its rows, see arena_stride in launch.rs); slot_addresses [slots] (1..=64): the
//         device addresses of the receiver's slots, each a [P] f32 buffer, in one fixed order —
//         a persistent table uploaded once, so a round uploads nothing: the mask picks the fresh
//         messages, summed in ascending slot order.
// Grid: (chunks, 1) blocks of GOSSIP_BLOCK threads, grid-stride over P.
// Arithmetic contract: identical to gossip_mix (and to mix_one in src/backend/cpu/gossip.rs):
// w = 1/((float)m + 1), acc = th*w, then acc += msg*w per message in list order, so lock-step
// gossip through mailboxes stays bit-identical to the batched gossip_mix. Both kernels write the
// products and sums as __fmul_rn/__fadd_rn: NVRTC contracts a*b + c into one FMA by default
// (fmad stays on for the GEMMs), which rounds once where the CPU rounds twice; on an H200 that
// left the agents of an all-to-all round a few ulps apart where the CPU makes them equal. With
// the intrinsics the mix is bit-identical to the CPU twin on every device.
//
// Consensus distance: max_r ||th_r - mean||_2 / ||mean||_2, mean over agents (f64 throughout).
//   consensus_partials: block (c, q) sums, over its elements i, (th_q[i] - mean[i])^2 for q < agents
//                       and mean[i]^2 for q = agents -> partials [agents+1][chunks] f64.
//   consensus_finish:   one thread sums each row of partials in chunk order and writes the ratio
//                       (0 for < 2 agents or all-equal agents, +inf for mean 0 with spread).
// Accumulation contract: deterministic, no atomics; each element's mean is recomputed per q (the
// metric is logged occasionally, so O(agents^2 P) reads buy a kernel with no per-agent limit).

#include "prelude.cuh"

#define GOSSIP_BLOCK 256

extern "C" __global__ void __launch_bounds__(GOSSIP_BLOCK) gossip_mix(
    const float* __restrict__ snapshot, float* __restrict__ params, const unsigned int* __restrict__ peer_offsets,
    const unsigned int* __restrict__ peers, unsigned int param_count, unsigned int chunks) {
    const unsigned int agent = blockIdx.y;
    const unsigned int begin = peer_offsets[agent], end = peer_offsets[agent + 1];
    if (begin == end) return;
    const float w = 1.0f / ((float)(end - begin) + 1.0f);
    const unsigned long long base = (unsigned long long)agent * param_count;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < param_count; i += chunks * blockDim.x) {
        float acc = __fmul_rn(snapshot[base + i], w);
        for (unsigned int j = begin; j < end; ++j)
            acc = __fadd_rn(acc, __fmul_rn(snapshot[(unsigned long long)peers[j] * param_count + i], w));
        params[base + i] = acc;
    }
}

#define GOSSIP_MAILBOX_MAX_SLOTS 64

extern "C" __global__ void __launch_bounds__(GOSSIP_BLOCK) gossip_mix_mailbox(
    float* __restrict__ params, const unsigned long long* __restrict__ slot_addresses, unsigned long long take_mask,
    unsigned int slots, unsigned int agent, unsigned int param_count, unsigned int row_stride, unsigned int chunks) {
    // The picked slots, in ascending slot order, resolved once per block.
    __shared__ const float* taken[GOSSIP_MAILBOX_MAX_SLOTS];
    __shared__ unsigned int taken_count;
    if (take_mask == 0ull) return;
    if (threadIdx.x == 0) {
        unsigned int m = 0;
        for (unsigned int j = 0; j < slots && j < GOSSIP_MAILBOX_MAX_SLOTS; ++j) {
            if ((take_mask >> j) & 1ull) taken[m++] = (const float*)slot_addresses[j];
        }
        taken_count = m;
    }
    __syncthreads();
    const unsigned int m = taken_count;
    const float w = 1.0f / ((float)m + 1.0f);
    const unsigned long long base = (unsigned long long)agent * row_stride;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < param_count; i += chunks * blockDim.x) {
        float acc = __fmul_rn(params[base + i], w);
        for (unsigned int j = 0; j < m; ++j) acc = __fadd_rn(acc, __fmul_rn(taken[j][i], w));
        params[base + i] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(GOSSIP_BLOCK) consensus_partials(
    const float* __restrict__ params, double* __restrict__ partials, unsigned int agents, unsigned int param_count,
    unsigned int chunks) {
    __shared__ double warp_sums[32];
    const unsigned int q = blockIdx.y;
    double acc = 0.0;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < param_count; i += chunks * blockDim.x) {
        double sum = 0.0;
        for (unsigned int r = 0; r < agents; ++r) sum += (double)params[(unsigned long long)r * param_count + i];
        const double mean = sum / (double)agents;
        if (q == agents) {
            acc += mean * mean;
        } else {
            const double x = (double)params[(unsigned long long)q * param_count + i] - mean;
            acc += x * x;
        }
    }
    acc = gala_block_reduce<GALA_REDUCE_SUM>(acc, warp_sums, 0.0);
    if (threadIdx.x == 0) partials[(unsigned long long)q * chunks + blockIdx.x] = acc;
}

extern "C" __global__ void consensus_finish(const double* __restrict__ partials, double* __restrict__ result,
                                            unsigned int agents, unsigned int chunks) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    if (agents < 2) {
        result[0] = 0.0;
        return;
    }
    double mean_sq = 0.0;
    for (unsigned int c = 0; c < chunks; ++c) mean_sq += partials[(unsigned long long)agents * chunks + c];
    double max_dev = 0.0;
    for (unsigned int r = 0; r < agents; ++r) {
        double dev = 0.0;
        for (unsigned int c = 0; c < chunks; ++c) dev += partials[(unsigned long long)r * chunks + c];
        dev = sqrt(dev);
        if (dev > max_dev) max_dev = dev;
    }
    const double mean_norm = sqrt(mean_sq);
    if (mean_norm == 0.0) {
        result[0] = max_dev == 0.0 ? 0.0 : __longlong_as_double(0x7ff0000000000000LL);
        return;
    }
    result[0] = max_dev / mean_norm;
}
