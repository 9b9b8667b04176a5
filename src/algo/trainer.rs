//! The training loop: N A2C actor-learners, batched on one backend, with lock-step gossip.
//!
//! One update (all agents together, GALA's per-agent loop batched):
//!   1. act for n_steps in every env, sampling from the policy with the counter-based RNG;
//!   2. V(s_T) for the bootstrap, by the same parameters that acted;
//!   3. backend.learn: n-step returns, A2C loss, backward, per-agent clip, RMSprop;
//!   4. gossip: each agent mixes in its in-peers' parameters (skipped for a2c / one agent).
//!
//! Pipelined (`--pipeline`, HTS-RL): a second backend instance, the actor, holds the behaviour
//! parameters. While the learner learns from segment s (θ_s → θ_{s+1}), the actor collects
//! segment s+1 with θ_s on another thread, into the other half of a double buffer; then the actor
//! takes θ_{s+1}. So every segment after the first is exactly one update old when it is learned
//! from, always: the behaviour log-probs are stored with the rollout and the policy-gradient term
//! is weighted by the truncated ratio min(1, π_θ(a|s)/μ(a|s)) (IMPALA's ρ̄ = 1). V(s_T) for the
//! bootstrap is the learner's own, computed at the start of the update on a copy of s_T's frame
//! stacks, not the behaviour parameters' (what HTS-RL stores with its rollouts): with the
//! behaviour's V, one update old, the value targets lag the values they train, and right after
//! PyTorch-RMSprop's first ~10·lr steps that lag drove the shared trunk's ReLUs dead on 2 of 3
//! Pong seeds (LEARNING.md; with the learner's V, 0 of 2, like lock-step). The two threads share
//! no state, so pipelined runs are as deterministic as plain ones.
//! On a device backend both engines live on one shared device, each with its own stream, so the
//! actor's forward passes overlap the learner's kernels on the GPU, and the hand-off of θ_{s+1}
//! is a device-to-device copy ordered by events (`Engine::copy_params_into`), not a round trip
//! through the host.
//! Frames cross the bus once (issue 12): on a device backend every rollout has a device copy of
//! its observations (`DeviceRollout`) that `act_training` fills from the stacks it acts on and
//! `learn_recorded` reads in place, so the learner uploads only actions, rewards, dones and
//! the bootstrap values (and behaviour log-probs; pipelined, also s_T's stacks for its own
//! V(s_T), one act's worth). On the CPU backend the acts of a lock-step segment leave their
//! forward pass in the learner's buffers, and `learn` reuses it (`act_segment_step`). And the acting engine keeps the stacks of its
//! previous act on the device: per env step only each env's newest frame and done flag go up
//! (`ObsChange::Stepped`), and the device shifts the stacks itself; a segment's first act sees
//! the previous bootstrap act's observations (`ObsChange::Same`): nothing goes up. The host copy
//! is still kept, for checkpoints and as the fallback (a restored pending segment is uploaded).
//! Pipelined, the device copy is double-buffered with the host one: the actor fills `next`'s
//! while the learner reads `rollout`'s.
//! Between two updates a pipelined trainer holds, besides the learner's state, the collected
//! segment not learned from yet and (only after the update that spent the budget, which collects
//! nothing) the actor's one-update-old parameters; checkpoints carry both, so a pipelined run
//! stopped and resumed — at a `save_every` point, on Ctrl-C, or at the end of a smaller budget —
//! goes on exactly as an uninterrupted one.
//!
//! Everything that decides the result is a function of the seed: environment randomness is keyed
//! by (seed, env), action sampling by (seed, agent, env, step). Wall-clock time is only reported.
//! That is also why a checkpoint (parameters, RMSprop state, the step counter, the environments'
//! states and frame stacks) resumes bit for bit: nothing else carries over between updates.

use crate::algo::health::{self, NetHealth};
use crate::backend::cpu::optim::RmsForm;
use crate::backend::{ActOutput, AgentLearnStats, Backend, DeviceRollout, ObsChange, Segment, SharedDevice, TransferBytes};
use crate::config::Config;
use crate::env::{self, EnvSettings, FinishedGame, GameId, VecEnv, FRAME_BYTES};
use crate::checkpoint::Checkpoint;
use crate::device::HostBuffer;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::OBS_BYTES;
use crate::run::{params_sha256, AgentMetricsRow, MetricsRow, RunDir, Summary};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Finished games kept for `mean_return_100`.
pub(crate) const RECENT_GAMES: usize = 100;

/// Receives progress as training goes (a terminal bar, log lines, or nothing).
pub trait ProgressSink {
    /// Called after every update with the frames done so far.
    fn tick(&mut self, _frames: u64) {}
    /// Called with every metrics row.
    fn report(&mut self, row: &MetricsRow);
    /// Something the user should act on (e.g. a dead network); printed whatever the verbosity.
    fn warn(&mut self, message: &str) {
        eprintln!("warning: {message}");
    }
}

/// A sink that ignores everything (library use, tests).
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn report(&mut self, _row: &MetricsRow) {}
}

pub struct Trainer {
    config: Config,
    /// The batched learners and the gossip schedule (the public engine API; its round counter
    /// is kept equal to `updates`).
    engine: Engine,
    venv: VecEnv,
    agents: usize,
    /// Agents of the whole run whose frames count towards the budget: `agents`, except for a
    /// block of a distributed run (`for_block`), where every rank steps in lock-step.
    run_agents: usize,
    envs: usize,
    n_steps: usize,
    frames_per_step: u64,
    /// The segment being learned from (and, unpipelined, the one being collected).
    rollout: Rollout,
    /// Pipelined: the behaviour-policy backend, and the segment it collects meanwhile.
    actor: Option<Engine>,
    next: Rollout,
    /// Pipelined: `rollout` holds a collected segment not learned from yet.
    pending: bool,
    /// Pipelined: the actor still holds the parameters before the last update (the update that
    /// spent the budget collected nothing); the next segment is collected with them, as an
    /// uninterrupted run would have, and then the actor catches up.
    actor_behind: bool,
    act_out: ActOutput,
    /// Pipelined: s_T's frame stacks of the segment being learned from, copied before the actor
    /// steps the envs on, for the learner's own V(s_T).
    bootstrap_obs: Vec<u8>,
    /// Wall-clock seconds per phase, for `bench e2e` (phases overlap when pipelined).
    phase_seconds: PhaseSeconds,
    /// Agent steps taken by every env so far (the RNG step counter).
    step: u64,
    updates: u64,
    episodes: u64,
    recent_games: VecDeque<GameRecord>,
    last_stats: Vec<AgentLearnStats>,
    agent_offset: usize,
    /// Finished games and the last 100 scores, per agent (env index / envs_per_agent).
    agent_episodes: Vec<u64>,
    agent_recent: Vec<VecDeque<f64>>,
    /// Wall-clock seconds spent in earlier sessions of this run (resume), for SPS.
    wall_before: f64,
    /// Set from outside (Ctrl-C) to stop after the current update with a checkpoint.
    stop: Option<Arc<AtomicBool>>,
    interrupted: bool,
    /// Test hook: poison the last agent's rewards in this update (see `set_debug_nan_at_update`).
    debug_nan_at_update: Option<u64>,
    /// Frames at which the checkpoint on disk was taken, if any.
    last_checkpoint: Option<u64>,
    /// Per agent, consecutive health checks with a dead layer (`check_health`).
    dead_streak: Vec<u32>,
    /// The collecting engine's (pipelined: the actor's) last act was on `venv`'s current
    /// observations: set by every whole collection, cleared before one and by `restore`.
    obs_acted: bool,
}

/// Wall-clock time spent in each phase of training (seconds, summed over updates).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PhaseSeconds {
    /// Forward passes and sampling while collecting (incl. the bootstrap values).
    pub act: f64,
    /// Stepping the environments (and copying observations into the rollout).
    pub env: f64,
    /// Returns, forward + backward, clip, RMSprop.
    pub learn: f64,
    /// Gossip mixing (and, pipelined, handing the new parameters to the actor).
    pub mix: f64,
    /// Pipelined: wall time of the overlapped collect ‖ learn sections.
    pub overlapped: f64,
}

/// A rollout's observation bytes: page-locked host memory when the learner is on a device (its
/// upload is then a DMA transfer on the backend's upload stream that the host does not wait
/// for), else an ordinary vector.
enum ObsBytes {
    Heap(Vec<u8>),
    Pinned(HostBuffer<u8>),
}

impl Default for ObsBytes {
    fn default() -> Self {
        ObsBytes::Heap(Vec::new())
    }
}

impl std::ops::Deref for ObsBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ObsBytes::Heap(v) => v,
            ObsBytes::Pinned(b) => b,
        }
    }
}

impl std::ops::DerefMut for ObsBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            ObsBytes::Heap(v) => v,
            ObsBytes::Pinned(b) => b,
        }
    }
}

/// One n-step segment of every agent, [agents][n_steps][envs](…).
#[derive(Default)]
struct Rollout {
    obs: ObsBytes,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    dones: Vec<f32>,
    /// log μ(a|s) of the parameters that acted.
    log_probs: Vec<f32>,
    /// V(s_T) after the segment, by the parameters that acted; for a stale segment the learner
    /// replaces the values by its own before learning (module docs).
    bootstrap: ActOutput,
    /// Collected by parameters older than the learner's when it learns from it (pipelined,
    /// overlapped): the loss then applies the truncated importance ratio.
    stale: bool,
    /// The device's copy of `obs` (device backends): filled while acting, read by the learner.
    /// Whenever `obs` is written otherwise it must be cleared (see `DeviceRollout`).
    device: Option<DeviceRollout>,
}

impl Rollout {
    /// A rollout of `samples` samples, its observations in pinned memory from `engine`'s device
    /// when it has one, and a device copy of them there too.
    fn new(samples: usize, engine: &Engine) -> Result<Self> {
        let bytes = samples * OBS_BYTES;
        let obs = match engine.alloc_pinned_bytes(bytes)? {
            Some(pinned) => ObsBytes::Pinned(pinned),
            None => ObsBytes::Heap(vec![0; bytes]),
        };
        Ok(Rollout {
            obs,
            actions: vec![0; samples],
            rewards: vec![0.0; samples],
            dones: vec![0.0; samples],
            log_probs: vec![0.0; samples],
            bootstrap: ActOutput::default(),
            stale: false,
            device: engine.alloc_device_rollout()?,
        })
    }

    fn segment(&self) -> Segment<'_> {
        let off_policy = self.stale;
        Segment {
            obs: &self.obs,
            actions: &self.actions,
            rewards: &self.rewards,
            dones: &self.dones,
            bootstrap_values: &self.bootstrap.values,
            behaviour_log_probs: off_policy.then_some(&self.log_probs[..]),
        }
    }
}

/// The shape of a rollout and how to fill it.
#[derive(Clone, Copy)]
struct CollectPlan {
    agents: usize,
    envs: usize,
    steps: usize,
    clip_rewards: bool,
    /// The RNG step counter of the segment's first step.
    first_step: u64,
    /// The acting engine's previous act was on the environments' current observations (the
    /// previous segment's bootstrap act), so the first act may say `ObsChange::Same`.
    continuing: bool,
}

/// Acts for `plan.steps` steps in every env with `actor`, filling `ro` (and V(s_T)); returns the
/// games that finished, each with the step counter at which it did, and the seconds spent
/// (acting, stepping environments).
fn collect_segment(
    venv: &mut VecEnv, actor: &mut Engine, ro: &mut Rollout, act_out: &mut ActOutput, plan: CollectPlan,
) -> Result<(Vec<(u64, FinishedGame)>, f64, f64)> {
    let CollectPlan { agents, envs, steps, clip_rewards, first_step, continuing } = plan;
    let (mut act_s, mut env_s) = (0.0, 0.0);
    let mut finished = Vec::new();
    // Every step is recorded afresh below; until then the device copy proves nothing.
    if let Some(d) = ro.device.as_mut() {
        d.clear();
    }
    for t in 0..steps {
        let step = first_step + t as u64;
        let t0 = Instant::now();
        // The frames acted on are exactly the ones copied into `ro.obs` at step t below (the
        // contract that lets the learner read the device copy instead), and they are what the
        // last `venv.step` (or nothing) made of the previous act's.
        let change = match (t, continuing) {
            (0, true) => ObsChange::Same,
            (0, false) => ObsChange::Unknown,
            _ => ObsChange::Stepped { frames: venv.newest_frames(), resets: venv.dones() },
        };
        match ro.device.as_mut() {
            Some(d) => actor.act_training(venv.observations(), change, step, act_out, Some((d, t)))?,
            None => actor.act_segment_step(venv.observations(), step, act_out, t)?,
        }
        let t1 = Instant::now();
        let obs_now = venv.observations();
        for a in 0..agents {
            let dst = ((a * steps + t) * envs) * OBS_BYTES;
            ro.obs[dst..dst + envs * OBS_BYTES].copy_from_slice(&obs_now[a * envs * OBS_BYTES..(a + 1) * envs * OBS_BYTES]);
            let row = (a * steps + t) * envs;
            ro.actions[row..row + envs].copy_from_slice(&act_out.actions[a * envs..(a + 1) * envs]);
            ro.log_probs[row..row + envs].copy_from_slice(&act_out.log_probs[a * envs..(a + 1) * envs]);
        }
        venv.step(&act_out.actions)?;
        for a in 0..agents {
            let row = (a * steps + t) * envs;
            for e in 0..envs {
                let r = venv.rewards()[a * envs + e];
                ro.rewards[row + e] = if clip_rewards { clip_reward(r) } else { r };
                ro.dones[row + e] = venv.dones()[a * envs + e];
            }
        }
        finished.extend(venv.drain_finished().into_iter().map(|g| (step, g)));
        act_s += (t1 - t0).as_secs_f64();
        env_s += t1.elapsed().as_secs_f64();
    }
    let t0 = Instant::now();
    let bootstrap_step = first_step + steps as u64;
    if ro.device.is_some() {
        let change = ObsChange::Stepped { frames: venv.newest_frames(), resets: venv.dones() };
        actor.act_training(venv.observations(), change, bootstrap_step, &mut ro.bootstrap, None)?;
    } else {
        actor.act(venv.observations(), bootstrap_step, false, &mut ro.bootstrap)?;
    }
    act_s += t0.elapsed().as_secs_f64();
    Ok((finished, act_s, env_s))
}

/// Learns from `ro` (optionally poisoned by the NaN test hook), checks the parameters, and runs
/// the engine's next gossip round; returns the per-agent statistics and the seconds (learn, mix).
/// With `bootstrap_from` (s_T's frame stacks and the RNG step of an act on them), the bootstrap
/// values are first recomputed by `engine`'s own parameters (a stale segment, module docs).
fn learn_and_mix(
    engine: &mut Engine, ro: &mut Rollout, poison: bool, bootstrap_from: Option<(&[u8], u64)>,
) -> Result<(Vec<AgentLearnStats>, f64, f64)> {
    if poison {
        let last = ro.rewards.len() - ro.rewards.len() / engine.agents();
        ro.rewards[last] = f32::NAN;
    }
    let t0 = Instant::now();
    if let Some((obs, step)) = bootstrap_from {
        // Only the values are used; the sampled actions are dropped.
        engine.act(obs, step, false, &mut ro.bootstrap)?;
    }
    let stats = match &ro.device {
        Some(d) => engine.learn_recorded(&ro.segment(), d)?,
        None => engine.learn(&ro.segment())?,
    };
    // Checked before gossip, so the agent that went non-finite is the one named.
    engine.check_params_finite()?;
    let t1 = Instant::now();
    engine.gossip()?;
    Ok((stats, (t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
}

/// A finished game: when (the env's agent-step counter), where (global env index), its score.
/// Sorting by (step, env) orders games the same way however agents were scheduled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GameRecord {
    pub step: u64,
    pub env: usize,
    pub score: f64,
}

/// Mean score of the last `RECENT_GAMES` games of `games` in (step, env) order.
pub fn mean_of_last_games(games: &mut Vec<GameRecord>) -> Option<f64> {
    games.sort_by(|a, b| (a.step, a.env).cmp(&(b.step, b.env)));
    let last = &games[games.len().saturating_sub(RECENT_GAMES)..];
    (!last.is_empty()).then(|| last.iter().map(|g| g.score).sum::<f64>() / last.len() as f64)
}

impl Trainer {
    /// Validates the config and builds environments, network and backend.
    pub fn new(config: &Config) -> Result<Trainer> {
        Self::build(config, None, None)
    }

    /// Agent `agent` of a run on its own — its share of the simulators (same global env
    /// indices, so the same randomness), its own backend sampling with its global agent id, and
    /// no gossip: the asynchronous runner gossips between such trainers.
    pub fn for_agent(config: &Config, agent: usize, threads: usize) -> Result<Trainer> {
        Self::build(config, Some((agent..agent + 1, threads)), None)
    }

    /// The contiguous block `agents` of a run's agents on one backend of their own (a rank of
    /// a distributed run, `dist`): their share of the simulators (same global env indices),
    /// sampling with their global agent ids, without gossip until the caller gives the engine a
    /// [`RankGossip`](crate::dist::RankGossip). `done` counts the whole run's frames (every
    /// rank steps in lock-step), so a block stops after the same update as the full run.
    pub fn for_block(config: &Config, agents: std::ops::Range<usize>, threads: usize) -> Result<Trainer> {
        let mut t = Self::build(config, Some((agents, threads)), None)?;
        t.run_agents = config.learner_layout().0;
        Ok(t)
    }

    /// Like [`Trainer::for_agent`], with the backend on `device`, shared by every agent's
    /// trainer (see [`Engine::for_agent_on`]).
    pub fn for_agent_on(config: &Config, agent: usize, threads: usize, device: &SharedDevice) -> Result<Trainer> {
        Self::build(config, Some((agent..agent + 1, threads)), Some(device))
    }

    fn build(config: &Config, only: Option<(std::ops::Range<usize>, usize)>, device: Option<&SharedDevice>) -> Result<Trainer> {
        let mut config = config.clone();
        config.resolve_game_defaults()?;
        config.validate()?;
        let config = &config;
        let (all_agents, envs) = config.learner_layout();
        let (agents, agent_offset) = match &only {
            Some((block, _)) if !block.is_empty() && block.end <= all_agents => (block.len(), block.start),
            Some((block, _)) => return Err(crate::Error::Config(format!("agents {block:?} out of range for {all_agents} agents"))),
            None => (all_agents, 0),
        };
        let game = GameId::parse(&config.game)?;
        let settings = EnvSettings { game: game.clone(), preset: config.preset, seed: config.seed, rom: config.rom.clone(), episodic_life: None };
        let threads = only.as_ref().map_or_else(|| config.resolved_threads(), |(_, t)| (*t).max(1));
        // The built-in game steps in microseconds: threads would cost more than they save.
        let env_threads = if game == GameId::Catch { 1 } else { threads };
        let first_env = agent_offset * envs;
        let venv = env::make_vec_env_range(&settings, first_env..first_env + agents * envs, env_threads)?;
        // Pipelined: the behaviour policy gets an engine of its own (same initial parameters), so
        // acting never waits for (or races with) the learner's update of the same parameters.
        // Both live on one device (each with its own stream, so acting and learning overlap on
        // a GPU) and θ is handed from learner to actor device-to-device.
        let pipelined = config.pipeline && only.is_none();
        let opened;
        let device = match device {
            Some(d) => Some(d),
            None if pipelined => {
                opened = crate::backend::SharedDevice::open(config.backend)?;
                Some(&opened)
            }
            None => None,
        };
        let engine = Engine::build(config, venv.num_actions(), only.clone(), device)?;
        let actor = if pipelined { Some(Engine::build(config, venv.num_actions(), only, device)?) } else { None };
        let n = agents * config.n_steps * envs;
        let rollout = Rollout::new(n, &engine)?;
        let next = if actor.is_some() { Rollout::new(n, &engine)? } else { Rollout::default() };
        Ok(Trainer {
            config: config.clone(),
            frames_per_step: venv.frames_per_step(),
            engine,
            venv,
            agents,
            run_agents: agents,
            envs,
            n_steps: config.n_steps,
            rollout,
            next,
            actor,
            pending: false,
            actor_behind: false,
            act_out: ActOutput::default(),
            bootstrap_obs: Vec::new(),
            phase_seconds: PhaseSeconds::default(),
            step: 0,
            updates: 0,
            episodes: 0,
            recent_games: VecDeque::with_capacity(RECENT_GAMES),
            agent_offset,
            last_stats: Vec::new(),
            agent_episodes: vec![0; agents],
            agent_recent: vec![VecDeque::with_capacity(RECENT_GAMES); agents],
            wall_before: 0.0,
            stop: None,
            interrupted: false,
            debug_nan_at_update: None,
            last_checkpoint: None,
            dead_streak: Vec::new(),
            obs_acted: false,
        })
    }

    /// Rebuilds a trainer from a checkpoint with `config` (the checkpoint's own, possibly with a
    /// new frame budget or thread count); continues bit for bit when the checkpoint holds the
    /// environments' states. Returns the trainer and whether the resume is exact.
    pub fn from_checkpoint(checkpoint: &Checkpoint, config: &Config) -> Result<(Trainer, bool)> {
        let mut t = Trainer::new(config)?;
        let exact = t.restore(checkpoint)?;
        Ok((t, exact))
    }

    /// Loads a checkpoint's state into this trainer (built from the same config).
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<bool> {
        let actions = self.venv.num_actions();
        if (ck.agents, ck.envs_per_agent, ck.actions) != (self.agents, self.envs, actions) || ck.config.net != self.config.net {
            return Err(Error::Config(format!(
                "the checkpoint holds {} agents × {} envs with {} actions ({:?} net) but this run has {} × {} with {actions} ({:?}); resume with the checkpoint's own configuration",
                ck.agents, ck.envs_per_agent, ck.actions, ck.config.net, self.agents, self.envs, self.config.net
            )));
        }
        if let Some(rounds) = ck.agent_updates.as_ref().filter(|r| r.iter().any(|&u| u != ck.updates)) {
            return Err(Error::Config(format!(
                "the checkpoint's agents stopped at different rounds ({rounds:?}, after a failure of an asynchronous run); only the asynchronous runner (agent_threads or sync_freq > 0, as saved in its config) can continue it"
            )));
        }
        if !ck.pipeline.is_empty() && self.actor.is_none() {
            return Err(Error::Config(
                "the checkpoint holds a pipelined run's in-flight segment; continue it with `pipeline = true` (its own saved configuration)".into(),
            ));
        }
        if let Some(seg) = &ck.pipeline.pending {
            let ro = &self.rollout;
            let lens = (seg.obs.len(), seg.actions.len(), seg.rewards.len(), seg.dones.len(), seg.log_probs.len());
            if lens != (ro.obs.len(), ro.actions.len(), ro.rewards.len(), ro.dones.len(), ro.log_probs.len())
                || seg.bootstrap_values.len() != self.agents * self.envs
            {
                return Err(Error::Shape(format!(
                    "the checkpoint's pending segment ({} samples) does not fit this run's rollout ({} samples: {} agents × {} steps × {} envs); resume with the checkpoint's own configuration",
                    seg.actions.len(),
                    ro.actions.len(),
                    self.agents,
                    self.n_steps,
                    self.envs
                )));
            }
        }
        self.engine.write_params(&ck.params)?;
        self.engine.write_optimizer_state(&ck.square_avg)?;
        self.engine.set_round(ck.updates);
        // The host frames may be replaced below: no device copy stands for them any more, and
        // the environments' observations are not what the actor last acted on.
        self.obs_acted = false;
        for ro in [&mut self.rollout, &mut self.next] {
            if let Some(d) = ro.device.as_mut() {
                d.clear();
            }
        }
        if let Some(actor) = self.actor.as_mut() {
            actor.write_params(ck.pipeline.actor_params.as_deref().unwrap_or(&ck.params))?;
            self.actor_behind = ck.pipeline.actor_params.is_some();
            self.pending = false;
            if let Some(seg) = &ck.pipeline.pending {
                let ro = &mut self.rollout;
                ro.obs.copy_from_slice(&seg.obs);
                ro.actions.copy_from_slice(&seg.actions);
                ro.rewards.copy_from_slice(&seg.rewards);
                ro.dones.copy_from_slice(&seg.dones);
                ro.log_probs.copy_from_slice(&seg.log_probs);
                ro.bootstrap.values.clone_from(&seg.bootstrap_values);
                ro.stale = seg.stale;
                self.pending = true;
            }
        }
        let exact = match &ck.env_states {
            Some(states) => {
                self.venv.restore(states, &ck.observations)?;
                true
            }
            None => false,
        };
        self.step = ck.step;
        self.updates = ck.updates;
        self.episodes = ck.episodes;
        self.recent_games = ck.recent_games.iter().copied().collect();
        self.agent_episodes = ck.agent_episodes.clone();
        self.agent_recent = ck.agent_recent_scores.iter().map(|v| v.iter().copied().collect()).collect();
        self.agent_recent.resize(self.agents, VecDeque::new());
        self.wall_before = ck.wall_seconds;
        self.last_checkpoint = Some(ck.frames);
        Ok(exact)
    }

    /// Everything needed to continue this run (see `checkpoint` module docs).
    pub fn checkpoint(&mut self, wall_seconds: f64) -> Result<Checkpoint> {
        // Games that cannot save their state still get their parameters checkpointed.
        let env_states = match self.venv.save_states() {
            Ok(s) => Some(s),
            Err(Error::Unsupported(_)) => None,
            Err(e) => return Err(e),
        };
        let mut pipeline = crate::checkpoint::PipelineState::default();
        if let Some(actor) = self.actor.as_mut() {
            if self.actor_behind {
                pipeline.actor_params = Some(actor.read_params()?);
            }
            if self.pending {
                let ro = &self.rollout;
                pipeline.pending = Some(crate::checkpoint::PendingSegment {
                    obs: ro.obs.to_vec(),
                    actions: ro.actions.clone(),
                    rewards: ro.rewards.clone(),
                    dones: ro.dones.clone(),
                    log_probs: ro.log_probs.clone(),
                    bootstrap_values: ro.bootstrap.values.clone(),
                    stale: ro.stale,
                });
            }
        }
        Ok(Checkpoint {
            pipeline,
            agent_updates: None,
            config: self.config.clone(),
            actions: self.venv.num_actions(),
            agents: self.agents,
            envs_per_agent: self.envs,
            params: self.engine.read_params()?,
            square_avg: self.engine.read_optimizer_state()?,
            step: self.step,
            updates: self.updates,
            episodes: self.episodes,
            frames: self.frames(),
            wall_seconds,
            recent_games: self.recent_games.iter().copied().collect(),
            agent_episodes: self.agent_episodes.clone(),
            agent_recent_scores: self.agent_recent.iter().map(|d| d.iter().copied().collect()).collect(),
            observations: self.venv.observations().to_vec(),
            env_states,
        })
    }

    /// `train` stops after the update in progress (with a checkpoint) once `flag` is set.
    pub fn set_stop_flag(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// Whether the last `train` call stopped early because the stop flag was set.
    pub fn was_interrupted(&self) -> bool {
        self.interrupted
    }

    /// Test hook (the CLI reads it from `GALA_GPU_DEBUG_NAN_AT_UPDATE`): in update number `at`
    /// (0-based) the last agent's first reward is NaN, so its loss is NaN — a real non-finite
    /// failure travelling the real path. Never set in normal runs.
    pub fn set_debug_nan_at_update(&mut self, at: Option<u64>) {
        self.debug_nan_at_update = at;
    }

    /// Per-agent game counts and mean score over each agent's last 100 games.
    pub fn agent_returns(&self) -> Vec<(u64, Option<f64>)> {
        self.agent_episodes
            .iter()
            .zip(&self.agent_recent)
            .map(|(&n, d)| (n, if d.is_empty() { None } else { Some(d.iter().sum::<f64>() / d.len() as f64) }))
            .collect()
    }

    /// Fails naming the agent, tensor and element when any parameter is NaN or infinite.
    pub fn check_params_finite(&mut self) -> Result<()> {
        self.engine.check_params_finite()
    }

    pub fn backend_name(&self) -> &'static str {
        self.engine.backend_name()
    }

    /// Why this backend was chosen (for `--backend auto`).
    pub fn backend_choice(&self) -> &str {
        self.engine.backend_choice()
    }

    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.engine.backend_mut()
    }

    /// The pipelined trainer's actor backend (the one that acts), for tests and tools; None
    /// unpipelined (then `backend_mut` both acts and learns).
    pub fn actor_backend_mut(&mut self) -> Option<&mut dyn Backend> {
        self.actor.as_mut().map(Engine::backend_mut)
    }

    /// The engine the trainer drives.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Raw emulator frames consumed so far (all envs).
    pub fn frames(&self) -> u64 {
        self.step * (self.agents * self.envs) as u64 * self.frames_per_step
    }

    /// Raw frames one update consumes.
    pub fn frames_per_update(&self) -> u64 {
        (self.n_steps * self.agents * self.envs) as u64 * self.frames_per_step
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Global index of this trainer's first agent (0 unless it runs a block or one agent).
    pub fn agent_offset(&self) -> usize {
        self.agent_offset
    }

    pub fn episodes(&self) -> u64 {
        self.episodes
    }

    pub fn mean_return_100(&self) -> Option<f64> {
        if self.recent_games.is_empty() {
            None
        } else {
            Some(self.recent_games.iter().map(|g| g.score).sum::<f64>() / self.recent_games.len() as f64)
        }
    }

    /// The last (up to 100) finished games.
    pub fn recent_games(&self) -> impl Iterator<Item = &GameRecord> {
        self.recent_games.iter()
    }

    pub fn last_stats(&self) -> &[AgentLearnStats] {
        &self.last_stats
    }

    /// Device seconds so far of the learner's engine and (pipelined) of the actor's engine;
    /// None on the CPU backend (see `Backend::device_seconds`).
    pub fn device_seconds(&self) -> (Option<f64>, Option<f64>) {
        (self.engine.device_seconds(), self.actor.as_ref().and_then(Engine::device_seconds))
    }

    /// Bytes moved between host and device so far by the learner's engine and (pipelined) by
    /// the actor's; None on the CPU backend.
    pub fn transfer_bytes(&self) -> (Option<TransferBytes>, Option<TransferBytes>) {
        (self.engine.transfer_bytes(), self.actor.as_ref().and_then(Engine::transfer_bytes))
    }

    /// Whether the rollouts keep a device copy of their frames for the learner (default on,
    /// where the backend has a device). Off, `learn` uploads every segment's frames again as
    /// before issue 12 — the same bytes, so the same result; tests and benchmarks compare the two.
    pub fn set_device_frames(&mut self, on: bool) -> Result<()> {
        let pipelined = self.actor.is_some();
        for (ro, used) in [(&mut self.rollout, true), (&mut self.next, pipelined)] {
            if !used || on == ro.device.is_some() {
                continue;
            }
            // A fresh copy holds nothing: a pending segment is uploaded once, then recorded.
            ro.device = if on { self.engine.alloc_device_rollout()? } else { None };
        }
        Ok(())
    }

    /// Seconds spent per phase so far.
    pub fn phase_seconds(&self) -> PhaseSeconds {
        self.phase_seconds
    }

    /// Whether the frame budget is spent and every collected segment has been learned from.
    pub fn done(&self) -> bool {
        self.run_frames() >= self.config.frames && !self.pending
    }

    /// Raw frames the whole run has consumed: `frames`, or for a block of a distributed run
    /// the frames of every rank (they all step in lock-step).
    pub fn run_frames(&self) -> u64 {
        self.step * (self.run_agents * self.envs) as u64 * self.frames_per_step
    }

    fn plan(&self) -> CollectPlan {
        CollectPlan {
            agents: self.agents,
            envs: self.envs,
            steps: self.n_steps,
            clip_rewards: self.config.clip_rewards,
            first_step: self.step,
            continuing: self.obs_acted,
        }
    }

    /// Books the games a collected segment finished and advances the step counter.
    fn record_collection(&mut self, finished: Vec<(u64, FinishedGame)>, act_s: f64, env_s: f64) {
        for (step, game) in finished {
            self.episodes += 1;
            let env = self.agent_offset * self.envs + game.env;
            push_recent(&mut self.recent_games, GameRecord { step, env, score: game.end.score });
            let agent = game.env / self.envs;
            self.agent_episodes[agent] += 1;
            push_recent(&mut self.agent_recent[agent], game.end.score);
        }
        self.step += self.n_steps as u64;
        self.phase_seconds.act += act_s;
        self.phase_seconds.env += env_s;
    }

    /// One update for every agent (module docs).
    pub fn update(&mut self) -> Result<()> {
        if self.actor.is_some() {
            return self.update_pipelined();
        }
        let plan = self.plan();
        self.obs_acted = false;
        let (finished, act_s, env_s) = collect_segment(&mut self.venv, &mut self.engine, &mut self.rollout, &mut self.act_out, plan)?;
        self.obs_acted = true;
        self.record_collection(finished, act_s, env_s);
        let poison = self.debug_nan_at_update == Some(self.updates);
        let (stats, learn_s, mix_s) = learn_and_mix(&mut self.engine, &mut self.rollout, poison, None)?;
        self.last_stats = stats;
        self.phase_seconds.learn += learn_s;
        self.phase_seconds.mix += mix_s;
        self.updates += 1;
        Ok(())
    }

    /// Pipelined update: learn from the pending segment while the actor collects the next one.
    fn update_pipelined(&mut self) -> Result<()> {
        if !self.pending {
            // The first segment (and the first after a drained budget): nothing to overlap with.
            let plan = self.plan();
            self.obs_acted = false;
            let actor = self.actor.as_mut().expect("pipelined trainer has an actor");
            let (finished, act_s, env_s) = collect_segment(&mut self.venv, actor, &mut self.rollout, &mut self.act_out, plan)?;
            self.obs_acted = true;
            self.record_collection(finished, act_s, env_s);
            // The first segment is collected by the learner's current parameters: on-policy,
            // plain A2C. After a drained budget the actor still holds the parameters before the
            // last update: one update old, as the segment would have been without the pause.
            self.rollout.stale = self.actor_behind;
            self.pending = true;
            if self.actor_behind {
                let t0 = Instant::now();
                self.engine.copy_params_into(self.actor.as_mut().expect("pipelined trainer has an actor"))?;
                self.actor_behind = false;
                self.phase_seconds.mix += t0.elapsed().as_secs_f64();
            }
        }
        let collect_next = self.run_frames() < self.config.frames;
        let plan = self.plan();
        if collect_next {
            self.obs_acted = false;
        }
        let poison = self.debug_nan_at_update == Some(self.updates);
        let started = Instant::now();
        // The segment's s_T (the envs' current stacks), kept before the collector steps on; an
        // act on it is the one this segment's bootstrap act would be, so it takes its RNG step.
        let stale = self.rollout.stale;
        if stale {
            self.bootstrap_obs.clear();
            self.bootstrap_obs.extend_from_slice(self.venv.observations());
        }
        let (learned, collected) = {
            let Trainer { engine, actor, venv, rollout, next, act_out, bootstrap_obs, .. } = self;
            let actor = actor.as_mut().expect("pipelined trainer has an actor");
            let bootstrap_from = stale.then_some((&bootstrap_obs[..], plan.first_step));
            std::thread::scope(|scope| {
                let collector = collect_next.then(|| scope.spawn(|| collect_segment(venv, actor, next, act_out, plan)));
                let learned = learn_and_mix(engine, rollout, poison, bootstrap_from);
                let collected = collector
                    .map(|h| h.join().unwrap_or_else(|_| Err(Error::Backend("the rollout collector thread panicked".into()))));
                (learned, collected)
            })
        };
        self.phase_seconds.overlapped += started.elapsed().as_secs_f64();
        let (stats, learn_s, mix_s) = learned?;
        self.last_stats = stats;
        self.phase_seconds.learn += learn_s;
        self.phase_seconds.mix += mix_s;
        match collected {
            Some(result) => {
                let (finished, act_s, env_s) = result?;
                self.obs_acted = true;
                self.record_collection(finished, act_s, env_s);
                std::mem::swap(&mut self.rollout, &mut self.next);
                // Collected by θ_s while the learner made θ_{s+1}: one update old.
                self.rollout.stale = true;
                // The next segment is collected with the parameters just learned (one update
                // old when it is learned from).
                let t0 = Instant::now();
                self.engine.copy_params_into(self.actor.as_mut().expect("pipelined trainer has an actor"))?;
                self.phase_seconds.mix += t0.elapsed().as_secs_f64();
            }
            None => {
                // The budget is spent: nothing was collected meanwhile. The actor keeps θ_s, so
                // that a continuation (a larger budget, a resume) collects the next segment as
                // this update would have.
                self.pending = false;
                self.actor_behind = true;
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// SHA-256 of all agents' parameters.
    pub fn params_sha256(&mut self) -> Result<String> {
        Ok(params_sha256(&self.engine.read_params()?))
    }

    pub(crate) fn agent_metrics(&self) -> Vec<AgentMetricsRow> {
        self.agent_returns()
            .into_iter()
            .enumerate()
            .map(|(agent, (episodes, ret))| {
                let s = self.last_stats.get(agent).copied().unwrap_or_default();
                AgentMetricsRow {
                    agent,
                    episodes,
                    mean_return_100: ret,
                    value_loss: s.value_loss,
                    policy_loss: s.policy_loss,
                    entropy: s.entropy,
                    grad_norm: s.grad_norm,
                }
            })
            .collect()
    }

    fn metrics_row(&mut self, started: Instant) -> Result<MetricsRow> {
        let n = self.last_stats.len().max(1) as f64;
        let mean = |f: fn(&AgentLearnStats) -> f64| self.last_stats.iter().map(f).sum::<f64>() / n;
        let wall = self.wall_before + started.elapsed().as_secs_f64();
        Ok(MetricsRow {
            frames: self.frames(),
            updates: self.updates,
            episodes: self.episodes,
            mean_return_100: self.mean_return_100(),
            consensus_distance: self.engine.consensus_distance()?,
            value_loss: mean(|s| s.value_loss),
            policy_loss: mean(|s| s.policy_loss),
            entropy: mean(|s| s.entropy),
            grad_norm: mean(|s| s.grad_norm),
            sps: self.frames() as f64 / wall.max(1e-9),
            wall_seconds: wall,
        })
    }

    /// Measures every agent's network on its current observations (`algo::health`), logs it to
    /// the run folder and warns when an agent's layer has been dead at `health::DEAD_CHECKS` checks
    /// in a row.
    fn check_health(&mut self, run: &mut RunDir, progress: &mut dyn ProgressSink) -> Result<()> {
        let params = self.engine.read_params()?;
        let spec = self.engine.spec().net.clone();
        let layout = spec.layout();
        let healths: Vec<NetHealth> = params
            .chunks_exact(layout.total)
            .zip(self.venv.observations().chunks_exact(self.envs * OBS_BYTES))
            .map(|(agent_params, agent_obs)| NetHealth::measure(&spec, &layout, agent_params, agent_obs))
            .collect();
        run.append_health(self.frames(), self.updates, self.agent_offset, &healths)?;
        let torch_form = self.config.rms_form == RmsForm::Torch;
        self.dead_streak.resize(healths.len(), 0);
        let mut newly_dead = Vec::new();
        for (a, h) in healths.iter().enumerate() {
            // Counts on past the threshold, so each dying is reported once, not at every check.
            self.dead_streak[a] = if h.dead_layers().is_empty() { 0 } else { self.dead_streak[a].saturating_add(1) };
            if self.dead_streak[a] == health::DEAD_CHECKS {
                newly_dead.push(a);
            }
        }
        if let Some(&first) = newly_dead.first() {
            let agents: Vec<usize> = newly_dead.iter().map(|a| self.agent_offset + a).collect();
            if let Some(w) = healths[first].dead_layer_warning(&agents, self.config.lr, torch_form) {
                progress.warn(&w);
            }
        }
        Ok(())
    }

    /// Saves a checkpoint into the run folder (durably; the previous one survives a failure).
    fn save_checkpoint(&mut self, run: &RunDir, started: Instant) -> Result<()> {
        let wall = self.wall_before + started.elapsed().as_secs_f64();
        self.checkpoint(wall)?.save(&run.checkpoint_path())?;
        self.last_checkpoint = Some(self.frames());
        Ok(())
    }

    /// Adds to a failure where training stopped and what is kept on disk.
    fn failure(&self, e: Error, run: Option<&RunDir>) -> Error {
        let kept = match (run, self.last_checkpoint) {
            (Some(run), Some(f)) => format!("the last good checkpoint (frame {f}) is kept in {}", run.checkpoint_path().display()),
            (Some(_), None) => "no checkpoint had been saved yet (use --save-every to keep some)".into(),
            (None, _) => "nothing was saved (no run folder)".into(),
        };
        // The failing update's rollout was collected but not learned from: name its frames.
        let at = format!(
            "update {} (0-based; rollout of frames {}–{}, agent steps to {})",
            self.updates,
            self.frames().saturating_sub(self.frames_per_update()),
            self.frames(),
            self.step
        );
        match e {
            Error::NonFinite(m) => {
                // Advice that works: a resume may lower the learning rate (recorded in the run's
                // config_history.csv); with no checkpoint there is nothing to resume.
                let lr = format!("{:.3e}", self.config.lr / 2.0);
                let advice = match (run, self.last_checkpoint) {
                    (Some(run), Some(_)) => format!("continue with a lower learning rate: gala-gpu train --resume {} --lr {lr} (or check the rewards)", run.path().display()),
                    _ => format!("start a new run with a lower learning rate (e.g. --lr {lr}) and --save-every, or check the rewards"),
                };
                Error::NonFinite(format!("{m} at {at}; training stopped; {kept}; {advice}"))
            }
            other => Error::Backend(format!("{other} at {at}; training stopped; {kept}")),
        }
    }

    /// Trains until the frame budget is spent, writing metrics rows to `run` (if any) and
    /// reporting to `progress`; returns the summary (also written to the run folder).
    /// With a run folder, a checkpoint is saved every `save_every` frames, at the end and when
    /// the stop flag is set (then `was_interrupted` is true and no summary.json is written).
    /// A failed update (e.g. a non-finite loss) stops training, leaving the last checkpoint.
    pub fn train(&mut self, mut run: Option<&mut RunDir>, progress: &mut dyn ProgressSink) -> Result<Summary> {
        let started = Instant::now();
        self.interrupted = false;
        let save_every = self.config.save_every;
        let next_save = |frames: u64| frames.checked_div(save_every).map_or(u64::MAX, |n| (n + 1) * save_every);
        let mut save_at = next_save(self.frames());
        while !self.done() {
            if self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                self.interrupted = true;
                break;
            }
            if let Err(e) = self.update() {
                return Err(self.failure(e, run.as_deref()));
            }
            progress.tick(self.frames());
            if self.updates % self.config.metrics_every == 0 || self.done() {
                let row = self.metrics_row(started)?;
                if let Some(run) = run.as_deref_mut() {
                    run.append_metrics(&row)?;
                    run.append_agent_metrics(&row, &self.agent_metrics())?;
                }
                progress.report(&row);
            }
            if health::due(self.updates) {
                if let Some(run) = run.as_deref_mut() {
                    self.check_health(run, progress)?;
                }
            }
            if self.frames() >= save_at {
                if let Some(run) = run.as_deref() {
                    if self.frames() < self.config.frames {
                        self.save_checkpoint(run, started)?;
                    }
                }
                save_at = next_save(self.frames());
            }
        }
        let wall = self.wall_before + started.elapsed().as_secs_f64();
        if let Some(run) = run.as_deref() {
            self.save_checkpoint(run, started)?;
        }
        let summary = Summary {
            game: GameId::parse(&self.config.game)?.canonical().to_string(),
            algo: format!("{:?}", self.config.algo).to_lowercase(),
            seed: self.config.seed,
            agents: self.agents,
            envs_per_agent: self.envs,
            frames: self.frames(),
            updates: self.updates,
            episodes: self.episodes,
            mean_return_100: self.mean_return_100(),
            consensus_distance: self.engine.consensus_distance()?,
            sps: self.frames() as f64 / wall.max(1e-9),
            wall_seconds: wall,
            backend: self.engine.backend_name().to_string(),
            params_sha256: self.params_sha256()?,
        };
        if let Some(run) = run {
            if !self.interrupted {
                run.write_summary(&summary)?;
            }
        }
        Ok(summary)
    }
}

fn push_recent<T>(recent: &mut VecDeque<T>, item: T) {
    if recent.len() == RECENT_GAMES {
        recent.pop_front();
    }
    recent.push_back(item);
}

/// sign(r): the DeepMind reward clipping used for learning.
pub fn clip_reward(r: f32) -> f32 {
    if r > 0.0 {
        1.0
    } else if r < 0.0 {
        -1.0
    } else {
        0.0
    }
}

// The observation layout the trainer copies relies on whole frames.
const _: () = assert!(OBS_BYTES % FRAME_BYTES == 0);

#[cfg(test)]
mod tests {
    use super::*;

    /// Pipelined, a stale segment is learned from with V(s_T) by the learner's parameters, not
    /// by the behaviour parameters that acted (module docs: the lagging targets killed the trunk).
    /// Without the learner's act in `update_pipelined` the last assertion fails.
    #[test]
    fn a_stale_segment_bootstraps_from_the_learners_values() {
        let config = Config {
            game: "catch".into(),
            agents: 2,
            envs_per_agent: 3,
            n_steps: 5,
            frames: 4 * 2 * 3 * 5,
            backend: crate::backend::BackendKind::Cpu,
            threads: 1,
            seed: 5,
            pipeline: true,
            ..Config::default()
        };
        let mut t = Trainer::new(&config).unwrap();
        t.update().unwrap(); // learns segment 0 (θ0 → θ1) while the actor collects segment 1 with θ0
        assert!(t.rollout.stale, "segment 1 is one update old when it is learned from");
        let s_t = t.venv.observations().to_vec();
        let (mut learner_v, mut actor_v) = (ActOutput::default(), ActOutput::default());
        t.engine.act(&s_t, t.step, false, &mut learner_v).unwrap();
        let mut behaviour = Trainer::new(&config).unwrap(); // θ0, as the actor held it
        behaviour.engine.act(&s_t, t.step, false, &mut actor_v).unwrap();
        assert_eq!(t.rollout.bootstrap.values, actor_v.values, "collected: the actor's V(s_T)");
        assert_ne!(learner_v.values, actor_v.values, "one update must change V");
        t.update().unwrap(); // learns segment 1; the learned-from rollout is now `next`
        assert_eq!(t.next.bootstrap.values, learner_v.values, "learned from with the learner's V(s_T)");
    }
}
