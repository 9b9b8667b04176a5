//! `gala-gpu bench env`: throughput of the vector environment alone (random actions, no
//! learner), and the raw single-core speed of the emulator it is built on.

use super::atari::{self, ale::{Ale, AleOptions}};
use super::{make_vec_env, EnvPreset, EnvSettings, GameId};
use crate::error::{Error, Result};
use crate::rng::{PhiloxStream, Purpose};
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct EnvBenchOptions {
    pub game: GameId,
    pub rom: Option<std::path::PathBuf>,
    pub preset: EnvPreset,
    pub envs: usize,
    pub threads: usize,
    pub seed: u64,
    /// Vector steps (each steps every env once) timed after `warmup_steps`.
    pub steps: u64,
    pub warmup_steps: u64,
    /// Also time one bare emulator on one core for this many frames (0: skip; Atari only).
    pub raw_frames: u64,
}

impl EnvBenchOptions {
    pub fn new(game: GameId, envs: usize, threads: usize) -> Self {
        EnvBenchOptions { game, rom: None, preset: EnvPreset::Gala, envs, threads, seed: 1, steps: 2_000, warmup_steps: 50, raw_frames: 40_000 }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EnvBenchReport {
    pub game: String,
    pub preset: EnvPreset,
    pub envs: usize,
    pub threads: usize,
    /// Agent steps (one per env per vector step) per second.
    pub agent_steps_per_sec: f64,
    /// Raw emulator frames per second (agent steps × frames per step).
    pub frames_per_sec: f64,
    pub agent_steps: u64,
    pub wall_seconds: f64,
    /// CPU time (user + system, all threads of the process) spent in the timed loop, where the
    /// OS reports it (Linux /proc); on a shared machine frames per CPU-second is the stable
    /// measure of cost, wall-clock rates depend on the other load.
    pub cpu_seconds: Option<f64>,
    pub frames_per_cpu_sec: Option<f64>,
    /// One bare ALE on one core (act + grey screen every frame), if measured: per wall second
    /// and per CPU second.
    pub raw_frames_per_sec_one_core: Option<f64>,
    pub raw_frames_per_cpu_sec: Option<f64>,
    /// `frames_per_sec / (raw_frames_per_sec_one_core × threads)`.
    pub efficiency_vs_raw: Option<f64>,
    /// `frames_per_cpu_sec / raw_frames_per_cpu_sec`: the same ratio, free of other load.
    pub cpu_efficiency_vs_raw: Option<f64>,
}

impl std::fmt::Display for EnvBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bench env: {} ({:?}), {} envs on {} threads: {:.0} agent steps/s, {:.0} frames/s ({} steps in {:.2} s)",
            self.game, self.preset, self.envs, self.threads, self.agent_steps_per_sec, self.frames_per_sec, self.agent_steps, self.wall_seconds
        )?;
        if let (Some(cpu), Some(fpc)) = (self.cpu_seconds, self.frames_per_cpu_sec) {
            write!(f, "\nCPU time {cpu:.2} s: {fpc:.0} frames per CPU-second")?;
        }
        if let (Some(raw), Some(eff)) = (self.raw_frames_per_sec_one_core, self.efficiency_vs_raw) {
            write!(f, "\nraw ALE, one core: {raw:.0} frames/s; vector env = {:.0}% of raw × threads", eff * 100.0)?;
        }
        if let (Some(raw), Some(eff)) = (self.raw_frames_per_cpu_sec, self.cpu_efficiency_vs_raw) {
            write!(f, "\nraw ALE: {raw:.0} frames per CPU-second; vector env = {:.0}% of it per CPU-second", eff * 100.0)?;
        }
        Ok(())
    }
}

/// Runs the benchmark: random actions (Philox, keyed by the seed) on a vector env.
pub fn bench_env(o: &EnvBenchOptions) -> Result<EnvBenchReport> {
    if o.envs == 0 || o.threads == 0 || o.steps == 0 {
        return Err(Error::Config("bench env needs --envs, --threads and steps of at least 1".into()));
    }
    let raw = match (&o.game, o.raw_frames) {
        (GameId::Atari(game), n) if n > 0 => Some(raw_ale_rates(game, o.rom.as_deref(), n)?),
        _ => None,
    };
    let settings = EnvSettings { game: o.game.clone(), preset: o.preset, seed: o.seed, rom: o.rom.clone(), episodic_life: None };
    let mut venv = make_vec_env(&settings, o.envs, o.threads)?;
    let k = venv.num_actions() as u32;
    let mut rng = PhiloxStream::new(o.seed, u64::MAX, Purpose::Action);
    let mut actions = vec![0u32; o.envs];
    let mut step = |venv: &mut super::VecEnv| -> Result<()> {
        for a in actions.iter_mut() {
            *a = rng.below(k);
        }
        venv.step(&actions)?;
        venv.drain_finished();
        Ok(())
    };
    for _ in 0..o.warmup_steps {
        step(&mut venv)?;
    }
    let cpu0 = process_cpu_seconds();
    let start = Instant::now();
    for _ in 0..o.steps {
        step(&mut venv)?;
    }
    let wall = start.elapsed().as_secs_f64().max(1e-9);
    let cpu = cpu0.zip(process_cpu_seconds()).map(|(a, b)| (b - a).max(1e-9));
    let agent_steps = o.steps * o.envs as u64;
    let sps = agent_steps as f64 / wall;
    let fps = sps * venv.frames_per_step() as f64;
    Ok(EnvBenchReport {
        game: o.game.canonical().to_string(),
        preset: o.preset,
        envs: o.envs,
        threads: venv.threads(),
        agent_steps_per_sec: sps,
        frames_per_sec: fps,
        agent_steps,
        wall_seconds: wall,
        cpu_seconds: cpu,
        frames_per_cpu_sec: cpu.map(|c| agent_steps as f64 * venv.frames_per_step() as f64 / c),
        raw_frames_per_sec_one_core: raw.map(|r| r.0),
        raw_frames_per_cpu_sec: raw.and_then(|r| r.1),
        efficiency_vs_raw: raw.map(|r| fps / (r.0 * venv.threads() as f64)),
        cpu_efficiency_vs_raw: raw.and_then(|r| r.1).zip(cpu).map(|(r, c)| agent_steps as f64 * venv.frames_per_step() as f64 / c / r),
    })
}

/// User + system CPU seconds of this process so far (all threads, live and exited), from
/// /proc/self/stat; `None` where that does not exist.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI in use (it is fixed by the kernel's ABI, not CONFIG_HZ).
    Some(ticks as f64 / 100.0)
}

/// Speed of one bare ALE on the calling thread: act with a fixed cycling action sequence and
/// fetch the grey screen every frame, resetting at game over. Returns (frames per wall second,
/// frames per CPU second where the OS reports CPU time).
pub fn raw_ale_rates(game: &str, rom: Option<&std::path::Path>, frames: u64) -> Result<(f64, Option<f64>)> {
    let rom = atari::resolve_rom(game, rom)?;
    let mut ale = Ale::new(&rom, AleOptions { seed: 1, repeat_action_probability: 0.0 })?;
    let actions = ale.minimal_actions().to_vec();
    let mut screen = vec![0u8; ale.screen_width() * ale.screen_height()];
    let cpu0 = process_cpu_seconds();
    let start = Instant::now();
    for i in 0..frames {
        ale.act(actions[(i / 4) as usize % actions.len()]);
        ale.grayscale_into(&mut screen);
        if ale.game_over() {
            ale.reset_game();
        }
    }
    let wall = start.elapsed().as_secs_f64().max(1e-9);
    let cpu = cpu0.zip(process_cpu_seconds()).map(|(a, b)| b - a).filter(|&c| c > 0.0);
    Ok((frames as f64 / wall, cpu.map(|c| frames as f64 / c)))
}
