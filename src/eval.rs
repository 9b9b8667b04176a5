//! Evaluation: play full games with a checkpoint's policy and report mean, median and the
//! human-normalized score (HNS = (score − random) / (human − random)).
//!
//! Scores are whole-game, unclipped scores (`GameEnd::score`: summed over every life), which is
//! what Atari papers report. Games are played without episodic life (a lost life does not end
//! the episode or zero the frame stack); the rest of the preprocessing is the training one, so
//! the network sees what it was trained on. Each of E parallel games plays a fixed quota of games
//! (quotas summing to `episodes`), so short games are not over-represented the way "first N
//! games to finish" would over-represent them.

use crate::backend::{self, ActOutput, BackendKind, BackendSpec, Precision};
use crate::checkpoint::Checkpoint;
use crate::env::{self, EnvSettings, GameId, FRAME_BYTES};
use crate::error::{Error, Result};
use crate::model::{NetSpec, FRAME_HW, FRAME_STACK, OBS_BYTES};
use std::path::PathBuf;

/// Random-policy and human scores of the 57 Atari games (google-deepmind/dqn_zoo
/// `atari_data.py`, as tabulated in reference/ecosystem.md).
pub const ATARI_REFERENCE: [(&str, f64, f64); 57] = [
    ("alien", 227.8, 7127.7),
    ("amidar", 5.8, 1719.5),
    ("assault", 222.4, 742.0),
    ("asterix", 210.0, 8503.3),
    ("asteroids", 719.1, 47388.7),
    ("atlantis", 12850.0, 29028.1),
    ("bankheist", 14.2, 753.1),
    ("battlezone", 2360.0, 37187.5),
    ("beamrider", 363.9, 16926.5),
    ("berzerk", 123.7, 2630.4),
    ("bowling", 23.1, 160.7),
    ("boxing", 0.1, 12.1),
    ("breakout", 1.7, 30.5),
    ("centipede", 2090.9, 12017.0),
    ("choppercommand", 811.0, 7387.8),
    ("crazyclimber", 10780.5, 35829.4),
    ("defender", 2874.5, 18688.9),
    ("demonattack", 152.1, 1971.0),
    ("doubledunk", -18.6, -16.4),
    ("enduro", 0.0, 860.5),
    ("fishingderby", -91.7, -38.7),
    ("freeway", 0.0, 29.6),
    ("frostbite", 65.2, 4334.7),
    ("gopher", 257.6, 2412.5),
    ("gravitar", 173.0, 3351.4),
    ("hero", 1027.0, 30826.4),
    ("icehockey", -11.2, 0.9),
    ("jamesbond", 29.0, 302.8),
    ("kangaroo", 52.0, 3035.0),
    ("krull", 1598.0, 2665.5),
    ("kungfumaster", 258.5, 22736.3),
    ("montezumarevenge", 0.0, 4753.3),
    ("mspacman", 307.3, 6951.6),
    ("namethisgame", 2292.3, 8049.0),
    ("phoenix", 761.4, 7242.6),
    ("pitfall", -229.4, 6463.7),
    ("pong", -20.7, 14.6),
    ("privateeye", 24.9, 69571.3),
    ("qbert", 163.9, 13455.0),
    ("riverraid", 1338.5, 17118.0),
    ("roadrunner", 11.5, 7845.0),
    ("robotank", 2.2, 11.9),
    ("seaquest", 68.4, 42054.7),
    ("skiing", -17098.1, -4336.9),
    ("solaris", 1236.3, 12326.7),
    ("spaceinvaders", 148.0, 1668.7),
    ("stargunner", 664.0, 10250.0),
    ("surround", -10.0, 6.5),
    ("tennis", -23.8, -8.3),
    ("timepilot", 3568.0, 5229.2),
    ("tutankham", 11.4, 167.6),
    ("upndown", 533.4, 11693.2),
    ("venture", 0.0, 1187.5),
    ("videopinball", 16256.9, 17667.9),
    ("wizardofwor", 563.5, 4756.5),
    ("yarsrevenge", 3092.9, 54576.9),
    ("zaxxon", 32.5, 9173.3),
];

/// (random, human) for an Atari game, whatever the spelling: `Pong`, `pong`, `space_invaders`,
/// `SpaceInvaders`, `MsPacmanNoFrameskip-v4`, `ALE/Pong-v5`.
pub fn reference_scores(game: &str) -> Option<(f64, f64)> {
    let mut g = game.rsplit('/').next().unwrap_or(game).to_string();
    for suffix in ["NoFrameskip-v4", "NoFrameskip-v0", "Deterministic-v4", "-v5", "-v4", "-v0"] {
        if let Some(stripped) = g.strip_suffix(suffix) {
            g = stripped.to_string();
            break;
        }
    }
    let key: String = g.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    ATARI_REFERENCE.iter().find(|(name, _, _)| *name == key).map(|&(_, r, h)| (r, h))
}

/// Human-normalized score.
pub fn human_normalized(score: f64, random: f64, human: f64) -> f64 {
    (score - random) / (human - random)
}

/// What to evaluate and how.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// A checkpoint file or a run folder.
    pub source: PathBuf,
    pub episodes: usize,
    /// argmax instead of sampling from the policy.
    pub greedy: bool,
    /// Write the first game as an animated GIF here.
    pub gif: Option<PathBuf>,
    /// Which agent's parameters play.
    pub agent: usize,
    /// Seed of the evaluation games (default: the run's seed + 1,000,003, so they differ from
    /// the training games).
    pub seed: Option<u64>,
    pub threads: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub game: String,
    pub agent: usize,
    /// Full-game unclipped scores, environment-major.
    pub scores: Vec<f64>,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (random, human) when the game has reference scores.
    pub reference: Option<(f64, f64)>,
    pub frames_in_gif: usize,
    /// Why the GIF could not be written after the games were played (the scores above are
    /// still valid and worth printing); None when it was written or not asked for.
    pub gif_error: Option<String>,
}

impl EvalReport {
    /// One human-readable line.
    pub fn describe(&self) -> String {
        let base = format!(
            "{}: {} games by agent {} | mean {:.3} | median {:.3} | min {:.3} | max {:.3}",
            self.game,
            self.scores.len(),
            self.agent,
            self.mean,
            self.median,
            self.min,
            self.max
        );
        match (self.reference, self.game.as_str()) {
            (Some((r, h)), _) => format!(
                "{base} | human-normalized mean {:.3}, median {:.3} (random {r}, human {h})",
                human_normalized(self.mean, r, h),
                human_normalized(self.median, r, h)
            ),
            (None, "catch") => format!("{base} | raw scores (random policy ≈ −0.6, perfect 1.0)"),
            (None, _) => format!("{base} | no human/random reference scores for this game"),
        }
    }
}

/// The games evaluation plays for a run's config: its game, preset and ROM with evaluation's
/// `seed`, and whole games (DESIGN: no episodic life) — a lost life is an ordinary step, as
/// baselines evaluates with `episode_life=False`: the frame stack is not zeroed mid-game, and
/// FIRE is pressed for the policy only at the real reset.
pub fn env_settings(config: &crate::config::Config, seed: u64) -> Result<EnvSettings> {
    Ok(EnvSettings {
        game: GameId::parse(&config.game)?,
        preset: config.preset,
        seed,
        rom: config.rom.clone(),
        episodic_life: Some(false),
    })
}

/// Checks, before any work, that a file can be created at `path` (`flag` names the option in
/// the message): its folder exists and is writable, and the path is not a folder. The check
/// creates and removes a probe file next to it, as the final write will.
pub fn check_output_path(flag: &str, path: &std::path::Path) -> Result<()> {
    let refuse = |why: String| Error::Config(format!("{flag} {}: {why}; choose another path", path.display()));
    if path.is_dir() {
        return Err(refuse("is a folder".into()));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(refuse(format!("the folder {} does not exist", parent.display())));
    }
    let probe = parent.join(format!(".gala-gpu-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| refuse(format!("cannot write in {} ({e})", parent.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Plays `episodes` full games with agent `agent` of a checkpoint. The GIF's path is checked
/// before the games; if writing it still fails afterwards, the report carries the scores and
/// `gif_error`.
pub fn evaluate(opts: &EvalOptions) -> Result<EvalReport> {
    if opts.episodes == 0 {
        return Err(Error::Config("--episodes must be at least 1".into()));
    }
    if let Some(path) = &opts.gif {
        check_output_path("--gif", path)?;
    }
    let ck = Checkpoint::load(&opts.source)?;
    let params = ck.agent_params(opts.agent).ok_or_else(|| {
        Error::Config(format!("--agent {}: the checkpoint holds agents 0..{}", opts.agent, ck.agents))
    })?;
    let seed = opts.seed.unwrap_or(ck.config.seed.wrapping_add(1_000_003));
    let settings = env_settings(&ck.config, seed)?;
    let game = settings.game.clone();
    let envs = opts.episodes.min(16);
    let threads = opts.threads.max(1);
    let env_threads = if game == GameId::Catch { 1 } else { threads };
    let mut venv = env::make_vec_env(&settings, envs, env_threads)?;
    if venv.num_actions() != ck.actions {
        return Err(Error::Config(format!("the checkpoint's policy has {} actions but {} has {}", ck.actions, ck.config.game, venv.num_actions())));
    }
    // The CPU backend plays evaluation games: one forward per step for a handful of games.
    let kind = match ck.config.backend {
        BackendKind::Auto | BackendKind::Cpu => BackendKind::Cpu,
        other => other,
    };
    let spec = BackendSpec {
        net: NetSpec::new(ck.config.net, ck.actions),
        agents: 1,
        agent_offset: 0,
        envs_per_agent: envs,
        n_steps: 1,
        seed,
        hyper: ck.config.hyper(),
        // The run's GEMM arithmetic on its own GPU backend; the cpu backend has FP32 only.
        precision: if kind == BackendKind::Cpu { Precision::Fp32 } else { ck.config.precision },
    };
    let (mut backend, _) = backend::create(kind, spec, params, threads)?;
    let quota: Vec<usize> = (0..envs).map(|i| opts.episodes / envs + usize::from(i < opts.episodes % envs)).collect();
    let mut done = vec![0usize; envs];
    let mut scores: Vec<Vec<f64>> = vec![Vec::new(); envs];
    let newest = |obs: &[u8]| obs[(FRAME_STACK - 1) * FRAME_BYTES..OBS_BYTES].to_vec();
    let mut gif_frames: Vec<Vec<u8>> = Vec::new();
    let recording = opts.gif.is_some();
    if recording {
        gif_frames.push(newest(venv.observations()));
    }
    let mut out = ActOutput::default();
    // A game longer than this is a stuck policy or a broken environment, not a score.
    const MAX_STEPS: u64 = 1_000_000;
    let mut step = 0u64;
    while done.iter().zip(&quota).any(|(d, q)| d < q) {
        if step >= MAX_STEPS {
            return Err(Error::Env(format!("evaluation games did not finish within {MAX_STEPS} agent steps")));
        }
        backend.act(venv.observations(), step, opts.greedy, &mut out)?;
        venv.step(&out.actions)?;
        step += 1;
        let finished = venv.drain_finished();
        let env0_ended = venv.dones()[0] > 0.0;
        if recording && done[0] == 0 && !env0_ended {
            gif_frames.push(newest(venv.observations()));
        }
        for g in finished {
            if done[g.env] < quota[g.env] {
                scores[g.env].push(g.end.score);
            }
            done[g.env] += 1;
        }
    }
    let frames_in_gif = gif_frames.len();
    let gif_error = match &opts.gif {
        Some(path) => write_gif(path, &gif_frames).err().map(|e| e.to_string()),
        None => None,
    };
    let scores: Vec<f64> = scores.into_iter().flatten().collect();
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Ok(EvalReport {
        game: game.canonical().to_string(),
        agent: opts.agent,
        mean: scores.iter().sum::<f64>() / n as f64,
        median,
        min: sorted[0],
        max: sorted[n - 1],
        reference: reference_scores(game.canonical()),
        scores,
        frames_in_gif,
        gif_error,
    })
}

/// Grayscale 84×84 frames as an animated GIF, each pixel drawn 2×2 so it is visible; the 256
/// grays are a palette, so the frames are exact (no quantisation). Written atomically.
pub fn write_gif(path: &std::path::Path, frames: &[Vec<u8>]) -> Result<()> {
    const SCALE: usize = 2;
    let side = FRAME_HW * SCALE;
    let palette: Vec<u8> = (0..=255u8).flat_map(|g| [g, g, g]).collect();
    let mut bytes = Vec::new();
    {
        let gif_err = |e: gif::EncodingError| Error::Config(format!("cannot encode the GIF {}: {e}", path.display()));
        let mut enc = gif::Encoder::new(&mut bytes, side as u16, side as u16, &palette).map_err(gif_err)?;
        enc.set_repeat(gif::Repeat::Infinite).map_err(gif_err)?;
        for (i, f) in frames.iter().enumerate() {
            let mut big = vec![0u8; side * side];
            for y in 0..side {
                for x in 0..side {
                    big[y * side + x] = f[(y / SCALE) * FRAME_HW + x / SCALE];
                }
            }
            let mut frame = gif::Frame::from_indexed_pixels(side as u16, side as u16, big, None);
            // 1/100 s units: 10 frames/s, and a pause on the last frame before looping.
            frame.delay = if i + 1 == frames.len() { 100 } else { 10 };
            enc.write_frame(&frame).map_err(gif_err)?;
        }
    }
    crate::run::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lookup_accepts_common_spellings() {
        assert_eq!(reference_scores("Pong"), Some((-20.7, 14.6)));
        assert_eq!(reference_scores("PongNoFrameskip-v4"), Some((-20.7, 14.6)));
        assert_eq!(reference_scores("ALE/SpaceInvaders-v5"), Some((148.0, 1668.7)));
        assert_eq!(reference_scores("space_invaders"), Some((148.0, 1668.7)));
        assert_eq!(reference_scores("catch"), None);
        assert!((human_normalized(14.6, -20.7, 14.6) - 1.0).abs() < 1e-12);
    }
}
