// Action sampling from the policy logits of every (agent, env); the CPU twin is `sample_action`
// in src/backend/cpu/heads.rs and the random numbers are `rng::action_uniform` (src/rng.rs).
//
//   m = max_j z_j,  S = sum_j exp(z_j - m)
//   u = Philox4x32-10(counter = (agent_offset + agent, env, lo32(step), hi32(step) << 8 | PURPOSE_ACTION),
//                     key = (lo32(seed), hi32(seed)))[0] >> 8, scaled by 2^-24 (exact in f32)
//   action = smallest a with u*S < sum_{j<=a} exp(z_j - m)  (A-1 if none: rounding guard)
//   greedy: the first argmax;   log_prob = z_action - m - log(S)
//
// `agent_offset` makes the counter use global agent ids, so an agent on a backend of its own
// (asynchronous gossip) samples exactly as it would inside a batched backend.
// Shapes: logits [agents][envs][A] f32; actions [agents][envs] u32; log_probs [agents][envs] f32.
// Grid: one thread per (agent, env), SAMPLE_BLOCK threads per block. The sums run sequentially
// over j in the CPU twin's order. The CPU and the simulator use the same libm, so they agree
// exactly; on a GPU expf/logf differ from libm by a few ulp, so an action can differ only where
// u*S lies within a few ulp of a cumulative sum (a measure-zero boundary the tests allow).

#define SAMPLE_BLOCK 128
#define PURPOSE_ACTION 0u

__device__ __forceinline__ unsigned int philox4x32_10_first(unsigned int c0, unsigned int c1, unsigned int c2,
                                                            unsigned int c3, unsigned int k0, unsigned int k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    return c0;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK) sample_actions(
    const float* __restrict__ logits, unsigned int* __restrict__ actions, float* __restrict__ log_probs,
    unsigned int agents, unsigned int agent_offset, unsigned int envs, unsigned int num_actions,
    unsigned long long seed, unsigned long long step, unsigned int greedy) {
    const unsigned int row_index = blockIdx.x * blockDim.x + threadIdx.x;
    if (row_index >= agents * envs) return;
    const unsigned int agent = row_index / envs, env = row_index % envs;
    const float* z = logits + (unsigned long long)row_index * num_actions;
    float m = __int_as_float(0xff800000);  // -inf
    for (unsigned int j = 0; j < num_actions; ++j) m = fmaxf(m, z[j]);
    float sum = 0.0f;
    for (unsigned int j = 0; j < num_actions; ++j) sum += expf(z[j] - m);
    unsigned int chosen = 0;
    if (greedy) {
        for (unsigned int j = 0; j < num_actions; ++j) {
            if (z[j] == m) {
                chosen = j;
                break;
            }
        }
    } else {
        const unsigned int bits = philox4x32_10_first(agent_offset + agent, env, (unsigned int)step,
                                                      ((unsigned int)(step >> 32)) << 8 | PURPOSE_ACTION,
                                                      (unsigned int)seed, (unsigned int)(seed >> 32));
        const float target = (float)(bits >> 8) * (1.0f / 16777216.0f) * sum;
        float acc = 0.0f;
        chosen = num_actions - 1;
        for (unsigned int j = 0; j < num_actions; ++j) {
            acc += expf(z[j] - m);
            if (target < acc) {
                chosen = j;
                break;
            }
        }
    }
    actions[row_index] = chosen;
    log_probs[row_index] = z[chosen] - m - logf(sum);
}
