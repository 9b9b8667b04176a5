//! One launcher per kernel: each owns its grid, block and shared-memory choice (mirroring the
//! constants at the top of its .cu file) and checks its preconditions before launching, so a
//! wrong size is an error naming the buffer rather than an out-of-bounds access on the device.

use crate::backend::cpu::optim::RmsProp;
use crate::backend::Precision;
use crate::device::{Device, DeviceBuffer, DeviceElem, KernelArg, LaunchConfig, Stream};
use crate::error::{Error, Result};
use crate::model::ConvShape;

/// Threads per block of kernels/optim.cu (OPTIM_BLOCK).
pub const OPTIM_BLOCK: u32 = 256;
/// Blocks per agent for the optimizer passes: enough for a full GPU with a few agents, few
/// enough that pass 2's serial sum of partials per block stays negligible.
pub const OPTIM_MAX_CHUNKS: u32 = 64;
/// Elements per thread of the optimizer's step (pass 2), which sets its grid: elementwise, so
/// the result does not depend on it; small enough that every SM is full of loads in flight.
/// kernels/optim.cu's OPTIM_STEP_ELEMS_PER_THREAD, the group a thread loads before it stores.
pub const OPTIM_STEP_ELEMS_PER_THREAD: usize = 4;
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

/// The first non-finite parameter per (agent, chunk): `first[r][c]` is the smallest index in
/// chunk c of agent r whose value is NaN or infinite, or `u32::MAX`.
/// Shapes: params [agents][P]; first [agents][optim_chunks(P)].
pub fn optim_find_nonfinite<D: Device>(
    dev: &D, stream: Stream, params: &DeviceBuffer<f32>, first: &mut DeviceBuffer<u32>, agents: usize, param_count: usize,
) -> Result<()> {
    const K: &str = "optim_find_nonfinite";
    let a = ensure_agents(K, agents)?;
    let chunks = optim_chunks(param_count);
    // The slack also keeps u32::MAX ("none") from being a valid index.
    let p = ensure_u32_index(K, param_count, chunks * OPTIM_BLOCK)?;
    ensure_len(K, "params", params, agents * param_count)?;
    ensure_len(K, "first", first, agents * chunks as usize)?;
    let config = LaunchConfig { grid: (chunks, a, 1), block: (OPTIM_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(stream, K, config, &[KernelArg::buf(params), KernelArg::buf(first), KernelArg::U32(p), KernelArg::U32(chunks)])
}

/// Pass 2 of the optimizer: per-agent norm from the partials, clipping to `max_norm`, one
/// RMSprop step (params, grads (clipped in place), square_avg all [agents][P]); norms [agents]
/// receives the pre-clip norms. `skip` [1]: when non-zero on the device (set by
/// `heads_loss_guard`), only the norms are written and no agent steps.
#[allow(clippy::too_many_arguments)]
pub fn optim_clip_rmsprop<D: Device>(
    dev: &D, stream: Stream, params: &mut DeviceBuffer<f32>, grads: &mut DeviceBuffer<f32>,
    square_avg: &mut DeviceBuffer<f32>, partials: &DeviceBuffer<f64>, norms: &mut DeviceBuffer<f64>,
    skip: &DeviceBuffer<u32>, agents: usize, param_count: usize, max_norm: f64, opt: RmsProp,
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
    ensure_len(K, "skip", skip, 1)?;
    ensure(max_norm > 0.0 && opt.lr.is_finite() && (0.0..1.0).contains(&opt.alpha) && opt.eps > 0.0, || {
        format!("{K}: hyper-parameters out of range (max_norm {max_norm}, {opt:?})")
    })?;
    // Never fewer blocks than pass 1's chunks (block 0 of each agent writes its norm).
    let step_blocks = (param_count.div_ceil(OPTIM_BLOCK as usize * OPTIM_STEP_ELEMS_PER_THREAD) as u32).max(chunks);
    ensure_u32_index(K, param_count, step_blocks * OPTIM_BLOCK)?;
    let config = LaunchConfig { grid: (step_blocks, a, 1), block: (OPTIM_BLOCK, 1, 1), shared_mem_bytes: 0 };
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
            KernelArg::buf(skip),
            KernelArg::U32(p),
            KernelArg::U32(chunks),
            KernelArg::F64(max_norm),
            KernelArg::F32(opt.lr),
            KernelArg::F32(opt.alpha),
            KernelArg::F32(opt.eps),
            KernelArg::U32(matches!(opt.form, crate::backend::cpu::optim::RmsForm::Tf) as u32),
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

/// Most slots a receiver's mailbox table may hold (GOSSIP_MAILBOX_MAX_SLOTS): the take mask is
/// one 64-bit word.
pub const GOSSIP_MAILBOX_MAX_SLOTS: usize = 64;

/// Mailbox mixing (asynchronous gossip): row `agent` of params [agents][P] ←
/// (θ + Σ_{j ∈ take_mask} slot_j) / (m + 1), m = popcount(take_mask), summed in ascending slot
/// order with gossip_mix's arithmetic. `slot_addresses` [slots] holds the device addresses of
/// the receiver's mailbox slots; each must be a live [P] f32 buffer of this device that no
/// other work writes until this launch is done (the device mailboxes own that invariant: the
/// table is built once from their own buffers, and senders wait on the receiver's read event).
/// An empty mask launches nothing.
#[allow(clippy::too_many_arguments)]
pub fn gossip_mix_mailbox<D: Device>(
    dev: &D, stream: Stream, params: &mut DeviceBuffer<f32>, slot_addresses: &DeviceBuffer<u64>, take_mask: u64,
    agent: usize, agents: usize, param_count: usize, row_stride: usize,
) -> Result<()> {
    const K: &str = "gossip_mix_mailbox";
    ensure_agents(K, agents)?;
    ensure(agent < agents, || format!("{K}: agent {agent} of {agents}"))?;
    let chunks = gossip_chunks(param_count);
    let p = ensure_u32_index(K, param_count, chunks * GOSSIP_BLOCK)?;
    ensure(param_count > 0, || format!("{K}: empty parameter vector"))?;
    ensure(row_stride >= param_count, || format!("{K}: row stride {row_stride} below the {param_count} parameters"))?;
    let stride = u32_of(K, "row stride", row_stride)?;
    ensure_len(K, "params", params, agents * row_stride)?;
    let slots = slot_addresses.len();
    ensure((1..=GOSSIP_MAILBOX_MAX_SLOTS).contains(&slots), || {
        format!("{K}: {slots} mailbox slots; 1..={GOSSIP_MAILBOX_MAX_SLOTS} supported (the take mask is 64 bits)")
    })?;
    ensure(slots == 64 || take_mask >> slots == 0, || {
        format!("{K}: take mask {take_mask:#x} picks slots beyond the table's {slots}")
    })?;
    if take_mask == 0 {
        return Ok(());
    }
    let config = LaunchConfig { grid: (chunks, 1, 1), block: (GOSSIP_BLOCK, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(params),
            KernelArg::buf(slot_addresses),
            KernelArg::U64(take_mask),
            KernelArg::U32(slots as u32),
            KernelArg::U32(agent as u32),
            KernelArg::U32(p),
            KernelArg::U32(stride),
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
    log_probs: &mut DeviceBuffer<f32>, agents: usize, agent_offset: usize, envs: usize, num_actions: usize, seed: u64,
    step: u64, greedy: bool,
) -> Result<()> {
    const K: &str = "sample_actions";
    let rows = agents * envs;
    ensure(rows > 0 && num_actions > 0, || format!("{K}: empty batch ({agents} agents, {envs} envs, {num_actions} actions)"))?;
    ensure_u32_index(K, rows, SAMPLE_BLOCK)?;
    ensure(agents + agent_offset <= u32::MAX as usize && num_actions <= u32::MAX as usize, || format!("{K}: sizes exceed 32 bits"))?;
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
            KernelArg::U32(agent_offset as u32),
            KernelArg::U32(envs as u32),
            KernelArg::U32(num_actions as u32),
            KernelArg::U64(seed),
            KernelArg::U64(step),
            KernelArg::U32(greedy as u32),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// The network: kernels/conv.cu (convolution and, as its 1x1 case, fully connected) and
// kernels/heads.cu (policy/value heads with the fused A2C loss).
// ---------------------------------------------------------------------------------------------

/// Output tile of the conv GEMM kernels: rows (CONV_TILE_M), columns (CONV_TILE_N).
pub const CONV_TILE_M: u32 = 32;
pub const CONV_TILE_N: u32 = 64;
/// Threads per block of the conv GEMM kernels (CONV_THREADS: 4x4 outputs per thread).
pub const CONV_THREADS: u32 = 128;
/// Threads per block of conv_weight_taps and conv_grad_sum_chunks (CONV_REDUCE_BLOCK).
pub const CONV_REDUCE_BLOCK: u32 = 256;
/// Samples per partial sum of a conv layer's weight gradient. Fixed (not derived from the
/// batch), so a gradient depends on the samples only; 4 is the CPU reference's chunk too.
pub const CONV_FILTER_SAMPLES_PER_CHUNK: usize = 4;
/// Most taps per sub-pixel phase, ceil(K / stride)², that conv_backward_data's per-block tap
/// table holds (CONV_MAX_TAPS).
pub const CONV_MAX_TAPS: usize = 256;
/// Samples per block of the heads kernels (HEADS_ROWS), threads per block (HEADS_THREADS), and
/// the most outputs (actions + 1) the heads kernels hold in shared memory (HEADS_MAX_OUT).
pub const HEADS_ROWS: u32 = 8;
pub const HEADS_THREADS: u32 = 128;
pub const HEADS_MAX_OUT: usize = 32;
/// Floats between two agents' rows of the parameter arena (params, grads, RMSprop state):
/// P rounded up to a multiple of 32, so every agent's row starts on a 128-byte line and a warp's
/// 32 consecutive floats of it are 4 sectors, not 5 (P = 866,439 for the gala net is odd: the
/// fc and optimizer loads took 4.25–4.87 sectors per request on an H200 before). The pad floats
/// stay 0 — no gradient reaches them, so RMSprop, gossip and the norms leave them 0 and every
/// sum over a row is unchanged.
pub const ARENA_ROW_ALIGN: usize = 32;
pub fn arena_stride(param_count: usize) -> usize {
    param_count.div_ceil(ARENA_ROW_ALIGN) * ARENA_ROW_ALIGN
}
/// Largest grid.y / grid.z.
const MAX_GRID_YZ: u64 = 65_535;

/// Element types a conv layer reads as input: uint8 frames (conv1, ÷255 fused into the loads)
/// or f32 activations; each names its kernels.
pub trait ConvInput: DeviceElem {
    const FORWARD: &'static str;
    const BACKWARD_FILTER: &'static str;
}
impl ConvInput for u8 {
    const FORWARD: &'static str = "conv_forward_u8";
    const BACKWARD_FILTER: &'static str = "conv_backward_filter_u8";
}
impl ConvInput for f32 {
    const FORWARD: &'static str = "conv_forward_f32";
    const BACKWARD_FILTER: &'static str = "conv_backward_filter_f32";
}

/// Where one layer's weight and bias sit in every agent's parameter slice of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerParams {
    pub param_count: usize,
    pub w_off: usize,
    pub b_off: usize,
}

impl LayerParams {
    /// Weight and bias views `w`, `b` of `layout` (tensor indices, see `model::tensor`).
    pub fn of(layout: &crate::model::ParamLayout, w: usize, b: usize) -> Self {
        LayerParams { param_count: arena_stride(layout.total), w_off: layout.tensors[w].offset, b_off: layout.tensors[b].offset }
    }
}

/// A fully connected layer as the 1x1 convolution the conv kernels run it as.
pub fn linear_shape(in_features: usize, out_features: usize) -> ConvShape {
    ConvShape::new(in_features, out_features, 1, 1, 1)
}

fn u32_of(kernel: &str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("{kernel}: {what} = {v} exceeds 32 bits")))
}

fn grid_dim(kernel: &str, what: &str, v: usize) -> Result<u32> {
    ensure(v >= 1 && (v as u64) <= MAX_GRID_YZ, || format!("{kernel}: {what} = {v}; 1..={MAX_GRID_YZ} supported"))?;
    Ok(v as u32)
}

/// The shape arguments every conv kernel takes, checked: per-agent element counts must fit the
/// kernels' 32-bit index arithmetic (agent offsets are 64-bit).
fn conv_shape_args(kernel: &str, s: &ConvShape, n: usize) -> Result<[KernelArg; 6]> {
    ensure(s.kernel >= 1 && s.stride >= 1 && s.in_hw >= s.kernel && s.out_hw == (s.in_hw - s.kernel) / s.stride + 1, || {
        format!("{kernel}: inconsistent conv shape {s:?}")
    })?;
    ensure(n >= 1, || format!("{kernel}: empty batch"))?;
    for (what, v) in [
        ("N*Cin*H*W", n as u64 * s.in_len() as u64),
        ("N*Cout*P", n as u64 * s.out_len() as u64),
    ] {
        ensure(v < u32::MAX as u64 / 2, || format!("{kernel}: {what} = {v} per agent exceeds the kernels' 32-bit indexing"))?;
    }
    Ok([
        KernelArg::U32(s.in_channels as u32),
        KernelArg::U32(s.out_channels as u32),
        KernelArg::U32(s.kernel as u32),
        KernelArg::U32(s.stride as u32),
        KernelArg::U32(s.in_hw as u32),
        KernelArg::U32(s.out_hw as u32),
    ])
}

fn check_layer_params(kernel: &str, s: &ConvShape, lp: &LayerParams, params: &DeviceBuffer<f32>, agents: usize) -> Result<()> {
    ensure_len(kernel, "params", params, agents * lp.param_count)?;
    ensure(lp.w_off + s.out_channels * s.patch_len() <= lp.param_count && lp.b_off + s.out_channels <= lp.param_count, || {
        format!("{kernel}: weight/bias at {}/{} do not fit {} parameters", lp.w_off, lp.b_off, lp.param_count)
    })?;
    u32_of(kernel, "param_count", lp.param_count)?;
    Ok(())
}

/// Whether a uint8 layer's patch rows come 4 to an aligned word of its frames (conv1 of both
/// presets: 8x8/4 on 84x84), so that its forward and backward-filter kernels load them a word at
/// a time (`*_u8_words`, see kernels/conv.cu): K, stride, H and the buffer's address multiples of 4.
fn loads_frame_words<In: ConvInput>(shape: &ConvShape, x: &DeviceBuffer<In>) -> bool {
    shape.kernel % 4 == 0 && shape.stride % 4 == 0 && shape.in_hw % 4 == 0 && x.device_ptr() % 4 == 0
}

/// Convolution (or 1x1 = fully connected) forward for every agent, ReLU fused when `relu`:
/// x [agents][n][Cin][H][H] (u8 frames or f32), params [agents][P], y [agents][n][Cout][Ho][Ho].
#[allow(clippy::too_many_arguments)]
pub fn conv_forward<D: Device, In: ConvInput>(
    dev: &D, stream: Stream, shape: &ConvShape, x: &DeviceBuffer<In>, params: &DeviceBuffer<f32>,
    y: &mut DeviceBuffer<f32>, agents: usize, n: usize, lp: LayerParams, relu: bool, precision: Precision,
) -> Result<()> {
    let k = if In::FORWARD == "conv_forward_u8" && loads_frame_words(shape, x) { "conv_forward_u8_words" } else { In::FORWARD };
    let geom = conv_shape_args(k, shape, n)?;
    let z = grid_dim(k, "agents", agents)?;
    check_layer_params(k, shape, &lp, params, agents)?;
    ensure_len(k, "x", x, agents * n * shape.in_len())?;
    ensure_len(k, "y", y, agents * n * shape.out_len())?;
    let cols = n * shape.out_pixels();
    let grid = (
        cols.div_ceil(CONV_TILE_N as usize) as u32,
        grid_dim(k, "row tiles", shape.out_channels.div_ceil(CONV_TILE_M as usize))?,
        z,
    );
    let config = LaunchConfig { grid, block: (CONV_THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut args = vec![KernelArg::buf(x), KernelArg::buf(params), KernelArg::buf(y)];
    args.extend(geom);
    args.extend([
        KernelArg::U32(n as u32),
        KernelArg::U32(lp.param_count as u32),
        KernelArg::U32(lp.w_off as u32),
        KernelArg::U32(lp.b_off as u32),
        KernelArg::U32(relu as u32),
    ]);
    dev.launch(stream, &precision.kernel(k), config, &args)
}

/// The kernel arguments (buffer, flag) of an optional ReLU mask `below` [agents][n][..] (the
/// output of the layer underneath, `len` elements) that a backward kernel applies to its output.
/// A kernel never reads the buffer when the flag is 0, so any valid buffer (`stand_in`) takes its
/// place then.
fn mask_args(kernel: &str, below: Option<&DeviceBuffer<f32>>, len: usize, stand_in: &DeviceBuffer<f32>) -> Result<(KernelArg, KernelArg)> {
    if let Some(b) = below {
        ensure_len(kernel, "below", b, len)?;
    }
    Ok((KernelArg::buf(below.unwrap_or(stand_in)), KernelArg::U32(below.is_some() as u32)))
}

/// Elements of the per-tap weight copy `conv_backward_data` needs for `agents` agents of a layer
/// (a larger buffer will do: the layers of a network can share one).
pub fn weight_taps_len(shape: &ConvShape, agents: usize) -> usize {
    agents * shape.out_channels * shape.patch_len()
}

/// Backward-data as a transposed-conv implicit GEMM, straight into dx [agents][n][Cin][H][H]:
/// dx = below ⊙ (the sum over every (tap, o) reaching a pixel of w·g), with `g` [agents][n][Cout]
/// [Ho][Ho] the gradient ALREADY masked by the layer's own ReLU, and `below` the layer
/// underneath's output (dx is 0 where it is not > 0; None: no mask). Two launches: the weights
/// regrouped per tap into `taps` (at least `weight_taps_len` elements; `conv_weight_taps`), then
/// the GEMM, one block column per sub-pixel phase (`conv_backward_data`).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward_data<D: Device>(
    dev: &D, stream: Stream, shape: &ConvShape, g: &DeviceBuffer<f32>, params: &DeviceBuffer<f32>,
    taps: &mut DeviceBuffer<f32>, below: Option<&DeviceBuffer<f32>>, dx: &mut DeviceBuffer<f32>, agents: usize, n: usize,
    lp: LayerParams, precision: Precision,
) -> Result<()> {
    const K: &str = "conv_backward_data";
    let geom = conv_shape_args(K, shape, n)?;
    check_layer_params(K, shape, &lp, params, agents)?;
    ensure_len(K, "g", g, agents * n * shape.out_len())?;
    ensure_len(K, "dx", dx, agents * n * shape.in_len())?;
    // Scratch: one buffer may serve several layers, so at least this layer's length.
    let want = weight_taps_len(shape, agents);
    ensure(taps.len() >= want, || format!("{K}: `taps` holds {} elements, needs at least {want}", taps.len()))?;
    let (below_buf, has_below) = mask_args(K, below, agents * n * shape.in_len(), params)?;
    let phase_taps = shape.kernel.div_ceil(shape.stride).pow(2);
    ensure(phase_taps <= CONV_MAX_TAPS, || {
        format!("{K}: {phase_taps} taps per sub-pixel phase (kernel {} / stride {}); at most {CONV_MAX_TAPS} supported", shape.kernel, shape.stride)
    })?;
    conv_weight_taps(dev, stream, shape, params, taps, agents, lp)?;
    let u = shape.in_hw.div_ceil(shape.stride);
    let cols = n * u * u;
    ensure(cols < u32::MAX as usize / 2, || format!("{K}: {cols} phase columns per agent exceed 32-bit indexing"))?;
    let grid = (
        cols.div_ceil(CONV_TILE_N as usize) as u32,
        grid_dim(K, "row tiles", shape.in_channels.div_ceil(CONV_TILE_M as usize))?,
        grid_dim(K, "agents*phases", agents * shape.stride * shape.stride)?,
    );
    let config = LaunchConfig { grid, block: (CONV_THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut args = vec![KernelArg::buf(g), KernelArg::buf(taps), below_buf, KernelArg::buf(dx)];
    args.extend(geom);
    args.extend([KernelArg::U32(n as u32), has_below]);
    dev.launch(stream, &precision.kernel(K), config, &args)
}

/// taps [agents][K*K][Cout][Cin] = the layer's weights [Cout][Cin][K][K] regrouped per tap.
fn conv_weight_taps<D: Device>(
    dev: &D, stream: Stream, shape: &ConvShape, params: &DeviceBuffer<f32>, taps: &mut DeviceBuffer<f32>, agents: usize,
    lp: LayerParams,
) -> Result<()> {
    const K: &str = "conv_weight_taps";
    let len = shape.out_channels * shape.patch_len();
    let config = LaunchConfig {
        grid: (len.div_ceil(CONV_REDUCE_BLOCK as usize) as u32, grid_dim(K, "agents", agents)?, 1),
        block: (CONV_REDUCE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(params),
            KernelArg::buf(taps),
            KernelArg::U32(shape.in_channels as u32),
            KernelArg::U32(shape.out_channels as u32),
            KernelArg::U32(shape.kernel as u32),
            KernelArg::U32(lp.param_count as u32),
            KernelArg::U32(lp.w_off as u32),
        ],
    )
}

/// Chunks of `samples_per_chunk` samples covering a batch of `n`.
pub fn filter_chunks(n: usize, samples_per_chunk: usize) -> usize {
    n.div_ceil(samples_per_chunk.max(1))
}

/// Elements of one layer's gradient (weight then bias, as laid out in the arena).
pub fn filter_grad_len(shape: &ConvShape) -> usize {
    shape.out_channels * shape.patch_len() + shape.out_channels
}

/// Where conv_backward_filter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterTarget {
    /// Straight into the gradient arena [agents][P] at the layer's offsets (one chunk only).
    Grads(LayerParams),
    /// Partials [agents][chunks][filter_grad_len], summed by `conv_grad_sum_chunks`.
    Partials,
}

/// Backward-filter: dw[o][r] = Σ_j g[o][j]·col[r][j], db[o] = Σ_j g[o][j] per chunk of
/// `samples_per_chunk` samples, with `g` [agents][n][Cout][Ho][Ho] the layer's output gradient
/// ALREADY masked by its ReLU (as `conv_backward_data` and `fc_backward_data` leave it).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward_filter<D: Device, In: ConvInput>(
    dev: &D, stream: Stream, shape: &ConvShape, x: &DeviceBuffer<In>, g: &DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>,
    agents: usize, n: usize, samples_per_chunk: usize, target: FilterTarget, precision: Precision,
) -> Result<()> {
    let k = if In::BACKWARD_FILTER == "conv_backward_filter_u8" && loads_frame_words(shape, x) {
        "conv_backward_filter_u8_words"
    } else {
        In::BACKWARD_FILTER
    };
    let geom = conv_shape_args(k, shape, n)?;
    ensure(samples_per_chunk >= 1, || format!("{k}: samples_per_chunk must be at least 1"))?;
    let chunks = filter_chunks(n, samples_per_chunk);
    let len = filter_grad_len(shape);
    ensure_len(k, "x", x, agents * n * shape.in_len())?;
    ensure_len(k, "g", g, agents * n * shape.out_len())?;
    let (agent_stride, chunk_stride, out_off) = match target {
        FilterTarget::Grads(lp) => {
            ensure(chunks == 1, || format!("{k}: writing straight into the gradients needs one chunk, got {chunks}"))?;
            ensure(lp.b_off == lp.w_off + shape.out_channels * shape.patch_len(), || {
                format!("{k}: the bias must follow the weight in the parameter layout")
            })?;
            ensure_len(k, "grads", out, agents * lp.param_count)?;
            ensure(lp.w_off + len <= lp.param_count, || format!("{k}: layer gradient does not fit the arena"))?;
            (lp.param_count as u64, 0u32, lp.w_off as u32)
        }
        FilterTarget::Partials => {
            ensure_len(k, "partials", out, agents * chunks * len)?;
            ((chunks * len) as u64, u32_of(k, "partial length", len)?, 0u32)
        }
    };
    let z = grid_dim(k, "agents*chunks", agents * chunks)?;
    let grid = (
        shape.patch_len().div_ceil(CONV_TILE_N as usize) as u32,
        grid_dim(k, "row tiles", shape.out_channels.div_ceil(CONV_TILE_M as usize))?,
        z,
    );
    let config = LaunchConfig { grid, block: (CONV_THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut args = vec![KernelArg::buf(x), KernelArg::buf(g), KernelArg::buf(out)];
    args.extend(geom);
    args.extend([
        KernelArg::U32(n as u32),
        KernelArg::U32(samples_per_chunk as u32),
        KernelArg::U32(chunks as u32),
        KernelArg::U64(agent_stride),
        KernelArg::U32(chunk_stride),
        KernelArg::U32(out_off),
    ]);
    dev.launch(stream, &precision.kernel(k), config, &args)
}

/// Second pass of backward-filter: grads[a][lp.w_off ..][i] = Σ_c partials[a][c][i] in chunk order.
#[allow(clippy::too_many_arguments)]
pub fn conv_grad_sum_chunks<D: Device>(
    dev: &D, stream: Stream, shape: &ConvShape, partials: &DeviceBuffer<f32>, grads: &mut DeviceBuffer<f32>,
    agents: usize, chunks: usize, lp: LayerParams,
) -> Result<()> {
    const K: &str = "conv_grad_sum_chunks";
    let len = filter_grad_len(shape);
    let y = grid_dim(K, "agents", agents)?;
    ensure(chunks >= 1, || format!("{K}: no chunks"))?;
    ensure_len(K, "partials", partials, agents * chunks * len)?;
    ensure_len(K, "grads", grads, agents * lp.param_count)?;
    ensure(lp.w_off + len <= lp.param_count, || format!("{K}: layer gradient does not fit the arena"))?;
    let config = LaunchConfig {
        grid: (len.div_ceil(CONV_REDUCE_BLOCK as usize) as u32, y, 1),
        block: (CONV_REDUCE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(partials),
            KernelArg::buf(grads),
            KernelArg::U32(u32_of(K, "len", len)?),
            KernelArg::U32(chunks as u32),
            KernelArg::U32(u32_of(K, "param_count", lp.param_count)?),
            KernelArg::U32(lp.w_off as u32),
        ],
    )
}

/// Reduction slice of the fc kernels' deterministic split-K (FC forward and backward-data): a
/// fixed number of elements, a multiple of the K-tile, so the split count depends on the layer's
/// shape alone (gala fc forward: 1568 → 7 slices; backward-data: 512 → 2).
pub const FC_SPLIT_K: usize = 256;

/// Slices of a K-element reduction under `FC_SPLIT_K`.
pub fn fc_splits(k: usize) -> usize {
    k.div_ceil(FC_SPLIT_K).max(1)
}

/// Elements of the split-K partials that `fc_forward` (k = in, width = out) or
/// `fc_backward_data` (k = out, width = in) needs for a batch of `n` per agent (0: no slices).
pub fn fc_partials_len(agents: usize, n: usize, k: usize, width: usize) -> usize {
    let s = fc_splits(k);
    if s == 1 {
        0
    } else {
        agents * s * n * width
    }
}

/// The checks every fc launcher shares; returns (in, out) as u32.
fn fc_check(kernel: &str, shape: &ConvShape, n: usize) -> Result<(u32, u32)> {
    ensure(shape.kernel == 1 && shape.stride == 1 && shape.in_hw == 1 && shape.out_hw == 1, || {
        format!("{kernel}: {shape:?} is not a fully connected layer (a 1x1 conv on 1x1 inputs)")
    })?;
    conv_shape_args(kernel, shape, n)?;
    Ok((shape.in_channels as u32, shape.out_channels as u32))
}

/// Runs the split-K second pass when there is more than one slice.
#[allow(clippy::too_many_arguments)]
fn fc_sum_splits<D: Device>(
    dev: &D, stream: Stream, partials: &DeviceBuffer<f32>, params: &DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>,
    agents: usize, len: usize, width: usize, splits: usize, bias: Option<&LayerParams>, relu: bool,
    below: Option<&DeviceBuffer<f32>>,
) -> Result<()> {
    const K: &str = "fc_sum_splits";
    let y = grid_dim(K, "agents", agents)?;
    let config = LaunchConfig {
        grid: (len.div_ceil(CONV_REDUCE_BLOCK as usize) as u32, y, 1),
        block: (CONV_REDUCE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let (pc, b_off) = bias.map(|lp| (lp.param_count, lp.b_off)).unwrap_or((0, 0));
    let (below_buf, has_below) = mask_args(K, below, agents * len, params)?;
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(partials),
            KernelArg::buf(params),
            below_buf,
            KernelArg::buf(out),
            KernelArg::U32(u32_of(K, "len", len)?),
            KernelArg::U32(width as u32),
            KernelArg::U32(splits as u32),
            KernelArg::U32(pc as u32),
            KernelArg::U32(b_off as u32),
            KernelArg::U32(bias.is_some() as u32),
            KernelArg::U32(relu as u32),
            has_below,
        ],
    )
}

/// Fully connected forward as a GEMM with deterministic split-K: y [agents][n][Out] =
/// relu(b + x·wᵀ), x [agents][n][In]. `partials` holds `fc_partials_len(agents, n, In, Out)`
/// elements (may be empty when that is 0). One launch, plus `fc_sum_splits` when split.
#[allow(clippy::too_many_arguments)]
pub fn fc_forward<D: Device>(
    dev: &D, stream: Stream, shape: &ConvShape, x: &DeviceBuffer<f32>, params: &DeviceBuffer<f32>,
    partials: &mut DeviceBuffer<f32>, y: &mut DeviceBuffer<f32>, agents: usize, n: usize, lp: LayerParams, relu: bool,
    precision: Precision,
) -> Result<()> {
    const K: &str = "fc_forward";
    let (in_f, out_f) = fc_check(K, shape, n)?;
    check_layer_params(K, shape, &lp, params, agents)?;
    ensure_len(K, "x", x, agents * n * shape.in_len())?;
    ensure_len(K, "y", y, agents * n * shape.out_len())?;
    let head = [KernelArg::buf(x), KernelArg::buf(params)];
    let tail = [
        KernelArg::U32(in_f),
        KernelArg::U32(out_f),
        KernelArg::U32(n as u32),
        KernelArg::U32(lp.param_count as u32),
        KernelArg::U32(lp.w_off as u32),
        KernelArg::U32(lp.b_off as u32),
        KernelArg::U32(relu as u32),
    ];
    fc_split_launch(dev, stream, &precision.kernel(K), &head, &tail, params, partials, y, agents, n, (in_f as usize, out_f as usize), Some(&lp), relu, None)
}

/// The split-K launch shared by `fc_forward` and `fc_backward_data`: `k_width` = (reduction
/// length, output rows), grid (batch tiles, row tiles, agents × slices); with one slice the GEMM
/// writes `out` itself, else `partials`, summed into `out` by `fc_sum_splits` (then `bias` and
/// the ReLU when `relu`, then the mask `below` > 0). `head`/`tail`: the kernel's arguments before
/// and after its output pointer (the slice length and count are appended).
#[allow(clippy::too_many_arguments)]
fn fc_split_launch<D: Device>(
    dev: &D, stream: Stream, kernel: &str, head: &[KernelArg], tail: &[KernelArg], params: &DeviceBuffer<f32>,
    partials: &mut DeviceBuffer<f32>, out: &mut DeviceBuffer<f32>, agents: usize, n: usize, k_width: (usize, usize),
    bias: Option<&LayerParams>, relu: bool, below: Option<&DeviceBuffer<f32>>,
) -> Result<()> {
    let (k, width) = k_width;
    let splits = fc_splits(k);
    ensure_len(kernel, "partials", partials, fc_partials_len(agents, n, k, width))?;
    let z = grid_dim(kernel, "agents*splits", agents * splits)?;
    let grid = (n.div_ceil(CONV_TILE_N as usize) as u32, grid_dim(kernel, "row tiles", width.div_ceil(CONV_TILE_M as usize))?, z);
    let config = LaunchConfig { grid, block: (CONV_THREADS, 1, 1), shared_mem_bytes: 0 };
    let target: &DeviceBuffer<f32> = if splits == 1 { out } else { partials };
    let mut args = head.to_vec();
    args.push(KernelArg::buf(target));
    args.extend_from_slice(tail);
    args.extend([KernelArg::U32(FC_SPLIT_K as u32), KernelArg::U32(splits as u32)]);
    dev.launch(stream, kernel, config, &args)?;
    if splits > 1 {
        fc_sum_splits(dev, stream, partials, params, out, agents, n * width, width, splits, bias, relu, below)?;
    }
    Ok(())
}

/// Fully connected backward-data: dx [agents][n][In] = g·w with `g` [agents][n][Out] the output
/// gradient ALREADY masked by the layer's ReLU (as `heads_backward` leaves it), then 0 wherever
/// `below` [agents][n][In] (the layer underneath's output) is not > 0; split-K over Out like
/// `fc_forward` (`partials`: `fc_partials_len(agents, n, Out, In)` elements).
#[allow(clippy::too_many_arguments)]
pub fn fc_backward_data<D: Device>(
    dev: &D, stream: Stream, shape: &ConvShape, g: &DeviceBuffer<f32>, params: &DeviceBuffer<f32>,
    partials: &mut DeviceBuffer<f32>, below: Option<&DeviceBuffer<f32>>, dx: &mut DeviceBuffer<f32>, agents: usize,
    n: usize, lp: LayerParams, precision: Precision,
) -> Result<()> {
    const K: &str = "fc_backward_data";
    let (in_f, out_f) = fc_check(K, shape, n)?;
    check_layer_params(K, shape, &lp, params, agents)?;
    ensure_len(K, "g", g, agents * n * shape.out_len())?;
    ensure_len(K, "dx", dx, agents * n * shape.in_len())?;
    let (below_buf, has_below) = mask_args(K, below, agents * n * shape.in_len(), params)?;
    let head = [KernelArg::buf(g), KernelArg::buf(params), below_buf];
    let tail = [
        KernelArg::U32(in_f),
        KernelArg::U32(out_f),
        KernelArg::U32(n as u32),
        KernelArg::U32(lp.param_count as u32),
        KernelArg::U32(lp.w_off as u32),
        has_below,
    ];
    fc_split_launch(dev, stream, &precision.kernel(K), &head, &tail, params, partials, dx, agents, n, (out_f as usize, in_f as usize), None, false, below)
}

/// Fully connected backward-filter: dw [Out][In] = gᵀ·x and db = Σ g over the batch (`g` masked
/// by the layer's ReLU already), straight into the gradient arena at the layer's offsets (bias
/// after weight), one ascending sum over the batch per element.
#[allow(clippy::too_many_arguments)]
pub fn fc_backward_filter<D: Device>(
    dev: &D, stream: Stream, shape: &ConvShape, x: &DeviceBuffer<f32>, g: &DeviceBuffer<f32>,
    grads: &mut DeviceBuffer<f32>, agents: usize, n: usize, lp: LayerParams, precision: Precision,
) -> Result<()> {
    const K: &str = "fc_backward_filter";
    let (in_f, out_f) = fc_check(K, shape, n)?;
    ensure_len(K, "x", x, agents * n * shape.in_len())?;
    ensure_len(K, "g", g, agents * n * shape.out_len())?;
    ensure_len(K, "grads", grads, agents * lp.param_count)?;
    ensure(
        lp.w_off + shape.out_channels * shape.patch_len() <= lp.param_count && lp.b_off + shape.out_channels <= lp.param_count,
        || format!("{K}: layer gradient does not fit the arena"),
    )?;
    u32_of(K, "param_count", lp.param_count)?;
    let z = grid_dim(K, "agents", agents)?;
    let grid = (
        (in_f as usize).div_ceil(CONV_TILE_N as usize) as u32,
        grid_dim(K, "row tiles", (out_f as usize).div_ceil(CONV_TILE_M as usize))?,
        z,
    );
    let config = LaunchConfig { grid, block: (CONV_THREADS, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        &precision.kernel(K),
        config,
        &[
            KernelArg::buf(x),
            KernelArg::buf(g),
            KernelArg::buf(grads),
            KernelArg::U32(in_f),
            KernelArg::U32(out_f),
            KernelArg::U32(n as u32),
            KernelArg::U32(lp.param_count as u32),
            KernelArg::U32(lp.w_off as u32),
            KernelArg::U32(lp.b_off as u32),
        ],
    )
}

/// Where the heads' tensors sit in every agent's parameter slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadsParams {
    pub param_count: usize,
    pub hidden: usize,
    pub actions: usize,
    pub actor_w: usize,
    pub actor_b: usize,
    pub critic_w: usize,
    pub critic_b: usize,
}

impl HeadsParams {
    pub fn of(spec: &crate::model::NetSpec, layout: &crate::model::ParamLayout) -> Self {
        use crate::model::tensor;
        let off = |i: usize| layout.tensors[i].offset;
        HeadsParams {
            param_count: arena_stride(layout.total),
            hidden: spec.hidden,
            actions: spec.actions,
            actor_w: off(tensor::ACTOR_W),
            actor_b: off(tensor::ACTOR_B),
            critic_w: off(tensor::CRITIC_W),
            critic_b: off(tensor::CRITIC_B),
        }
    }
    fn check(&self, kernel: &str, params: &DeviceBuffer<f32>, agents: usize, n: usize) -> Result<Vec<KernelArg>> {
        ensure(n >= 1, || format!("{kernel}: empty batch"))?;
        ensure((1..HEADS_MAX_OUT).contains(&self.actions), || {
            format!("{kernel}: {} actions; the heads kernels support 1..={}", self.actions, HEADS_MAX_OUT - 1)
        })?;
        ensure_len(kernel, "params", params, agents * self.param_count)?;
        let h = self.hidden;
        ensure(
            self.actor_w + self.actions * h <= self.param_count
                && self.actor_b + self.actions <= self.param_count
                && self.critic_w + h <= self.param_count
                && self.critic_b < self.param_count,
            || format!("{kernel}: head tensors do not fit {} parameters", self.param_count),
        )?;
        ensure((n as u64) * (h as u64) < u32::MAX as u64 / 2, || format!("{kernel}: batch too large for 32-bit indexing"))?;
        Ok(vec![
            KernelArg::U32(n as u32),
            KernelArg::U32(u32_of(kernel, "hidden", h)?),
            KernelArg::U32(self.actions as u32),
            KernelArg::U32(u32_of(kernel, "param_count", self.param_count)?),
            KernelArg::U32(self.actor_w as u32),
            KernelArg::U32(self.actor_b as u32),
            KernelArg::U32(self.critic_w as u32),
            KernelArg::U32(self.critic_b as u32),
        ])
    }
}

/// Acting: logits [agents][n][A] and values [agents][n] from hidden [agents][n][H].
#[allow(clippy::too_many_arguments)]
pub fn heads_forward<D: Device>(
    dev: &D, stream: Stream, hidden: &DeviceBuffer<f32>, params: &DeviceBuffer<f32>, logits: &mut DeviceBuffer<f32>,
    values: &mut DeviceBuffer<f32>, agents: usize, n: usize, hp: HeadsParams,
) -> Result<()> {
    const K: &str = "heads_forward";
    let y = grid_dim(K, "agents", agents)?;
    let tail = hp.check(K, params, agents, n)?;
    ensure_len(K, "hidden", hidden, agents * n * hp.hidden)?;
    ensure_len(K, "logits", logits, agents * n * hp.actions)?;
    ensure_len(K, "values", values, agents * n)?;
    let config = LaunchConfig {
        grid: (n.div_ceil(HEADS_ROWS as usize) as u32, y, 1),
        block: (HEADS_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut args = vec![KernelArg::buf(hidden), KernelArg::buf(params), KernelArg::buf(logits), KernelArg::buf(values)];
    args.extend(tail);
    dev.launch(stream, K, config, &args)
}

/// The buffers of the fused A2C loss, all [agents][n] (dlogits [agents][n][A], terms [agents][n][3]).
pub struct HeadsLossBuffers<'a> {
    pub actions: &'a DeviceBuffer<u32>,
    pub returns: &'a DeviceBuffer<f32>,
    /// log μ(a|s) for the truncated ratio min(1, π/μ); None: on-policy (ratio 1).
    pub behaviour_log_probs: Option<&'a DeviceBuffer<f32>>,
    pub dlogits: &'a mut DeviceBuffer<f32>,
    pub dvalues: &'a mut DeviceBuffer<f32>,
    pub terms: &'a mut DeviceBuffer<f32>,
}

/// Learning: logits, values, the per-sample loss terms and ∂L/∂logits, ∂L/∂values (see
/// kernels/heads.cu). Actions must be < A (the backend checks them on the host).
#[allow(clippy::too_many_arguments)]
pub fn heads_forward_loss<D: Device>(
    dev: &D, stream: Stream, hidden: &DeviceBuffer<f32>, params: &DeviceBuffer<f32>, logits: &mut DeviceBuffer<f32>,
    values: &mut DeviceBuffer<f32>, loss: HeadsLossBuffers, agents: usize, n: usize, hp: HeadsParams, value_coef: f32,
    entropy_coef: f32,
) -> Result<()> {
    const K: &str = "heads_forward_loss";
    let y = grid_dim(K, "agents", agents)?;
    let tail = hp.check(K, params, agents, n)?;
    let rows = agents * n;
    ensure_len(K, "hidden", hidden, rows * hp.hidden)?;
    ensure_len(K, "logits", logits, rows * hp.actions)?;
    ensure_len(K, "values", values, rows)?;
    ensure_len(K, "actions", loss.actions, rows)?;
    ensure_len(K, "returns", loss.returns, rows)?;
    if let Some(b) = loss.behaviour_log_probs {
        ensure_len(K, "behaviour_log_probs", b, rows)?;
    }
    ensure_len(K, "dlogits", loss.dlogits, rows * hp.actions)?;
    ensure_len(K, "dvalues", loss.dvalues, rows)?;
    ensure_len(K, "terms", loss.terms, rows * 3)?;
    let config = LaunchConfig {
        grid: (n.div_ceil(HEADS_ROWS as usize) as u32, y, 1),
        block: (HEADS_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut args = vec![
        KernelArg::buf(hidden),
        KernelArg::buf(params),
        KernelArg::buf(logits),
        KernelArg::buf(values),
        KernelArg::buf(loss.actions),
        KernelArg::buf(loss.returns),
        // Unread without a behaviour policy; any float buffer satisfies the signature.
        KernelArg::buf(loss.behaviour_log_probs.unwrap_or(loss.returns)),
        KernelArg::buf(loss.dlogits),
        KernelArg::buf(loss.dvalues),
        KernelArg::buf(loss.terms),
    ];
    args.extend(tail);
    args.extend([
        KernelArg::U32(loss.behaviour_log_probs.is_some() as u32),
        KernelArg::F32(value_coef),
        KernelArg::F32(entropy_coef),
    ]);
    dev.launch(stream, K, config, &args)
}

/// The heads' backward: actor/critic weight and bias gradients into the arena, ∂L/∂hidden
/// [agents][n][H] masked by hidden > 0 (the fc layer's ReLU: what the fc backward kernels take),
/// and per-agent sums of the loss terms stats [agents][3] (f64).
#[allow(clippy::too_many_arguments)]
pub fn heads_backward<D: Device>(
    dev: &D, stream: Stream, hidden: &DeviceBuffer<f32>, params: &DeviceBuffer<f32>, dlogits: &DeviceBuffer<f32>,
    dvalues: &DeviceBuffer<f32>, terms: &DeviceBuffer<f32>, dhidden: &mut DeviceBuffer<f32>,
    grads: &mut DeviceBuffer<f32>, stats: &mut DeviceBuffer<f64>, agents: usize, n: usize, hp: HeadsParams,
) -> Result<()> {
    const K: &str = "heads_backward";
    let y = grid_dim(K, "agents", agents)?;
    let tail = hp.check(K, params, agents, n)?;
    let rows = agents * n;
    ensure_len(K, "hidden", hidden, rows * hp.hidden)?;
    ensure_len(K, "dlogits", dlogits, rows * hp.actions)?;
    ensure_len(K, "dvalues", dvalues, rows)?;
    ensure_len(K, "terms", terms, rows * 3)?;
    ensure_len(K, "dhidden", dhidden, rows * hp.hidden)?;
    ensure_len(K, "grads", grads, agents * hp.param_count)?;
    ensure_len(K, "stats", stats, agents * 3)?;
    // grid.z: one slice per actor-weight row, one for the critic row, one per HEADS_ROWS samples
    // of ∂L/∂hidden (the kernel's `part`).
    let parts = hp.actions + 1 + n.div_ceil(HEADS_ROWS as usize);
    let z = grid_dim(K, "actions + 1 + row blocks", parts)?;
    let config = LaunchConfig {
        grid: (hp.hidden.div_ceil(HEADS_THREADS as usize).max(1) as u32, y, z),
        block: (HEADS_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut args = vec![
        KernelArg::buf(hidden),
        KernelArg::buf(params),
        KernelArg::buf(dlogits),
        KernelArg::buf(dvalues),
        KernelArg::buf(terms),
        KernelArg::buf(dhidden),
        KernelArg::buf(grads),
        KernelArg::buf(stats),
    ];
    args.extend(tail);
    dev.launch(stream, K, config, &args)
}

/// The update's device-side finiteness guard: guard [1] ← 1 when any agent's total loss from
/// stats [agents][3] (the sums `heads_backward` writes, over `n` samples) is not finite, else 0;
/// `optim_clip_rmsprop` then skips the step. One single-thread launch, no host sync.
pub fn heads_loss_guard<D: Device>(
    dev: &D, stream: Stream, stats: &DeviceBuffer<f64>, guard: &mut DeviceBuffer<u32>, agents: usize, n: usize,
    value_coef: f64, entropy_coef: f64,
) -> Result<()> {
    const K: &str = "heads_loss_guard";
    let a = ensure_agents(K, agents)?;
    ensure(n >= 1, || format!("{K}: empty batch"))?;
    ensure_len(K, "stats", stats, agents * 3)?;
    ensure_len(K, "guard", guard, 1)?;
    let config = LaunchConfig { grid: (1, 1, 1), block: (1, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(stats),
            KernelArg::buf(guard),
            KernelArg::U32(a),
            KernelArg::U32(u32_of(K, "n", n)?),
            KernelArg::F64(value_coef),
            KernelArg::F64(entropy_coef),
        ],
    )
}

/// Packs act's outputs (actions, values, log-probs, each [rows]) into out [3 * rows] u32
/// (the floats as their bits) so that they come down in one copy.
pub fn act_pack_outputs<D: Device>(
    dev: &D, stream: Stream, actions: &DeviceBuffer<u32>, values: &DeviceBuffer<f32>, log_probs: &DeviceBuffer<f32>,
    out: &mut DeviceBuffer<u32>, rows: usize,
) -> Result<()> {
    const K: &str = "act_pack_outputs";
    ensure(rows >= 1, || format!("{K}: empty batch"))?;
    ensure_u32_index(K, 3 * rows, HEADS_THREADS)?;
    ensure_len(K, "actions", actions, rows)?;
    ensure_len(K, "values", values, rows)?;
    ensure_len(K, "log_probs", log_probs, rows)?;
    ensure_len(K, "out", out, 3 * rows)?;
    let config = LaunchConfig { grid: (rows.div_ceil(HEADS_THREADS as usize) as u32, 1, 1), block: (HEADS_THREADS, 1, 1), shared_mem_bytes: 0 };
    dev.launch(
        stream,
        K,
        config,
        &[KernelArg::buf(actions), KernelArg::buf(values), KernelArg::buf(log_probs), KernelArg::buf(out), KernelArg::U32(rows as u32)],
    )
}

/// Threads per block of `frame_stack_push` (FRAME_PUSH_THREADS in kernels/frames.cu).
pub const FRAME_PUSH_THREADS: u32 = 256;
/// The deepest stack `frame_stack_push` shifts (FRAME_MAX_DEPTH: its register array).
pub const FRAME_MAX_DEPTH: usize = 8;

/// One environment step of `rows` frame stacks of `depth` frames of `frame_len` bytes, in place
/// on the device (kernels/frames.cu; CPU twin `env::vec_env::push_frame`): each stack drops its
/// oldest frame (or, where `resets[r] != 0`, all its old frames become zeros) and `frames[r]`
/// becomes its newest.
#[allow(clippy::too_many_arguments)]
pub fn frame_stack_push<D: Device>(
    dev: &D, stream: Stream, stacks: &mut DeviceBuffer<u8>, frames: &DeviceBuffer<u8>, resets: &DeviceBuffer<f32>, rows: usize,
    frame_len: usize, depth: usize,
) -> Result<()> {
    const K: &str = "frame_stack_push";
    ensure(rows >= 1 && frame_len >= 1 && depth >= 1, || format!("{K}: {rows} stacks of {depth} frames of {frame_len} bytes; all must be at least 1"))?;
    ensure(depth <= FRAME_MAX_DEPTH, || format!("{K}: stacks of {depth} frames; at most {FRAME_MAX_DEPTH}"))?;
    ensure(rows <= MAX_GRID_Y, || format!("{K}: {rows} stacks; at most {MAX_GRID_Y} per launch"))?;
    // 64-bit across stacks in the kernel; within one stack the index is 32-bit.
    ensure_u32_index(K, depth * frame_len, FRAME_PUSH_THREADS)?;
    ensure_len(K, "stacks", stacks, rows * depth * frame_len)?;
    ensure_len(K, "frames", frames, rows * frame_len)?;
    ensure_len(K, "resets", resets, rows)?;
    // Whole words where every row and channel starts on one (allocations are aligned).
    let words = frame_len % 4 == 0;
    let units = if words { frame_len / 4 } else { frame_len };
    let config = LaunchConfig {
        grid: (units.div_ceil(FRAME_PUSH_THREADS as usize) as u32, rows as u32, 1),
        block: (FRAME_PUSH_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    dev.launch(
        stream,
        K,
        config,
        &[
            KernelArg::buf(stacks),
            KernelArg::buf(frames),
            KernelArg::buf(resets),
            KernelArg::U32(frame_len as u32),
            KernelArg::U32(depth as u32),
            KernelArg::U32(words as u32),
        ],
    )
}
