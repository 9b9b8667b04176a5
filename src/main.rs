//! `gala-gpu`: the command line (DESIGN.md's contract). Every failure exits non-zero with a
//! one-line cause on stderr; the run folder's path is the only thing printed on stdout.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gala_gpu::algo::{ProgressSink, Topology, Trainer};
use gala_gpu::backend::BackendKind;
use gala_gpu::config::{Algo, Config};
use gala_gpu::env::EnvPreset;
use gala_gpu::model::NetPreset;
use gala_gpu::run::{MetricsRow, RunDir};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
    /// Throughput measurements.
    Bench(BenchArgs),
    /// Version, backends, and whether a usable GPU is present.
    Info,
}

/// `gala-gpu bench <what>`.
#[derive(Args)]
struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// The learner alone (returns, forward + backward, clip, RMSprop for every agent) on synthetic frames.
    Learner(LearnerBenchArgs),
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
}

fn bench(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Learner(a) => {
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
            };
            let report = gala_gpu::bench::bench_learner(&opts)?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
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
    #[arg(long, value_enum)]
    algo: Option<Algo>,
    /// Actor-learners.
    #[arg(long)]
    agents: Option<usize>,
    /// Simulators per actor-learner.
    #[arg(long)]
    envs_per_agent: Option<usize>,
    /// Steps per update (n of the n-step returns).
    #[arg(long)]
    n_steps: Option<usize>,
    /// RMSprop learning rate.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    gamma: Option<f64>,
    #[arg(long)]
    entropy_coef: Option<f64>,
    #[arg(long)]
    value_coef: Option<f64>,
    #[arg(long)]
    max_grad_norm: Option<f64>,
    #[arg(long)]
    rms_alpha: Option<f64>,
    #[arg(long)]
    rms_eps: Option<f64>,
    #[arg(long, value_enum)]
    topology: Option<Topology>,
    /// Peers per gossip round.
    #[arg(long)]
    peers: Option<usize>,
    /// Unmixed rounds before a receiver blocks (0 = lock-step).
    #[arg(long)]
    sync_freq: Option<u64>,
    /// Overlap rollouts with learning (HTS-RL).
    #[arg(long)]
    pipeline: bool,
    #[arg(long, value_enum)]
    net: Option<NetPreset>,
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Budget in raw emulator frames.
    #[arg(long)]
    frames: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (0 = all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Parent folder for run folders.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in this folder.
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
             max_grad_norm, rms_alpha, rms_eps, topology, peers, sync_freq, net, backend, frames, seed,
             threads, out, save_every, metrics_every);
        if self.rom.is_some() {
            c.rom = self.rom.clone();
        }
        if self.pipeline {
            c.pipeline = true;
        }
        c.validate()?;
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
                    eprintln!("{}", describe(row));
                    *last = Some(Instant::now());
                    *pending = None;
                } else {
                    *pending = Some(*row);
                }
            }
            Progress::Quiet => {}
        }
    }
}

impl Progress {
    fn finish(&mut self) {
        match self {
            Progress::Bar(bar) => bar.finish(),
            Progress::Lines { pending: Some(row), .. } => eprintln!("{}", describe(row)),
            _ => {}
        }
    }
}

fn train(args: TrainArgs) -> Result<()> {
    if args.resume.is_some() {
        bail!("--resume is not available in this build yet (checkpoints arrive with the run-folder issue)");
    }
    let config = args.resolve()?;
    let config_toml = config.to_toml();
    let game = gala_gpu::env::GameId::parse(&config.game)?;
    let algo = format!("{:?}", config.algo).to_lowercase();
    // The run folder first: an unwritable --out fails before anything expensive starts.
    let mut run = RunDir::create(&config.out, game.canonical(), &algo, config.seed, &config_toml)
        .context("cannot create the run folder")?;
    if !args.quiet {
        eprintln!("resolved configuration:\n{}", config_toml.trim_end());
    }
    let mut trainer = Trainer::new(&config)?;
    if !args.quiet {
        eprintln!("backend: {}", trainer.backend_choice());
        eprintln!("run folder: {}", run.path().display());
    }
    let mut progress = if args.quiet {
        Progress::Quiet
    } else if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(config.frames);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Progress::Bar(bar)
    } else {
        Progress::Lines { every: Duration::from_secs(5), last: None, pending: None }
    };
    let summary = trainer.train(Some(&mut run), &mut progress)?;
    progress.finish();
    if !args.quiet {
        eprintln!(
            "done: {} frames, {} updates, {} games, mean return (last 100) {}, {:.0} frames/s; params sha256 {}",
            summary.frames,
            summary.updates,
            summary.episodes,
            summary.mean_return_100.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into()),
            summary.sps,
            summary.params_sha256
        );
    }
    println!("{}", run.path().display());
    Ok(())
}

fn info() -> Result<()> {
    println!("gala-gpu {}", env!("CARGO_PKG_VERSION"));
    println!("backends: cpu (reference), sim (the CUDA kernels on the CPU), cuda (needs a GPU and libnvrtc)");
    match gala_gpu::gpu_probe() {
        Ok(name) => println!("gpu: {name}"),
        Err(why) => println!("gpu: none ({why})"),
    }
    println!("cores: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    Ok(())
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
            eprintln!("{}", one_line(&kept.join("\n")));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Bench(args) => bench(args),
        Command::Info => info(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
