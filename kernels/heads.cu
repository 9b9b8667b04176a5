// The policy and value heads for ALL agents in one launch per pass: the two linear heads on the
// hidden layer, softmax, log-prob of the taken action, entropy and the A2C loss gradient, fused;
// then the heads' backward. The CPU twins are linear_forward/linear_backward
// (src/backend/cpu/layers.rs) and a2c_loss_backward (src/backend/cpu/heads.rs).
//
// Shapes: hidden [agents][N][H] (post-ReLU fc output); params [agents][P] with actor.weight
// [A][H] at actor_w, actor.bias [A] at actor_b, critic.weight [1][H] at critic_w, critic.bias at
// critic_b; logits [agents][N][A]; values, returns, behaviour_log_probs, dvalues [agents][N];
// actions [agents][N] u32; dlogits [agents][N][A]; terms [agents][N][3] f32; stats [agents][3] f64.
//
// heads_forward_loss, per sample i of agent a (mode 0: forward only; 1: + loss; 2: + loss with
// the behaviour ratio):
//   z_ij = sum_k Wa[j][k] h_ik + ba[j],   V_i = sum_k Wc[k] h_ik + bc
//   log p_i = log_softmax(z_i) (max-shifted, as log_softmax_row),  H_i = -sum_j p_ij log p_ij
//   A_i = R_i - V_i,   rho_i = min(1, exp((double)log p_i(a_i) - (double)mu_i))  (mode 2, else 1)
//   dV_i  = 2 c_v (V_i - R_i) / N
//   dz_ij = [-A_i rho_i (delta_{j,a_i} - p_ij) + c_e p_ij (log p_ij + H_i)] / N
//   terms_i = (A_i^2, A_i rho_i log p_i(a_i), H_i)   (the loss terms before the means)
// in the CPU twin's float operations and order (the softmax is one thread's sequential loop).
// Grid: (ceil(N / HEADS_ROWS), agents) blocks of HEADS_THREADS. The block stages its HEADS_ROWS
// hidden rows and the A+1 weight rows in shared memory, HEADS_KTILE columns at a time (coalesced
// loads; rows padded to KTILE+1 floats, so the lanes of a warp, which read A+1 different weight
// rows and a few hidden rows at the same k, hit different banks), and each of its threads owns
// up to HEADS_PAIRS of the HEADS_ROWS x (A+1) dot products, summed over k in ascending order
// across the tiles; then one thread per sample does the rest. (Each thread used to read its
// two 2 KB rows straight from global memory: 45-52 us per launch on an H200, Nsight Compute,
// 2026-12-04, for 16-80 blocks of serial loads.)
//
// heads_backward (grid (ceil(H / HEADS_THREADS), agents, A + 1 + ceil(N / HEADS_ROWS)), one
// thread per hidden unit k; blockIdx.z picks the work, so 17 blocks share what one did before):
//   z = j < A:        dWa[j][k] = sum_i dz_ij h_ik
//   z = A:            dWc[k]    = sum_i dV_i h_ik
//   z = A + 1 + b:    dh_ik     = h_ik > 0 ? (sum_j dz_ij Wa[j][k]) + dV_i Wc[k] : 0 for the
//                     HEADS_ROWS samples i of row block b: masked by the fc layer's ReLU here,
//                     so the fc backward kernels read a masked gradient (no y loads)
//   block (0, a, 0):  dba[j] = sum_i dz_ij,  dbc = sum_i dV_i,  stats[a] = (sum_i terms_i) in f64
// Accumulation contract: every output is written (never accumulated into), each a sequential
// sum over i (or j, or k) in ascending order by one thread; no atomics. The split over blocks and
// tiles changes which thread sums, never an order: results are bit-identical to the one-thread
// loops these kernels had before. Requires A + 1 <= HEADS_MAX_OUT.

#include "prelude.cuh"

#define HEADS_ROWS 8
#define HEADS_THREADS 128
#define HEADS_MAX_OUT 32
#define HEADS_KTILE 128
// Tile elements a thread loads before it stores them (the staging's loads in flight).
#define HEADS_STAGE 8
#define HEADS_PAIRS ((HEADS_ROWS * HEADS_MAX_OUT + HEADS_THREADS - 1) / HEADS_THREADS)

// tile[e / KTILE][e % KTILE] = load(e / KTILE, e % KTILE) for e < count, the block's threads
// striding over e with HEADS_STAGE loads each before their shared stores (element by element,
// every store waited for its load: ~15 serial round trips per tile of the heads' forward).
template <class Load>
__device__ __forceinline__ void heads_stage_tile(float (*tile)[HEADS_KTILE + 1], unsigned int count, Load load) {
    for (unsigned int e0 = threadIdx.x; e0 < count; e0 += HEADS_STAGE * blockDim.x) {
        float v[HEADS_STAGE];
GALA_UNROLL
        for (unsigned int q = 0; q < HEADS_STAGE; ++q) {
            const unsigned int e = e0 + q * blockDim.x;
            v[q] = e < count ? load(e / HEADS_KTILE, e % HEADS_KTILE) : 0.0f;
        }
GALA_UNROLL
        for (unsigned int q = 0; q < HEADS_STAGE; ++q) {
            const unsigned int e = e0 + q * blockDim.x;
            if (e < count) tile[e / HEADS_KTILE][e % HEADS_KTILE] = v[q];
        }
    }
}

// The body shared by heads_forward (mode 0, the loss pointers unused) and heads_forward_loss.
__device__ __forceinline__ void heads_body(
    const float* __restrict__ hidden, const float* __restrict__ params, float* __restrict__ logits,
    float* __restrict__ values, const unsigned int* __restrict__ actions, const float* __restrict__ returns,
    const float* __restrict__ behaviour_log_probs, float* __restrict__ dlogits, float* __restrict__ dvalues,
    float* __restrict__ terms, unsigned int n, unsigned int hidden_dim, unsigned int num_actions,
    unsigned int param_count, unsigned int actor_w, unsigned int actor_b, unsigned int critic_w,
    unsigned int critic_b, unsigned int mode, float value_coef, float entropy_coef) {
    __shared__ float z[HEADS_ROWS][HEADS_MAX_OUT];
    __shared__ float h_tile[HEADS_ROWS][HEADS_KTILE + 1];
    __shared__ float w_tile[HEADS_MAX_OUT][HEADS_KTILE + 1];
    const unsigned int agent = blockIdx.y, row0 = blockIdx.x * HEADS_ROWS;
    const unsigned int outs = num_actions + 1;
    const float* th = params + (unsigned long long)agent * param_count;
    const unsigned long long base = (unsigned long long)agent * n;
    float acc[HEADS_PAIRS];
GALA_UNROLL
    for (unsigned int q = 0; q < HEADS_PAIRS; ++q) acc[q] = 0.0f;
    for (unsigned int k0 = 0; k0 < hidden_dim; k0 += HEADS_KTILE) {
        const unsigned int kt = hidden_dim - k0 < HEADS_KTILE ? hidden_dim - k0 : HEADS_KTILE;
        heads_stage_tile(h_tile, HEADS_ROWS * HEADS_KTILE, [&](unsigned int row, unsigned int kk) {
            const unsigned int i = row0 + row;
            return i < n && kk < kt ? hidden[(base + i) * hidden_dim + k0 + kk] : 0.0f;
        });
        heads_stage_tile(w_tile, outs * HEADS_KTILE, [&](unsigned int j, unsigned int kk) {
            const float* w = j < num_actions ? th + actor_w + j * hidden_dim : th + critic_w;
            return kk < kt ? w[k0 + kk] : 0.0f;
        });
        __syncthreads();
GALA_UNROLL
        for (unsigned int q = 0; q < HEADS_PAIRS; ++q) {
            const unsigned int e = threadIdx.x + q * blockDim.x;
            if (e < HEADS_ROWS * outs) {
                const float* w = w_tile[e % outs];
                const float* h = h_tile[e / outs];
                float a = acc[q];
                for (unsigned int kk = 0; kk < kt; ++kk) a += w[kk] * h[kk];
                acc[q] = a;
            }
        }
        __syncthreads();
    }
GALA_UNROLL
    for (unsigned int q = 0; q < HEADS_PAIRS; ++q) {
        const unsigned int e = threadIdx.x + q * blockDim.x;
        const unsigned int row = e / outs, j = e % outs;
        const unsigned int i = row0 + row;
        if (e >= HEADS_ROWS * outs || i >= n) continue;
        float a = acc[q];
        if (j < num_actions) {
            a += th[actor_b + j];
            logits[(base + i) * num_actions + j] = a;
        } else {
            a += th[critic_b];
            values[base + i] = a;
        }
        z[row][j] = a;
    }
    if (mode == 0) return;
    __syncthreads();
    const unsigned int row = threadIdx.x, i = row0 + row;
    if (row >= HEADS_ROWS || i >= n) return;
    const float* zi = z[row];
    // log_softmax_row: m = max, sum = sum exp(z - m), lse = m + log(sum), H = -sum p log p.
    float m = zi[0];
    for (unsigned int j = 0; j < num_actions; ++j) m = fmaxf(m, zi[j]);
    float sum = 0.0f;
    for (unsigned int j = 0; j < num_actions; ++j) sum += expf(zi[j] - m);
    const float lse = m + logf(sum);
    float h = 0.0f;
    for (unsigned int j = 0; j < num_actions; ++j) {
        const float lp = zi[j] - lse;
        h -= expf(lp) * lp;
    }
    const unsigned int act = actions[base + i];
    const float value = zi[num_actions];
    const float ret = returns[base + i];
    const float lp_act = act < num_actions ? zi[act] - lse : __int_as_float(0x7fc00000);  // NaN: bad action
    const float adv = ret - value;
    float rho = 1.0f;
    if (mode == 2) rho = (float)fmin(exp((double)lp_act - (double)behaviour_log_probs[base + i]), 1.0);
    const float inv_n = (float)(1.0 / (double)n);
    dvalues[base + i] = 2.0f * value_coef * (value - ret) * inv_n;
    float* dz = dlogits + (base + i) * num_actions;
    for (unsigned int j = 0; j < num_actions; ++j) {
        const float lp = zi[j] - lse;
        const float p = expf(lp);
        const float onehot = j == act ? 1.0f : 0.0f;
        dz[j] = (-(adv * rho) * (onehot - p) + entropy_coef * p * (lp + h)) * inv_n;
    }
    float* t = terms + (base + i) * 3;
    t[0] = adv * adv;
    t[1] = adv * rho * lp_act;
    t[2] = h;
}

extern "C" __global__ void __launch_bounds__(HEADS_THREADS) heads_backward(
    const float* __restrict__ hidden, const float* __restrict__ params, const float* __restrict__ dlogits,
    const float* __restrict__ dvalues, const float* __restrict__ terms, float* __restrict__ dhidden,
    float* __restrict__ grads, double* __restrict__ stats, unsigned int n, unsigned int hidden_dim,
    unsigned int num_actions, unsigned int param_count, unsigned int actor_w, unsigned int actor_b,
    unsigned int critic_w, unsigned int critic_b) {
    const unsigned int agent = blockIdx.y, k = blockIdx.x * blockDim.x + threadIdx.x, part = blockIdx.z;
    const unsigned long long base = (unsigned long long)agent * n;
    const float* th = params + (unsigned long long)agent * param_count;
    float* g = grads + (unsigned long long)agent * param_count;
    const float* dz = dlogits + base * num_actions;
    const float* dv = dvalues + base;
    const float* h = hidden + base * hidden_dim;
    if (k < hidden_dim) {
        if (part < num_actions) {
            const unsigned int j = part;
            float acc = 0.0f;
            for (unsigned int i = 0; i < n; ++i) acc += dz[i * num_actions + j] * h[(unsigned long long)i * hidden_dim + k];
            g[actor_w + j * hidden_dim + k] = acc;
        } else if (part == num_actions) {
            float acc = 0.0f;
            for (unsigned int i = 0; i < n; ++i) acc += dv[i] * h[(unsigned long long)i * hidden_dim + k];
            g[critic_w + k] = acc;
        } else {
            const unsigned int i0 = (part - num_actions - 1) * HEADS_ROWS;
            const unsigned int i1 = i0 + HEADS_ROWS < n ? i0 + HEADS_ROWS : n;
            const float wc = th[critic_w + k];
            float* dh = dhidden + base * hidden_dim;
            for (unsigned int i = i0; i < i1; ++i) {
                float s = 0.0f;
                for (unsigned int j = 0; j < num_actions; ++j) s += dz[i * num_actions + j] * th[actor_w + j * hidden_dim + k];
                const unsigned long long at = (unsigned long long)i * hidden_dim + k;
                dh[at] = h[at] > 0.0f ? s + dv[i] * wc : 0.0f;
            }
        }
    }
    if (blockIdx.x != 0 || part != 0) return;
    const unsigned int t = threadIdx.x;
    if (t < num_actions) {
        float acc = 0.0f;
        for (unsigned int i = 0; i < n; ++i) acc += dz[i * num_actions + t];
        g[actor_b + t] = acc;
    } else if (t == num_actions) {
        float acc = 0.0f;
        for (unsigned int i = 0; i < n; ++i) acc += dv[i];
        g[critic_b] = acc;
    } else if (t == num_actions + 1) {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0;
        const float* tm = terms + base * 3;
        for (unsigned int i = 0; i < n; ++i) {
            s0 += (double)tm[i * 3];
            s1 += (double)tm[i * 3 + 1];
            s2 += (double)tm[i * 3 + 2];
        }
        stats[agent * 3] = s0;
        stats[agent * 3 + 1] = s1;
        stats[agent * 3 + 2] = s2;
    }
}

// Acting: logits and values only.
extern "C" __global__ void __launch_bounds__(HEADS_THREADS) heads_forward(
    const float* __restrict__ hidden, const float* __restrict__ params, float* __restrict__ logits,
    float* __restrict__ values, unsigned int n, unsigned int hidden_dim, unsigned int num_actions,
    unsigned int param_count, unsigned int actor_w, unsigned int actor_b, unsigned int critic_w,
    unsigned int critic_b) {
    heads_body(hidden, params, logits, values, 0, 0, 0, 0, 0, 0, n, hidden_dim, num_actions, param_count, actor_w,
               actor_b, critic_w, critic_b, 0u, 0.0f, 0.0f);
}

// Learning: logits, values, the loss terms and dlogits/dvalues; behaviour_ratio selects mode 2.
extern "C" __global__ void __launch_bounds__(HEADS_THREADS) heads_forward_loss(
    const float* __restrict__ hidden, const float* __restrict__ params, float* __restrict__ logits,
    float* __restrict__ values, const unsigned int* __restrict__ actions, const float* __restrict__ returns,
    const float* __restrict__ behaviour_log_probs, float* __restrict__ dlogits, float* __restrict__ dvalues,
    float* __restrict__ terms, unsigned int n, unsigned int hidden_dim, unsigned int num_actions,
    unsigned int param_count, unsigned int actor_w, unsigned int actor_b, unsigned int critic_w,
    unsigned int critic_b, unsigned int behaviour_ratio, float value_coef, float entropy_coef) {
    heads_body(hidden, params, logits, values, actions, returns, behaviour_log_probs, dlogits, dvalues, terms, n,
               hidden_dim, num_actions, param_count, actor_w, actor_b, critic_w, critic_b,
               behaviour_ratio ? 2u : 1u, value_coef, entropy_coef);
}

// The update's finiteness guard, on the device so that no host sync sits inside an update:
// guard[0] = 1 when any agent's total loss c_v*V + P - c_e*H (V = stats[a][0]/N, P =
// -stats[a][1]/N, H = stats[a][2]/N, in f64, the host's LossTerms::total) is NaN or infinite,
// else 0. optim_clip_rmsprop skips the whole step when it is set, so a non-finite loss leaves
// every agent's parameters unchanged (as the CPU backend does); the host reads the stats after
// the update and reports the agent. Grid: (1), block (1): a sequential loop over the agents.
extern "C" __global__ void heads_loss_guard(const double* __restrict__ stats, unsigned int* __restrict__ guard,
                                            unsigned int agents, unsigned int n, double value_coef,
                                            double entropy_coef) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    const double nf = (double)n;
    unsigned int bad = 0;
    for (unsigned int a = 0; a < agents; ++a) {
        const double v = stats[a * 3] / nf, p = -stats[a * 3 + 1] / nf, h = stats[a * 3 + 2] / nf;
        const double total = value_coef * v + p - entropy_coef * h;
        if (!isfinite(total)) bad = 1;
    }
    guard[0] = bad;
}

// act's outputs packed for ONE download: out[r] = actions[r], out[rows + r] = bits of
// values[r], out[2*rows + r] = bits of log_probs[r] (r < rows = agents * envs). Three blocking
// round trips per env step become one. Grid: (ceil(rows / HEADS_THREADS)), HEADS_THREADS.
extern "C" __global__ void __launch_bounds__(HEADS_THREADS) act_pack_outputs(
    const unsigned int* __restrict__ actions, const float* __restrict__ values, const float* __restrict__ log_probs,
    unsigned int* __restrict__ out, unsigned int rows) {
    const unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    out[r] = actions[r];
    out[rows + r] = __float_as_uint(values[r]);
    out[2 * rows + r] = __float_as_uint(log_probs[r]);
}
