//! Atari 2600 games through ALE 0.6 with the DeepMind/baselines preprocessing.
//!
//! One [`AtariEnv`] reproduces the wrapper stack GALA's code puts on `XNoFrameskip-v4`
//! (baselines `atari_wrappers.py`, in this order): TimeLimit (a cap in raw frames) → NoopReset
//! (1–30 no-ops) → MaxAndSkip (repeat 4, sum rewards, max of the last two raw frames) → Monitor
//! (the real game score) → EpisodicLife → FireReset → WarpFrame (grey, 84×84 area resize).
//! Frame stacking is the [`crate::env::VecEnv`]'s job; reward clipping is the trainer's.
//!
//! What the agent sees: `StepOutcome.reward` is the unclipped sum over the step's 4 frames;
//! `done` marks a lost life (with episodic life) or the end of the game; `game_over` carries the
//! game's real score — every reward since the emulator reset, over all lives, including those
//! earned during no-op and FIRE reset steps the agent never chose, as baselines' Monitor counts
//! — and its length in 4-frame steps (Monitor's `l`, which also counts those reset steps).
//! A game cut off by the frame cap counts as over. One baselines difference remains: a game
//! ending inside the FIRE steps of a reset (only possible through the frame cap) is not reported.
//!
//! Sticky actions are done here rather than inside ALE (which gets repeat_action_probability 0):
//! same semantics as ALE's — per raw frame, with probability p the previously emulated action
//! is repeated instead of the new one; a reset forgets it — but with the draws from this env's
//! own Philox stream, because ALE keeps its "previous action" outside the state it can save, so
//! a restored game could not otherwise continue bit for bit.
//!
//! [`AtariEnv::save_state`] writes everything that influences the future (the emulator's system
//! state plus every wrapper counter and buffer) in a small versioned format with a checksum; see
//! `STATE_MAGIC` below.
//!
//! The max-pool has two forms ([`MaxPool`]), chosen by the preset:
//! * `Rgb` (`gala`, `dqn`: baselines' `MaxAndSkipEnv` then `WarpFrame`): the channel-wise max
//!   of the two RGB frames, converted to grey with OpenCV's fixed-point `COLOR_RGB2GRAY`. It
//!   is computed from ALE's palette indices (`getScreen`, one byte per pixel) through a
//!   128×128 table of grey(max(RGB(a), RGB(b))) ([`preprocess::RgbMaxGrey`]), so it reads no
//!   more than the grey form and costs one lookup per pixel.
//! * `Grey` (`machado`: Gymnasium's `AtariPreprocessing` and ale-py's `AtariVectorEnv`): ALE's
//!   `getScreenGrayscale` (round(0.2989 R + 0.587 G + 0.114 B)) of each frame, then the max of
//!   the two grey frames.
//! They are not interchangeable: the max of two greys is not the grey of the max colour
//! wherever a pixel changes colour between the two frames (any moving object over a
//! background of another colour, not only overlapping flickering sprites), and the two grey
//! formulas round differently. On Pong the agent's green paddle over the brown field differs
//! by up to 16 grey levels in 11–78% of frames; on Breakout the two agree.

pub mod ale;
pub mod preprocess;
pub mod roms;

use super::{EnvPreset, Environment, GameEnd, StepOutcome, FRAME_BYTES};
use crate::error::{Error, Result};
use crate::model::FRAME_HW;
use crate::rng::{PhiloxStream, Purpose};
use ale::{Ale, AleOptions, FIRE, NOOP};
use preprocess::{max_into, rgb_max_grey, AreaResize};
use roms::VerifiedRom;

/// Agent steps: every action is repeated for this many emulator frames.
pub const FRAME_SKIP: u32 = 4;

/// Saved-state header: magic, then a u32 LE format version. Version 2 layout (all LE):
/// u32 payload length; payload = u8 game-name length + name, u32 screen height, u32 width,
/// i32 lives, u8 real_done, u64 game_frames, f64 game_score, u64 game_steps, u64 seed and u64
/// index keying the env's Philox streams, u32 + u8 no-op stream position, u32 + u8 sticky stream
/// position, i32 previous emulated action, u8 max-pool form (0 grey, 1 RGB: what the screens
/// below hold), the two raw screens (height·width bytes each: grey levels or palette indices),
/// u32 length + ALE's encoded system state; then a u64 FNV-1a checksum of everything before it.
/// Version 1 (before the RGB form existed) lacks the max-pool byte and its screens are grey: it
/// loads as the grey form, so a run saved then continues with the observations it was trained
/// on, whatever its preset says today.
const STATE_MAGIC: &[u8; 16] = b"gala-atari-state";
const STATE_VERSION: u32 = 2;

/// How the last two raw frames of a step become one grey frame (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxPool {
    /// Channel-wise max of the RGB frames, then OpenCV's grey (baselines).
    Rgb,
    /// ALE's grey of each frame, then their max (Gymnasium's `AtariPreprocessing`).
    Grey,
}

/// The resolved Atari settings of a run (printed and stored with it).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AtariConfig {
    /// Random no-ops on a real reset: a uniform count in 1..=noop_max (0: none).
    pub noop_max: u32,
    /// A lost life ends the training episode (the emulator resets only at game over).
    pub episodic_life: bool,
    /// Press FIRE (action 1, then action 2) after every reset, for games whose minimal action
    /// set has FIRE at index 1 (baselines' FireResetEnv condition).
    pub fire_reset: bool,
    /// ALE's sticky actions: per frame, the previous action repeats with this probability.
    pub repeat_action_probability: f32,
    /// A game is cut off (and counted as over) after this many raw frames; 0: never.
    pub max_episode_frames: u64,
    /// The max-pool's form: `Rgb` as baselines, `Grey` as Gymnasium.
    pub max_pool: MaxPool,
}

impl AtariConfig {
    /// The settings of a preset for a game (`space_invaders` has gym's 300k-frame TimeLimit).
    ///
    /// - `gala`: `XNoFrameskip-v4` + baselines wrappers, as the GALA code trains: 30 no-ops,
    ///   episodic life, fire reset, no sticky actions, gym's TimeLimit of 100,000 × the v4
    ///   frameskip (400k raw frames, 300k for SpaceInvaders), RGB max-pool.
    /// - `machado`: Machado et al. 2018: sticky actions 0.25, no episodic life, a 108,000-frame
    ///   cap, and neither no-op starts nor fire reset (sticky actions supply the randomness;
    ///   like `ALE/X-v5`), with Gymnasium's `AtariPreprocessing` grey max-pool, which is how
    ///   `ALE/X-v5` games are usually preprocessed.
    /// - `dqn`: the DQN protocol with baselines' training wrappers: 30 no-ops, episodic life,
    ///   fire reset, no sticky actions, a 108,000-frame (30-minute) cap, RGB max-pool.
    pub fn for_preset(preset: EnvPreset, game: &str) -> AtariConfig {
        match preset {
            EnvPreset::Gala => AtariConfig {
                noop_max: 30,
                episodic_life: true,
                fire_reset: true,
                repeat_action_probability: 0.0,
                max_episode_frames: if game == "space_invaders" { 300_000 } else { 400_000 },
                max_pool: MaxPool::Rgb,
            },
            EnvPreset::Machado => AtariConfig {
                noop_max: 0,
                episodic_life: false,
                fire_reset: false,
                repeat_action_probability: 0.25,
                max_episode_frames: 108_000,
                max_pool: MaxPool::Grey,
            },
            EnvPreset::Dqn => AtariConfig {
                noop_max: 30,
                episodic_life: true,
                fire_reset: true,
                repeat_action_probability: 0.0,
                max_episode_frames: 108_000,
                max_pool: MaxPool::Rgb,
            },
        }
    }
}

/// An ALE game with the preprocessing above; env `index` of a run seeded `seed` draws all its
/// randomness (no-op counts, sticky-action draws, the seed of ALE's own generator) from Philox
/// keyed by (seed, index).
pub struct AtariEnv {
    ale: Ale,
    /// The canonical game name (a saved state only loads into the same game).
    game: &'static str,
    config: AtariConfig,
    /// (seed, index) that key the Philox streams below; saved with the state so that a state
    /// carries its whole random future, whichever env it is loaded into.
    stream_id: (u64, u64),
    rng: PhiloxStream,
    /// Sticky-action draws (one u32 per raw frame while p > 0).
    sticky_rng: PhiloxStream,
    /// A raw u32 draw below this repeats the previous action: ceil(p·2^32), so that
    /// `x < threshold` ⇔ `x/2^32 < p`, ALE's own test on its uniform double.
    sticky_threshold: u64,
    /// The ALE action emulated on the last raw frame (ALE's `m_player_a_action`).
    prev_code: i32,
    /// ALE codes of the minimal action set (the policy's action i is `actions[i]`).
    actions: Vec<i32>,
    fire: bool,
    /// The last two raw screens (grey levels, or palette indices for the RGB max-pool), kept
    /// across steps as baselines' MaxAndSkip keeps its buffer (a game that ends on the first or
    /// second frame of a step pools stale frames).
    raw: [Vec<u8>; 2],
    pooled: Vec<u8>,
    resize: AreaResize,
    /// Lives at the end of the last step (EpisodicLife's counter).
    lives: i32,
    /// The last step ended the real game (or hit the frame cap): next reset is a real reset.
    real_done: bool,
    /// Raw frames since the last real reset (the TimeLimit counter).
    game_frames: u64,
    /// Unclipped score and 4-frame steps since the last real reset (Monitor's counters).
    game_score: f64,
    game_steps: u64,
}

/// Outcome of one 4-frame step below the episodic-life layer.
struct SkipOutcome {
    reward: f64,
    /// Game over or frame cap.
    real_done: bool,
}

impl AtariEnv {
    pub fn new(rom: &VerifiedRom, config: AtariConfig, seed: u64, index: u64) -> Result<AtariEnv> {
        let p = config.repeat_action_probability;
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Config(format!("repeat_action_probability must be in [0, 1], got {p}")));
        }
        let mut rng = PhiloxStream::new(seed, index, Purpose::EnvReset);
        // ALE's own generator gets a seed from the env's stream (ALE reads 0 as "use the
        // clock", so map into 1..=i32::MAX). It no longer drives sticky actions (see the module
        // docs), but the draw keeps the no-op counts of existing seeds unchanged.
        let ale_seed = (rng.next_u32() % (i32::MAX as u32)) as i32 + 1;
        let ale = Ale::new(rom, AleOptions { seed: ale_seed, repeat_action_probability: 0.0 })?;
        let actions = ale.minimal_actions().to_vec();
        let fire = config.fire_reset && actions.len() >= 3 && actions[1] == FIRE;
        let (h, w) = (ale.screen_height(), ale.screen_width());
        let resize = AreaResize::new(h, w, FRAME_HW, FRAME_HW)?;
        Ok(AtariEnv {
            ale,
            game: rom.game,
            config,
            stream_id: (seed, index),
            rng,
            sticky_rng: PhiloxStream::new(seed, index, Purpose::EnvStep),
            sticky_threshold: (p as f64 * 4_294_967_296.0).ceil() as u64,
            prev_code: NOOP,
            actions,
            fire,
            raw: [vec![0; h * w], vec![0; h * w]],
            pooled: vec![0; h * w],
            resize,
            lives: 0,
            real_done: true,
            game_frames: 0,
            game_score: 0.0,
            game_steps: 0,
        })
    }

    pub fn config(&self) -> &AtariConfig {
        &self.config
    }

    /// The ALE action codes behind the policy's actions.
    pub fn action_codes(&self) -> &[i32] {
        &self.actions
    }

    /// One raw frame under the TimeLimit: returns (reward, real game over or cap).
    #[inline]
    fn frame(&mut self, code: i32) -> (i32, bool) {
        // Sticky actions (ALE's rule, our draws): keep the previous action with probability p.
        if self.sticky_threshold == 0 || (self.sticky_rng.next_u32() as u64) >= self.sticky_threshold {
            self.prev_code = code;
        }
        let r = self.ale.act(self.prev_code);
        self.game_frames += 1;
        let capped = self.config.max_episode_frames > 0 && self.game_frames >= self.config.max_episode_frames;
        (r, self.ale.game_over() || capped)
    }

    /// MaxAndSkip + Monitor: repeat `code` for 4 frames, grab the screens of the last two,
    /// leave their max-pool (in grey) in `pooled`.
    fn skip_step(&mut self, code: i32) -> SkipOutcome {
        let mut reward = 0i64;
        let mut done = false;
        for i in 0..FRAME_SKIP {
            let (r, d) = self.frame(code);
            reward += r as i64;
            if i + 2 >= FRAME_SKIP {
                let slot = (i + 2 - FRAME_SKIP) as usize;
                match self.config.max_pool {
                    MaxPool::Rgb => self.ale.screen_into(&mut self.raw[slot]),
                    MaxPool::Grey => self.ale.grayscale_into(&mut self.raw[slot]),
                }
            }
            if d {
                done = true;
                break;
            }
        }
        match self.config.max_pool {
            MaxPool::Rgb => rgb_max_grey().pool_into(&self.raw[0], &self.raw[1], &mut self.pooled),
            MaxPool::Grey => max_into(&self.raw[0], &self.raw[1], &mut self.pooled),
        }
        self.game_score += reward as f64;
        self.game_steps += 1;
        SkipOutcome { reward: reward as f64, real_done: done }
    }

    /// EpisodicLife.step on top of `skip_step`: (reward, training done, real done).
    fn life_step(&mut self, code: i32) -> (f64, bool, bool) {
        let out = self.skip_step(code);
        self.real_done = out.real_done;
        let lives = self.ale.lives();
        let life_lost = self.config.episodic_life && lives < self.lives && lives > 0;
        self.lives = lives;
        (out.reward, out.real_done || life_lost, out.real_done)
    }

    /// TimeLimit.reset + NoopReset.reset: a real emulator reset and 1..=noop_max no-ops; leaves
    /// the last raw screen in `pooled` (baselines' reset observation is a single raw frame).
    fn real_reset(&mut self) {
        self.reset_emulator();
        self.game_frames = 0;
        self.game_score = 0.0;
        self.game_steps = 0;
        let noops = if self.config.noop_max > 0 { self.rng.below(self.config.noop_max) + 1 } else { 0 };
        for _ in 0..noops {
            let (r, done) = self.frame(NOOP);
            self.game_score += r as f64;
            if done {
                // NoopReset resets again when a no-op ends the game.
                self.reset_emulator();
                self.game_frames = 0;
                self.game_score = 0.0;
            }
        }
        match self.config.max_pool {
            MaxPool::Rgb => {
                self.ale.screen_into(&mut self.pooled);
                rgb_max_grey().grey_in_place(&mut self.pooled);
            }
            MaxPool::Grey => self.ale.grayscale_into(&mut self.pooled),
        }
    }

    /// EpisodicLife.reset: a real reset after a game over, else one no-op step from the
    /// lost-life state.
    fn life_reset(&mut self) {
        if self.real_done {
            self.real_reset();
            self.real_done = false;
        } else {
            self.skip_step(NOOP);
            // A game that ends during this no-op step is handled by the next real reset.
            self.real_done = self.ale.game_over() || self.capped();
        }
        self.lives = self.ale.lives();
    }

    /// ALE's reset, which also forgets the previous action ("soft reset" sets it to NOOP).
    fn reset_emulator(&mut self) {
        self.ale.reset_game();
        self.prev_code = NOOP;
    }

    fn capped(&self) -> bool {
        self.config.max_episode_frames > 0 && self.game_frames >= self.config.max_episode_frames
    }

    /// FireReset.reset over EpisodicLife: reset, then FIRE (action 1) and action 2, resetting
    /// again if either ends the episode.
    fn full_reset(&mut self) {
        self.life_reset();
        if self.fire {
            for action in [1usize, 2] {
                let (_, done, _) = self.life_step(self.actions[action]);
                if done {
                    self.life_reset();
                }
            }
        }
    }
}

impl Environment for AtariEnv {
    fn num_actions(&self) -> usize {
        self.actions.len()
    }

    fn frames_per_step(&self) -> u64 {
        FRAME_SKIP as u64
    }

    fn reset(&mut self, frame: &mut [u8]) {
        self.full_reset();
        self.resize.apply(&self.pooled, frame);
    }

    fn step(&mut self, action: u32, frame: &mut [u8]) -> StepOutcome {
        debug_assert_eq!(frame.len(), FRAME_BYTES);
        // VecEnv checks the range; an out-of-range action here would be a caller bug, and NOOP
        // is the harmless answer (ALE itself maps illegal codes to NOOP).
        let code = self.actions.get(action as usize).copied().unwrap_or(NOOP);
        let (reward, done, real_done) = self.life_step(code);
        self.resize.apply(&self.pooled, frame);
        let game_over = real_done.then_some(GameEnd { score: self.game_score, steps: self.game_steps });
        StepOutcome { reward: reward as f32, done, game_over }
    }

    /// See `STATE_MAGIC` for the layout. The max-pooled screen is not saved: `step` and `reset`
    /// always rewrite it before reading it. The Philox streams are saved as (seed, index) and
    /// their positions.
    fn save_state(&self) -> Result<Vec<u8>> {
        let ale_state = self.ale.save_system_state()?;
        let mut p = Vec::with_capacity(64 + 2 * self.raw[0].len() + ale_state.len());
        p.push(self.game.len() as u8);
        p.extend_from_slice(self.game.as_bytes());
        p.extend_from_slice(&(self.ale.screen_height() as u32).to_le_bytes());
        p.extend_from_slice(&(self.ale.screen_width() as u32).to_le_bytes());
        p.extend_from_slice(&self.lives.to_le_bytes());
        p.push(self.real_done as u8);
        p.extend_from_slice(&self.game_frames.to_le_bytes());
        p.extend_from_slice(&self.game_score.to_le_bytes());
        p.extend_from_slice(&self.game_steps.to_le_bytes());
        p.extend_from_slice(&self.stream_id.0.to_le_bytes());
        p.extend_from_slice(&self.stream_id.1.to_le_bytes());
        for rng in [&self.rng, &self.sticky_rng] {
            let (index, used) = rng.position();
            p.extend_from_slice(&index.to_le_bytes());
            p.push(used as u8);
        }
        p.extend_from_slice(&self.prev_code.to_le_bytes());
        p.push(match self.config.max_pool {
            MaxPool::Grey => 0,
            MaxPool::Rgb => 1,
        });
        p.extend_from_slice(&self.raw[0]);
        p.extend_from_slice(&self.raw[1]);
        p.extend_from_slice(&(ale_state.len() as u32).to_le_bytes());
        p.extend_from_slice(&ale_state);

        let mut out = Vec::with_capacity(STATE_MAGIC.len() + 8 + p.len() + 8);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
        out.extend_from_slice(&fnv1a64(&out).to_le_bytes());
        Ok(out)
    }

    /// Checks magic, version, length, checksum, game and screen size, and every value's range
    /// before changing anything, so a refused state leaves the env as it was.
    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let game = self.game;
        let bad = |why: String| {
            Error::Env(format!(
                "{game}: saved Atari state rejected ({why}); the checkpoint is damaged or not from this game and build — resume from another checkpoint or start the run afresh"
            ))
        };
        let header = STATE_MAGIC.len() + 8;
        if state.len() < header + 8 || &state[..STATE_MAGIC.len()] != STATE_MAGIC {
            return Err(bad(format!("{} bytes without the {:?} header", state.len(), std::str::from_utf8(STATE_MAGIC).unwrap_or(""))));
        }
        let mut r = Reader { bytes: state, at: STATE_MAGIC.len() };
        let version = r.u32().ok_or_else(|| bad("truncated".into()))?;
        if version != STATE_VERSION && version != 1 {
            return Err(bad(format!("format version {version}, this build reads versions 1 and {STATE_VERSION}")));
        }
        let len = r.u32().ok_or_else(|| bad("truncated".into()))? as usize;
        if state.len() != header + len + 8 {
            return Err(bad(format!("{} bytes, but the header says {}", state.len(), header + len + 8)));
        }
        let (body, sum) = state.split_at(header + len);
        if fnv1a64(body).to_le_bytes() != sum {
            return Err(bad("checksum mismatch".into()));
        }
        let truncated = || bad("fields run past the end".into());
        let name_len = r.u8().ok_or_else(truncated)? as usize;
        let name = r.take(name_len).ok_or_else(truncated)?;
        if name != self.game.as_bytes() {
            return Err(bad(format!("it is a state of `{}`", String::from_utf8_lossy(name))));
        }
        let (h, w) = (r.u32().ok_or_else(truncated)? as usize, r.u32().ok_or_else(truncated)? as usize);
        if (h, w) != (self.ale.screen_height(), self.ale.screen_width()) {
            return Err(bad(format!("a {h}x{w} screen, this emulator has {}x{}", self.ale.screen_height(), self.ale.screen_width())));
        }
        let lives = r.u32().ok_or_else(truncated)? as i32;
        let real_done = match r.u8().ok_or_else(truncated)? {
            0 => false,
            1 => true,
            v => return Err(bad(format!("real_done flag {v}"))),
        };
        let game_frames = r.u64().ok_or_else(truncated)?;
        let game_score = f64::from_bits(r.u64().ok_or_else(truncated)?);
        let game_steps = r.u64().ok_or_else(truncated)?;
        let stream_id = (r.u64().ok_or_else(truncated)?, r.u64().ok_or_else(truncated)?);
        let mut positions = [(0u32, 0usize); 2];
        for pos in &mut positions {
            *pos = (r.u32().ok_or_else(truncated)?, r.u8().ok_or_else(truncated)? as usize);
            if pos.1 > 4 {
                return Err(bad(format!("random stream position {pos:?}")));
            }
        }
        let prev_code = r.u32().ok_or_else(truncated)? as i32;
        if prev_code != NOOP && !self.actions.contains(&prev_code) {
            return Err(bad(format!("previous action {prev_code} is not one of this game's")));
        }
        // Version 1 screens are grey (see `STATE_VERSION`).
        let max_pool = match if version == 1 { 0 } else { r.u8().ok_or_else(truncated)? } {
            0 => MaxPool::Grey,
            1 => MaxPool::Rgb,
            v => return Err(bad(format!("max-pool form {v}"))),
        };
        let raw0 = r.take(h * w).ok_or_else(truncated)?;
        let raw1 = r.take(h * w).ok_or_else(truncated)?;
        let ale_len = r.u32().ok_or_else(truncated)? as usize;
        let ale_state = r.take(ale_len).ok_or_else(truncated)?;
        if r.at != body.len() {
            return Err(bad(format!("{} unread bytes", body.len() - r.at)));
        }
        if !game_score.is_finite() {
            return Err(bad(format!("game score {game_score}")));
        }
        // The emulator last: it validates its own part, and nothing else fails after it.
        self.ale.restore_system_state(ale_state).map_err(|e| bad(e.to_string()))?;
        self.lives = lives;
        self.real_done = real_done;
        self.game_frames = game_frames;
        self.game_score = game_score;
        self.game_steps = game_steps;
        self.stream_id = stream_id;
        self.rng = PhiloxStream::new(stream_id.0, stream_id.1, Purpose::EnvReset);
        self.rng.resume_at(positions[0]);
        self.sticky_rng = PhiloxStream::new(stream_id.0, stream_id.1, Purpose::EnvStep);
        self.sticky_rng.resume_at(positions[1]);
        self.prev_code = prev_code;
        // The state's form wins over the preset's: its screens are in that form, and a run
        // continues with the observations it was trained on.
        self.config.max_pool = max_pool;
        self.raw[0].copy_from_slice(raw0);
        self.raw[1].copy_from_slice(raw1);
        Ok(())
    }
}

/// FNV-1a, 64-bit: catches damaged state bytes before ALE (which cannot report errors) reads
/// them. Not a defence against deliberately forged states.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Little-endian field reader over a saved state; `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Resolves the ROM for a game: `rom` if given (it must be that game's ROM), else the installed
/// one. When nothing is installed and `rom` is not given, installs the ROMs first (saying so on
/// stderr), or fails with the command to run.
pub fn resolve_rom(game: &str, rom: Option<&std::path::Path>) -> Result<VerifiedRom> {
    if let Some(path) = rom {
        let v = roms::identify(path)?;
        if v.game != game {
            return Err(Error::Config(format!(
                "--rom {} is the ROM of `{}`, but the game is `{game}`; drop --game or pass the matching ROM",
                path.display(),
                v.game
            )));
        }
        return Ok(v);
    }
    if !roms::any_installed() {
        let dir = roms::rom_dir()?;
        eprintln!(
            "gala-gpu: no Atari ROMs in {}; installing them from the ale-py {} wheel on PyPI (pip download)…",
            dir.display(),
            roms::ALE_PY_VERSION
        );
        let report = roms::install()?;
        eprintln!("gala-gpu: installed {} ROMs ({} playable) into {}", report.roms, report.playable, report.dir.display());
    }
    roms::find_installed(game)
}
