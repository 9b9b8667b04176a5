//! `gala-gpu bench learner`: the learner alone (n-step returns, forward + backward over the
//! segment, clipping, RMSprop, for every agent) on synthetic frames, timed on any backend; and
//! the act step of the same engine (every env's action from its newest frame).

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
use crate::backend::{ActOutput, Backend, BackendKind, BackendSpec, ObsChange, Precision, Segment};
use crate::config::Config;
use crate::device::sim_profile::{format_table, profile_memory, LaunchMemoryProfile};
use crate::device::{cuda::CudaDevice, sim::SimDevice};
use crate::error::{Error, Result};
use crate::model::{init_params, NetPreset, NetSpec, OBS_BYTES};
use crate::rng::{PhiloxStream, Purpose};
use serde::Serialize;
use std::time::Instant;

/// Raw emulator frames per agent step on Atari (DESIGN.md: every action repeats 4 frames).
pub const ATARI_FRAME_SKIP: usize = 4;

/// What to time.
#[derive(Clone, Debug)]
pub struct LearnerBenchOptions {
    pub agents: usize,
    pub envs_per_agent: usize,
    pub n_steps: usize,
    pub net: NetPreset,
    /// Size of the action space (6: Pong's minimal set; the GALA parameter count).
    pub actions: usize,
    pub backend: BackendKind,
    /// Timed updates (after one untimed warm-up update).
    pub updates: usize,
    /// Host threads of the CPU backend.
    pub threads: usize,
    /// `sim` only: after the timed updates, one more update runs under the simulator's memory
    /// profiler (src/device/sim_profile.rs) and the report carries its per-launch table.
    pub profile: bool,
    /// GPU backends: upload the segment's frames from pinned host memory every update (the path
    /// before issue 12, and still the fallback of `learn`) instead of reading the device rollout
    /// `act` filled, as training does.
    pub host_frames: bool,
    /// The conv/fc GEMMs' arithmetic (GPU backends; the tf32 modes: tensor cores).
    pub precision: Precision,
}

/// The measurement. Raw frames count agent steps × 4 (the Atari frame skip).
#[derive(Clone, Debug, Serialize)]
pub struct LearnerBenchReport {
    pub backend: String,
    pub device: String,
    pub net: String,
    /// The conv/fc GEMMs' arithmetic: `Precision::name` ("fp32", "tf32", "tf32-conv").
    pub precision: String,
    pub agents: usize,
    pub envs_per_agent: usize,
    pub n_steps: usize,
    pub updates: usize,
    pub seconds: f64,
    pub updates_per_s: f64,
    pub agent_steps_per_s: f64,
    pub raw_frames_per_s: f64,
    /// Kernel launches per update (GPU backends; None on the CPU).
    pub launches_per_update: Option<u64>,
    /// Host-to-device bytes per update (GPU backends; None on the CPU).
    pub uploaded_bytes_per_update: Option<u64>,
    /// Whether the update ran as a replayed CUDA graph (GPU backends; None on the CPU; false on
    /// the simulator and with `GALA_CUDA_GRAPHS=0`).
    pub cuda_graph: Option<bool>,
    /// Where the learner's frames came from: "device rollout" (filled by `act`, as in
    /// training), "pinned upload" (`--host-frames`) or "host" (CPU backend).
    pub frames: String,
    /// Mean µs per act call in training's steady state (`time_acts`: one env step after the
    /// last, the newest frames from pinned memory on the GPU backends), over `updates` calls.
    pub act_us: f64,
    /// Kernel launches per act call (GPU backends: those replayed in act's CUDA graph counted
    /// one by one; None on the CPU).
    pub launches_per_act: Option<u64>,
    /// `--profile`: the memory-access profile of one update, per launch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_profile: Option<Vec<LaunchMemoryProfile>>,
}

impl std::fmt::Display for LearnerBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "bench learner: {} ({}), {} GEMMs", self.backend, self.device, self.precision)?;
        writeln!(
            f,
            "  net {} | {} agents x {} envs x {} steps = {} samples per update",
            self.net,
            self.agents,
            self.envs_per_agent,
            self.n_steps,
            self.agents * self.envs_per_agent * self.n_steps
        )?;
        writeln!(f, "  {} updates in {:.3} s: {:.2} updates/s", self.updates, self.seconds, self.updates_per_s)?;
        writeln!(f, "  learner raw frames/s: {:.0} (agent steps/s {:.0}, x{ATARI_FRAME_SKIP} frame skip)", self.raw_frames_per_s, self.agent_steps_per_s)?;
        match (self.launches_per_update, self.cuda_graph) {
            (Some(n), Some(true)) => writeln!(f, "  kernel launches per update: {n} (replayed as one CUDA graph)")?,
            (Some(n), _) => writeln!(f, "  kernel launches per update: {n} (launch by launch)")?,
            (None, _) => writeln!(f, "  kernel launches per update: - (cpu backend)")?,
        }
        match self.uploaded_bytes_per_update {
            Some(b) => writeln!(f, "  bytes uploaded per update: {b} ({:.2} MB; frames from the {})", b as f64 / 1e6, self.frames)?,
            None => writeln!(f, "  bytes uploaded per update: - (cpu backend)")?,
        }
        let launches = self.launches_per_act.map_or(String::new(), |n| format!(", {n} kernel launches"));
        write!(
            f,
            "  act ({} observations, one env step after the last): {:.1} us per call{launches}",
            self.agents * self.envs_per_agent,
            self.act_us
        )?;
        if let Some(p) = &self.memory_profile {
            write!(
                f,
                "\n\nmemory-access profile of one update (simulator, real addresses; per warp-level request: shared-memory \
                 wavefronts and global 32-byte sectors, measured (ideal for the same bytes); rows `all` total each kernel):\n{}",
                format_table(p)
            )?;
        }
        Ok(())
    }
}

/// `len` synthetic frame bytes: sparse bright pixels (one in 8 non-zero).
fn sparse_frame_bytes(rng: &mut PhiloxStream, len: usize) -> Vec<u8> {
    (0..len).map(|_| if rng.below(8) == 0 { rng.below(256) as u8 } else { 0 }).collect()
}

/// One synthetic segment for every agent (frames with sparse bright pixels, random actions,
/// rewards and episode ends), fixed by `seed`.
fn synthetic_segment(spec: &BackendSpec, seed: u64) -> (Vec<u8>, Vec<u32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = spec.agents * spec.segment_samples();
    let mut rng = PhiloxStream::new(seed, 0, Purpose::EnvStep);
    let obs = sparse_frame_bytes(&mut rng, n * OBS_BYTES);
    let actions = (0..n).map(|_| rng.below(spec.net.actions as u32)).collect();
    let rewards = (0..n).map(|_| [0.0, 0.0, 1.0, -1.0][rng.below(4) as usize]).collect();
    let dones = (0..n).map(|_| if rng.below(50) == 0 { 1.0 } else { 0.0 }).collect();
    let bootstrap = (0..spec.act_batch()).map(|_| rng.next_normal() as f32 * 0.1).collect();
    (obs, actions, rewards, dones, bootstrap)
}

fn time_updates(backend: &mut dyn Backend, spec: &BackendSpec, updates: usize) -> Result<(f64, Option<u64>)> {
    let (obs, actions, rewards, dones, bootstrap) = synthetic_segment(spec, 1);
    let seg = Segment { obs: &obs, actions: &actions, rewards: &rewards, dones: &dones, bootstrap_values: &bootstrap, behaviour_log_probs: None };
    backend.learn(&seg)?; // warm-up: first-touch allocations, module loading
    let before = backend.kernel_launches();
    let t = Instant::now();
    for _ in 0..updates {
        backend.learn(&seg)?;
    }
    let seconds = t.elapsed().as_secs_f64();
    let per_update = match (before, backend.kernel_launches()) {
        (Some(a), Some(b)) => Some((b - a) / updates as u64),
        _ => None,
    };
    Ok((seconds, per_update))
}

/// Mean seconds per act call over `acts` calls in training's steady state, after two untimed
/// ones (the whole stacks go up once, then a warm-up step that records act's CUDA graph): each
/// call is one env step after the last (`ObsChange::Stepped`: every env's newest frame goes up
/// and the stacks are built on the device; one env in 16 ends its episode), with the host's
/// observations kept in step by `push_frame` outside the timing. The frames sit in the
/// backend's pinned host memory where it has some (GPU backends), as the trainer's do; only the
/// act calls are timed. Returns (seconds per act, kernel launches per act on a GPU backend).
fn time_acts(b: &mut dyn Backend, spec: &BackendSpec, acts: usize) -> Result<(f64, Option<u64>)> {
    use crate::env::{vec_env::push_frame, FRAME_BYTES};
    let rows = spec.act_batch();
    let mut rng = PhiloxStream::new(2, 0, Purpose::EnvStep);
    let mut obs = sparse_frame_bytes(&mut rng, rows * OBS_BYTES);
    let mut out = ActOutput::default();
    b.act_training(&obs, ObsChange::Unknown, 0, &mut out, None)?;
    let fresh = sparse_frame_bytes(&mut rng, rows * FRAME_BYTES);
    let mut frames: Box<dyn std::ops::DerefMut<Target = [u8]>> = match b.alloc_pinned_bytes(fresh.len())? {
        Some(mut h) => {
            h.copy_from_slice(&fresh);
            Box::new(h)
        }
        None => Box::new(fresh),
    };
    let resets: Vec<f32> = (0..rows).map(|r| if r % 16 == 5 { 1.0 } else { 0.0 }).collect();
    let (mut seconds, mut launches) = (0.0, None);
    for step in 1..=acts as u64 + 1 {
        // A new frame per step: rotate the bytes by one row of pixels.
        frames.rotate_left(crate::model::FRAME_HW);
        for (r, stack) in obs.chunks_mut(OBS_BYTES).enumerate() {
            push_frame(stack, &frames[r * FRAME_BYTES..(r + 1) * FRAME_BYTES], resets[r] != 0.0);
        }
        let (t, before) = (Instant::now(), b.kernel_launches());
        b.act_training(&obs, ObsChange::Stepped { frames: &frames, resets: &resets }, step, &mut out, None)?;
        if step > 1 {
            seconds += t.elapsed().as_secs_f64();
            launches = before.zip(b.kernel_launches()).map(|(a, z)| z - a);
        }
    }
    Ok((seconds / acts as f64, launches))
}

/// Times `updates` learner updates on synthetic frames (see `LearnerBenchOptions`).
pub fn bench_learner(opts: &LearnerBenchOptions) -> Result<LearnerBenchReport> {
    if opts.updates == 0 {
        return Err(Error::Config("bench learner: --updates must be at least 1".into()));
    }
    let spec = BackendSpec {
        net: NetSpec::new(opts.net, opts.actions),
        agents: opts.agents,
        agent_offset: 0,
        envs_per_agent: opts.envs_per_agent,
        n_steps: opts.n_steps,
        seed: 1,
        hyper: Config::default().hyper(),
        precision: opts.precision,
    };
    if spec.agents == 0 || spec.envs_per_agent == 0 || spec.n_steps == 0 {
        return Err(Error::Config("bench learner: --agents, --envs-per-agent and --n-steps must be at least 1".into()));
    }
    let initial = init_params(&spec.net, 1);
    let kind = match opts.backend {
        BackendKind::Auto => if crate::gpu_probe().is_ok() { BackendKind::Cuda } else { BackendKind::Cpu },
        k => k,
    };
    if opts.profile && kind != BackendKind::Sim {
        return Err(Error::Config("bench learner: --profile needs --backend sim (the profiler is the simulator's)".into()));
    }
    struct GpuRun {
        name: String,
        device: String,
        seconds: f64,
        launches: u64,
        uploaded: u64,
        graph: bool,
        profile: Option<Vec<LaunchMemoryProfile>>,
        act_seconds: f64,
        act_launches: Option<u64>,
    }
    fn gpu_run<D: crate::device::Device>(dev: D, spec: &BackendSpec, initial: &[f32], opts: &LearnerBenchOptions) -> Result<GpuRun> {
        let mut b = GpuBackend::new(dev, spec.clone(), initial)?;
        let device = b.device_description();
        let name = b.name().to_string();
        // Its own timed loop (not `time_updates`): the update reads the device rollout that
        // `act_training` fills (`learn_recorded`), or pinned frames with `--host-frames`.
        let (heap_obs, actions, rewards, dones, bootstrap) = synthetic_segment(spec, 1);
        // The frames sit in pinned host memory, as the trainer's rollout buffers do on a device
        // backend, so the fallback path uploads them as training would (not a pageable copy).
        let mut obs = b.alloc_pinned_bytes(heap_obs.len())?.ok_or_else(|| Error::Backend("bench learner: no pinned host memory".into()))?;
        obs.copy_from_slice(&heap_obs);
        drop(heap_obs);
        let seg = Segment { obs: &obs, actions: &actions, rewards: &rewards, dones: &dones, bootstrap_values: &bootstrap, behaviour_log_probs: None };
        // As in training, the frames reach the device once, while acting: `act_training` on each
        // step's [agents][envs] frames fills the device rollout the timed updates read in place
        // (the synthetic frames are not one env step apart: each act uploads whole stacks).
        let rollout = if opts.host_frames {
            None
        } else {
            let mut rollout = b.alloc_device_rollout()?.ok_or_else(|| Error::Backend("bench learner: no device rollout".into()))?;
            let (rows, mut out) = (spec.envs_per_agent * OBS_BYTES, crate::backend::ActOutput::default());
            let mut step_obs = vec![0u8; spec.act_batch() * OBS_BYTES];
            for t in 0..spec.n_steps {
                for a in 0..spec.agents {
                    let src = (a * spec.n_steps + t) * rows;
                    step_obs[a * rows..(a + 1) * rows].copy_from_slice(&obs[src..src + rows]);
                }
                b.act_training(&step_obs, crate::backend::ObsChange::Unknown, t as u64, &mut out, Some((&mut rollout, t)))?;
            }
            Some(rollout)
        };
        let learn = |b: &mut GpuBackend<D>| match &rollout {
            Some(r) => b.learn_recorded(&seg, r),
            None => b.learn(&seg),
        };
        learn(&mut b)?;
        let (launches_before, bytes_before) = (b.launch_count(), b.transfer_bytes().map_or(0, |t| t.uploaded));
        let t = Instant::now();
        for _ in 0..opts.updates {
            learn(&mut b)?;
        }
        let seconds = t.elapsed().as_secs_f64();
        let launches = (b.launch_count() - launches_before) / opts.updates as u64;
        let uploaded = (b.transfer_bytes().map_or(0, |t| t.uploaded) - bytes_before) / opts.updates as u64;
        // Outside the timed loop: a profiled update is several times slower.
        let profile = if opts.profile {
            let (r, p) = profile_memory(|| learn(&mut b));
            r?;
            Some(p)
        } else {
            None
        };
        let graph = b.update_graphs_recorded() > 0;
        let (act_seconds, act_launches) = time_acts(&mut b, spec, opts.updates)?;
        Ok(GpuRun { name, device, seconds, launches, uploaded, graph, profile, act_seconds, act_launches })
    }
    let gpu = |r: GpuRun| {
        let frames = if opts.host_frames { "pinned upload" } else { "device rollout" };
        (r.name, r.device, r.seconds, Some(r.launches), Some(r.uploaded), Some(r.graph), frames, r.profile, r.act_seconds, r.act_launches)
    };
    let (backend, device, seconds, launches_per_update, uploaded_bytes_per_update, cuda_graph, frames, memory_profile, act_seconds, launches_per_act) = match kind {
        BackendKind::Cpu => {
            let mut b = CpuBackend::new(spec.clone(), &initial, opts.threads.max(1))?;
            let (s, l) = time_updates(&mut b, &spec, opts.updates)?;
            let (act, _) = time_acts(&mut b, &spec, opts.updates)?;
            ("cpu".to_string(), format!("{} host threads", opts.threads.max(1)), s, l, None, None, "host", None, act, None)
        }
        BackendKind::Sim => gpu(gpu_run(SimDevice::new(), &spec, &initial, opts)?),
        BackendKind::Cuda | BackendKind::Auto => gpu(gpu_run(CudaDevice::new(0)?, &spec, &initial, &LearnerBenchOptions { profile: false, ..opts.clone() })?),
    };
    let steps = (spec.agents * spec.segment_samples() * opts.updates) as f64;
    Ok(LearnerBenchReport {
        backend,
        device,
        net: format!("{:?}", opts.net).to_lowercase(),
        precision: opts.precision.name().to_string(),
        agents: spec.agents,
        envs_per_agent: spec.envs_per_agent,
        n_steps: spec.n_steps,
        updates: opts.updates,
        seconds,
        updates_per_s: opts.updates as f64 / seconds,
        agent_steps_per_s: steps / seconds,
        raw_frames_per_s: steps * ATARI_FRAME_SKIP as f64 / seconds,
        launches_per_update,
        uploaded_bytes_per_update,
        cuda_graph,
        frames: frames.to_string(),
        act_us: act_seconds * 1e6,
        launches_per_act,
        memory_profile,
    })
}

/// `gala-gpu bench e2e`: the whole training loop (simulators, acting, learning, gossip) against
/// pure emulation of the same environments on the same threads.
#[derive(Clone, Debug, Serialize)]
pub struct E2eBenchReport {
    pub game: String,
    pub backend: String,
    pub agents: usize,
    pub envs_per_agent: usize,
    pub n_steps: usize,
    pub threads: usize,
    pub pipeline: bool,
    pub updates: u64,
    pub wall_seconds: f64,
    /// Raw emulator frames per second of training.
    pub frames_per_sec: f64,
    pub agent_steps_per_sec: f64,
    /// The same vector env stepped with random actions and nothing else, same threads.
    pub emulation_frames_per_sec: f64,
    /// `frames_per_sec / emulation_frames_per_sec`.
    pub fraction_of_emulation: f64,
    /// Where the time went (seconds over the timed updates; phases overlap when pipelined).
    pub phases: crate::algo::trainer::PhaseSeconds,
    /// Fraction of wall time the learner's host thread spent learning and mixing.
    pub learner_busy_fraction: f64,
    /// GPU backends: the fraction of wall time the device was busy with the learner engine's
    /// work (acting too, unpipelined), from timed events on its stream: the span of each call's
    /// device work, so gaps the host leaves between launches inside a call count as busy.
    pub learner_device_busy_fraction: Option<f64>,
    /// Pipelined GPU runs: the same for the actor engine's stream. The two streams may run at
    /// the same time, so the sum can exceed 1.
    pub actor_device_busy_fraction: Option<f64>,
    /// GPU backends: host-to-device bytes per timed update, acting and learning (both engines
    /// when pipelined).
    pub uploaded_bytes_per_update: Option<u64>,
    /// `--host-frames`: the learner uploaded every segment's frames and every act whole
    /// frame stacks (the path before issue 12).
    pub host_frames: bool,
}

impl std::fmt::Display for E2eBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.phases;
        write!(
            f,
            "bench e2e: {} on {} ({} agents × {} envs × {} steps, {} threads{}): {} updates in {:.2} s\n  \
             {:.0} raw frames/s, {:.0} agent steps/s; pure emulation {:.0} frames/s: {:.0}% of it\n  \
             time: act {:.2} s, env {:.2} s, learn {:.2} s, mix {:.2} s{}; learner busy {:.0}% of the wall time",
            self.game, self.backend, self.agents, self.envs_per_agent, self.n_steps, self.threads,
            if self.pipeline { ", pipelined" } else { "" }, self.updates, self.wall_seconds, self.frames_per_sec,
            self.agent_steps_per_sec, self.emulation_frames_per_sec, self.fraction_of_emulation * 100.0, p.act, p.env, p.learn, p.mix,
            if self.pipeline { format!(" (overlapped sections {:.2} s)", p.overlapped) } else { String::new() },
            self.learner_busy_fraction * 100.0
        )?;
        let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.0}%", x * 100.0));
        match (self.learner_device_busy_fraction, self.actor_device_busy_fraction) {
            (None, _) => (),
            (l, None) => write!(f, "\n  device busy {} of the wall time", pct(l))?,
            (l, a) => write!(f, "\n  device busy: learner stream {}, actor stream {} of the wall time", pct(l), pct(a))?,
        }
        match self.uploaded_bytes_per_update {
            Some(b) => write!(
                f,
                "\n  bytes uploaded per update: {b} ({:.2} MB; {})",
                b as f64 / 1e6,
                if self.host_frames { "whole stacks and segments, --host-frames" } else { "newest frames only, segments read on the device" }
            ),
            None => Ok(()),
        }
    }
}

/// Times `updates` training updates of `config` (after one warm-up update), then the pure
/// emulation rate of the same environments on the same threads. `host_frames`: the frames go
/// up as before issue 12 (`Trainer::set_device_frames(false)`).
pub fn bench_e2e(config: &Config, updates: u64, host_frames: bool) -> Result<E2eBenchReport> {
    if updates == 0 {
        return Err(Error::Config("bench e2e: --updates must be at least 1".into()));
    }
    let mut config = config.clone();
    // The budget never ends the loop here (the benchmark counts updates itself): the largest
    // one a config may hold, as validate refuses more.
    config.frames = i64::MAX as u64;
    let mut trainer = crate::algo::Trainer::new(&config)?;
    trainer.set_device_frames(!host_frames)?;
    trainer.update()?;
    let uploaded = |t: &crate::algo::Trainer| {
        let (l, a) = t.transfer_bytes();
        l.map(|l| l.uploaded + a.map_or(0, |a| a.uploaded))
    };
    let (frames0, phases0, device0, uploaded0) = (trainer.frames(), trainer.phase_seconds(), trainer.device_seconds(), uploaded(&trainer));
    let started = Instant::now();
    for _ in 0..updates {
        trainer.update()?;
    }
    let wall = started.elapsed().as_secs_f64();
    let frames = trainer.frames() - frames0;
    let p1 = trainer.phase_seconds();
    let device1 = trainer.device_seconds();
    let uploaded_bytes_per_update = uploaded(&trainer).zip(uploaded0).map(|(b, a)| (b - a) / updates);
    let busy = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / wall);
    let phases = crate::algo::trainer::PhaseSeconds {
        act: p1.act - phases0.act,
        env: p1.env - phases0.env,
        learn: p1.learn - phases0.learn,
        mix: p1.mix - phases0.mix,
        overlapped: p1.overlapped - phases0.overlapped,
    };
    let backend = trainer.backend_name().to_string();
    drop(trainer);
    let (agents, envs) = config.learner_layout();
    let threads = config.resolved_threads();
    let game = crate::env::GameId::parse(&config.game)?;
    let frames_per_step = frames as f64 / (updates as f64 * (config.n_steps * agents * envs) as f64);
    let mut env_opts = crate::env::bench::EnvBenchOptions::new(game.clone(), agents * envs, threads);
    env_opts.rom = config.rom.clone();
    env_opts.preset = config.preset;
    env_opts.seed = config.seed;
    env_opts.steps = (updates * config.n_steps as u64).clamp(50, 2_000);
    env_opts.raw_frames = 0;
    let emulation = crate::env::bench::bench_env(&env_opts)?;
    let fps = frames as f64 / wall;
    Ok(E2eBenchReport {
        game: game.canonical().to_string(),
        backend,
        agents,
        envs_per_agent: envs,
        n_steps: config.n_steps,
        threads,
        pipeline: config.pipeline,
        updates,
        wall_seconds: wall,
        frames_per_sec: fps,
        agent_steps_per_sec: fps / frames_per_step,
        emulation_frames_per_sec: emulation.frames_per_sec,
        fraction_of_emulation: fps / emulation.frames_per_sec,
        learner_busy_fraction: ((phases.learn + phases.mix) / wall).min(1.0),
        learner_device_busy_fraction: busy(device0.0, device1.0),
        actor_device_busy_fraction: busy(device0.1, device1.1),
        uploaded_bytes_per_update,
        host_frames,
        phases,
    })
}
