//! The engine as a low-level backend: N GALA A2C actor-learners on one device, driven by a
//! caller that owns the environments.
//!
//! [`Engine`] is what [`crate::algo::trainer::Trainer`] itself runs on (the trainer is one
//! client of this API: it steps the built-in environments and calls `act`, `learn` and
//! `gossip`), and what the C ABI in [`crate::capi`] wraps for other languages.
//!
//! One update, as the trainer does it (layouts in [`crate::backend`]):
//! 1. for t in 0..n_steps: [`Engine::act`] on the current frame stacks `[agents][envs][4][84][84]`
//!    at RNG step `step`, step every environment with the sampled actions, record
//!    observation/action/reward/done, `step += 1`;
//! 2. [`Engine::act`] on the frame stacks after the segment (same `step` as the next update's
//!    first act) for the bootstrap values V(s_T);
//! 3. [`Engine::learn`] with the segment: n-step returns, A2C loss, per-agent clipping, RMSprop;
//! 4. [`Engine::gossip`]: one lock-step round on the configured topology.
//!
//! Everything that decides the result is a function of the config's seed and the data passed
//! in: actions are sampled from a counter-based RNG keyed by (seed, agent, env, step).
//!
//! ```no_run
//! use gala_gpu::{config::Config, engine::Engine, backend::ActOutput};
//! # fn main() -> gala_gpu::Result<()> {
//! let config = Config { agents: 4, envs_per_agent: 4, lr: 1.4e-3, ..Config::default() };
//! let mut engine = Engine::new(&config, 3)?; // 3 actions: the caller's game decides
//! let obs = vec![0u8; engine.obs_bytes_per_act()];
//! let mut out = ActOutput::default();
//! engine.act(&obs, 0, false, &mut out)?; // out.actions: [agents][envs]
//! # Ok(()) }
//! ```
//! `examples/engine_catch.rs` is a complete training loop.

use crate::algo::topology::GossipGraph;
use crate::backend::{self, ActOutput, AgentLearnStats, Backend, BackendSpec, DeviceRollout, ObsChange, Segment, SharedDevice, TransferBytes};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{init_params, NetSpec, OBS_BYTES};
use std::path::Path;

/// N actor-learners batched on one backend, with the gossip schedule of the config.
pub struct Engine {
    config: Config,
    backend: Box<dyn Backend>,
    backend_choice: String,
    graph: Option<GossipGraph>,
    /// Gossip rounds done (the exponential graph's peers rotate with it).
    round: u64,
    /// A rank of a distributed run: gossip goes through the other ranks (scale-out).
    rank_gossip: Option<crate::dist::RankGossip>,
}

impl Engine {
    /// Builds an engine for the learners of `config` (`agents` × `envs_per_agent`, or for
    /// `algo = a2c` one learner with all simulators; see [`Config::learner_layout`]) with a policy
    /// head of `actions` logits, on `config.backend`. All agents start from the same parameters,
    /// initialised from `config.seed`. Settings about environments (`game`, `frames`, …) are
    /// validated but otherwise unused: the caller owns the environments.
    pub fn new(config: &Config, actions: usize) -> Result<Engine> {
        Self::build(config, actions, None, None)
    }

    /// Agent `agent` of `config`'s learners alone, on a backend of its own with `threads` worker
    /// threads, sampling with its global agent id and never gossiping (the asynchronous runner
    /// gossips between such engines).
    pub fn for_agent(config: &Config, actions: usize, agent: usize, threads: usize) -> Result<Engine> {
        Self::build(config, actions, Some((agent..agent + 1, threads)), None)
    }

    /// Like [`Engine::for_agent`], but on `device`, opened once and shared by every agent's
    /// engine (asynchronous gossip: each agent's backend gets its own stream on the one device,
    /// so messages can be device-to-device copies). `config.backend` is not consulted.
    pub fn for_agent_on(config: &Config, actions: usize, agent: usize, threads: usize, device: &SharedDevice) -> Result<Engine> {
        Self::build(config, actions, Some((agent..agent + 1, threads)), Some(device))
    }

    /// `only`: a contiguous block of the run's agents (their global indices) and the CPU
    /// backend's thread count, without gossip of its own (the asynchronous runner gossips
    /// between single-agent engines; a rank of a distributed run sets a
    /// [`RankGossip`](crate::dist::RankGossip)); None: every agent, gossiping in the batch.
    /// `device`: the shared device to build the backend on; None opens one for this engine
    /// (`config.backend`).
    pub(crate) fn build(
        config: &Config, actions: usize, only: Option<(std::ops::Range<usize>, usize)>, device: Option<&SharedDevice>,
    ) -> Result<Engine> {
        config.validate()?;
        if actions == 0 {
            return Err(Error::Config("the policy needs at least 1 action, got 0".into()));
        }
        let (all_agents, envs) = config.learner_layout();
        let (agents, agent_offset) = match &only {
            Some((block, _)) if !block.is_empty() && block.end <= all_agents => (block.len(), block.start),
            Some((block, _)) => return Err(Error::Config(format!("agents {block:?} out of range for {all_agents} agents"))),
            None => (all_agents, 0),
        };
        let threads = only.as_ref().map_or_else(|| config.resolved_threads(), |(_, t)| (*t).max(1));
        let net = NetSpec::new(config.net, actions);
        // Sizes first: an absurd shape is refused with its size instead of aborting the process
        // (a C ABI host included) in the allocator.
        let placement = match device.map(|d| d.name()) {
            Some("cuda") => crate::memory::Placement::Device,
            Some(_) => crate::memory::Placement::Host,
            None => crate::memory::Placement::of(config.backend),
        };
        crate::memory::Estimate::engine(&net, agents, envs, config.n_steps, placement).check(&format!(
            "an engine of {agents} agent(s) × {envs} environments × {} steps with {actions} actions",
            config.n_steps
        ))?;
        let spec = BackendSpec { net: net.clone(), agents, agent_offset, envs_per_agent: envs, n_steps: config.n_steps, seed: config.seed, hyper: config.hyper(), precision: config.precision };
        let initial = init_params(&net, config.seed);
        let (backend, backend_choice) = match device {
            Some(device) => (backend::create_on(device, spec, &initial, threads)?, device.choice.clone()),
            None => backend::create(config.backend, spec, &initial, threads)?,
        };
        let graph = if config.gossips() && only.is_none() { Some(GossipGraph::new(config.topology, agents, config.peers)?) } else { None };
        Ok(Engine { config: config.clone(), backend, backend_choice, graph, round: 0, rank_gossip: None })
    }

    /// The config the engine was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Shapes: agents, envs per agent, n_steps, the network (action count, parameter count).
    pub fn spec(&self) -> &BackendSpec {
        self.backend.spec()
    }

    /// Learners on this engine.
    pub fn agents(&self) -> usize {
        self.spec().agents
    }

    /// Environments each learner acts in.
    pub fn envs_per_agent(&self) -> usize {
        self.spec().envs_per_agent
    }

    /// Steps per learning segment.
    pub fn n_steps(&self) -> usize {
        self.spec().n_steps
    }

    /// The policy head's width.
    pub fn actions(&self) -> usize {
        self.spec().net.actions
    }

    /// Parameters per agent (P).
    pub fn param_count(&self) -> usize {
        self.spec().param_count()
    }

    /// Bytes of the observations one `act` takes: agents × envs × 4 × 84 × 84.
    pub fn obs_bytes_per_act(&self) -> usize {
        self.spec().act_batch() * OBS_BYTES
    }

    /// "cpu", "sim" or "cuda".
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Why this backend was chosen (for `backend = auto`).
    pub fn backend_choice(&self) -> &str {
        &self.backend_choice
    }

    /// `len` zero bytes of page-locked host memory from the backend's device (None on the CPU
    /// backend): rollout buffers filled here go up to the device as asynchronous DMA.
    pub fn alloc_pinned_bytes(&self, len: usize) -> Result<Option<crate::device::HostBuffer<u8>>> {
        self.backend.alloc_pinned_bytes(len)
    }

    /// A device copy of one rollout's frames for `act_training` to fill and `learn_recorded`
    /// to read, so that the frames `act` uploads are not uploaded again by `learn` (see
    /// [`DeviceRollout`]); None on the CPU backend.
    pub fn alloc_device_rollout(&self) -> Result<Option<DeviceRollout>> {
        self.backend.alloc_device_rollout()
    }

    /// Bytes the backend has moved between host and device so far (None on the CPU backend).
    pub fn transfer_bytes(&self) -> Option<TransferBytes> {
        self.backend.transfer_bytes()
    }

    /// Copies every agent's parameters into `dst` (an engine of the same configuration):
    /// device-to-device when both engines' backends share a device (`Engine::build` with the
    /// same `SharedDevice`), else through the host.
    pub fn copy_params_into(&mut self, dst: &mut Engine) -> Result<()> {
        self.backend.copy_params_into(dst.backend.as_mut())
    }

    /// Device seconds spent in this engine's act/learn/gossip calls so far (timed events on the
    /// backend's stream); None on the CPU backend.
    pub fn device_seconds(&self) -> Option<f64> {
        self.backend.device_seconds()
    }

    /// The backend itself, for tests and tools that need more than this API.
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// Forwards every agent's frame stacks `obs` (`[agents][envs][4][84][84]` uint8) and writes
    /// actions, V(s) and log π(a|s) (`[agents][envs]`) into `out`. Actions are sampled with the
    /// counter-based RNG at (seed, agent, env, `step`) — pass the number of agent steps taken
    /// so far — or, with `greedy`, are the argmax of the policy.
    pub fn act(&mut self, obs: &[u8], step: u64, greedy: bool, out: &mut ActOutput) -> Result<()> {
        self.check_act_obs(obs)?;
        self.backend.act(obs, step, greedy, out)
    }

    /// [`Engine::act`] (sampling) on step `t` of the segment the next `learn` learns from (see
    /// `Backend::act_segment_step`: the CPU backend keeps the forward pass for that learn).
    pub fn act_segment_step(&mut self, obs: &[u8], step: u64, out: &mut ActOutput, t: usize) -> Result<()> {
        self.check_act_obs(obs)?;
        self.backend.act_segment_step(obs, step, out, t)
    }

    fn check_act_obs(&self, obs: &[u8]) -> Result<()> {
        let want = self.obs_bytes_per_act();
        if obs.len() != want {
            return Err(Error::Shape(format!("act: {} observation bytes, expected {want} ([{}][{}][4][84][84])", obs.len(), self.agents(), self.envs_per_agent())));
        }
        Ok(())
    }

    /// [`Engine::act`] (sampling, not greedy) on `obs`, which differ from this engine's previous
    /// act's as `change` says (a device backend then uploads only the change: per env step each
    /// env's newest frame), and with `record = (rollout, t)` that also keeps the frames on the
    /// device as step `t` of `rollout` (an engine on the same device fills the learner's rollout
    /// when pipelined), recorded at RNG step `step`. The caller's side of the contract: `change`
    /// is true of `obs`, and step t of the segment later passed to `learn_recorded` holds
    /// exactly these `obs` (see [`DeviceRollout`]).
    pub fn act_training(&mut self, obs: &[u8], change: ObsChange, step: u64, out: &mut ActOutput, record: Option<(&mut DeviceRollout, usize)>) -> Result<()> {
        self.check_act_obs(obs)?;
        self.backend.act_training(obs, change, step, out, record)
    }

    /// [`Engine::learn`], reading the frames from `rollout` instead of uploading `segment.obs`
    /// when every step of it was recorded (see [`DeviceRollout`]); the result is bit-identical.
    pub fn learn_recorded(&mut self, segment: &Segment, rollout: &DeviceRollout) -> Result<Vec<AgentLearnStats>> {
        segment.check(self.spec())?;
        check_segment_values(segment)?;
        self.backend.learn_recorded(segment, rollout)
    }

    /// One A2C update of every agent from `segment` (layouts in [`crate::backend`]; sizes are
    /// checked first, so a wrong size changes nothing). Returns per-agent losses and norms.
    ///
    /// Values that cannot come from an environment or from `act` are refused before anything
    /// changes (`Error::Config`): `dones` other than 0.0 and 1.0 (they would silently make
    /// wrong returns), and NaN or infinite bootstrap values or behaviour log-probabilities
    /// (outputs of `act`, which are always finite for finite parameters). A NaN reward is not
    /// refused here: it makes the loss NaN, which `learn` reports as `Error::NonFinite` like any
    /// divergence (the trainer's NaN test hook relies on that path).
    pub fn learn(&mut self, segment: &Segment) -> Result<Vec<AgentLearnStats>> {
        segment.check(self.spec())?;
        check_segment_values(segment)?;
        self.backend.learn(segment)
    }

    /// One lock-step gossip round on the configured topology (agent r mixes in the parameters
    /// of its in-peers of this round), then advances the round counter. Without gossip
    /// (`algo = a2c`, one agent, or a single-agent engine) only the counter advances.
    pub fn gossip(&mut self) -> Result<()> {
        if let Some(dist) = self.rank_gossip.as_mut() {
            dist.round(self.backend.as_mut(), self.round)?;
        } else if let Some(graph) = &self.graph {
            self.backend.mix(&graph.in_peers(self.round))?;
        }
        self.round += 1;
        Ok(())
    }

    /// Makes this engine (built for a block of agents) one rank of a distributed run: from now
    /// on `gossip` runs the lock-step round across ranks.
    pub fn set_rank_gossip(&mut self, gossip: crate::dist::RankGossip) {
        self.rank_gossip = Some(gossip);
    }

    /// The cross-rank gossip, when this engine is a rank of a distributed run.
    pub fn rank_gossip(&self) -> Option<&crate::dist::RankGossip> {
        self.rank_gossip.as_ref()
    }

    /// Gossip rounds done so far.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Sets the round counter (when continuing a run: the round is the update count).
    pub fn set_round(&mut self, round: u64) {
        self.round = round;
    }

    /// The ε-ball metric: max_r ‖θ_r − θ̄‖ / ‖θ̄‖.
    pub fn consensus_distance(&mut self) -> Result<f64> {
        self.backend.consensus_distance()
    }

    /// All agents' parameters `[agents][P]` in `ParamLayout` order.
    pub fn read_params(&mut self) -> Result<Vec<f32>> {
        self.backend.read_params()
    }

    /// Replaces all agents' parameters (`[agents][P]`). NaN or infinite values are refused
    /// (`Error::Config`, naming the tensor) and change nothing.
    pub fn write_params(&mut self, params: &[f32]) -> Result<()> {
        let want = self.agents() * self.param_count();
        if params.len() != want {
            return Err(Error::Shape(format!("write_params: {} values, expected {want}", params.len())));
        }
        if let Some(what) = crate::checkpoint::find_nonfinite(&self.spec().net.layout(), params) {
            return Err(Error::Config(format!("write_params: {what}; parameters must be finite")));
        }
        self.backend.write_params(params)
    }

    /// All agents' RMSprop square averages `[agents][P]`.
    pub fn read_optimizer_state(&mut self) -> Result<Vec<f32>> {
        self.backend.read_optimizer_state()
    }

    /// Replaces all agents' RMSprop square averages (`[agents][P]`).
    pub fn write_optimizer_state(&mut self, square_avg: &[f32]) -> Result<()> {
        let want = self.agents() * self.param_count();
        if square_avg.len() != want {
            return Err(Error::Shape(format!("write_optimizer_state: {} values, expected {want}", square_avg.len())));
        }
        self.backend.write_optimizer_state(square_avg)
    }

    /// SHA-256 of all agents' parameters (little-endian f32, agent order): the `params_sha256`
    /// of run summaries.
    pub fn params_sha256(&mut self) -> Result<String> {
        Ok(crate::run::params_sha256(&self.read_params()?))
    }

    /// Fails naming the agent, tensor and element when any parameter is NaN or infinite.
    pub fn check_params_finite(&mut self) -> Result<()> {
        if let Some((agent, off, value)) = self.backend.find_nonfinite_param()? {
            let layout = self.spec().net.layout();
            let t = layout.tensors.iter().find(|t| t.range().contains(&off)).ok_or_else(|| {
                Error::Backend(format!("agent {agent}: non-finite parameter at index {off}, outside the layout"))
            })?;
            return Err(Error::NonFinite(format!("agent {agent}: parameter tensor `{}` element {} is {value}", t.name, off - t.offset)));
        }
        Ok(())
    }

    /// The parameters as a safetensors file's bytes, one tensor per agent and PyTorch name
    /// (`agent0.conv1.weight` is `[32, 4, 8, 8]`), exactly as checkpoints name them.
    pub fn export_params(&mut self) -> Result<Vec<u8>> {
        let params = self.read_params()?;
        crate::checkpoint::params_to_bytes(&self.spec().net, self.agents(), &params)
    }

    /// Loads parameters from `export_params` bytes or a checkpoint file's bytes (the
    /// `agent{r}.*` tensors must match this engine's agents and network, the stored digest the
    /// contents, and every value must be finite; otherwise `Error::Config` and nothing changes).
    pub fn import_params(&mut self, bytes: &[u8]) -> Result<()> {
        let params = crate::checkpoint::params_from_bytes(bytes, &self.spec().net, self.agents(), "the given bytes")?;
        self.backend.write_params(&params)
    }

    /// `export_params` written to `path` (atomically: a failure leaves any old file intact).
    pub fn save_params(&mut self, path: &Path) -> Result<()> {
        crate::run::write_atomic(path, &self.export_params()?)
    }

    /// `import_params` from a parameter file or a checkpoint (a run folder means its checkpoint).
    pub fn load_params(&mut self, path: &Path) -> Result<()> {
        let file = crate::checkpoint::resolve_path(path);
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let params = crate::checkpoint::params_from_bytes(&bytes, &self.spec().net, self.agents(), &file.display().to_string())?;
        self.backend.write_params(&params)
    }
}

/// The value checks of [`Engine::learn`] (sizes are `Segment::check`'s).
fn check_segment_values(segment: &Segment) -> Result<()> {
    if let Some((i, d)) = segment.dones.iter().enumerate().find(|(_, &d)| d != 0.0 && d != 1.0) {
        return Err(Error::Config(format!("learn: `dones[{i}]` is {d}; dones must be 0.0 (the episode goes on) or 1.0 (it ended with that step)")));
    }
    let finite = [("bootstrap_values", Some(segment.bootstrap_values)), ("behaviour_log_probs", segment.behaviour_log_probs)];
    for (name, values) in finite {
        if let Some((i, v)) = values.and_then(|v| v.iter().enumerate().find(|(_, x)| !x.is_finite())) {
            return Err(Error::Config(format!("learn: `{name}[{i}]` is {v}; it must be finite")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    fn small() -> Config {
        Config { agents: 2, envs_per_agent: 1, n_steps: 2, backend: BackendKind::Cpu, threads: 1, ..Config::default() }
    }

    #[test]
    fn params_roundtrip_through_the_checkpoint_names() {
        let mut e = Engine::new(&small(), 3).unwrap();
        let mut params = e.read_params().unwrap();
        params[7] = 0.25;
        e.write_params(&params).unwrap();
        let bytes = e.export_params().unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("agent1.conv1.weight").unwrap().shape(), &[32, 4, 8, 8]);
        assert_eq!(st.tensor("agent0.actor.weight").unwrap().shape(), &[3, 512]);
        let mut f = Engine::new(&Config { seed: 9, ..small() }, 3).unwrap();
        assert_ne!(f.params_sha256().unwrap(), e.params_sha256().unwrap());
        f.import_params(&bytes).unwrap();
        assert_eq!(f.read_params().unwrap(), params);
        // A file for another network is refused, naming the tensor.
        let mut g = Engine::new(&small(), 6).unwrap();
        let err = g.import_params(&bytes).unwrap_err().to_string();
        assert!(err.contains("agent0.actor.weight"), "{err}");
    }

    #[test]
    fn wrong_sizes_are_shape_errors() {
        let mut e = Engine::new(&small(), 3).unwrap();
        let err = e.act(&[0u8; 10], 0, false, &mut ActOutput::default()).unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err}");
        assert!(matches!(e.write_params(&[0.0; 3]).unwrap_err(), Error::Shape(_)));
        assert!(matches!(Engine::new(&small(), 0).err().unwrap(), Error::Config(_)));
    }
}
