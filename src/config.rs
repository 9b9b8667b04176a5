//! Every setting of a run in one struct: defaults (DESIGN.md / GALA's code), then a TOML file,
//! then command-line flags, then validation. The resolved config is written to the run folder
//! as config.toml and loads back unchanged.

use crate::algo::topology::Topology;
use crate::backend::{BackendKind, LearnerHyper};
use crate::env::{EnvPreset, GameId};
use crate::error::{Error, Result};
use crate::model::NetPreset;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// Gossip between N A2C actor-learners.
    Gala,
    /// The A2C baseline: one learner holding all agents × envs-per-agent simulators.
    A2c,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub algo: Algo,
    /// Actor-learners (with `a2c`: how many agents' worth of simulators the single learner holds).
    pub agents: usize,
    pub envs_per_agent: usize,
    pub n_steps: usize,
    pub gamma: f64,
    pub lr: f64,
    pub rms_alpha: f64,
    pub rms_eps: f64,
    pub entropy_coef: f64,
    pub value_coef: f64,
    pub max_grad_norm: f64,
    pub topology: Topology,
    /// Peers per gossip round (k).
    pub peers: usize,
    /// Unmixed rounds allowed before a receiver blocks; 0 = lock-step gossip.
    pub sync_freq: u64,
    /// Run every agent on its own thread with its own backend (implied by sync_freq > 0);
    /// with sync_freq = 0 this is lock-step gossip, bit-identical to the batched trainer.
    pub agent_threads: bool,
    /// Seconds a blocked gossip wait may last before the run stops naming the silent peer.
    pub gossip_timeout: f64,
    /// Overlap rollouts with learning (HTS-RL).
    pub pipeline: bool,
    pub net: NetPreset,
    /// Atari preprocessing preset.
    pub preset: EnvPreset,
    pub game: String,
    pub rom: Option<PathBuf>,
    pub backend: BackendKind,
    /// Budget in raw emulator frames (agent steps × 4 on Atari, agent steps on catch);
    /// 0 = the game's default (`resolve_game_defaults`).
    pub frames: u64,
    pub seed: u64,
    /// Worker threads for the CPU backend and the environments; 0 = all cores.
    pub threads: usize,
    /// Parent folder of run folders.
    pub out: PathBuf,
    /// Checkpoint every this many frames (0 = only at the end).
    pub save_every: u64,
    /// Learn from sign-clipped rewards (the DeepMind/baselines setting); scores are logged unclipped.
    pub clip_rewards: bool,
    /// Write a metrics.csv row every this many updates.
    pub metrics_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            algo: Algo::Gala,
            agents: 4,
            envs_per_agent: 16,
            n_steps: 5,
            gamma: 0.99,
            lr: 7e-4,
            rms_alpha: 0.99,
            rms_eps: 1e-5,
            entropy_coef: 0.01,
            value_coef: 0.5,
            max_grad_norm: 0.5,
            topology: Topology::Ring,
            peers: 1,
            sync_freq: 0,
            agent_threads: false,
            gossip_timeout: 600.0,
            pipeline: false,
            net: NetPreset::Gala,
            preset: EnvPreset::Gala,
            game: "pong".into(),
            rom: None,
            backend: BackendKind::Auto,
            frames: 0,
            seed: 1,
            threads: 0,
            out: PathBuf::from("runs"),
            save_every: 0,
            clip_rewards: true,
            metrics_every: 10,
        }
    }
}

/// Converts a TOML error into one line: "FILE:LINE: message".
fn toml_error_line(path: &Path, text: &str, err: &toml::de::Error) -> String {
    let line = err.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = err.message().replace('\n', " ");
    match line {
        Some(l) => format!("{}:{l}: {msg}", path.display()),
        None => format!("{}: {msg}", path.display()),
    }
}

impl Config {
    /// Parses a TOML file over the defaults; unknown keys are rejected by name.
    pub fn from_toml_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Config(format!("config {}", toml_error_line(origin, text, &e))))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("Config always serialises to TOML")
    }

    /// (learners, simulators per learner) as actually run: `a2c` is one learner with all of them.
    pub fn learner_layout(&self) -> (usize, usize) {
        match self.algo {
            Algo::Gala => (self.agents, self.envs_per_agent),
            Algo::A2c => (1, self.agents * self.envs_per_agent),
        }
    }

    /// Whether agents gossip at all.
    pub fn gossips(&self) -> bool {
        self.algo == Algo::Gala && self.agents > 1
    }

    /// Whether agents run on their own threads (asynchronous gossip, or lock-step on threads).
    pub fn asynchronous(&self) -> bool {
        self.gossips() && (self.agent_threads || self.sync_freq > 0)
    }

    pub fn hyper(&self) -> LearnerHyper {
        LearnerHyper {
            gamma: self.gamma as f32,
            lr: self.lr as f32,
            rms_alpha: self.rms_alpha as f32,
            rms_eps: self.rms_eps as f32,
            entropy_coef: self.entropy_coef,
            value_coef: self.value_coef,
            max_grad_norm: self.max_grad_norm,
        }
    }

    /// Worker threads to use (0 = every core).
    pub fn resolved_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }

    /// Fills in settings whose default depends on the game: the frame budget is 40M frames for
    /// Atari (10M agent steps, the A2C reference's `num_env_steps`) and 200k for `catch`.
    pub fn resolve_game_defaults(&mut self) -> Result<()> {
        if self.frames == 0 {
            self.frames = match GameId::parse(&self.game).map_err(|e| Error::Config(format!("invalid `game`: {e}")))? {
                GameId::Catch => 200_000,
                GameId::Atari(_) => 40_000_000,
            };
        }
        Ok(())
    }

    /// Checks every value; the first problem is reported naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::Config(format!("invalid `{key}`: {why}")));
        let positive = |key: &str, v: f64| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(key, format!("must be a finite number > 0, got {v}"))
            }
        };
        positive("lr", self.lr)?;
        positive("rms_eps", self.rms_eps)?;
        positive("max_grad_norm", self.max_grad_norm)?;
        if !(0.0..=1.0).contains(&self.gamma) {
            return bad("gamma", format!("must be in [0, 1], got {}", self.gamma));
        }
        if !(0.0..1.0).contains(&self.rms_alpha) {
            return bad("rms_alpha", format!("must be in [0, 1), got {}", self.rms_alpha));
        }
        for (key, v) in [("entropy_coef", self.entropy_coef), ("value_coef", self.value_coef)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("must be a finite number ≥ 0, got {v}"));
            }
        }
        for (key, v) in [("agents", self.agents), ("envs_per_agent", self.envs_per_agent), ("n_steps", self.n_steps)] {
            if v == 0 {
                return bad(key, "must be at least 1, got 0".into());
            }
        }
        if self.metrics_every == 0 {
            return bad("metrics_every", "must be at least 1, got 0".into());
        }
        if self.gossips() {
            crate::algo::topology::GossipGraph::new(self.topology, self.agents, self.peers)
                .map_err(|e| Error::Config(format!("invalid `peers`/`topology`: {e}")))?;
        }
        if (self.sync_freq > 0 || self.agent_threads) && !self.gossips() {
            return bad(
                if self.sync_freq > 0 { "sync_freq" } else { "agent_threads" },
                "asynchronous gossip needs `algo = gala` with at least 2 agents".into(),
            );
        }
        if !(self.gossip_timeout.is_finite() && self.gossip_timeout > 0.0) {
            return bad("gossip_timeout", format!("must be a finite number of seconds > 0, got {}", self.gossip_timeout));
        }
        if self.pipeline && self.asynchronous() {
            return bad("pipeline", "pipelining overlaps the batched trainer's rollouts and updates; it cannot be combined with asynchronous gossip (sync_freq > 0 or agent_threads)".into());
        }
        GameId::parse(&self.game).map_err(|e| Error::Config(format!("invalid `game`: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_through_toml() {
        let c = Config { lr: 1.4e-3, agents: 8, rom: Some("x.bin".into()), ..Config::default() };
        let back = Config::from_toml_str(&c.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("agents = 2\nlearning_rate = 0.1\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("learning_rate") && e.contains("c.toml:2"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn validation_names_the_setting() {
        let e = Config { lr: -1.0, ..Config::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("`lr`"), "{e}");
        let e = Config { agents: 0, ..Config::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("`agents`"), "{e}");
        let e = Config { agents: 4, peers: 4, ..Config::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("peers"), "{e}");
        assert!(Config { algo: Algo::A2c, agents: 1, ..Config::default() }.validate().is_ok());
        assert!(Config::default().validate().is_ok());
    }
}
