//! Environments: the trait every game implements, the built-in `catch` game, frame stacking and
//! the vector environment that steps many games and writes one contiguous observation buffer.
//!
//! An [`Environment`] produces preprocessed 84×84 grayscale frames. Everything a particular game
//! family needs (ALE's action repeat, max-pooling, episodic life, no-op starts, …) happens inside
//! its implementation; the [`VecEnv`] only stacks frames, resets finished episodes and keeps
//! score statistics, identically for every game.

pub mod catch;
pub mod vec_env;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub use vec_env::{FinishedGame, VecEnv};

/// One 84×84 uint8 frame.
pub const FRAME_BYTES: usize = crate::model::FRAME_HW * crate::model::FRAME_HW;

/// What one agent step of a game produced.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepOutcome {
    /// The game's own reward for this step (summed over repeated frames), unclipped.
    pub reward: f32,
    /// The training episode ended with this step (for Atari with episodic life, also a lost
    /// life): returns do not bootstrap through it and the frame stack is zeroed.
    pub done: bool,
    /// Set when a whole game ended with this step: its real score (sum of unclipped rewards
    /// over all its lives) and its length in agent steps.
    pub game_over: Option<GameEnd>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GameEnd {
    pub score: f64,
    pub steps: u64,
}

/// A single game instance producing preprocessed 84×84 grayscale frames.
pub trait Environment: Send {
    /// Number of discrete actions (the policy head's width).
    fn num_actions(&self) -> usize;
    /// Emulator frames per agent step (4 for Atari's action repeat, 1 for `catch`).
    fn frames_per_step(&self) -> u64;
    /// Begin the next training episode and write its first frame into `frame` [84·84].
    /// (With episodic life an Atari game only truly resets at game over.)
    fn reset(&mut self, frame: &mut [u8]);
    /// Take one agent step and write the resulting frame.
    fn step(&mut self, action: u32, frame: &mut [u8]) -> StepOutcome;
    /// Everything needed to continue this game bit for bit (position, RNG counters, score so
    /// far), as opaque bytes for a checkpoint. Games that cannot do this say so.
    fn save_state(&self) -> Result<Vec<u8>> {
        Err(Error::Unsupported("this environment cannot save its state, so runs on it cannot be checkpointed".into()))
    }
    /// Restores what `save_state` produced (from the same game and build).
    fn load_state(&mut self, _state: &[u8]) -> Result<()> {
        Err(Error::Unsupported("this environment cannot restore a saved state, so runs on it cannot be resumed".into()))
    }
}

/// Atari preprocessing presets (DESIGN.md; implemented by the ALE environment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EnvPreset {
    /// NoFrameskip-v4 with the baselines wrappers, as GALA's code runs it.
    Gala,
    /// Machado et al. 2018: sticky actions 0.25, no episodic life, 108,000-frame cap.
    Machado,
    /// The DQN Nature settings.
    Dqn,
}

/// What game a run plays, resolved from the user's `--game` string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GameId {
    /// The built-in pixel game (no ROM needed).
    Catch,
}

impl GameId {
    /// Resolves a game name loosely (case-insensitive).
    pub fn parse(name: &str) -> Result<GameId> {
        match name.trim().to_ascii_lowercase().as_str() {
            "catch" => Ok(GameId::Catch),
            other => Err(Error::Config(format!(
                "unknown game `{other}`: this build knows `catch` (the built-in game); Atari games need ROM support"
            ))),
        }
    }

    /// The canonical name used in run-folder names.
    pub fn canonical(&self) -> &'static str {
        match self {
            GameId::Catch => "catch",
        }
    }
}

/// Settings an environment is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvSettings {
    pub game: GameId,
    pub preset: EnvPreset,
    pub seed: u64,
}

/// Builds environment number `index` (its randomness is keyed by (seed, index)).
pub fn make_env(settings: &EnvSettings, index: usize) -> Result<Box<dyn Environment>> {
    match settings.game {
        GameId::Catch => Ok(Box::new(catch::Catch::new(settings.seed, index as u64))),
    }
}

/// Builds `count` environments stepped by `threads` worker threads.
pub fn make_vec_env(settings: &EnvSettings, count: usize, threads: usize) -> Result<VecEnv> {
    let envs = (0..count).map(|i| make_env(settings, i)).collect::<Result<Vec<_>>>()?;
    VecEnv::new(envs, threads)
}
