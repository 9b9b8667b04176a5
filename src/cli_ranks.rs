//! `gala-gpu train` started as several processes by `mpirun`/`srun` (DESIGN.md "Scale-out"):
//! rank r trains a contiguous block of the agents (`gala_gpu::dist`), rank 0 owns the run
//! folder and prints the progress, the other ranks print only their errors.

use super::{describe_interrupt, one_line, open_resume, Progress, TrainArgs, INTERRUPTED};
use anyhow::{Context, Result};
use gala_gpu::dist::{CrossRankPath, RankTransport};
use gala_gpu::run::RunDir;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// MPI for the process's lifetime (finalised when dropped, after a run that ended well).
#[cfg(feature = "mpi")]
pub type Session = gala_gpu::dist::mpi::MpiSession;
#[cfg(not(feature = "mpi"))]
pub type Session = ();

/// The transport when this process is one of several an MPI launcher started; None when it runs
/// alone (then nothing changes). Without the `mpi` feature, being launched as several
/// processes is refused: each would otherwise train the whole run on its own.
pub fn launched() -> Result<Option<(Session, Box<dyn RankTransport>)>> {
    let size = gala_gpu::dist::launched_size();
    if size.is_none_or(|n| n < 2) {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        let (session, world) = gala_gpu::dist::mpi::MpiTransport::init().context("cannot start MPI")?;
        if world.ranks() < 2 {
            return Ok(None);
        }
        Ok(Some((session, Box::new(world))))
    }
    #[cfg(not(feature = "mpi"))]
    anyhow::bail!(
        "started as {} processes (mpirun/srun), but this gala-gpu was built without MPI: rebuild with `cargo build --release --features mpi` (README, \"Several processes and machines\")",
        size.unwrap_or(0)
    )
}

/// `train` on one rank of several.
pub fn train(args: TrainArgs, (session, world): (Session, Box<dyn RankTransport>)) -> Result<()> {
    let (rank, ranks) = (world.rank(), world.ranks());
    let result = train_rank(&args, world);
    if let Err(e) = &result {
        // Every rank reports its own failure; then the job ends, so that ranks waiting for
        // this one do not sit out their gossip_timeout (and MPI does not linger on requests
        // that can no longer complete).
        eprintln!("error: rank {rank} of {ranks}: {}", one_line(&format!("{e:#}")));
        #[cfg(feature = "mpi")]
        gala_gpu::dist::mpi::abort_job(1);
    }
    // MPI is finalised here, when `session` goes out of scope after a run that ended well.
    let _session = session;
    result
}

fn train_rank(args: &TrainArgs, world: Box<dyn RankTransport>) -> Result<()> {
    let (rank, ranks) = (world.rank(), world.ranks());
    let lead = rank == 0;
    let quiet = args.quiet || !lead;
    // As in one process: the lead locks the folder before the checkpoint is read, and the
    // folder's config.toml must belong to the checkpoint's run. Every rank reads the checkpoint.
    let mut resumed = args.resume.as_deref().map(|dir| open_resume(dir, lead)).transpose()?;
    let config = match &resumed {
        Some((dir, ck, _, folder)) => args.resolve_resume(&ck.config, folder, dir)?,
        None => {
            let mut c = args.resolve()?;
            // The run's identity lives in the lead's folder and checkpoint only.
            if lead {
                c.run_id = Some(gala_gpu::run::new_run_id());
            }
            c
        }
    };
    let blocks = gala_gpu::dist::train::check_config(&config, ranks)?;
    let config_toml = config.to_toml();
    let game = gala_gpu::env::GameId::parse(&config.game)?;
    let algo = format!("{:?}", config.algo).to_lowercase();
    let mut run = if lead {
        Some(match resumed.as_mut() {
            Some((dir, ck, lock, _)) => {
                let lock = lock.take().expect("the lead holds the lock");
                RunDir::resume_locked(dir, lock, ck.frames, &config_toml).context("cannot reopen the run folder")?
            }
            None => RunDir::create(&config.out, game.canonical(), &algo, config.seed, &config_toml).context("cannot create the run folder")?,
        })
    } else {
        None
    };
    if !quiet {
        eprintln!("resolved configuration:\n{}", config_toml.trim_end());
        let mode = if config.asynchronous() {
            format!("asynchronous (sync_freq {}), every agent on its own thread, cross-process messages posted without waiting", config.sync_freq)
        } else {
            "lock-step across processes".to_string()
        };
        eprintln!(
            "processes: {ranks} ({}), agents per rank {:?}; gossip: {mode}",
            world.describe(),
            (0..ranks).map(|q| blocks.range(q).len()).collect::<Vec<_>>()
        );
        if let Some((_, ck, ..)) = &resumed {
            eprintln!("resuming at frame {} (update {})", ck.frames, ck.updates);
        }
        if let Some(run) = &run {
            eprintln!("run folder: {}", run.path().display());
        }
    }
    // One GPU per rank on a node: local rank mod the GPUs this process sees.
    if matches!(config.backend, gala_gpu::backend::BackendKind::Cuda | gala_gpu::backend::BackendKind::Auto) {
        let gpus = gala_gpu::backend::cuda_device_count();
        if let (Some(local), true) = (gala_gpu::dist::local_rank(), gpus > 0) {
            gala_gpu::backend::set_cuda_ordinal(local % gpus);
            if !args.quiet {
                eprintln!("rank {rank}: CUDA device {} of {gpus} (local rank {local})", local % gpus);
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    gala_gpu::signals::install(stop.clone())?;
    let start = resumed.as_ref().map_or(0, |(_, ck, ..)| ck.frames);
    let mut progress = Progress::new(quiet, config.frames, start);
    // Test hooks (tests/mpi.rs): rank R stops answering before update U; every agent of rank R
    // sleeps MS milliseconds after each update (asynchronous gossip); agent A fails at round R.
    let pair = |name: &str, what: &str| -> Result<Option<(usize, u64)>> {
        match std::env::var(name) {
            Ok(v) => Ok(Some(
                v.split_once(':').and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<u64>().ok()?))).with_context(|| format!("{name} must be {what}"))?,
            )),
            Err(_) => Ok(None),
        }
    };
    let hang_at = pair("GALA_GPU_DEBUG_HANG_RANK", "RANK:UPDATE")?;
    let slow_rank = pair("GALA_GPU_DEBUG_SLOW_RANK", "RANK:MILLISECONDS")?.map(|(q, ms)| (q, std::time::Duration::from_millis(ms)));
    let fail_agent = pair("GALA_GPU_DEBUG_FAIL_AGENT", "AGENT:ROUND")?;
    if (slow_rank.is_some() || fail_agent.is_some()) && !config.asynchronous() {
        anyhow::bail!("GALA_GPU_DEBUG_SLOW_RANK and GALA_GPU_DEBUG_FAIL_AGENT apply to asynchronous runs (--sync-freq N) only");
    }
    // Rank 0 says how the cross-rank messages travel, once the ranks have agreed.
    let announce: &(dyn Fn(&CrossRankPath) + Sync) = &|path| match path {
        CrossRankPath::Device(link) => eprintln!("cross-rank gossip: {}", link.describe()),
        CrossRankPath::HostStaged(why) => eprintln!("cross-rank gossip: host-staged MPI ({why})"),
    };
    let session = gala_gpu::dist::train::DistSession {
        resume: resumed.as_ref().map(|(_, ck, ..)| ck),
        stop: Some(stop),
        hang_at,
        slow_rank,
        fail_agent,
        host_memory_link: false,
        announce: (!quiet).then_some(announce),
    };
    let t = gala_gpu::dist::train::train_distributed(&config, world, run.as_mut(), &mut progress, &session)?;
    progress.finish();
    let summary = &t.summary;
    if t.interrupted {
        INTERRUPTED.store(true, Ordering::SeqCst);
        if let Some(run) = &run {
            describe_interrupt(summary, run);
        }
    } else if !quiet {
        eprintln!(
            "done: {} frames, {} updates, {} games, {:.0} frames/s; params sha256 {}",
            summary.frames,
            summary.updates,
            summary.episodes,
            summary.sps,
            summary.params_sha256
        );
        let (p, g, u) = (t.phases, t.traffic, summary.updates.max(1) as f64);
        // Per-phase times and traffic are the batched lock-step engine's.
        if !config.asynchronous() { eprintln!(
            "rank 0 (agents {:?}) per update: act {:.1} ms, env {:.1} ms, learn {:.1} ms, mix {:.1} ms (of which cross-rank gossip {:.1} ms, waiting for the exchange {:.1} ms); {:.2} MB sent and {:.2} MB received per update in {:.1} messages",
            t.agents,
            p.act / u * 1e3,
            p.env / u * 1e3,
            p.learn / u * 1e3,
            p.mix / u * 1e3,
            g.seconds / u * 1e3,
            g.exchange_seconds / u * 1e3,
            g.bytes_sent as f64 / u / 1e6,
            g.bytes_received as f64 / u / 1e6,
            g.messages_sent as f64 / u
        ); }
    }
    if let Some(run) = &run {
        println!("{}", run.path().display());
    }
    Ok(())
}
