//! The training loop: N A2C actor-learners, batched on one backend, with lock-step gossip.
//!
//! One update (all agents together, GALA's per-agent loop batched):
//!   1. act for n_steps in every env, sampling from the policy with the counter-based RNG;
//!   2. V(s_T) for the bootstrap, by the same parameters that acted;
//!   3. backend.learn: n-step returns, A2C loss, backward, per-agent clip, RMSprop;
//!   4. gossip: each agent mixes in its in-peers' parameters (skipped for a2c / one agent).
//! Everything that decides the result is a function of the seed: environment randomness is keyed
//! by (seed, env), action sampling by (seed, agent, env, step). Wall-clock time is only reported.

use super::topology::GossipGraph;
use crate::backend::{self, ActOutput, AgentLearnStats, Backend, BackendSpec, Segment};
use crate::config::Config;
use crate::env::{self, EnvSettings, GameId, VecEnv, FRAME_BYTES};
use crate::error::Result;
use crate::model::{init_params, NetSpec, OBS_BYTES};
use crate::run::{params_sha256, MetricsRow, RunDir, Summary};
use std::collections::VecDeque;
use std::time::Instant;

/// Finished games kept for `mean_return_100`.
const RECENT_GAMES: usize = 100;

/// Receives progress as training goes (a terminal bar, log lines, or nothing).
pub trait ProgressSink {
    /// Called after every update with the frames done so far.
    fn tick(&mut self, _frames: u64) {}
    /// Called with every metrics row.
    fn report(&mut self, row: &MetricsRow);
}

/// A sink that ignores everything (library use, tests).
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn report(&mut self, _row: &MetricsRow) {}
}

pub struct Trainer {
    config: Config,
    backend: Box<dyn Backend>,
    backend_choice: String,
    venv: VecEnv,
    graph: Option<GossipGraph>,
    agents: usize,
    envs: usize,
    n_steps: usize,
    frames_per_step: u64,
    // Rollout storage, [agents][n_steps][envs](…).
    obs: Vec<u8>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    dones: Vec<f32>,
    act_out: ActOutput,
    bootstrap: ActOutput,
    /// Agent steps taken by every env so far (the RNG step counter).
    step: u64,
    updates: u64,
    episodes: u64,
    recent_games: VecDeque<GameRecord>,
    last_stats: Vec<AgentLearnStats>,
    agent_offset: usize,
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
        Self::build(config, None)
    }

    /// Agent `agent` of a run on its own — its share of the simulators (same global env
    /// indices, so the same randomness), its own backend sampling with its global agent id, and
    /// no gossip: the asynchronous runner gossips between such trainers.
    pub fn for_agent(config: &Config, agent: usize, threads: usize) -> Result<Trainer> {
        Self::build(config, Some((agent, threads)))
    }

    fn build(config: &Config, only: Option<(usize, usize)>) -> Result<Trainer> {
        let mut config = config.clone();
        config.resolve_game_defaults()?;
        config.validate()?;
        let config = &config;
        let (all_agents, envs) = config.learner_layout();
        let (agents, agent_offset) = match only {
            Some((agent, _)) if agent < all_agents => (1, agent),
            Some((agent, _)) => return Err(crate::Error::Config(format!("agent {agent} out of range for {all_agents} agents"))),
            None => (all_agents, 0),
        };
        let game = GameId::parse(&config.game)?;
        let settings = EnvSettings { game: game.clone(), preset: config.preset, seed: config.seed, rom: config.rom.clone() };
        let threads = only.map_or_else(|| config.resolved_threads(), |(_, t)| t.max(1));
        // The built-in game steps in microseconds: threads would cost more than they save.
        let env_threads = if game == GameId::Catch { 1 } else { threads };
        let first_env = agent_offset * envs;
        let venv = env::make_vec_env_range(&settings, first_env..first_env + agents * envs, env_threads)?;
        let net = NetSpec::new(config.net, venv.num_actions());
        let spec = BackendSpec { net: net.clone(), agents, agent_offset, envs_per_agent: envs, n_steps: config.n_steps, seed: config.seed, hyper: config.hyper() };
        let initial = init_params(&net, config.seed);
        let (backend, backend_choice) = backend::create(config.backend, spec, &initial, threads)?;
        let graph = if config.gossips() && only.is_none() {
            Some(GossipGraph::new(config.topology, agents, config.peers)?)
        } else {
            None
        };
        let n = agents * config.n_steps * envs;
        Ok(Trainer {
            config: config.clone(),
            frames_per_step: venv.frames_per_step(),
            backend,
            backend_choice,
            venv,
            graph,
            agents,
            envs,
            n_steps: config.n_steps,
            obs: vec![0; n * OBS_BYTES],
            actions: vec![0; n],
            rewards: vec![0.0; n],
            dones: vec![0.0; n],
            act_out: ActOutput::default(),
            bootstrap: ActOutput::default(),
            step: 0,
            updates: 0,
            episodes: 0,
            recent_games: VecDeque::with_capacity(RECENT_GAMES),
            agent_offset,
            last_stats: Vec::new(),
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Why this backend was chosen (for `--backend auto`).
    pub fn backend_choice(&self) -> &str {
        &self.backend_choice
    }

    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
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

    /// One update for every agent (module docs).
    pub fn update(&mut self) -> Result<()> {
        let (agents, envs, steps) = (self.agents, self.envs, self.n_steps);
        let clip = self.config.clip_rewards;
        for t in 0..steps {
            self.backend.act(self.venv.observations(), self.step, false, &mut self.act_out)?;
            let obs_now = self.venv.observations();
            for a in 0..agents {
                let dst = ((a * steps + t) * envs) * OBS_BYTES;
                self.obs[dst..dst + envs * OBS_BYTES].copy_from_slice(&obs_now[a * envs * OBS_BYTES..(a + 1) * envs * OBS_BYTES]);
                let row = (a * steps + t) * envs;
                self.actions[row..row + envs].copy_from_slice(&self.act_out.actions[a * envs..(a + 1) * envs]);
            }
            self.venv.step(&self.act_out.actions)?;
            for a in 0..agents {
                let row = (a * steps + t) * envs;
                for e in 0..envs {
                    let r = self.venv.rewards()[a * envs + e];
                    self.rewards[row + e] = if clip { clip_reward(r) } else { r };
                    self.dones[row + e] = self.venv.dones()[a * envs + e];
                }
            }
            for game in self.venv.drain_finished() {
                self.episodes += 1;
                if self.recent_games.len() == RECENT_GAMES {
                    self.recent_games.pop_front();
                }
                let env = self.agent_offset * self.envs + game.env;
                self.recent_games.push_back(GameRecord { step: self.step, env, score: game.end.score });
            }
            self.step += 1;
        }
        self.backend.act(self.venv.observations(), self.step, false, &mut self.bootstrap)?;
        let segment = Segment {
            obs: &self.obs,
            actions: &self.actions,
            rewards: &self.rewards,
            dones: &self.dones,
            bootstrap_values: &self.bootstrap.values,
            behaviour_log_probs: None,
        };
        self.last_stats = self.backend.learn(&segment)?;
        if let Some(graph) = &self.graph {
            self.backend.mix(&graph.in_peers(self.updates))?;
        }
        self.updates += 1;
        Ok(())
    }

    /// SHA-256 of all agents' parameters.
    pub fn params_sha256(&mut self) -> Result<String> {
        Ok(params_sha256(&self.backend.read_params()?))
    }

    fn metrics_row(&mut self, started: Instant) -> Result<MetricsRow> {
        let n = self.last_stats.len().max(1) as f64;
        let mean = |f: fn(&AgentLearnStats) -> f64| self.last_stats.iter().map(f).sum::<f64>() / n;
        let wall = started.elapsed().as_secs_f64();
        Ok(MetricsRow {
            frames: self.frames(),
            updates: self.updates,
            episodes: self.episodes,
            mean_return_100: self.mean_return_100(),
            consensus_distance: self.backend.consensus_distance()?,
            value_loss: mean(|s| s.value_loss),
            policy_loss: mean(|s| s.policy_loss),
            entropy: mean(|s| s.entropy),
            grad_norm: mean(|s| s.grad_norm),
            sps: self.frames() as f64 / wall.max(1e-9),
            wall_seconds: wall,
        })
    }

    /// Trains until the frame budget is spent, writing metrics rows to `run` (if any) and
    /// reporting to `progress`; returns the summary (also written to the run folder).
    pub fn train(&mut self, mut run: Option<&mut RunDir>, progress: &mut dyn ProgressSink) -> Result<Summary> {
        let started = Instant::now();
        while self.frames() < self.config.frames {
            self.update()?;
            progress.tick(self.frames());
            if self.updates % self.config.metrics_every == 0 || self.frames() >= self.config.frames {
                let row = self.metrics_row(started)?;
                if let Some(run) = run.as_deref_mut() {
                    run.append_metrics(&row)?;
                }
                progress.report(&row);
            }
        }
        let wall = started.elapsed().as_secs_f64();
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
            consensus_distance: self.backend.consensus_distance()?,
            sps: self.frames() as f64 / wall.max(1e-9),
            wall_seconds: wall,
            backend: self.backend.name().to_string(),
            params_sha256: self.params_sha256()?,
        };
        if let Some(run) = run {
            run.write_summary(&summary)?;
        }
        Ok(summary)
    }
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
