//! The Backend trait: everything the trainer asks of a compute device, for all agents at once.
//!
//! A backend owns the parameter arena [agents][P] (and the gradients and RMSprop state beside
//! it). The trainer hands it observations and rollouts as host slices and gets back actions and
//! scalar metrics; parameters only cross to the host when asked for (checkpoints, fingerprints).
//!
//! Layouts (all row-major, agent-major):
//!   act:   obs [agents][envs][4][84][84] uint8 → actions, values, log-probs [agents][envs]
//!   learn: obs [agents][n_steps][envs][4][84][84], actions/rewards/dones [agents][n_steps][envs],
//!          bootstrap values [agents][envs]

pub mod cpu;
pub mod gpu;
pub mod mailbox;

use crate::device::{cuda::CudaDevice, sim::SimDevice};
use crate::error::Result;
use crate::model::{NetSpec, OBS_BYTES};
use std::sync::Arc;
use serde::{Deserialize, Serialize};

/// Which compute backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// cuda when a usable GPU is found, otherwise cpu.
    Auto,
    /// The plain-Rust reference implementation.
    Cpu,
    /// The CUDA kernels run on the CPU under the project's simulator.
    Sim,
    /// The CUDA kernels on a GPU.
    Cuda,
}

/// The arithmetic of the network's matrix products (the conv and fc GEMMs, forward and backward).
/// Everything else (heads, loss, optimizer, gossip) is FP32 in every precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// FP32 FMAs: the CPU reference's arithmetic up to summation order.
    #[default]
    Fp32,
    /// TF32 tensor cores (cuda on sm_80 and later, and sim) for the conv and the fc GEMMs:
    /// operands rounded to TF32 (10 mantissa bits, `tf32_round`), products accumulated in FP32,
    /// as PyTorch computes a conv with TF32 allowed (its default for convolutions) and a matmul
    /// with `torch.backends.cuda.matmul.allow_tf32 = True`. Opt-in; not on the cpu backend.
    Tf32,
    /// TF32 for the conv layers only, FP32 for the fc layer: PyTorch's default arithmetic on a GPU
    /// (`torch.backends.cudnn.allow_tf32 = True`, `torch.backends.cuda.matmul.allow_tf32 =
    /// False`), for comparisons with PyTorch as users run it. Opt-in; not on the cpu backend.
    #[serde(rename = "tf32-conv")]
    #[value(name = "tf32-conv")]
    Tf32Conv,
}

impl Precision {
    /// The arithmetic of one GEMM layer, `Fp32` or `Tf32`: the fc layer's when `fc`, else a conv's.
    pub fn of_layer(self, fc: bool) -> Precision {
        match self {
            Precision::Tf32Conv if fc => Precision::Fp32,
            Precision::Tf32Conv => Precision::Tf32,
            p => p,
        }
    }

    /// The GEMM kernel that computes `kernel` (a kernels/conv.cu GEMM's plain name: `fc_*` for
    /// the fc layer, `conv_*` for the conv layers) in this precision.
    pub fn kernel(self, kernel: &str) -> std::borrow::Cow<'_, str> {
        match self.of_layer(kernel.starts_with("fc_")) {
            Precision::Fp32 => std::borrow::Cow::Borrowed(kernel),
            _ => std::borrow::Cow::Owned(format!("{kernel}_tf32")),
        }
    }

    /// The name users write (`--precision`, the config's `precision`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Tf32Conv => "tf32-conv",
        }
    }
}

/// `x` rounded to TF32 as the tensor-core kernels read their operands (PTX cvt.rna.tf32.f32: 10
/// mantissa bits, to nearest, ties away from zero; infinities and NaNs unchanged): the CPU
/// statement of what `precision = "tf32"` does to a GEMM operand.
pub fn tf32_round(x: f32) -> f32 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return x;
    }
    f32::from_bits(u.wrapping_add(0x1000) & 0xffff_e000)
}

/// The learner's hyper-parameters (DESIGN.md defaults in `Config`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearnerHyper {
    pub gamma: f32,
    pub lr: f32,
    pub rms_alpha: f32,
    pub rms_eps: f32,
    pub rms_form: cpu::optim::RmsForm,
    pub entropy_coef: f64,
    pub value_coef: f64,
    pub max_grad_norm: f64,
}

/// What a backend is built for.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    pub net: NetSpec,
    pub agents: usize,
    /// Global index of this backend's first agent: the action sampler is keyed by global agent
    /// ids, so one agent on its own backend (asynchronous gossip) samples exactly as it would
    /// inside a batched backend.
    pub agent_offset: usize,
    pub envs_per_agent: usize,
    pub n_steps: usize,
    /// Keys the action sampler (and nothing else inside the backend).
    pub seed: u64,
    pub hyper: LearnerHyper,
    /// The GEMMs' arithmetic (the cpu backend computes FP32 only).
    pub precision: Precision,
}

impl BackendSpec {
    pub fn param_count(&self) -> usize {
        self.net.layout().total
    }
    /// Observations in one `act` batch (all agents).
    pub fn act_batch(&self) -> usize {
        self.agents * self.envs_per_agent
    }
    /// The initial arena [agents][P] from one agent's parameters (copied to every agent: GALA's
    /// identical start) or from the whole arena.
    pub fn initial_arena(&self, initial: &[f32]) -> Result<Vec<f32>> {
        let p = self.param_count();
        if initial.len() == p {
            Ok(initial.repeat(self.agents))
        } else if initial.len() == p * self.agents {
            Ok(initial.to_vec())
        } else {
            Err(crate::Error::Shape(format!(
                "initial parameters: {} values, expected {p} (one agent) or {} (all agents)",
                initial.len(),
                p * self.agents
            )))
        }
    }

    /// Checks the size of an `act` batch: [agents][envs][4][84][84] bytes.
    pub fn check_act_obs(&self, len: usize) -> Result<()> {
        let want = self.act_batch() * OBS_BYTES;
        if len != want {
            return Err(crate::Error::Shape(format!("act: {len} observation bytes, expected {want}")));
        }
        Ok(())
    }

    /// Samples one agent learns from per update.
    pub fn segment_samples(&self) -> usize {
        self.n_steps * self.envs_per_agent
    }
}

/// Output of `act`, reused across calls. All [agents][envs].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActOutput {
    pub actions: Vec<u32>,
    pub values: Vec<f32>,
    pub log_probs: Vec<f32>,
}

/// One n-step segment for every agent (layouts in the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub obs: &'a [u8],
    pub actions: &'a [u32],
    /// Rewards as learned from (already sign-clipped where the preset says so).
    pub rewards: &'a [f32],
    /// 1.0 where the (training) episode ended with that step.
    pub dones: &'a [f32],
    /// V(s_T) of the observation after the segment, by the parameters that acted.
    pub bootstrap_values: &'a [f32],
    /// log μ(a|s) of the behaviour policy when it differs from the learner's (pipelining);
    /// None means on-policy (ratio exactly 1).
    pub behaviour_log_probs: Option<&'a [f32]>,
}

impl Segment<'_> {
    /// Checks every buffer against the spec; a mismatch is a caller bug reported as an error.
    pub fn check(&self, spec: &BackendSpec) -> Result<()> {
        let n = spec.agents * spec.segment_samples();
        let want = [
            ("obs", self.obs.len(), n * OBS_BYTES),
            ("actions", self.actions.len(), n),
            ("rewards", self.rewards.len(), n),
            ("dones", self.dones.len(), n),
            ("bootstrap_values", self.bootstrap_values.len(), spec.act_batch()),
        ];
        for (what, got, expect) in want {
            if got != expect {
                return Err(crate::Error::Shape(format!("segment {what}: {got} elements, expected {expect}")));
            }
        }
        if let Some(b) = self.behaviour_log_probs {
            if b.len() != n {
                return Err(crate::Error::Shape(format!("segment behaviour_log_probs: {} elements, expected {n}", b.len())));
            }
        }
        Ok(())
    }
}

/// The device's own copy of one rollout's observations, `[agents][n_steps][envs][4][84][84]`
/// (issue 12: frames stay on the device). `act` uploads every observation anyway; with
/// [`Backend::act_training`] the backend also copies those frames, device to device, into step
/// `t` of this buffer, and [`Backend::learn_recorded`] reads them in place instead of uploading
/// the segment's 18 MB (8 agents × 16 envs × 5 steps) a second time.
///
/// The buffer remembers which RNG step each of its steps was recorded at. `learn_recorded` uses
/// it only when it can tell the copy is whole: every step `0..n_steps` recorded since the last
/// [`clear`](DeviceRollout::clear), at consecutive RNG steps, by a backend of the same shape
/// on the learner's device; otherwise it uploads the segment's host frames exactly as `learn`
/// does. What the device cannot check by itself — that the segment passed along holds the same
/// bytes — is the caller's side of the contract: fill the host rollout from exactly the frames
/// given to `act_training` at those steps, and `clear` whenever the host frames are written any
/// other way (the trainer does both; `GpuBackend::set_check_device_frames` verifies it in tests).
/// A buffer's work is ordered by events, so the actor of the pipelined trainer may fill it on its
/// stream while a learner on another stream of the same device reads the other one.
pub struct DeviceRollout {
    pub(crate) obs: crate::device::DeviceBuffer<u8>,
    pub(crate) agents: usize,
    pub(crate) envs: usize,
    pub(crate) n_steps: usize,
    /// Per step: the RNG step it was recorded at, None when not recorded since `clear`.
    pub(crate) recorded: Vec<Option<u64>>,
    /// Recorded after the last recording copy, on the recording backend's stream: a learner on
    /// another stream waits for it before reading.
    pub(crate) ready: Option<crate::device::Event>,
}

impl DeviceRollout {
    /// An empty (nothing recorded) rollout over `obs`, shaped for `spec`.
    pub(crate) fn new(obs: crate::device::DeviceBuffer<u8>, spec: &BackendSpec) -> Result<Self> {
        let want = spec.agents * spec.segment_samples() * OBS_BYTES;
        if obs.len() != want {
            return Err(crate::Error::Shape(format!("device rollout: {} bytes, expected {want}", obs.len())));
        }
        Ok(DeviceRollout { obs, agents: spec.agents, envs: spec.envs_per_agent, n_steps: spec.n_steps, recorded: vec![None; spec.n_steps], ready: None })
    }

    /// Forgets every recorded step: the next `learn_recorded` uploads, unless all steps are
    /// recorded again first. Call it whenever the host copy of the frames changes otherwise.
    pub fn clear(&mut self) {
        self.recorded.fill(None);
    }

    /// Whether step `t` is out of this rollout's range (an error for the recording call).
    pub(crate) fn check_step(&self, t: usize) -> Result<()> {
        if t < self.n_steps {
            Ok(())
        } else {
            Err(crate::Error::Shape(format!("device rollout: step {t} is outside the rollout's {} steps", self.n_steps)))
        }
    }

    /// Marks step `t` as not holding the frames of any act (before it is overwritten, and
    /// where a backend keeps no device copy).
    pub(crate) fn forget(&mut self, t: usize) -> Result<()> {
        self.check_step(t)?;
        self.recorded[t] = None;
        Ok(())
    }

    /// Steps recorded since the last `clear`.
    pub fn recorded_steps(&self) -> usize {
        self.recorded.iter().flatten().count()
    }

    /// Whether every step holds the frames acted on at consecutive RNG steps (the segment's
    /// steps 0..n_steps), so `learn_recorded` may read them instead of uploading.
    pub fn is_complete(&self) -> bool {
        match self.recorded.first().copied().flatten() {
            Some(first) => self.recorded.iter().enumerate().all(|(t, r)| *r == first.checked_add(t as u64)),
            None => false,
        }
    }

    /// Whether this rollout is shaped for `spec`'s backend.
    pub(crate) fn fits(&self, spec: &BackendSpec) -> bool {
        (self.agents, self.envs, self.n_steps) == (spec.agents, spec.envs_per_agent, spec.n_steps)
    }
}

impl std::fmt::Debug for DeviceRollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceRollout[{}x{}x{}, {} steps recorded]", self.agents, self.n_steps, self.envs, self.recorded_steps())
    }
}

/// What the observations of a training act are, relative to the previous act of the same
/// backend — so that a device backend, which keeps the previous act's frame stacks on the
/// device, uploads only what changed (issue 12): per env step only each env's newest 84×84
/// frame instead of its whole 4-frame stack. The whole stacks are always passed as well: a
/// backend that cannot use the change (the CPU backend, a device backend whose previous act
/// failed or never happened) uses them.
#[derive(Clone, Copy, Debug)]
pub enum ObsChange<'a> {
    /// Anything (the first act, after a restore): the whole stacks go up.
    Unknown,
    /// The same observations as the backend's previous act (a segment's first act after the
    /// previous segment's bootstrap act): nothing goes up.
    Same,
    /// One environment step after the previous act's observations: every stack shifted by one
    /// frame (all old frames zeroed where `resets` is non-zero: the episode ended) with `frames`
    /// `[agents][envs][84][84]` as its newest; `env::vec_env::push_frame`, the host's stacking.
    Stepped { frames: &'a [u8], resets: &'a [f32] },
}

/// Bytes a device backend has moved so far (counted where the copies are enqueued).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferBytes {
    /// Host to device.
    pub uploaded: u64,
    /// Device to host.
    pub downloaded: u64,
    /// Device to device.
    pub copied: u64,
}

/// Per-agent statistics of one update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AgentLearnStats {
    pub value_loss: f64,
    pub policy_loss: f64,
    pub entropy: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// Refuses a non-finite loss before any parameter changes, naming the agent and the terms.
/// Shared by every backend, so they fail the same way.
pub fn check_losses_finite(terms: &[cpu::heads::LossTerms], coefs: cpu::heads::LossCoefs) -> Result<()> {
    for (r, t) in terms.iter().enumerate() {
        let total = t.total(coefs);
        if !total.is_finite() {
            return Err(crate::Error::NonFinite(format!(
                "agent {r}: loss is {total} (value loss {}, policy loss {}, entropy {}); parameters left unchanged",
                t.value_loss, t.policy_loss, t.entropy
            )));
        }
    }
    Ok(())
}

/// Per-agent statistics of an update from its loss terms and pre-clip gradient norms (refusing
/// a non-finite norm, naming the agent).
pub fn learn_stats(terms: &[cpu::heads::LossTerms], norms: &[f64]) -> Result<Vec<AgentLearnStats>> {
    if let Some((r, nrm)) = norms.iter().enumerate().find(|(_, n)| !n.is_finite()) {
        return Err(crate::Error::NonFinite(format!("agent {r}: gradient norm is {nrm}")));
    }
    Ok(terms
        .iter()
        .zip(norms)
        .map(|(t, &grad_norm)| AgentLearnStats { value_loss: t.value_loss, policy_loss: t.policy_loss, entropy: t.entropy, grad_norm })
        .collect())
}

/// Checks a gossip round's peer lists: one per agent, naming agents that exist.
pub fn check_peer_lists(in_peers: &[Vec<usize>], agents: usize) -> Result<()> {
    if in_peers.len() != agents || in_peers.iter().flatten().any(|&s| s >= agents) {
        return Err(crate::Error::Shape(format!("mix: peer lists must name agents 0..{agents}, got {in_peers:?}")));
    }
    Ok(())
}

/// Everything a compute device does for the trainer. Implementations: `cpu::CpuBackend`
/// (reference), and the GPU backend over a `Device` (cuda or the simulator).
pub trait Backend: Send {
    /// "cpu", "sim" or "cuda".
    fn name(&self) -> &'static str;
    /// The concrete backend, for transports that must reach its device (the device mailboxes
    /// of asynchronous gossip downcast to the GPU backend on their device to copy parameters
    /// device-to-device and launch the fused mix on the backend's own stream).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
    fn spec(&self) -> &BackendSpec;
    /// Forward the current observations of every agent's envs and sample actions with the
    /// counter-based RNG at (seed, agent, env, `step`); `greedy` takes the argmax instead.
    fn act(&mut self, obs: &[u8], step: u64, greedy: bool, out: &mut ActOutput) -> Result<()>;
    /// n-step returns, forward + backward over the segment, per-agent clipping and one RMSprop
    /// step, for every agent.
    fn learn(&mut self, segment: &Segment) -> Result<Vec<AgentLearnStats>>;
    /// One lock-step gossip round: agent r mixes in the parameters of `in_peers[r]`.
    fn mix(&mut self, in_peers: &[Vec<usize>]) -> Result<()>;
    /// Mixes messages from other backends' agents into local agent `agent` with uniform weight
    /// 1/(m+1) for m messages: θ ← θ/(m+1) + Σ msg/(m+1) (the same arithmetic as `mix`).
    /// Used by the host mailboxes of asynchronous gossip (every agent has a backend of its own;
    /// the GPU backend's device mailboxes mix on the device instead, see `mailbox`).
    fn mix_messages(&mut self, agent: usize, messages: &[&[f32]]) -> Result<()> {
        let mut params = self.read_params()?;
        let p = self.spec().param_count();
        if agent >= self.spec().agents || messages.iter().any(|m| m.len() != p) {
            return Err(crate::Error::Shape(format!("mix_messages: agent {agent} or message sizes (expected {p}) out of range")));
        }
        cpu::gossip::mix_one(&mut params[agent * p..(agent + 1) * p], messages);
        self.write_params(&params)
    }
    /// One lock-step round in which some in-peers live on other processes (scale-out,
    /// `dist::RankGossip`): `in_peers[r]` indexes this backend's agents `0..agents`, then the
    /// `remote` messages (index `agents + j` is `remote[j]`), summed in list order with the
    /// arithmetic of `mix` (every local message read from the pre-round parameters), so the
    /// result equals the batched round of the whole run bit for bit. The default is host-staged
    /// through `read_params`/`write_params` with `cpu::gossip::mix_one`, the reference
    /// arithmetic (the CPU backend's own `mix`).
    fn mix_with_remote(&mut self, in_peers: &[Vec<usize>], remote: &[&[f32]]) -> Result<()> {
        let (agents, p) = (self.spec().agents, self.spec().param_count());
        if in_peers.len() != agents || in_peers.iter().flatten().any(|&s| s >= agents + remote.len()) || remote.iter().any(|m| m.len() != p) {
            return Err(crate::Error::Shape(format!(
                "mix_with_remote: {} peer lists for {agents} agents, {} remote messages of {p} parameters each expected",
                in_peers.len(),
                remote.len()
            )));
        }
        let snapshot = self.read_params()?;
        let mut params = snapshot.clone();
        for (r, theta) in params.chunks_mut(p).enumerate() {
            let messages: Vec<&[f32]> = in_peers[r].iter().map(|&s| if s < agents { &snapshot[s * p..(s + 1) * p] } else { remote[s - agents] }).collect();
            cpu::gossip::mix_one(theta, &messages);
        }
        self.write_params(&params)
    }
    /// One lock-step round whose cross-rank messages travel device to device over `link` (NCCL,
    /// `dist::DeviceLink`): `in_peers` as in `mix_with_remote`, where index `agents + j` is the
    /// j-th entry of `recvs`, (source rank, tag), received straight into device memory; `sends`
    /// are (local agent, destination rank, tag), sent from the pre-round parameters. Exchange
    /// and mix are ordered on the backend's stream, then the host waits (at most `timeout`).
    /// Only backends whose parameters live on a device can; the default refuses.
    fn mix_over_link(
        &mut self, _in_peers: &[Vec<usize>], _sends: &[(usize, usize, u32)], _recvs: &[(usize, u32)], _link: &mut dyn crate::dist::DeviceLink,
        _timeout: std::time::Duration,
    ) -> Result<()> {
        Err(crate::Error::Unsupported(format!("the {} backend keeps its parameters in host memory: no device-to-device gossip", self.name())))
    }
    /// The native handle of the stream this backend's parameters are worked on (on CUDA, the
    /// device's context is made current on the calling thread), for a device link to enqueue
    /// on; None without a device (the CPU backend).
    fn native_stream(&mut self) -> Result<Option<crate::device::NativeStream>> {
        Ok(None)
    }
    /// A device copy of one rollout's observations for `act_training` to fill and
    /// `learn_recorded` to read (see [`DeviceRollout`]); None when the backend has no device
    /// (the CPU backend keeps its host path).
    fn alloc_device_rollout(&self) -> Result<Option<DeviceRollout>> {
        Ok(None)
    }
    /// `act` (sampling) on step `t` of the segment the next `learn` learns from, by the
    /// parameters that learn starts from. A backend may keep the forward pass for that learn:
    /// the CPU backend does, so a lock-step update skips the learner's forward over the segment
    /// (it is exactly the acts'; `FastNet::forward_rows`). The caller's side: steps are acted
    /// in order from t = 0, and step t of the segment then passed to `learn` holds exactly these
    /// `obs`; the backend itself forgets the kept pass whenever its parameters change. The
    /// default just acts.
    fn act_segment_step(&mut self, obs: &[u8], step: u64, out: &mut ActOutput, t: usize) -> Result<()> {
        let _ = t;
        self.act(obs, step, false, out)
    }
    /// The trainer's `act` (sampling, never greedy) on `obs`, which differ from the previous
    /// act's as `change` says (a device backend then uploads only what changed; the caller's
    /// contract is that `change` is true of `obs`), and with `record = (rollout, t)` that also
    /// keeps `obs` on the device as step `t` of `rollout`, recorded at RNG step `step`. The
    /// default (no device) acts on `obs` and keeps nothing: step `t` is marked unrecorded, so
    /// `learn_recorded` falls back to uploading.
    fn act_training(&mut self, obs: &[u8], _change: ObsChange, step: u64, out: &mut ActOutput, record: Option<(&mut DeviceRollout, usize)>) -> Result<()> {
        if let Some((rollout, t)) = record {
            rollout.forget(t)?;
        }
        self.act(obs, step, false, out)
    }
    /// `learn` whose frames may come from `rollout` instead of `segment.obs`: when the rollout
    /// is complete and fits this backend (see [`DeviceRollout`]) the backend reads it in place
    /// and uploads none of the segment's frames; otherwise it is exactly `learn`. Either way
    /// the bytes learned from are the same, so the result is bit-identical.
    fn learn_recorded(&mut self, segment: &Segment, _rollout: &DeviceRollout) -> Result<Vec<AgentLearnStats>> {
        self.learn(segment)
    }
    /// Bytes moved between host and device so far (None without a device), for tests and
    /// benchmarks of what crosses the bus.
    fn transfer_bytes(&self) -> Option<TransferBytes> {
        None
    }
    /// Kernel launches so far (None without a device; a replayed CUDA graph counts its
    /// launches), for benchmarks.
    fn kernel_launches(&self) -> Option<u64> {
        None
    }
    /// `len` zero bytes of page-locked host memory from this backend's device, for buffers the
    /// caller fills and then hands to `learn` (uploads from it are asynchronous DMA); None when
    /// the backend has no device (the CPU backend).
    fn alloc_pinned_bytes(&self, _len: usize) -> Result<Option<crate::device::HostBuffer<u8>>> {
        Ok(None)
    }
    /// Copies every agent's parameters into `dst`, a backend of the same spec: the pipelined
    /// trainer's hand-off of θ from the learner to the actor. The default goes through the host;
    /// GPU backends on one shared device copy device-to-device on their streams, ordered by
    /// events, without the host waiting.
    fn copy_params_into(&mut self, dst: &mut dyn Backend) -> Result<()> {
        let params = self.read_params()?;
        dst.write_params(&params)
    }
    /// The first parameter that is NaN or infinite, as (agent, index within the agent's
    /// parameters, value), in agent then index order; None when all are finite. The default
    /// scans `read_params`; device backends search on the device.
    fn find_nonfinite_param(&mut self) -> Result<Option<(usize, usize, f32)>> {
        let params = self.read_params()?;
        let p = self.spec().param_count();
        Ok(params.iter().position(|x| !x.is_finite()).map(|i| (i / p, i % p, params[i])))
    }
    /// Device time spent on this backend's act/learn/mix calls so far, measured by timed events
    /// on its stream (the span from each call's first to its last device operation); None when
    /// there is no device (the CPU backend). `bench e2e` divides it by the wall time.
    fn device_seconds(&self) -> Option<f64> {
        None
    }
    /// max_r ‖θ_r − θ̄‖ / ‖θ̄‖.
    fn consensus_distance(&mut self) -> Result<f64>;
    /// All agents' parameters [agents][P].
    fn read_params(&mut self) -> Result<Vec<f32>>;
    fn write_params(&mut self, params: &[f32]) -> Result<()>;
    /// All agents' RMSprop square averages [agents][P].
    fn read_optimizer_state(&mut self) -> Result<Vec<f32>>;
    fn write_optimizer_state(&mut self, square_avg: &[f32]) -> Result<()>;
}

/// The device one process opens once and every backend of it shares. Asynchronous gossip
/// builds one backend per agent, each on its own host thread and stream; they must live on ONE
/// device — one CUDA context and module store (opening a `CudaDevice` compiles every kernel),
/// one `DeviceId` — so that a message can be a device-to-device copy between their buffers.
#[derive(Clone)]
pub enum DeviceHandle {
    /// The CPU backend: no device (messages travel through host mailboxes).
    Cpu,
    Sim(Arc<SimDevice>),
    Cuda(Arc<CudaDevice>),
}

/// The CUDA device this process opens (`cuda`, or `auto` finding a GPU): 0, unless a rank of a
/// distributed run picked its own (`set_cuda_ordinal`: local rank mod visible GPUs).
static CUDA_ORDINAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes every CUDA device this process opens from now on GPU `ordinal`.
pub fn set_cuda_ordinal(ordinal: usize) {
    CUDA_ORDINAL.store(ordinal, std::sync::atomic::Ordering::SeqCst);
}

/// The CUDA device this process opens (see [`set_cuda_ordinal`]).
pub fn cuda_ordinal() -> usize {
    CUDA_ORDINAL.load(std::sync::atomic::Ordering::SeqCst)
}

/// GPUs the CUDA driver sees (0 when there is no usable driver).
pub fn cuda_device_count() -> usize {
    // SAFETY: only tries to dlopen the driver library and drops the handle.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    std::panic::catch_unwind(cudarc::driver::CudaContext::device_count).ok().and_then(|r| r.ok()).map_or(0, |n| n.max(0) as usize)
}

/// A [`DeviceHandle`] and the line saying which backend was picked and why.
#[derive(Clone)]
pub struct SharedDevice {
    pub handle: DeviceHandle,
    pub choice: String,
}

impl SharedDevice {
    /// Opens the device `kind` asks for; `Auto` resolves to cuda when a usable GPU is present,
    /// else cpu (the reason is in `choice`).
    pub fn open(kind: BackendKind) -> Result<SharedDevice> {
        use crate::device::Device;
        let (handle, choice) = match kind {
            BackendKind::Cpu => (DeviceHandle::Cpu, "cpu (requested)".to_string()),
            BackendKind::Sim => {
                let dev = SimDevice::new();
                let why = format!("sim (requested): {}", dev.describe());
                (DeviceHandle::Sim(Arc::new(dev)), why)
            }
            BackendKind::Cuda => {
                let dev = CudaDevice::new(CUDA_ORDINAL.load(std::sync::atomic::Ordering::SeqCst))?;
                let why = format!("cuda (requested): {}", dev.describe());
                (DeviceHandle::Cuda(Arc::new(dev)), why)
            }
            BackendKind::Auto => match crate::gpu_probe() {
                Ok(name) => match CudaDevice::new(CUDA_ORDINAL.load(std::sync::atomic::Ordering::SeqCst)) {
                    Ok(dev) => {
                        let why = format!("cuda: a usable GPU was found ({})", dev.describe());
                        (DeviceHandle::Cuda(Arc::new(dev)), why)
                    }
                    Err(e) => (DeviceHandle::Cpu, format!("cpu: a GPU was found ({name}) but the CUDA device could not be set up: {e}")),
                },
                Err(reason) => (DeviceHandle::Cpu, format!("cpu: no usable GPU ({reason})")),
            },
        };
        Ok(SharedDevice { handle, choice })
    }

    /// "cpu", "sim" or "cuda": the name backends on this device report.
    pub fn name(&self) -> &'static str {
        match self.handle {
            DeviceHandle::Cpu => "cpu",
            DeviceHandle::Sim(_) => "sim",
            DeviceHandle::Cuda(_) => "cuda",
        }
    }
}

/// Builds a backend on `device` (for the GPU kinds: its own stream on the shared device).
/// `threads` sizes the CPU backend's worker pool.
pub fn create_on(device: &SharedDevice, spec: BackendSpec, initial: &[f32], threads: usize) -> Result<Box<dyn Backend>> {
    if matches!(device.handle, DeviceHandle::Cpu) && spec.precision != Precision::Fp32 {
        // Say why the backend is the cpu one (`auto` without a GPU, typically).
        return Err(crate::error::Error::Config(format!(
            "precision {} runs the tensor-core kernels of the cuda (sm_80 and later) and sim backends, but the backend is {}; use --precision fp32, or --backend sim",
            spec.precision.name(),
            device.choice
        )));
    }
    Ok(match &device.handle {
        DeviceHandle::Cpu => Box::new(cpu::CpuBackend::new(spec, initial, threads)?),
        DeviceHandle::Sim(dev) => Box::new(gpu::GpuBackend::new(dev.clone(), spec, initial)?),
        DeviceHandle::Cuda(dev) => Box::new(gpu::GpuBackend::new(dev.clone(), spec, initial)?),
    })
}

/// Builds the backend `kind` asks for on a device of its own; `Auto` resolves to cuda when a
/// usable GPU is present, else cpu. Returns the backend and a line saying which one was picked
/// and why.
pub fn create(kind: BackendKind, spec: BackendSpec, initial: &[f32], threads: usize) -> Result<(Box<dyn Backend>, String)> {
    let device = SharedDevice::open(kind)?;
    let backend = create_on(&device, spec, initial, threads)?;
    Ok((backend, device.choice))
}
