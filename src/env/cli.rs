//! The `roms` and `bench env` subcommands, as clap argument types plus the functions that run
//! them, so that `main.rs` only has to mount them:
//!
//! ```ignore
//! #[derive(Subcommand)] enum Command { …, #[command(subcommand)] Roms(gala_gpu::env::cli::RomsCommand),
//!                                       #[command(subcommand)] Bench(BenchCommand) }
//! #[derive(Subcommand)] enum BenchCommand { Env(gala_gpu::env::cli::BenchEnvArgs), … }
//! Command::Roms(c) => gala_gpu::env::cli::run_roms(&c)?,
//! Command::Bench(BenchCommand::Env(a)) => gala_gpu::env::cli::run_bench_env(&a)?,
//! ```

use super::atari::roms;
use super::bench::{bench_env, EnvBenchOptions};
use super::{EnvPreset, GameId};
use crate::error::Result;
use std::path::PathBuf;

/// `gala-gpu roms install|list`
#[derive(clap::Subcommand, Clone, Debug)]
pub enum RomsCommand {
    /// Download the pinned ale-py wheel from PyPI (python3 -m pip download) and extract its ROMs
    /// into $GALA_ROM_DIR (else $XDG_DATA_HOME/gala-gpu/roms, else ~/.local/share/gala-gpu/roms).
    Install {
        /// Use this already downloaded ale-py wheel instead of running pip.
        #[arg(long, value_name = "FILE.whl")]
        wheel: Option<PathBuf>,
    },
    /// Show the installed ROMs, whether each passes its md5 check and is playable.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// A line on stdout; a failed write (a closed pipe: `roms list | head -1`, a full disk) is
/// returned as an error on `<stdout>`, which the CLI turns into a quiet stop or one line.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        writeln!(o, $($t)*).and_then(|_| o.flush()).map_err(|e| crate::Error::io("<stdout>", e))
    }};
}

pub fn run_roms(cmd: &RomsCommand) -> Result<()> {
    match cmd {
        RomsCommand::Install { wheel } => {
            let report = match wheel {
                Some(w) => roms::install_from_wheel(w)?,
                None => {
                    crate::signals::note(&format!("downloading ale-py {} from PyPI with pip…", roms::ALE_PY_VERSION));
                    roms::install()?
                }
            };
            outln!(
                "installed {} ROMs into {} ({} playable with ALE 0.6)",
                report.roms,
                report.dir.display(),
                report.playable
            )?;
        }
        RomsCommand::List { json } => {
            let list = roms::list()?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&list).unwrap_or_default())?;
            } else if list.is_empty() {
                outln!("no ROMs in {}; run `gala-gpu roms install`", roms::rom_dir()?.display())?;
            } else {
                outln!("{} ROMs in {}", list.len(), roms::rom_dir()?.display())?;
                for e in &list {
                    let status = match (e.md5_ok, e.playable) {
                        (false, _) => "BAD MD5 (reinstall)",
                        (true, true) => "ok",
                        (true, false) => "ok, not supported by ALE 0.6",
                    };
                    outln!("  {:<20} {status}", e.game)?;
                }
            }
        }
    }
    Ok(())
}

/// `gala-gpu bench env`
#[derive(clap::Args, Clone, Debug)]
pub struct BenchEnvArgs {
    /// Game name (`pong`, `PongNoFrameskip-v4`, `ALE/Pong-v5`, `catch`).
    #[arg(long, default_value = "pong")]
    pub game: String,
    /// ROM file to load instead of the installed one.
    #[arg(long, value_name = "PATH")]
    pub rom: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gala")]
    pub preset: EnvPreset,
    #[arg(long, default_value_t = 16)]
    pub envs: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Vector steps to time (each steps every env once).
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Frames of the one-core raw emulator baseline (0: skip it).
    #[arg(long, default_value_t = 40_000)]
    pub raw_frames: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run_bench_env(a: &BenchEnvArgs) -> Result<()> {
    let game = match (&a.rom, a.game.as_str()) {
        (Some(path), "pong") => GameId::from_rom(path)?, // --rom without --game
        _ => GameId::parse(&a.game)?,
    };
    crate::config::check_threads("threads", a.threads)?;
    let mut o = EnvBenchOptions::new(game, a.envs, a.threads);
    o.rom = a.rom.clone();
    o.preset = a.preset;
    o.steps = a.steps;
    o.raw_frames = a.raw_frames;
    o.seed = a.seed;
    let report = bench_env(&o)?;
    if a.json {
        outln!("{}", serde_json::to_string(&report).unwrap_or_default())?;
    } else {
        outln!("{report}")?;
    }
    Ok(())
}
