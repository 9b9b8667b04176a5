// n-step returns for every agent and env; the CPU twin is `nstep_returns` in
// src/backend/cpu/heads.rs.
//
//   R_T = bootstrap,   R_t = r_t + gamma * (1 - done_t) * R_{t+1}   for t = T-1 .. 0
// (done_t = 1 when the episode ended with step t, so nothing after it is bootstrapped through).
//
// Shapes: rewards, dones, returns [agents][steps][envs] f32; bootstrap [agents][envs] f32.
// Grid: one thread per (agent, env), RETURNS_BLOCK threads per block, ceil(agents*envs/block)
// blocks. Each thread walks its column backwards in time; no reduction, no cross-thread traffic;
// the float operations are those of the CPU twin in the same order.

#define RETURNS_BLOCK 128

extern "C" __global__ void __launch_bounds__(RETURNS_BLOCK) nstep_returns(
    const float* __restrict__ rewards, const float* __restrict__ dones, const float* __restrict__ bootstrap,
    float* __restrict__ returns, unsigned int agents, unsigned int steps, unsigned int envs, float gamma) {
    const unsigned int column = blockIdx.x * blockDim.x + threadIdx.x;
    if (column >= agents * envs) return;
    const unsigned int agent = column / envs, env = column % envs;
    float r = bootstrap[column];
    for (unsigned int t = steps; t-- > 0;) {
        const unsigned long long i = ((unsigned long long)agent * steps + t) * envs + env;
        r = rewards[i] + gamma * (1.0f - dones[i]) * r;
        returns[i] = r;
    }
}
