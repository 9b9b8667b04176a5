//! Environments: the trait every game implements, the built-in `catch` game, frame stacking and
//! the vector environment that steps many games and writes one contiguous observation buffer.
//!
//! An [`Environment`] produces preprocessed 84×84 grayscale frames. Everything a particular game
//! family needs (ALE's action repeat, max-pooling, episodic life, no-op starts, …) happens inside
//! its implementation; the [`VecEnv`] only stacks frames, resets finished episodes and keeps
//! score statistics, identically for every game.

pub mod atari;
pub mod bench;
pub mod catch;
pub mod cli;
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
    /// NoFrameskip-v4 with the baselines wrappers (RGB max-pool), as GALA's code runs it.
    Gala,
    /// Machado et al. 2018: sticky actions 0.25, no episodic life, 108,000-frame cap, grey
    /// max-pool as Gymnasium's AtariPreprocessing.
    Machado,
    /// The DQN Nature settings.
    Dqn,
}

/// What game a run plays, resolved from the user's `--game` string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GameId {
    /// The built-in pixel game (no ROM needed).
    Catch,
    /// An Atari game by its canonical ALE ROM name (`pong`, `space_invaders`).
    Atari(String),
}

impl GameId {
    /// Resolves a game name loosely: `catch`, or an Atari game as `pong`, `Pong`,
    /// `PongNoFrameskip-v4`, `ALE/Pong-v5`, `space_invaders`, `SpaceInvaders`. Does not need the
    /// ROM to be installed (that is checked when the environment is built).
    pub fn parse(name: &str) -> Result<GameId> {
        if name.trim().eq_ignore_ascii_case("catch") {
            return Ok(GameId::Catch);
        }
        match atari::roms::canonical_name(name) {
            Some(game) => Ok(GameId::Atari(game.to_string())),
            None => Err(Error::Config(format!(
                "unknown game `{}`: use `catch` (the built-in game) or an Atari game ALE 0.6 supports, e.g. `pong`, `breakout`, `SpaceInvadersNoFrameskip-v4` (`gala-gpu roms list` shows the installed ones)",
                name.trim()
            ))),
        }
    }

    /// The game a ROM file holds, identified by its md5 (for `--rom PATH` without `--game`).
    pub fn from_rom(path: &std::path::Path) -> Result<GameId> {
        Ok(GameId::Atari(atari::roms::identify(path)?.game.to_string()))
    }

    /// The canonical name used in run-folder names.
    pub fn canonical(&self) -> &str {
        match self {
            GameId::Catch => "catch",
            GameId::Atari(name) => name,
        }
    }
}

/// Settings an environment is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvSettings {
    pub game: GameId,
    pub preset: EnvPreset,
    pub seed: u64,
    /// `--rom PATH`: the ROM file to load instead of the installed one (Atari only; its md5
    /// must be that of `game`).
    pub rom: Option<std::path::PathBuf>,
    /// Overrides the preset's episodic life (Atari only): `Some(false)` makes a lost life an
    /// ordinary step, as evaluation needs to play whole games; `None` keeps the preset's choice.
    pub episodic_life: Option<bool>,
}

impl EnvSettings {
    pub fn new(game: GameId, preset: EnvPreset, seed: u64) -> Self {
        EnvSettings { game, preset, seed, rom: None, episodic_life: None }
    }
}

impl EnvSettings {
    /// The Atari preprocessing these settings ask for: the preset's, with the overrides applied.
    pub fn atari_config(&self, game: &str) -> atari::AtariConfig {
        let mut config = atari::AtariConfig::for_preset(self.preset, game);
        if let Some(on) = self.episodic_life {
            config.episodic_life = on;
        }
        config
    }
}

/// Builds environment number `index` (its randomness is keyed by (seed, index)).
pub fn make_env(settings: &EnvSettings, index: usize) -> Result<Box<dyn Environment>> {
    match &settings.game {
        GameId::Catch => Ok(Box::new(catch::Catch::new(settings.seed, index as u64))),
        GameId::Atari(game) => {
            let rom = atari::resolve_rom(game, settings.rom.as_deref())?;
            let config = settings.atari_config(game);
            Ok(Box::new(atari::AtariEnv::new(&rom, config, settings.seed, index as u64)?))
        }
    }
}

/// Builds `count` environments stepped by `threads` worker threads.
pub fn make_vec_env(settings: &EnvSettings, count: usize, threads: usize) -> Result<VecEnv> {
    make_vec_env_range(settings, 0..count, threads)
}

/// Builds the environments with global indices `indices` (an agent's share of a run's
/// simulators: each keeps the randomness it has in the whole run, keyed by (seed, index)).
pub fn make_vec_env_range(settings: &EnvSettings, indices: std::ops::Range<usize>, threads: usize) -> Result<VecEnv> {
    match &settings.game {
        GameId::Catch => VecEnv::build(indices, threads, |i| make_env(settings, i)),
        // The ROM is resolved and hashed once, not once per environment.
        GameId::Atari(game) => {
            let rom = atari::resolve_rom(game, settings.rom.as_deref())?;
            let config = settings.atari_config(game);
            VecEnv::build(indices, threads, |i| {
                Ok(Box::new(atari::AtariEnv::new(&rom, config.clone(), settings.seed, i as u64)?) as Box<dyn Environment>)
            })
        }
    }
}
