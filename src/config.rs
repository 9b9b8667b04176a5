//! Every setting of a run in one struct: defaults (DESIGN.md / GALA's code), then a TOML file,
//! then command-line flags, then validation. The resolved config is written to the run folder
//! as config.toml and loads back unchanged.

use crate::algo::topology::Topology;
use crate::backend::{BackendKind, LearnerHyper, Precision};
use crate::env::{EnvPreset, GameId};
use crate::error::{Error, Result};
use crate::model::NetPreset;
use serde::{Deserialize, Serialize};
use crate::backend::cpu::optim::RmsForm;
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
    /// The identity of the run this configuration belongs to, drawn when its run folder is
    /// created (`run::new_run_id`) and carried by its config.toml and every checkpoint, so that
    /// `--resume` refuses a checkpoint copied in from another run. None: a configuration not
    /// tied to a run folder (library use, runs written before run ids existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub algo: Algo,
    /// Actor-learners (with `a2c`: how many agents' worth of simulators the single learner holds).
    pub agents: usize,
    pub envs_per_agent: usize,
    pub n_steps: usize,
    pub gamma: f64,
    pub lr: f64,
    pub rms_alpha: f64,
    pub rms_eps: f64,
    /// RMSprop's form: `torch` (v from 0, eps outside √) or `tf` (v from 1, eps inside: baselines,
    /// SB3's RMSpropTFLike). A file without the key is a run from before the key existed: torch.
    #[serde(default)]
    pub rms_form: RmsForm,
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
    /// The conv/fc GEMMs' arithmetic: `fp32` (default), `tf32` or `tf32-conv` (tensor cores;
    /// cuda on sm_80+ and sim only). A file without the key is a run from before the key existed: fp32.
    #[serde(default)]
    pub precision: Precision,
    /// Budget in raw emulator frames (agent steps × 4 on Atari, agent steps on catch);
    /// 0 = not set: the game's default (`resolve_game_defaults`). A file that writes
    /// `frames = 0` is refused (`nonzero_frames`), as `--frames 0` is.
    #[serde(deserialize_with = "nonzero_frames", skip_serializing_if = "frames_unset")]
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
            run_id: None,
            algo: Algo::Gala,
            agents: 4,
            envs_per_agent: 16,
            n_steps: 5,
            gamma: 0.99,
            lr: 7e-4,
            rms_alpha: 0.99,
            rms_eps: 1e-5,
            rms_form: RmsForm::Torch,
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
            precision: Precision::Fp32,
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

/// The most threads a run (or eval, or a benchmark) may ask for: beyond this, spawning them
/// alone takes seconds to minutes and no machine has the cores to use them.
pub const MAX_THREADS: usize = 1024;

/// The longest `gossip_timeout` (seconds, about 31 years: "wait forever" in practice); larger
/// values overflow the clock arithmetic of the wait.
pub const MAX_GOSSIP_TIMEOUT: f64 = 1e9;

/// Why `frames = 0` is not a budget (shared by the TOML field and the `--frames` flag).
pub const FRAMES_ZERO: &str = "0 is not a frame budget: give the total number of frames to train to, or leave it out for the default (40M on Atari, 200k on catch)";

fn frames_unset(frames: &u64) -> bool {
    *frames == 0
}

fn nonzero_frames<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom(FRAMES_ZERO)),
        n => Ok(n),
    }
}

/// Checks a thread count given on the command line or in a file (0 = all cores).
pub fn check_threads(key: &str, threads: usize) -> Result<()> {
    if threads > MAX_THREADS {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        return Err(Error::Config(format!(
            "invalid `{key}`: {threads} threads is more than the {MAX_THREADS} allowed (this machine has {cores} cores; 0 uses them all)"
        )));
    }
    Ok(())
}

/// The settings `train --resume` may change (each with its flag, or by editing the run's
/// config.toml): budgets, logging, threads, timeouts, and the hyper-parameters that change no
/// shape and no saved state (so a run that diverged can continue with a lower learning rate).
/// Everything else is the run's identity and is refused.
pub const RESUMABLE: &[&str] =
    &["frames", "save_every", "metrics_every", "threads", "gossip_timeout", "lr", "entropy_coef", "value_coef", "max_grad_norm"];

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

    /// The TOML text of config.toml. Cannot fail on a configuration that passed `validate`
    /// (which refuses what TOML cannot hold: integers above i64::MAX, non-UTF-8 paths).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a validated Config serialises to TOML")
    }

    /// The settings whose values differ between `self` and `other`, as (key, self's value,
    /// other's value) in TOML spelling, in key order.
    pub fn differences(&self, other: &Config) -> Vec<(String, String, String)> {
        let table = |c: &Config| match toml::Value::try_from(c) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::map::Map::new(),
        };
        let (a, b) = (table(self), table(other));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        let show = |v: Option<&toml::Value>| v.map_or_else(|| "(absent)".to_string(), toml::Value::to_string);
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| (k.clone(), show(a.get(k)), show(b.get(k))))
            .collect()
    }

    /// Takes the [`RESUMABLE`] settings from `edited` and keeps everything else.
    pub fn with_resumable_from(&self, edited: &Config) -> Config {
        Config {
            frames: edited.frames,
            save_every: edited.save_every,
            metrics_every: edited.metrics_every,
            threads: edited.threads,
            gossip_timeout: edited.gossip_timeout,
            lr: edited.lr,
            entropy_coef: edited.entropy_coef,
            value_coef: edited.value_coef,
            max_grad_norm: edited.max_grad_norm,
            ..self.clone()
        }
    }

    /// Settings a fresh run was given that it would ignore, refused rather than silently
    /// stored in config.toml: a ROM with the built-in game, an Atari preset with the built-in
    /// game, a gossip topology or peer count when nothing gossips (`a2c`, or one agent).
    pub fn check_nothing_ignored(&self) -> Result<()> {
        let defaults = Config::default();
        let catch = matches!(GameId::parse(&self.game), Ok(GameId::Catch));
        if catch && self.rom.is_some() {
            return Err(Error::Config("`rom` loads an Atari ROM; it cannot be combined with `game = catch` (the built-in game): drop one of them".into()));
        }
        if catch && self.preset != defaults.preset {
            return Err(Error::Config(format!(
                "`preset` ({}) chooses the Atari preprocessing; the built-in game `catch` has none: drop it",
                format!("{:?}", self.preset).to_lowercase()
            )));
        }
        if !self.gossips() && (self.topology != defaults.topology || self.peers != defaults.peers) {
            let why = if self.algo == Algo::A2c { "`algo = a2c` is one learner" } else { "a single agent has no peers" };
            return Err(Error::Config(format!(
                "`topology`/`peers` ({}, {}) shape the gossip between agents, and {why}: nothing gossips; drop them (or use `algo = gala` with at least 2 agents)",
                format!("{:?}", self.topology).to_lowercase(),
                self.peers
            )));
        }
        Ok(())
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
            rms_form: self.rms_form,
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
        if self.precision != Precision::Fp32 && self.backend == BackendKind::Cpu {
            return bad("precision", format!("{} runs the tensor-core kernels of the cuda and sim backends; the cpu backend computes fp32 only: use `precision = \"fp32\"` (--precision fp32) or `backend = \"sim\"`/`\"cuda\"`", self.precision.name()));
        }
        for (key, v) in [("agents", self.agents), ("envs_per_agent", self.envs_per_agent), ("n_steps", self.n_steps)] {
            if v == 0 {
                return bad(key, "must be at least 1, got 0".into());
            }
        }
        // TOML integers are i64: a larger value could not be written to config.toml or a checkpoint.
        for (key, v) in [
            ("seed", self.seed),
            ("frames", self.frames),
            ("save_every", self.save_every),
            ("sync_freq", self.sync_freq),
            ("metrics_every", self.metrics_every),
        ] {
            if v > i64::MAX as u64 {
                return bad(key, format!("{v} is too large (at most {}, the largest integer config.toml can hold)", i64::MAX));
            }
        }
        for (key, path) in [("out", Some(&self.out)), ("rom", self.rom.as_ref())] {
            if let Some(p) = path.filter(|p| p.to_str().is_none()) {
                return bad(key, format!("the path {} is not valid UTF-8; config.toml can only record UTF-8 paths, so rename it", p.display()));
            }
        }
        check_threads("threads", self.threads)?;
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
        if !(self.gossip_timeout.is_finite() && self.gossip_timeout > 0.0 && self.gossip_timeout <= MAX_GOSSIP_TIMEOUT) {
            return bad(
                "gossip_timeout",
                format!("must be a number of seconds > 0 and at most {MAX_GOSSIP_TIMEOUT:e} (about 31 years), got {}", self.gossip_timeout),
            );
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
    fn with_resumable_from_takes_exactly_the_resumable_settings() {
        let saved = Config::default();
        let edited = Config {
            frames: 7, save_every: 3, metrics_every: 2, threads: 5, gossip_timeout: 9.0, lr: 0.1, entropy_coef: 0.2,
            value_coef: 0.3, max_grad_norm: 0.4, agents: 9, seed: 11, gamma: 0.5, run_id: Some("x".into()),
            ..Config::default()
        };
        let mut changed: Vec<String> = saved.differences(&saved.with_resumable_from(&edited)).into_iter().map(|(k, _, _)| k).collect();
        changed.sort();
        let mut want: Vec<String> = RESUMABLE.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(changed, want);
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

    #[test]
    fn precision_defaults_to_fp32_and_tf32_needs_a_kernel_backend() {
        // A config.toml from before the key existed is an fp32 run.
        let old = Config::from_toml_str("agents = 2\n", Path::new("c.toml")).unwrap();
        assert_eq!(old.precision, Precision::Fp32);
        let tf32 = Config::from_toml_str("precision = \"tf32\"\nbackend = \"sim\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(tf32.precision, Precision::Tf32);
        assert!(tf32.validate().is_ok());
        let back = Config::from_toml_str(&tf32.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(back, tf32);
        let e = Config { backend: BackendKind::Cpu, ..tf32 }.validate().unwrap_err().to_string();
        assert!(e.contains("`precision`") && e.contains("cpu"), "{e}");
        let e = Config::from_toml_str("precision = \"bf16\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("bf16") && e.contains("fp32") && e.contains("tf32") && e.contains("tf32-conv"), "{e}");
        // PyTorch's default: TF32 convolutions, FP32 fc; written and read back under its own name.
        let conv = Config::from_toml_str("precision = \"tf32-conv\"\nbackend = \"sim\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(conv.precision, Precision::Tf32Conv);
        assert!(conv.to_toml().contains("precision = \"tf32-conv\""), "{}", conv.to_toml());
        assert_eq!(Config::from_toml_str(&conv.to_toml(), Path::new("t.toml")).unwrap(), conv);
        let e = Config { backend: BackendKind::Cpu, ..conv }.validate().unwrap_err().to_string();
        assert!(e.contains("tf32-conv") && e.contains("cpu"), "{e}");
    }

    #[test]
    fn tf32_conv_runs_the_conv_gemms_in_tf32_and_the_fc_gemms_in_fp32() {
        for k in ["conv_forward_u8_words", "conv_forward_f32", "conv_backward_data", "conv_backward_filter_f32"] {
            assert_eq!(Precision::Tf32Conv.kernel(k), format!("{k}_tf32"));
            assert_eq!(Precision::Tf32.kernel(k), format!("{k}_tf32"));
            assert_eq!(Precision::Fp32.kernel(k), k);
        }
        for k in ["fc_forward", "fc_backward_data", "fc_backward_filter"] {
            assert_eq!(Precision::Tf32Conv.kernel(k), k);
            assert_eq!(Precision::Tf32.kernel(k), format!("{k}_tf32"));
        }
        assert_eq!(Precision::Tf32Conv.of_layer(true), Precision::Fp32);
        assert_eq!(Precision::Tf32Conv.of_layer(false), Precision::Tf32);
    }

    #[test]
    fn tf32_rounding_is_cvt_rna() {
        use crate::backend::tf32_round;
        // 10 mantissa bits kept: 1 + 2^-10 is exact, 1 + 2^-11 is the tie (away from zero).
        assert_eq!(tf32_round(1.0 + 2f32.powi(-10)), 1.0 + 2f32.powi(-10));
        assert_eq!(tf32_round(1.0 + 2f32.powi(-11)), 1.0 + 2f32.powi(-10));
        assert_eq!(tf32_round(-(1.0 + 2f32.powi(-11))), -(1.0 + 2f32.powi(-10)));
        assert_eq!(tf32_round(1.0 + 2f32.powi(-11) - 2f32.powi(-23)), 1.0);
        assert_eq!(tf32_round(f32::MAX), f32::INFINITY);
        assert_eq!(tf32_round(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(tf32_round(f32::NAN).is_nan());
        assert_eq!(tf32_round(0.0).to_bits(), 0);
        assert_eq!(tf32_round(-0.0).to_bits(), (-0.0f32).to_bits());
    }
}
