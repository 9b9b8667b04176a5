//! `gala-gpu`: the command line (DESIGN.md's contract). Every failure exits non-zero with a
//! one-line cause on stderr; the run folder's path is the only thing printed on stdout.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gala_gpu::algo::{ProgressSink, Topology, Trainer};
use gala_gpu::backend::{BackendKind, Precision};
use gala_gpu::config::{Algo, Config};
use gala_gpu::env::EnvPreset;
use gala_gpu::model::NetPreset;
use gala_gpu::run::{MetricsRow, RunDir};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A line on stderr that never panics: a closed or full stderr (`2>&1 | head`) must not kill a
/// training run.
macro_rules! note {
    ($($t:tt)*) => { gala_gpu::signals::note(&format!($($t)*)) };
}

/// A line on stdout, the error returned (a closed pipe is handled in `main`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        writeln!(o, $($t)*).and_then(|_| o.flush()).context("cannot write to stdout")
    }};
}

mod cli_ranks;

/// Set when a training run stopped on a signal (after saving its checkpoint): exit code 128 +
/// the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Parser)]
#[command(name = "gala-gpu", version, about = "Train GALA-A2C agents (gossip-based actor-learners) batched on one device")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train agents; writes a run folder under --out.
    Train(TrainArgs),
    /// Atari ROMs: install (the pinned ale-py wheel from PyPI, via pip) or list.
    #[command(subcommand)]
    Roms(gala_gpu::env::cli::RomsCommand),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Play full games with a trained policy; prints mean, median and human-normalized score.
    Eval(EvalArgs),
    /// Write the learning curve of a run as an SVG (each agent and the mean).
    Plot(PlotArgs),
    /// Version, backends, and whether a usable GPU is present.
    Info,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Vector-environment throughput with random actions (agent steps/s and raw frames/s).
    Env(gala_gpu::env::cli::BenchEnvArgs),
    /// The learner alone (returns, forward + backward, clip, RMSprop for every agent) on synthetic frames.
    Learner(LearnerBenchArgs),
    /// The whole training loop against pure emulation of the same envs on the same threads.
    E2e(E2eBenchArgs),
}

/// Training settings as for `train` (same flags), plus how many updates to time.
#[derive(Args)]
struct E2eBenchArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Timed updates (after one warm-up update).
    #[arg(long, default_value_t = 20)]
    updates: u64,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// GPU backends: upload whole frame stacks at every act and every segment's frames again at
    /// every update (the path before issue 12) instead of keeping the frames on the device.
    #[arg(long)]
    host_frames: bool,
}

fn bench_e2e(a: E2eBenchArgs) -> Result<()> {
    let config = a.train.resolve()?;
    let report = gala_gpu::bench::bench_e2e(&config, a.updates, a.host_frames)?;
    if a.json {
        out!("{}", serde_json::to_string(&report)?)?;
    } else {
        out!("{report}")?;
    }
    Ok(())
}

#[derive(Args)]
struct EvalArgs {
    /// A run folder or a checkpoint file (.safetensors).
    #[arg(value_name = "RUN_DIR|CHECKPOINT")]
    source: PathBuf,
    /// Full games to play.
    #[arg(long, default_value_t = 10)]
    episodes: usize,
    /// Take the most likely action instead of sampling.
    #[arg(long)]
    greedy: bool,
    /// Save the first game as an animated GIF.
    #[arg(long, value_name = "FILE")]
    gif: Option<PathBuf>,
    /// Which agent's parameters play.
    #[arg(long, default_value_t = 0)]
    agent: usize,
    /// Seed of the evaluation games (default: the run's seed + 1000003).
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct PlotArgs {
    /// The run folder; with several, their all-agents curves on one chart (needs --out).
    #[arg(value_name = "RUN_DIR", required = true)]
    runs: Vec<PathBuf>,
    /// Output file (default RUN_DIR/learning_curve.svg for one run).
    #[arg(long, value_name = "FILE.svg")]
    out: Option<PathBuf>,
    /// Legend text of each run of a comparison, in the order of the runs (default: folder names).
    #[arg(long = "label", value_name = "TEXT")]
    labels: Vec<String>,
    /// A comparison's last frame count (default: all of every run).
    #[arg(long, value_name = "FRAMES")]
    until: Option<f64>,
}

#[derive(Args)]
struct LearnerBenchArgs {
    #[arg(long, default_value_t = 8)]
    agents: usize,
    #[arg(long, default_value_t = 16)]
    envs_per_agent: usize,
    #[arg(long, default_value_t = 5)]
    n_steps: usize,
    #[arg(long, value_enum, default_value_t = NetPreset::Gala)]
    net: NetPreset,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Timed updates (default: 2 on sim, 10 on cpu, 100 on cuda).
    #[arg(long)]
    updates: Option<usize>,
    /// Host threads for the cpu backend (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// With --backend sim: profile the memory accesses of one more update (shared-memory bank
    /// conflicts and global coalescing per kernel launch) and print the table.
    #[arg(long)]
    profile: bool,
    /// GPU backends: upload the segment's frames every update (the fallback path; before issue
    /// 12 every update did) instead of reading the device rollout `act` filled, as training does.
    #[arg(long)]
    host_frames: bool,
    /// The conv/fc GEMMs' arithmetic on the GPU backends: fp32, tf32 (tensor cores, sm_80+), or
    /// tf32-conv (TF32 convs, FP32 fc: PyTorch's default).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
}

fn bench_learner(a: LearnerBenchArgs) -> Result<()> {
    gala_gpu::config::check_threads("threads", a.threads)?;
    if a.agents > 0 && a.envs_per_agent > 0 && a.n_steps > 0 {
        let net = gala_gpu::model::NetSpec::new(a.net, 6);
        gala_gpu::memory::Estimate::engine(&net, a.agents, a.envs_per_agent, a.n_steps, gala_gpu::memory::Placement::of(a.backend))
            .check(&format!("bench learner ({} agents × {} envs × {} steps)", a.agents, a.envs_per_agent, a.n_steps))?;
    }
    {
        {
            let threads = if a.threads > 0 { a.threads } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) };
            let updates = a.updates.unwrap_or(match a.backend {
                BackendKind::Sim => 2,
                BackendKind::Cpu => 10,
                BackendKind::Cuda => 100,
                BackendKind::Auto => if gala_gpu::gpu_probe().is_ok() { 100 } else { 10 },
            });
            let opts = gala_gpu::bench::LearnerBenchOptions {
                agents: a.agents,
                envs_per_agent: a.envs_per_agent,
                n_steps: a.n_steps,
                net: a.net,
                actions: 6,
                backend: a.backend,
                updates,
                threads,
                profile: a.profile,
                host_frames: a.host_frames,
                precision: a.precision,
            };
            let report = gala_gpu::bench::bench_learner(&opts)?;
            if a.json {
                out!("{}", serde_json::to_string(&report)?)?;
            } else {
                out!("{report}")?;
            }
            Ok(())
        }
    }
}

/// `--frames`: a positive number (0 used to mean "the default budget", which a resume then
/// printed as `frames = 0`; it is refused instead, see README "Failure behaviour").
fn frame_budget(text: &str) -> std::result::Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err(gala_gpu::config::FRAMES_ZERO.to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

/// Flags override the config file, which overrides the defaults.
#[derive(Args, Default)]
#[command(allow_negative_numbers = true)]
struct TrainArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. envs_per_agent).
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Atari preprocessing preset.
    #[arg(long, value_enum)]
    preset: Option<EnvPreset>,
    /// Game: `catch` (built in) or an Atari game.
    #[arg(long)]
    game: Option<String>,
    /// Load this ROM file instead of an installed one.
    #[arg(long, value_name = "PATH")]
    rom: Option<PathBuf>,
    /// Algorithm [default: gala].
    #[arg(long, value_enum)]
    algo: Option<Algo>,
    /// Actor-learners [default: 4].
    #[arg(long)]
    agents: Option<usize>,
    /// Simulators per actor-learner [default: 16].
    #[arg(long)]
    envs_per_agent: Option<usize>,
    /// Steps per update (n of the n-step returns) [default: 5].
    #[arg(long)]
    n_steps: Option<usize>,
    /// RMSprop learning rate [default: 7e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// Discount factor of the n-step returns [default: 0.99].
    #[arg(long)]
    gamma: Option<f64>,
    /// Weight of the entropy bonus in the loss [default: 0.01].
    #[arg(long)]
    entropy_coef: Option<f64>,
    /// Weight of the value loss [default: 0.5].
    #[arg(long)]
    value_coef: Option<f64>,
    /// Clip each agent's gradient to this global L2 norm [default: 0.5].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// RMSprop smoothing constant of the squared-gradient average [default: 0.99].
    #[arg(long)]
    rms_alpha: Option<f64>,
    /// RMSprop epsilon [default: 1e-5].
    #[arg(long)]
    rms_eps: Option<f64>,
    /// RMSprop form: torch (v from 0, eps outside the root) or tf (v from 1, eps inside:
    /// baselines' and SB3's Atari A2C) [default: torch].
    #[arg(long, value_enum)]
    rms_form: Option<gala_gpu::backend::cpu::optim::RmsForm>,
    /// Gossip graph: each round an agent mixes with `--peers` of its neighbours [default: ring].
    #[arg(long, value_enum)]
    topology: Option<Topology>,
    /// Peers per gossip round [default: 1].
    #[arg(long)]
    peers: Option<usize>,
    /// Unmixed rounds before a receiver blocks (0 = lock-step); > 0 runs agents on threads
    /// [default: 0].
    #[arg(long)]
    sync_freq: Option<u64>,
    /// Every agent on its own thread and backend, even with lock-step gossip.
    #[arg(long)]
    agent_threads: bool,
    /// Seconds a blocked gossip wait may last before the run stops naming the silent peer.
    #[arg(long, value_name = "SECONDS")]
    gossip_timeout: Option<f64>,
    /// Overlap rollouts with learning (HTS-RL).
    #[arg(long)]
    pipeline: bool,
    /// Policy network [default: gala].
    #[arg(long, value_enum)]
    net: Option<NetPreset>,
    /// Where the network runs: auto picks cuda when a GPU is present, else cpu [default: auto].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// The conv/fc GEMMs' arithmetic: fp32; tf32 (tensor cores, as PyTorch with TF32 allowed for
    /// convs and matmuls); tf32-conv (TF32 convs, FP32 fc: PyTorch's default). The tf32 modes run
    /// on cuda (sm_80+) and sim only [default: fp32].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Budget in raw emulator frames (the total to train to; at least 1).
    #[arg(long, value_parser = frame_budget)]
    frames: Option<u64>,
    /// Seed of the environments, the initial parameters and the action sampling [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (0 = all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Parent folder for run folders.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (with --frames: the new total budget).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Checkpoint every this many frames.
    #[arg(long, value_name = "FRAMES")]
    save_every: Option<u64>,
    /// metrics.csv row every this many updates.
    #[arg(long)]
    metrics_every: Option<u64>,
    /// No progress output (errors are still printed).
    #[arg(long, short)]
    quiet: bool,
}

impl TrainArgs {
    /// The saved run's configuration (`saved`, the checkpoint's) with the settings a resume may
    /// change ([`gala_gpu::config::RESUMABLE`]) taken from the folder's config.toml (`folder`,
    /// which may have been edited) and then from the flags. Any other difference between
    /// config.toml and the checkpoint is an edit that cannot be honoured: refused, naming it.
    fn resolve_resume(&self, saved: &Config, folder: &Config, dir: &std::path::Path) -> Result<Config> {
        let resumable_flags = gala_gpu::config::RESUMABLE.iter().map(|k| format!("--{}", k.replace('_', "-"))).collect::<Vec<_>>().join(", ");
        let mut fixed: Vec<&str> = Vec::new();
        macro_rules! fixed {
            ($($field:ident),*) => {$(
                if self.$field.is_some() { fixed.push(stringify!($field)); }
            )*};
        }
        fixed!(config, preset, game, rom, algo, agents, envs_per_agent, n_steps, gamma,
               rms_alpha, rms_eps, rms_form, topology, peers, sync_freq, net, backend, precision, seed, out);
        // Switches cannot be turned off on the command line: repeating the saved setting is fine.
        if self.pipeline && !saved.pipeline {
            fixed.push("pipeline");
        }
        if self.agent_threads && !saved.agent_threads {
            fixed.push("agent_threads");
        }
        if !fixed.is_empty() {
            bail!(
                "--resume continues the saved configuration; it cannot change {} (only {resumable_flags} may be given)",
                fixed.iter().map(|f| format!("--{}", f.replace('_', "-"))).collect::<Vec<_>>().join(", ")
            );
        }
        let edited: Vec<String> = saved
            .differences(folder)
            .into_iter()
            .filter(|(k, _, _)| !gala_gpu::config::RESUMABLE.contains(&k.as_str()))
            .map(|(k, was, now)| format!("{k} ({was} in the checkpoint, {now} in config.toml)"))
            .collect();
        if !edited.is_empty() {
            bail!(
                "{}/config.toml was edited: {} cannot change in a resumed run (the checkpoint's state depends on them); put the checkpoint's values back, or start a new run; only {} may change on resume (in config.toml or with {resumable_flags})",
                dir.display(),
                edited.join(", "),
                gala_gpu::config::RESUMABLE.join(", ")
            );
        }
        let mut c = saved.with_resumable_from(folder);
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field { c.$field = v.clone(); }
            )*};
        }
        set!(frames, threads, save_every, metrics_every, gossip_timeout, lr, entropy_coef, value_coef, max_grad_norm);
        c.validate()?;
        Ok(c)
    }

    fn resolve(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field { c.$field = v.clone(); }
            )*};
        }
        set!(preset, game, algo, agents, envs_per_agent, n_steps, lr, gamma, entropy_coef, value_coef,
             max_grad_norm, rms_alpha, rms_eps, rms_form, topology, peers, sync_freq, net, backend, precision, frames, seed,
             threads, out, save_every, metrics_every, gossip_timeout);
        if self.agent_threads {
            c.agent_threads = true;
        }
        if let Some(rom) = &self.rom {
            c.rom = Some(rom.clone());
            // `--rom PATH` alone: the ROM's md5 says which game it is.
            if self.game.is_none() {
                c.game = gala_gpu::env::GameId::from_rom(rom)?.canonical().to_string();
            }
        }
        if self.pipeline {
            c.pipeline = true;
        }
        c.resolve_game_defaults()?;
        c.validate()?;
        c.check_nothing_ignored()?;
        Ok(c)
    }
}

/// Progress on stderr: a bar on a terminal, otherwise a line every few seconds.
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { every: Duration, last: Option<Instant>, pending: Option<MetricsRow> },
    Quiet,
}

fn describe(row: &MetricsRow) -> String {
    let ret = row.mean_return_100.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
    format!(
        "frames {} | {:.0} fps | episodes {} | return(100) {ret} | consensus {:.2e} | v-loss {:.4} | pg-loss {:.4} | entropy {:.3}",
        row.frames, row.sps, row.episodes, row.consensus_distance, row.value_loss, row.policy_loss, row.entropy
    )
}

impl ProgressSink for Progress {
    fn tick(&mut self, frames: u64) {
        if let Progress::Bar(bar) = self {
            bar.set_position(frames);
        }
    }

    fn report(&mut self, row: &MetricsRow) {
        match self {
            Progress::Bar(bar) => bar.set_message(describe(row)),
            Progress::Lines { every, last, pending } => {
                if last.is_none_or(|t| t.elapsed() >= *every) {
                    note!("{}", describe(row));
                    *last = Some(Instant::now());
                    *pending = None;
                } else {
                    *pending = Some(*row);
                }
            }
            Progress::Quiet => {}
        }
    }

    fn warn(&mut self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.suspend(|| eprintln!("warning: {message}")),
            _ => eprintln!("warning: {message}"),
        }
    }
}

impl Progress {
    /// A bar on a terminal, log lines otherwise, nothing with `quiet`; `position`: frames done.
    fn new(quiet: bool, frames: u64, position: u64) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(frames);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_position(position);
            Progress::Bar(bar)
        } else {
            Progress::Lines { every: Duration::from_secs(5), last: None, pending: None }
        }
    }

    fn finish(&mut self) {
        match self {
            Progress::Bar(bar) => bar.finish(),
            Progress::Lines { pending: Some(row), .. } => note!("{}", describe(row)),
            _ => {}
        }
    }
}

/// The line a run stopped by a signal ends with.
fn describe_interrupt(summary: &gala_gpu::run::Summary, run: &RunDir) {
    note!(
        "interrupted by {} at frame {} (update {}); checkpoint saved to {}; continue with: gala-gpu train --resume {}",
        gala_gpu::signals::name(gala_gpu::signals::received().unwrap_or(2)),
        summary.frames,
        summary.updates,
        run.checkpoint_path().display(),
        run.path().display()
    );
}

/// A run opened for `--resume`: its folder, its checkpoint, the folder's lock (when taken; a
/// `RunDir` takes it over) and the folder's own configuration.
type Resumed = (PathBuf, gala_gpu::checkpoint::Checkpoint, Option<gala_gpu::run::RunLock>, Config);

/// Opens `dir` to resume it. With `take_lock` (the process that will write the folder) the
/// folder is locked before its checkpoint is read, so that no other process writes it
/// meanwhile; its config.toml must be the checkpoint's run's.
fn open_resume(dir: &std::path::Path, take_lock: bool) -> Result<Resumed> {
    let lock = if take_lock { Some(gala_gpu::run::RunLock::acquire(dir).context("cannot resume")?) } else { None };
    let ck = gala_gpu::checkpoint::Checkpoint::load(dir).context("cannot resume")?;
    let folder = gala_gpu::run::folder_config_for(dir, &ck).context("cannot resume")?;
    Ok((dir.to_path_buf(), ck, lock, folder))
}

fn train(args: TrainArgs) -> Result<()> {
    // Started by mpirun/srun as one of several processes: this rank's share of the run.
    if let Some(world) = cli_ranks::launched()? {
        return cli_ranks::train(args, world);
    }
    // First, so that a stop signal at any point of the set-up is a clean stop too.
    let stop = Arc::new(AtomicBool::new(false));
    gala_gpu::signals::install(stop.clone())?;
    // A resumed run's folder is locked before its checkpoint is read, so that no other process
    // writes it meanwhile; its config.toml must be the checkpoint's run's.
    let mut resumed = args.resume.as_deref().map(|dir| open_resume(dir, true)).transpose()?;
    let config = match &resumed {
        Some((dir, ck, _, folder)) => args.resolve_resume(&ck.config, folder, dir)?,
        None => {
            let mut c = args.resolve()?;
            c.run_id = Some(gala_gpu::run::new_run_id());
            // Sizes before anything is allocated or a run folder created.
            gala_gpu::memory::check_run(&c)?;
            c
        }
    };
    let config_toml = config.to_toml();
    let game = gala_gpu::env::GameId::parse(&config.game)?;
    let algo = format!("{:?}", config.algo).to_lowercase();
    // Test hook (tests/async_gossip.rs): agent A's thread fails at the start of round R.
    let fail_agent = match std::env::var("GALA_GPU_DEBUG_FAIL_AGENT") {
        Ok(v) if config.asynchronous() => Some(
            v.split_once(':')
                .and_then(|(a, r)| Some((a.parse::<usize>().ok()?, r.parse::<u64>().ok()?)))
                .context("GALA_GPU_DEBUG_FAIL_AGENT must be AGENT:ROUND")?,
        ),
        Ok(_) => bail!("GALA_GPU_DEBUG_FAIL_AGENT applies to asynchronous runs (--agent-threads or --sync-freq N) only"),
        Err(_) => None,
    };
    // The run folder first: an unwritable --out fails before anything expensive starts.
    let mut run = match resumed.as_mut() {
        Some((dir, ck, lock, _)) => {
            let lock = lock.take().expect("taken once");
            let run = RunDir::resume_locked(dir, lock, ck.frames, &config_toml).context("cannot reopen the run folder")?;
            let changes = ck.config.differences(&config);
            gala_gpu::run::append_config_history(run.path(), ck.frames, &changes).context("cannot record the configuration change")?;
            for (key, was, now) in changes.iter().filter(|(k, _, _)| !matches!(k.as_str(), "frames" | "threads" | "save_every" | "metrics_every" | "gossip_timeout")) {
                note!("{key} changes from {was} to {now} at frame {} (recorded in config_history.csv); the run now differs from an uninterrupted one", ck.frames);
            }
            run
        }
        None => RunDir::create(&config.out, game.canonical(), &algo, config.seed, &config_toml).context("cannot create the run folder")?,
    };
    if !args.quiet {
        note!("resolved configuration:\n{}", config_toml.trim_end());
    }
    let mut trainer = if config.asynchronous() {
        if !args.quiet {
            let mode = if config.sync_freq == 0 { "lock-step".to_string() } else { format!("asynchronous (sync_freq {})", config.sync_freq) };
            note!("gossip: {mode}, every agent on its own thread");
            if let Some((_, ck, ..)) = &resumed {
                let rounds = match &ck.agent_updates {
                    Some(r) => format!("agents at rounds {r:?}, each continuing from its own"),
                    None => format!("round {}", ck.updates),
                };
                note!("resuming at frame {} ({rounds}) from {}, with empty gossip mailboxes", ck.frames, run.checkpoint_path().display());
            }
            note!("run folder: {}", run.path().display());
        }
        if let Some((_, ck, ..)) = &resumed {
            if ck.env_states.is_none() {
                note!("warning: this game cannot save its state; its games restart, so the resumed run is not bit-exact");
            }
            if ck.agent_updates.is_some() {
                note!("warning: the checkpoint holds each agent's last completed round after a failure, not one cut; the resumed run will not match an uninterrupted one");
            }
        }
        None
    } else {
        let mut trainer = match &resumed {
            Some((_, ck, ..)) => {
                let (trainer, exact) = Trainer::from_checkpoint(ck, &config)?;
                if !args.quiet {
                    note!("resuming at frame {} (update {}) from {}", ck.frames, ck.updates, run.checkpoint_path().display());
                }
                if !exact {
                    note!("warning: this game cannot save its state; its games restart, so the resumed run is not bit-exact");
                }
                trainer
            }
            None => match Trainer::new(&config) {
                Ok(t) => t,
                Err(e) => {
                    run.discard();
                    return Err(e.into());
                }
            },
        };
        trainer.set_stop_flag(stop.clone());
        // Test hook (tests/tooling.rs): a NaN in the loss of this update.
        if let Ok(at) = std::env::var("GALA_GPU_DEBUG_NAN_AT_UPDATE") {
            trainer.set_debug_nan_at_update(Some(at.parse().context("GALA_GPU_DEBUG_NAN_AT_UPDATE must be an update number")?));
        }
        if !args.quiet {
            note!("backend: {}", trainer.backend_choice());
            note!("run folder: {}", run.path().display());
        }
        Some(trainer)
    };
    let position = trainer.as_ref().map_or_else(|| resumed.as_ref().map_or(0, |(_, ck, ..)| ck.frames), Trainer::frames);
    let mut progress = Progress::new(args.quiet, config.frames, position);
    let (summary, interrupted) = match trainer.as_mut() {
        Some(trainer) => (trainer.train(Some(&mut run), &mut progress)?, trainer.was_interrupted()),
        None => {
            use gala_gpu::algo::async_gossip::{train_async_session, AsyncHooks, AsyncSession};
            let session = AsyncSession {
                resume: resumed.as_ref().map(|(_, ck, ..)| ck),
                stop: Some(stop),
                hooks: AsyncHooks { fail_agent, ..AsyncHooks::default() },
                link: None,
            };
            let t = train_async_session(&config, Some(&mut run), &mut progress, &session)?;
            (t.summary, t.interrupted)
        }
    };
    progress.finish();
    if interrupted {
        INTERRUPTED.store(true, Ordering::SeqCst);
        describe_interrupt(&summary, &run);
    } else if !args.quiet {
        note!(
            "done: {} frames, {} updates, {} games, mean return (last 100) {}, {:.0} frames/s; params sha256 {}",
            summary.frames,
            summary.updates,
            summary.episodes,
            summary.mean_return_100.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into()),
            summary.sps,
            summary.params_sha256
        );
    }
    out!("{}", run.path().display())?;
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    gala_gpu::config::check_threads("threads", args.threads)?;
    let threads = if args.threads > 0 { args.threads } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) };
    let report = gala_gpu::eval::evaluate(&gala_gpu::eval::EvalOptions {
        source: args.source,
        episodes: args.episodes,
        greedy: args.greedy,
        gif: args.gif.clone(),
        agent: args.agent,
        seed: args.seed,
        threads,
    })?;
    // The scores first: they stand even when the GIF could not be written.
    out!("{}", report.describe())?;
    if let Some(why) = report.gif_error {
        bail!("the scores above are complete, but the GIF was not written: {why}");
    }
    if let Some(gif) = args.gif {
        note!("first game ({} frames) written to {}", report.frames_in_gif, gif.display());
    }
    Ok(())
}

fn plot(args: PlotArgs) -> Result<()> {
    let path = match (&args.runs[..], &args.out) {
        ([run], _) if args.labels.is_empty() && args.until.is_none() => gala_gpu::plot::plot_run(run, args.out.as_deref())?,
        (runs, Some(out)) => gala_gpu::plot::plot_comparison(runs, &args.labels, args.until, out)?,
        (_, None) => anyhow::bail!("plotting several runs on one chart (or with --label / --until) needs --out FILE.svg"),
    };
    out!("{}", path.display())?;
    Ok(())
}

fn info() -> Result<()> {
    out!("gala-gpu {}", env!("CARGO_PKG_VERSION"))?;
    out!("backends: cpu (reference), sim (the CUDA kernels on the CPU), cuda (needs a GPU and libnvrtc)")?;
    match gala_gpu::gpu_probe() {
        Ok(name) => out!("gpu: {name}")?,
        Err(why) => out!("gpu: none ({why})")?,
    }
    out!("cores: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))?;
    Ok(())
}

/// Whether an error is a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == BrokenPipe)
            || matches!(c.downcast_ref::<gala_gpu::Error>(), Some(gala_gpu::Error::Io { cause, .. }) if cause.kind() == BrokenPipe)
    })
}

/// Flattens an error chain to one line.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
            // clap's rendering spans several lines (usage, hints); keep the cause and hints.
            let rendered = e.render().to_string();
            let kept: Vec<&str> = rendered
                .lines()
                .filter(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            note!("{}", one_line(&kept.join("\n")));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Roms(cmd) => gala_gpu::env::cli::run_roms(&cmd).map_err(Into::into),
        Command::Bench(BenchCommand::Env(args)) => gala_gpu::env::cli::run_bench_env(&args).map_err(Into::into),
        Command::Eval(args) => eval(args),
        Command::Plot(args) => plot(args),
        Command::Bench(BenchCommand::Learner(args)) => bench_learner(args),
        Command::Bench(BenchCommand::E2e(args)) => bench_e2e(args),
        Command::Info => info(),
    };
    let finished = || {
        if INTERRUPTED.load(Ordering::SeqCst) {
            ExitCode::from((128 + gala_gpu::signals::received().unwrap_or(libc::SIGINT)) as u8)
        } else {
            ExitCode::SUCCESS
        }
    };
    match result {
        Ok(()) => finished(),
        // The reader of stdout went away (`gala-gpu info | true`, `roms list | head -1`): like a
        // Unix tool, stop quietly; the work itself (a run and its folder) is complete.
        Err(e) if is_broken_pipe(&e) => finished(),
        Err(e) => {
            note!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `train --help` states the defaults in words; they must be Config::default()'s, value for
    /// value (numbers compared as numbers, enums by their TOML names).
    #[test]
    fn train_help_defaults_are_the_config_defaults() {
        let defaults = match toml::Value::try_from(Config::default()).unwrap() {
            toml::Value::Table(t) => t,
            other => panic!("Config serialises to a table, got {other:?}"),
        };
        let cli = Cli::command();
        let train = cli.get_subcommands().find(|c| c.get_name() == "train").expect("train subcommand");
        let mut checked = 0;
        for arg in train.get_arguments() {
            let Some(help) = arg.get_help().map(|h| h.to_string()) else { continue };
            let Some(start) = help.find("[default: ") else { continue };
            let stated = &help[start + 10..help[start..].find(']').unwrap() + start];
            let key = arg.get_id().as_str();
            let value = defaults.get(key).unwrap_or_else(|| panic!("--{key}: no such Config field"));
            let same = match value {
                toml::Value::Float(x) => stated.parse::<f64>().is_ok_and(|s| s == *x),
                toml::Value::Integer(i) => stated.parse::<i64>().is_ok_and(|s| s == *i),
                toml::Value::String(s) => s == stated,
                other => panic!("--{key}: unexpected default {other:?}"),
            };
            assert!(same, "--{key}: help says [default: {stated}], Config::default() has {value}");
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} defaults stated");
    }
}
