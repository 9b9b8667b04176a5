//! One launcher per kernel: each owns its grid, block and shared-memory choice (mirroring the
//! constants at the top of its .cu file) and checks its preconditions before launching, so a
//! wrong size is an error naming the buffer rather than an out-of-bounds access on the device.

use crate::backend::cpu::optim::RmsProp;
use crate::device::{Device, DeviceBuffer, DeviceElem, KernelArg, LaunchConfig, Stream};
use crate::error::{Error, Result};

/// Threads per block of kernels/optim.cu (OPTIM_BLOCK).
pub const OPTIM_BLOCK: u32 = 256;
/// Blocks per agent for the optimizer passes: enough for a full GPU with a few agents, few
/// enough that pass 2's serial sum of partials per block stays negligible.
pub const OPTIM_MAX_CHUNKS: u32 = 64;
/// Threads per block of the gossip kernels (GOSSIP_BLOCK).
pub const GOSSIP_BLOCK: u32 = 256;
/// Blocks per agent (mixing) or per reduced quantity (consensus).
pub const GOSSIP_MAX_CHUNKS: u32 = 64;
/// Threads per block of kernels/returns.cu (RETURNS_BLOCK).
pub const RETURNS_BLOCK: u32 = 128;
/// Threads per block of kernels/sample.cu (SAMPLE_BLOCK).
pub const SAMPLE_BLOCK: u32 = 128;

/// Largest grid.y (agents per launch).
const MAX_GRID_Y: usize = 65_535;

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Shape(what()))
    }
}

fn ensure_len<T: DeviceElem>(kernel: &str, name: &str, buf: &DeviceBuffer<T>, want: usize) -> Result<()> {
    ensure(buf.len() == want, || format!("{kernel}: `{name}` holds {} elements, expected {want}", buf.len()))
}

/// Index arithmetic in the kernels is 32-bit within an agent's slice (grid-stride loops add
/// up to chunks*block past the end), 64-bit across agents.
fn ensure_u32_index(kernel: &str, n: usize, slack: u32) -> Result<u32> {
    ensure(n as u64 + slack as u64 <= u32::MAX as u64, || {
        format!("{kernel}: {n} elements per agent exceed the kernel's 32-bit indexing")
    })?;
    Ok(n as u32)
}

fn ensure_agents(kernel: &str, agents: usize) -> Result<u32> {
    ensure((1..=MAX_GRID_Y).contains(&agents), || format!("{kernel}: {agents} agents; 1..={MAX_GRID_Y} supported"))?;
    Ok(agents as u32)
}

/// Blocks per agent for the optimizer passes of a P-parameter arena (depends on P only, so
/// the reduction order, hence the result, is fixed for a given network).
pub fn optim_chunks(param_count: usize) -> u32 {
    (param_count.div_ceil(OPTIM_BLOCK as usize) as u64).clamp(1, OPTIM_MAX_CHUNKS as u64) as u32
}

/// Blocks per agent (or per reduced quantity) of the gossip kernels.
pub fn gossip_chunks(param_count: usize) -> u32 {
    (param_count.div_ceil(GOSSIP_BLOCK as usize) as u64).clamp(1, GOSSIP_MAX_CHUNKS as u64) as u32
}

/// Pass 1 of the optimizer: `partials[r][c]` = Σ g² over chunk c of agent r.
/// Shapes: grads [agents][P]; partials [agents][optim_chunks(P)].
pub fn optim_sumsq_partials<D: Device>(
    dev: &D, stream: Stream, grads: &DeviceBuffer<f32>, partials: &mut DeviceBuffer<f64>, agents: usize,
    param_count: usize,
) -> Result<()> {
    const K: &str = "optim_sumsq_partials";
    let a = ensure_agents(K, agents)?;
    let chunks = optim_chunks(param_count);
    let p = ensure_u32_index(K, param_count, chunks * OPTIM_BLOCK)?;
    ensure_len(K, "grads", grads, agents * param_count)?;
    ensure_len(K, "partials", partials, agents * chunks as usize)?;
    let config = LaunchConfig { grid: (chunks, a, 1), block: (OPTIM_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(stream, K, config, &[KernelArg::buf(grads), KernelArg::buf(partials), KernelArg::U32(p), KernelArg::U32(chunks)])
}

/// Pass 2 of the optimizer: per-agent norm from the partials, clipping to `max_norm`, one
/// RMSprop step (params, grads (clipped in place), square_avg all [agents][P]); norms [agents]
/// receives the pre-clip norms.
#[allow(clippy::too_many_arguments)]
pub fn optim_clip_rmsprop<D: Device>(
    dev: &D, stream: Stream, params: &mut DeviceBuffer<f32>, grads: &mut DeviceBuffer<f32>,
    square_avg: &mut DeviceBuffer<f32>, partials: &DeviceBuffer<f64>, norms: &mut DeviceBuffer<f64>, agents: usize,
    param_count: usize, max_norm: f64, opt: RmsProp,
) -> Result<()> {
    const K: &str = "optim_clip_rmsprop";
    let a = ensure_agents(K, agents)?;
    let chunks = optim_chunks(param_count);
    let p = ensure_u32_index(K, param_count, chunks * OPTIM_BLOCK)?;
    for (name, buf) in [("params", &*params), ("grads", &*grads), ("square_avg", &*square_avg)] {
        ensure_len(K, name, buf, agents * param_count)?;
    }
    ensure_len(K, "partials", partials, agents * chunks as usize)?;
    ensure_len(K, "norms", norms, agents)?;
    ensure(max_norm > 0.0 && opt.lr.is_finite() && (0.0..1.0).contains(&opt.alpha) && opt.eps > 0.0, || {
        format!("{K}: hyper-parameters out of range (max_norm {max_norm}, {opt:?})")
    })?;
    let config = LaunchConfig { grid: (chunks, a, 1), block: (OPTIM_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(params),
            KernelArg::buf(grads),
            KernelArg::buf(square_avg),
            KernelArg::buf(partials),
            KernelArg::buf(norms),
            KernelArg::U32(p),
            KernelArg::U32(chunks),
            KernelArg::F64(max_norm),
            KernelArg::F32(opt.lr),
            KernelArg::F32(opt.alpha),
            KernelArg::F32(opt.eps),
        ],
    )
}

/// One gossip round: params[r] ← (snapshot[r] + Σ_{s ∈ peers of r} snapshot[s]) / (k_r + 1).
/// `snapshot` must hold the pre-round arena (see `GpuArena::mix`); in-peers in CSR form:
/// peer_offsets [agents+1] (non-decreasing, starting at 0), peers [peer_offsets[agents]].
#[allow(clippy::too_many_arguments)]
pub fn gossip_mix<D: Device>(
    dev: &D, stream: Stream, snapshot: &DeviceBuffer<f32>, params: &mut DeviceBuffer<f32>,
    peer_offsets: &DeviceBuffer<u32>, peers: &DeviceBuffer<u32>, agents: usize, param_count: usize,
) -> Result<()> {
    const K: &str = "gossip_mix";
    let a = ensure_agents(K, agents)?;
    let chunks = gossip_chunks(param_count);
    let p = ensure_u32_index(K, param_count, chunks * GOSSIP_BLOCK)?;
    ensure_len(K, "snapshot", snapshot, agents * param_count)?;
    ensure_len(K, "params", params, agents * param_count)?;
    ensure_len(K, "peer_offsets", peer_offsets, agents + 1)?;
    ensure(!peers.is_empty(), || format!("{K}: `peers` must hold at least one element (pad an empty list)"))?;
    let config = LaunchConfig { grid: (chunks, a, 1), block: (GOSSIP_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(snapshot),
            KernelArg::buf(params),
            KernelArg::buf(peer_offsets),
            KernelArg::buf(peers),
            KernelArg::U32(p),
            KernelArg::U32(chunks),
        ],
    )
}

/// Consensus distance, pass 1: partials [(agents+1)][gossip_chunks(P)] of Σ(θ_q − θ̄)² (q <
/// agents) and Σθ̄² (q = agents).
pub fn consensus_partials<D: Device>(
    dev: &D, stream: Stream, params: &DeviceBuffer<f32>, partials: &mut DeviceBuffer<f64>, agents: usize,
    param_count: usize,
) -> Result<()> {
    const K: &str = "consensus_partials";
    let a = ensure_agents(K, agents + 1)? - 1;
    let chunks = gossip_chunks(param_count);
    let p = ensure_u32_index(K, param_count, chunks * GOSSIP_BLOCK)?;
    ensure_len(K, "params", params, agents * param_count)?;
    ensure_len(K, "partials", partials, (agents + 1) * chunks as usize)?;
    let config = LaunchConfig { grid: (chunks, a + 1, 1), block: (GOSSIP_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[KernelArg::buf(params), KernelArg::buf(partials), KernelArg::U32(a), KernelArg::U32(p), KernelArg::U32(chunks)],
    )
}

/// Consensus distance, pass 2: result [1] = max_r ‖θ_r − θ̄‖ / ‖θ̄‖ from the partials. One
/// thread: it sums (agents+1)·chunks numbers.
pub fn consensus_finish<D: Device>(
    dev: &D, stream: Stream, partials: &DeviceBuffer<f64>, result: &mut DeviceBuffer<f64>, agents: usize,
    param_count: usize,
) -> Result<()> {
    const K: &str = "consensus_finish";
    let a = ensure_agents(K, agents)?;
    let chunks = gossip_chunks(param_count);
    ensure_len(K, "partials", partials, (agents + 1) * chunks as usize)?;
    ensure_len(K, "result", result, 1)?;
    let config = LaunchConfig { grid: (1, 1, 1), block: (1, 1, 1), shared_mem_bytes: 0 };
    dev.launch(stream, K, config, &[KernelArg::buf(partials), KernelArg::buf(result), KernelArg::U32(a), KernelArg::U32(chunks)])
}

/// n-step returns: rewards, dones, returns [agents][steps][envs]; bootstrap [agents][envs].
#[allow(clippy::too_many_arguments)]
pub fn nstep_returns<D: Device>(
    dev: &D, stream: Stream, rewards: &DeviceBuffer<f32>, dones: &DeviceBuffer<f32>, bootstrap: &DeviceBuffer<f32>,
    returns: &mut DeviceBuffer<f32>, agents: usize, steps: usize, envs: usize, gamma: f32,
) -> Result<()> {
    const K: &str = "nstep_returns";
    let columns = agents * envs;
    ensure(columns > 0 && steps > 0, || format!("{K}: empty batch ({agents} agents, {steps} steps, {envs} envs)"))?;
    ensure_u32_index(K, columns, RETURNS_BLOCK)?;
    let n = columns * steps;
    ensure_len(K, "rewards", rewards, n)?;
    ensure_len(K, "dones", dones, n)?;
    ensure_len(K, "returns", returns, n)?;
    ensure_len(K, "bootstrap", bootstrap, columns)?;
    let blocks = columns.div_ceil(RETURNS_BLOCK as usize) as u32;
    let config = LaunchConfig { grid: (blocks, 1, 1), block: (RETURNS_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(rewards),
            KernelArg::buf(dones),
            KernelArg::buf(bootstrap),
            KernelArg::buf(returns),
            KernelArg::U32(agents as u32),
            KernelArg::U32(steps as u32),
            KernelArg::U32(envs as u32),
            KernelArg::F32(gamma),
        ],
    )
}

/// Samples one action per (agent, env) from logits [agents][envs][A] with the counter-based
/// uniform of `rng::action_uniform(seed, agent, env, step)` (argmax when `greedy`); writes
/// actions and log π(action), both [agents][envs].
#[allow(clippy::too_many_arguments)]
pub fn sample_actions<D: Device>(
    dev: &D, stream: Stream, logits: &DeviceBuffer<f32>, actions: &mut DeviceBuffer<u32>,
    log_probs: &mut DeviceBuffer<f32>, agents: usize, envs: usize, num_actions: usize, seed: u64, step: u64,
    greedy: bool,
) -> Result<()> {
    const K: &str = "sample_actions";
    let rows = agents * envs;
    ensure(rows > 0 && num_actions > 0, || format!("{K}: empty batch ({agents} agents, {envs} envs, {num_actions} actions)"))?;
    ensure_u32_index(K, rows, SAMPLE_BLOCK)?;
    ensure(agents <= u32::MAX as usize && num_actions <= u32::MAX as usize, || format!("{K}: sizes exceed 32 bits"))?;
    ensure_len(K, "logits", logits, rows * num_actions)?;
    ensure_len(K, "actions", actions, rows)?;
    ensure_len(K, "log_probs", log_probs, rows)?;
    let blocks = rows.div_ceil(SAMPLE_BLOCK as usize) as u32;
    let config = LaunchConfig { grid: (blocks, 1, 1), block: (SAMPLE_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(logits),
            KernelArg::buf(actions),
            KernelArg::buf(log_probs),
            KernelArg::U32(agents as u32),
            KernelArg::U32(envs as u32),
            KernelArg::U32(num_actions as u32),
            KernelArg::U64(seed),
            KernelArg::U64(step),
            KernelArg::U32(greedy as u32),
        ],
    )
}
