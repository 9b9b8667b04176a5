//! The training loop of one rank of a distributed run (lock-step gossip across ranks).
//!
//! Every rank runs the batched trainer on its block of agents (`Trainer::for_block`) whose
//! engine gossips through [`RankGossip`]; all ranks step in lock-step, so each makes exactly the
//! updates the single-process run makes, and the result is bit-identical to it.
//!
//! Rank 0 owns the run folder. The others send it their parts when it needs them:
//! * every `metrics_every` updates: counters, games, per-agent losses and parameters (for the
//!   consensus distance) → one metrics row and the per-agent rows of every agent;
//! * at `save_every` frames, at the end and on a stop: each rank's checkpoint of its block →
//!   one checkpoint of every agent in order, the same file a single process writes (so it
//!   resumes under `mpirun` with any number of ranks, or in a single process);
//! * at the end: the summary (params_sha256 over every agent in order), sent back to all.
//!
//! A stop request (Ctrl-C, which `mpirun` forwards to every rank) is agreed on before each
//! update, so all ranks stop after the same one.

use super::{lock, Blocks, CrossRankPath, GossipTraffic, RankGossip, RankTransport, SharedTransport};
use crate::algo::topology::GossipGraph;
use crate::algo::trainer::{mean_of_last_games, GameRecord, ProgressSink, Trainer};
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::run::{params_sha256, AgentMetricsRow, MetricsRow, RunDir, Summary};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A distributed session's settings besides the config.
#[derive(Clone, Default)]
pub struct DistSession<'a> {
    /// Continue from this checkpoint (a single-process or distributed run's: the same format);
    /// each rank takes its block's part.
    pub resume: Option<&'a Checkpoint>,
    /// Set from outside (Ctrl-C): every rank stops after the same update, with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Test hook (rank, update): that rank stops answering before that update, as a hung or
    /// crashed process would (the CLI reads it from `GALA_GPU_DEBUG_HANG_RANK=RANK:UPDATE`).
    /// In asynchronous gossip it falls silent for 3 × gossip_timeout, then fails.
    pub hang_at: Option<(usize, u64)>,
    /// Test hook (rank, pause): every agent of that rank sleeps that long after each update
    /// (asynchronous gossip; `GALA_GPU_DEBUG_SLOW_RANK=RANK:MILLISECONDS`).
    pub slow_rank: Option<(usize, Duration)>,
    /// Test hook (agent, round): that agent fails at that round (asynchronous gossip;
    /// `GALA_GPU_DEBUG_FAIL_AGENT=AGENT:ROUND`).
    pub fail_agent: Option<(usize, u64)>,
    /// Test hook: lock-step messages take the device-link path on the simulator
    /// (`link::HostMemoryLink`, NCCL's stand-in), so that path is tested without a GPU.
    pub host_memory_link: bool,
    /// Told how the cross-rank messages travel, once the ranks have agreed (the CLI's line on
    /// rank 0).
    pub announce: Option<&'a (dyn Fn(&CrossRankPath) + Sync)>,
}

/// What `train_distributed` returns on every rank.
pub struct DistTraining {
    /// The run's summary (every agent), the same on every rank.
    pub summary: Summary,
    pub interrupted: bool,
    /// This rank's cross-rank gossip traffic.
    pub traffic: GossipTraffic,
    /// This rank's wall seconds per phase.
    pub phases: crate::algo::trainer::PhaseSeconds,
    /// Which agents this rank hosted.
    pub agents: Range<usize>,
    /// How the cross-rank messages travelled (`CrossRankPath::describe`).
    pub gossip_path: String,
}

/// Checks that a distributed run of `config` over `ranks` processes is possible (asking for
/// what is not supported across processes yet is refused clearly, before anything starts).
pub fn check_config(config: &Config, ranks: usize) -> Result<Blocks> {
    let (agents, _) = config.learner_layout();
    if !config.gossips() {
        let algo = format!("{:?}", config.algo).to_lowercase();
        return Err(Error::Config(format!("{ranks} processes need `algo = gala` with at least {ranks} agents (got {agents} learner(s) of {algo})")));
    }
    if config.agent_threads && config.sync_freq == 0 {
        return Err(Error::Unsupported(
            "lock-step gossip with agents on threads (agent_threads, sync_freq = 0) is not supported across processes: lock-step runs there batched per process and is bit-identical to one process without it (drop --agent-threads), or give --sync-freq N for asynchronous gossip".into(),
        ));
    }
    if config.pipeline {
        return Err(Error::Unsupported("--pipeline across processes is not supported yet; run without it under mpirun (or pipelined in one process)".into()));
    }
    Blocks::new(agents, ranks)
}

/// Trains this rank's block until the run's frame budget is spent (see the module docs).
/// `run` must be given on rank 0 (None: no run folder at all) and is ignored elsewhere.
pub fn train_distributed(
    config: &Config, transport: Box<dyn RankTransport>, run: Option<&mut RunDir>, progress: &mut dyn ProgressSink, session: &DistSession<'_>,
) -> Result<DistTraining> {
    let mut config = config.clone();
    config.resolve_game_defaults()?;
    config.validate()?;
    let (rank, ranks) = (transport.rank(), transport.ranks());
    let timeout = Duration::from_secs_f64(config.gossip_timeout);
    let transport: SharedTransport = Arc::new(Mutex::new(transport));
    let blocks = check_config(&config, ranks)?;
    // Every rank must train the same run: rank 0's configuration and whether it keeps a run
    // folder travel to all, and a rank with another configuration refuses.
    // The run's identity (`run_id`) is rank 0's alone: it names rank 0's folder and checkpoint.
    let mut run = if rank == 0 { run } else { None };
    let comparable = crate::config::Config { run_id: None, ..config.clone() }.to_toml();
    let hello = format!("{}\n{}", u8::from(run.is_some()), comparable);
    let theirs = lock(&transport).broadcast(hello.as_bytes(), timeout)?;
    let theirs = String::from_utf8_lossy(&theirs);
    let (has_run, their_config) = theirs.split_once('\n').unwrap_or(("0", ""));
    if their_config != comparable {
        return Err(Error::Config(format!("rank {rank}'s configuration differs from rank 0's; start every rank with the same arguments")));
    }
    let has_run = has_run == "1";
    let mine = blocks.range(rank);
    if config.asynchronous() {
        return train_ranks_async(&config, blocks, transport, run, has_run, progress, session);
    }
    let threads = config.resolved_threads();
    let mut trainer = Trainer::for_block(&config, mine.clone(), threads)?;
    if let Some(ck) = session.resume {
        let part = block_of(ck, mine.clone())?;
        trainer.restore(&part)?;
    }
    let graph = GossipGraph::new(config.topology, blocks.agents, config.peers)?;
    // Device to device (NCCL) when every rank can, else host-staged; agreed by all ranks here.
    let path = super::link::choose(config.backend, trainer.backend_mut(), &transport, session.host_memory_link, timeout)?;
    if let Some(announce) = session.announce {
        announce(&path);
    }
    let gossip_path = path.describe();
    trainer.engine_mut().set_rank_gossip(RankGossip::new(graph, blocks, transport.clone(), timeout).with_path(path));
    let mut on_disk = session.resume.map(|ck| ck.frames);
    let started = Instant::now();
    let wall_before = session.resume.map_or(0.0, |ck| ck.wall_seconds);
    let wall = |started: Instant| wall_before + started.elapsed().as_secs_f64();
    let save_every = config.save_every;
    let next_save = |frames: u64| frames.checked_div(save_every).map_or(u64::MAX, |n| (n + 1) * save_every);
    let mut save_at = next_save(trainer.run_frames());
    let mut interrupted = false;
    let path_of = |run: &Option<&mut RunDir>| run.as_deref().map(|r| r.checkpoint_path().display().to_string());
    while !trainer.done() {
        let stop_here = session.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
        if any_rank(&transport, stop_here, timeout)? {
            interrupted = true;
            break;
        }
        if session.hang_at == Some((rank, trainer.updates())) {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if let Err(e) = trainer.update() {
            let kept = match (path_of(&run), on_disk) {
                (Some(p), Some(f)) => format!("the last good checkpoint (frame {f}) is kept in {p}"),
                (Some(_), None) => "no checkpoint had been saved yet (use --save-every to keep some)".into(),
                (None, _) if rank == 0 => "nothing was saved (no run folder)".into(),
                (None, _) => "rank 0 keeps the last checkpoint".into(),
            };
            return Err(Error::Backend(format!(
                "rank {rank} of {ranks} (agents {mine:?}) at update {}: {e}; training stopped; {kept}",
                trainer.updates()
            )));
        }
        progress.tick(trainer.run_frames());
        if trainer.updates() % config.metrics_every == 0 || trainer.done() {
            let reports = gather_reports(&transport, &mut trainer, timeout)?;
            if let Some(reports) = reports {
                let (row, agent_rows) = metrics_of(&reports, trainer.updates(), wall(started));
                if let Some(run) = run.as_deref_mut() {
                    run.append_metrics(&row)?;
                    run.append_agent_metrics(&row, &agent_rows)?;
                }
                progress.report(&row);
            }
        }
        if trainer.run_frames() >= save_at {
            if has_run && trainer.run_frames() < config.frames {
                save(&transport, &mut trainer, run.as_deref(), wall(started), timeout)?;
                on_disk = Some(trainer.run_frames());
            }
            save_at = next_save(trainer.run_frames());
        }
    }
    if has_run {
        save(&transport, &mut trainer, run.as_deref(), wall(started), timeout)?;
    }
    let reports = gather_reports(&transport, &mut trainer, timeout)?;
    let summary = match reports {
        Some(reports) => {
            let params: Vec<f32> = reports.iter().flat_map(|r| r.params.iter().copied()).collect();
            let (row, _) = metrics_of(&reports, trainer.updates(), wall(started));
            let summary = Summary {
                game: crate::env::GameId::parse(&config.game)?.canonical().to_string(),
                algo: format!("{:?}", config.algo).to_lowercase(),
                seed: config.seed,
                agents: blocks.agents,
                envs_per_agent: config.learner_layout().1,
                frames: row.frames,
                updates: row.updates,
                episodes: row.episodes,
                mean_return_100: row.mean_return_100,
                consensus_distance: row.consensus_distance,
                sps: row.sps,
                wall_seconds: row.wall_seconds,
                backend: trainer.backend_name().to_string(),
                params_sha256: params_sha256(&params),
            };
            if let (Some(run), false) = (run.as_deref(), interrupted) {
                run.write_summary(&summary)?;
            }
            let json = serde_json::to_vec(&summary).map_err(|e| Error::Backend(format!("summary: {e}")))?;
            lock(&transport).broadcast(&json, timeout)?;
            summary
        }
        None => {
            let json = lock(&transport).broadcast(&[], timeout)?;
            serde_json::from_slice(&json).map_err(|e| Error::Backend(format!("the summary from rank 0: {e}")))?
        }
    };
    let traffic = trainer.engine_mut().rank_gossip().map(RankGossip::traffic).unwrap_or_default();
    Ok(DistTraining { summary, interrupted, traffic, phases: trainer.phase_seconds(), agents: mine, gossip_path })
}

/// Asynchronous gossip across ranks: every rank runs its block's agents on threads under the
/// protocol of `algo::async_gossip`, linked to the other ranks (`async_link`); rank 0 writes the
/// run folder (metrics, audit logs, cuts, summary) as one process would, and its summary is
/// every rank's.
fn train_ranks_async(
    config: &Config, blocks: Blocks, transport: SharedTransport, run: Option<&mut RunDir>, has_run: bool, progress: &mut dyn ProgressSink,
    session: &DistSession<'_>,
) -> Result<DistTraining> {
    use crate::algo::async_gossip::{train_async_session, AsyncHooks, AsyncSession};
    let rank = lock(&transport).rank();
    let timeout = Duration::from_secs_f64(config.gossip_timeout);
    let mine = blocks.range(rank);
    // NCCL's send and receive are two-sided and complete in pairs on both ranks' streams;
    // asynchronous gossip's messages are one-sided (posted whenever a sender is ready, mixed
    // whenever its receiver looks), so they stay on the transport.
    let path = CrossRankPath::HostStaged("asynchronous gossip: its one-sided messages stay on MPI; NCCL carries lock-step rounds".into());
    if let Some(announce) = session.announce {
        announce(&path);
    }
    let gossip_path = path.describe();
    let hooks = AsyncHooks {
        fail_agent: session.fail_agent,
        slow_agents: session.slow_rank.map(|(q, pause)| (blocks.range(q).start, blocks.range(q).end, pause)),
        hang: session.hang_at.filter(|(q, _)| *q == rank).map(|(_, round)| (round, 3 * timeout)),
        ..AsyncHooks::default()
    };
    let link = Arc::new(super::async_link::Link::new(blocks, rank, transport.clone(), has_run));
    let async_session = AsyncSession { resume: session.resume, stop: session.stop.clone(), hooks, link: Some(link) };
    // Its errors name the agents and, for those of other ranks, their rank; the CLI adds this
    // rank's.
    let trained = train_async_session(config, run, progress, &async_session);
    // Rank 0's summary (every agent) is the run's, on every rank; or its failure, so that the
    // others stop at once rather than after their timeout (best effort: a rank that fell
    // silent does not answer).
    const FAILED: &[u8] = b"\0failed\0";
    let summary = if rank == 0 {
        let t = match trained {
            Ok(t) => t,
            Err(e) => {
                let _ = lock(&transport).broadcast(&[FAILED, e.to_string().as_bytes()].concat(), timeout);
                return Err(e);
            }
        };
        let json = serde_json::to_vec(&t.summary).map_err(|e| Error::Backend(format!("summary: {e}")))?;
        lock(&transport).broadcast(&json, timeout)?;
        return Ok(DistTraining {
            summary: t.summary,
            interrupted: t.interrupted,
            traffic: GossipTraffic::default(),
            phases: Default::default(),
            agents: mine,
            gossip_path,
        });
    } else {
        let t = trained?;
        let json = lock(&transport).broadcast(&[], timeout)?;
        if let Some(why) = json.strip_prefix(FAILED) {
            return Err(Error::Backend(format!("rank 0 failed: {}", String::from_utf8_lossy(why))));
        }
        (serde_json::from_slice(&json).map_err(|e| Error::Backend(format!("the summary from rank 0: {e}")))?, t.interrupted)
    };
    let (summary, interrupted) = summary;
    Ok(DistTraining { summary, interrupted, traffic: GossipTraffic::default(), phases: Default::default(), agents: mine, gossip_path })
}

/// Whether `mine` is true on any rank (every rank gets the answer).
fn any_rank(transport: &SharedTransport, mine: bool, timeout: Duration) -> Result<bool> {
    let mut t = lock(transport);
    let all = t.gather(&[u8::from(mine)], timeout)?;
    let any = all.map(|v| v.iter().any(|b| b.first() == Some(&1)));
    let answer = t.broadcast(&[u8::from(any == Some(true))], timeout)?;
    Ok(answer.first() == Some(&1))
}

/// Rank `ck`'s agents `agents` as one checkpoint of that block (what `Trainer::for_block`
/// restores), from a checkpoint of the whole run.
pub fn block_of(ck: &Checkpoint, agents: Range<usize>) -> Result<Checkpoint> {
    if ck.agents < agents.end {
        return Err(Error::Config(format!("the checkpoint holds {} agents, this run has more (agents {agents:?} on this rank); resume with the checkpoint's own configuration", ck.agents)));
    }
    let parts = agents.map(|a| ck.agent_part(a)).collect::<Result<Vec<_>>>()?;
    Checkpoint::merge_agents(&parts, true)
}

/// One checkpoint of every agent from the ranks' block checkpoints (rank order): the file a
/// single process would write.
pub fn merge_blocks(blocks: &[Checkpoint]) -> Result<Checkpoint> {
    let mut parts = Vec::new();
    let mut first_agent = 0;
    for b in blocks {
        let envs = b.envs_per_agent;
        for i in 0..b.agents {
            let mut part = b.agent_part(i)?;
            // A block's games carry global env indices (agent_part filters by local ones).
            let global = (first_agent + i) * envs..(first_agent + i + 1) * envs;
            part.recent_games = b.recent_games.iter().filter(|g| global.contains(&g.env)).copied().collect();
            parts.push(part);
        }
        first_agent += b.agents;
    }
    Checkpoint::merge_agents(&parts, true)
}

/// Every rank's checkpoint of its block, merged and written by rank 0.
fn save(transport: &SharedTransport, trainer: &mut Trainer, run: Option<&RunDir>, wall: f64, timeout: Duration) -> Result<()> {
    let bytes = trainer.checkpoint(wall)?.to_bytes()?;
    let gathered = lock(transport).gather(&bytes, timeout)?;
    if let (Some(all), Some(run)) = (gathered, run) {
        let origin = std::path::Path::new("(a rank's checkpoint part)");
        let blocks = all.iter().map(|b| Checkpoint::from_bytes(b, origin)).collect::<Result<Vec<_>>>()?;
        merge_blocks(&blocks)?.save(&run.checkpoint_path())?;
    }
    Ok(())
}

/// What a rank tells rank 0 for the metrics and the summary.
struct RankReport {
    first_agent: usize,
    frames: u64,
    episodes: u64,
    games: Vec<GameRecord>,
    agents: Vec<AgentMetricsRow>,
    params: Vec<f32>,
}

impl RankReport {
    fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        let mut u = |x: u64| w.extend_from_slice(&x.to_le_bytes());
        u(self.first_agent as u64);
        u(self.frames);
        u(self.episodes);
        u(self.games.len() as u64);
        for g in &self.games {
            u(g.step);
            u(g.env as u64);
            u(g.score.to_bits());
        }
        u(self.agents.len() as u64);
        for a in &self.agents {
            u(a.episodes);
            u(a.mean_return_100.map_or(u64::MAX, |m| m.to_bits()));
            for x in [a.value_loss, a.policy_loss, a.entropy, a.grad_norm] {
                u(x.to_bits());
            }
        }
        w.extend_from_slice(bytemuck::cast_slice(&self.params));
        w
    }

    fn decode(bytes: &[u8], rank: usize) -> Result<Self> {
        let bad = || Error::Backend(format!("rank {rank}'s report is malformed ({} bytes)", bytes.len()));
        let mut at = 0;
        let mut u = || -> Result<u64> {
            let b = bytes.get(at..at + 8).ok_or_else(bad)?;
            at += 8;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let first_agent = u()? as usize;
        let frames = u()?;
        let episodes = u()?;
        let games = (0..u()?).map(|_| Ok(GameRecord { step: u()?, env: u()? as usize, score: f64::from_bits(u()?) })).collect::<Result<Vec<_>>>()?;
        let n = u()?;
        let agents = (0..n)
            .map(|i| {
                let episodes = u()?;
                let ret = u()?;
                let mut f = || u().map(f64::from_bits);
                Ok(AgentMetricsRow {
                    agent: first_agent + i as usize,
                    episodes,
                    mean_return_100: (ret != u64::MAX).then(|| f64::from_bits(ret)),
                    value_loss: f()?,
                    policy_loss: f()?,
                    entropy: f()?,
                    grad_norm: f()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rest = bytes.get(at..).ok_or_else(bad)?;
        if rest.len() % 4 != 0 {
            return Err(bad());
        }
        let params = rest.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        Ok(RankReport { first_agent, frames, episodes, games, agents, params })
    }
}

/// Every rank's report at rank 0 (None on the others).
fn gather_reports(transport: &SharedTransport, trainer: &mut Trainer, timeout: Duration) -> Result<Option<Vec<RankReport>>> {
    let first_agent = trainer.agent_offset();
    let report = RankReport {
        first_agent,
        frames: trainer.frames(),
        episodes: trainer.episodes(),
        games: trainer.recent_games().copied().collect(),
        agents: trainer.agent_metrics().into_iter().map(|a| AgentMetricsRow { agent: first_agent + a.agent, ..a }).collect(),
        params: trainer.engine_mut().read_params()?,
    };
    let gathered = lock(transport).gather(&report.encode(), timeout)?;
    gathered.map(|all| all.iter().enumerate().map(|(q, b)| RankReport::decode(b, q)).collect()).transpose()
}

/// The run's metrics row and per-agent rows from every rank's report.
fn metrics_of(reports: &[RankReport], updates: u64, wall: f64) -> (MetricsRow, Vec<AgentMetricsRow>) {
    let agents: Vec<AgentMetricsRow> = reports.iter().flat_map(|r| r.agents.iter().copied()).collect();
    let n = agents.len().max(1) as f64;
    let mean = |f: fn(&AgentMetricsRow) -> f64| agents.iter().map(f).sum::<f64>() / n;
    let params: Vec<f32> = reports.iter().flat_map(|r| r.params.iter().copied()).collect();
    let mut games: Vec<GameRecord> = reports.iter().flat_map(|r| r.games.iter().copied()).collect();
    let frames = reports.iter().map(|r| r.frames).sum();
    let row = MetricsRow {
        frames,
        updates,
        episodes: reports.iter().map(|r| r.episodes).sum(),
        mean_return_100: mean_of_last_games(&mut games),
        consensus_distance: crate::backend::cpu::gossip::consensus_distance(&params, agents.len().max(1)),
        value_loss: mean(|a| a.value_loss),
        policy_loss: mean(|a| a.policy_loss),
        entropy: mean(|a| a.entropy),
        grad_norm: mean(|a| a.grad_norm),
        sps: frames as f64 / wall.max(1e-9),
        wall_seconds: wall,
    };
    debug_assert!(reports.iter().all(|r| r.first_agent + r.agents.len() <= agents.len()));
    (row, agents)
}
