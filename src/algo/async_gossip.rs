//! Asynchronous GALA: every agent on its own host thread with its own backend and simulators,
//! gossiping through mailboxes (GALA's gpu_gossip_buffer.py, with the paper's semantics).
//!
//! Mailboxes are per directed pair (s → r) that can ever communicate: a slot holding θ_s and a
//! `full` flag. The flags live here, on the host, under one lock; the slots are a
//! [`Mailboxes`](crate::backend::mailbox::Mailboxes) transport chosen by the backend kind (`backend::mailbox`):
//! * the CPU backend (the reference) uses host mailboxes: θ_s is read to the host and mixed
//!   with `Backend::mix_messages`;
//! * the GPU backend (CUDA or the simulator) uses device mailboxes: every agent's backend lives
//!   on ONE shared device, opened once by [`run_async`], and drives its own stream from its own
//!   thread; a message is a device-to-device copy into a device slot on the sender's stream,
//!   signalled by an event the receiver polls without blocking (a slot counts as arrived when
//!   flagged full AND its event is done), and the receiver mixes with one fused kernel launch
//!   on its own stream. Parameters do not cross to the host.
//!
//! Each round an agent (1) runs one update, (2) sends, (3) receives:
//! * send: to `out_peers(s, round)`. If one of those slots still holds an unread message the
//!   whole round's send is skipped (a message is never overwritten before it is read).
//!   Out-peers that have finished or failed are left out: they never read again, and waiting
//!   on their slots would starve the agents still running at the end of a run;
//! * receive: every full slot addressed to r is consumed (in sender order) and mixed with
//!   uniform weight, θ_r ← θ_r/(m+1) + Σ θ_s/(m+1) for m messages. With none, the round counts
//!   as unmixed; after `sync_freq` unmixed rounds in a row the receiver blocks until a message
//!   arrives — or until every possible sender has finished, or one has failed (an error naming
//!   it), or `gossip_timeout` passes (an error naming the silent peers).
//! * `sync_freq = 0` is lock-step: a sender waits until its out-peers have read its previous
//!   message and a receiver waits for exactly its round's in-peers. Every agent then mixes the
//!   post-update parameters of the same peers, in the same order, as the batched synchronous
//!   trainer, with the same arithmetic (`cpu::gossip::mix_one`, or the `gossip_mix_mailbox`
//!   kernel whose arithmetic is `gossip_mix`'s), so the result is bit-identical to it.
//!
//! Asynchronous mode is timing-dependent by nature: which message arrives in which round depends
//! on thread scheduling. Every send, skip, mix and wait is logged (`gossip_events.csv` in the
//! run folder) so a run can be audited.
//!
//! Checkpoints (`train_async_session`) are cuts: every agent's state right after the same round,
//! deposited by each agent as it completes that round and written once all are in; messages in
//! flight are not saved, so a resumed run starts with empty mailboxes. In lock-step a cut is
//! exact and a resumed run is bit-identical to an uninterrupted one. Ctrl-C stops every agent at
//! one agreed round; a failure leaves the last cut or each agent's last completed round.
//!
//! Across processes (`dist`, `mpirun`) each rank runs its block's agents here under the same
//! protocol; for pairs that cross ranks the flags are mirrored — on the sender's rank `full`
//! means "posted, not yet acknowledged", on the receiver's "arrived, not yet mixed" — and the
//! rank's pump thread applies what other ranks post (messages, acknowledgements, finished or
//! failed agents). Rank 0 gets the others' counters, checkpoint parts, outcomes and events, and
//! writes the run folder as one process does. A rank silent for `gossip_timeout` is named.
//!
//! Files: `protocol` (the rules above, over any transport), `cuts` (checkpoints), `ranks` (the
//! pump linking the agents of several processes: `dist::async_link`); here the agents' threads,
//! the session (progress, logs, summary) and the stop agreement.

use super::topology::GossipGraph;
use super::trainer::{mean_of_last_games, GameRecord, ProgressSink, Trainer};
use crate::backend::SharedDevice;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::run::{params_sha256, MetricsRow, RunDir, Summary};
use crate::checkpoint::Checkpoint;
use crate::dist::async_link::{Link, Wire};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod cuts;
mod protocol;
mod ranks;

use cuts::{failure_checkpoint, write_parts, Cuts, OnDisk, SavePlan};
use protocol::{AgentState, Gossip};

/// Test hooks: make an agent slow or fail, to exercise the protocol's failure paths.
#[derive(Clone, Debug, Default)]
pub struct AsyncHooks {
    /// (agent, extra sleep per round)
    pub slow_agent: Option<(usize, Duration)>,
    /// (agent, round at which its thread fails)
    pub fail_agent: Option<(usize, u64)>,
    /// (first agent, end, extra sleep per round): every agent of a block made slow (a slow rank).
    pub slow_agents: Option<(usize, usize, Duration)>,
    /// (round, for how long): across ranks, this rank stops answering at that round, as a
    /// hung process would (its agents and its gossip thread fall silent), then its agents fail.
    pub hang: Option<(u64, Duration)>,
}

impl AsyncHooks {
    fn pause_of(&self, agent: usize) -> Option<Duration> {
        let one = self.slow_agent.filter(|(a, _)| *a == agent).map(|(_, d)| d);
        one.or(self.slow_agents.filter(|(a, b, _)| (*a..*b).contains(&agent)).map(|(_, _, d)| d))
    }
}


/// What happened in one agent's round (the audit log).
#[derive(Clone, Debug)]
pub struct GossipEvent {
    pub agent: usize,
    pub round: u64,
    pub seconds: f64,
    /// "sent", "send_skipped", "mixed", "unmixed", "blocked" (then "mixed", or "peers_done"
    /// when every possible sender has finished and nothing more can come); "catch_up": a
    /// lock-step round without gossip, run by an agent resumed behind its peers; "failed": the
    /// agent's thread stopped with an error in this round
    pub kind: &'static str,
    pub peers: Vec<usize>,
}

/// Per-agent counters, readable while the run goes on.
#[derive(Default)]
pub struct AgentCounters {
    pub rounds: AtomicU64,
    pub frames: AtomicU64,
    pub mixes: AtomicU64,
    pub skipped_sends: AtomicU64,
    pub blocked_waits: AtomicU64,
    /// Messages this agent sent as device-to-device copies into device mailboxes (0 on the
    /// host transport of the CPU backend).
    pub device_messages: AtomicU64,
    /// Rounds since the last mix.
    pub staleness: AtomicU64,
    pub episodes: AtomicU64,
    /// The agent's parameters, last loss terms and recent games, published every
    /// `metrics_every` rounds for the consensus distance and metrics over time.
    pub snapshot: Mutex<Option<AgentSnapshot>>,
}

/// What an agent publishes for the metrics.
#[derive(Clone, Debug)]
pub struct AgentSnapshot {
    pub params: Vec<f32>,
    pub stats: crate::backend::AgentLearnStats,
    pub games: Vec<GameRecord>,
}


/// What one agent's thread ended with.
pub struct AgentOutcome {
    pub agent: usize,
    pub rounds: u64,
    pub result: Result<()>,
    pub params: Option<Vec<f32>>,
    pub games: Vec<GameRecord>,
    pub episodes: u64,
    pub frames: u64,
}

/// Everything an asynchronous run produced.
pub struct AsyncOutcome {
    pub agents: Vec<AgentOutcome>,
    pub events: Vec<GossipEvent>,
    pub wall_seconds: f64,
    pub backend: String,
    /// The stop flag was set: the agents agreed on a round before the budget's and stopped
    /// there, every one of them after the same number of rounds.
    pub interrupted: bool,
    /// A resumed session restored every environment's state (false: some games restarted).
    pub exact_resume: bool,
    /// Across ranks: the gossip with the other ranks failed (one fell silent, or the
    /// transport failed).
    pub ranks_error: Option<String>,
}

impl AsyncOutcome {
    /// The first failure, as the run's error (a failure across ranks first: it names the rank).
    pub fn first_error(&self) -> Option<String> {
        self.ranks_error.clone().or_else(|| self.agents.iter().find_map(|a| a.result.as_ref().err().map(|e| format!("agent {}: {}", a.agent, cause(e)))))
    }
}

/// An agent's error for a longer message: backend failures without their `backend:` prefix
/// (the run's error adds one), other kinds as they display.
fn cause(e: &Error) -> String {
    match e {
        Error::Backend(m) => m.clone(),
        other => other.to_string(),
    }
}

/// An asynchronous session's settings besides the config.
#[derive(Clone, Default)]
pub struct AsyncSession<'a> {
    /// Continue from this checkpoint of the same run (each agent from its own part, with
    /// empty mailboxes; see the module docs).
    pub resume: Option<&'a Checkpoint>,
    /// Set from outside (Ctrl-C): the agents agree on a stop round, all finish it, and the run
    /// ends there with a checkpoint (`AsyncTraining::interrupted`).
    pub stop: Option<Arc<AtomicBool>>,
    pub hooks: AsyncHooks,
    /// The run spans several ranks (`dist::train`): this process hosts `link.local()` and
    /// gossips with the others' agents through the link; rank 0 keeps the run folder.
    pub link: Option<Arc<Link>>,
}

/// What `train_async_session` returns.
pub struct AsyncTraining {
    pub summary: Summary,
    /// Stopped by the stop flag before the budget (no summary.json is written then).
    pub interrupted: bool,
    /// A resumed session restored every environment's state.
    pub exact_resume: bool,
}

/// The stop flag for agents on threads. The first agent that sees it fixes the stop round: the
/// furthest round any agent has started (no one can go back), so every agent finishes the rounds
/// up to it — lock-step peers never wait for an agent that stopped — and the run ends on a cut.
struct StopControl {
    flag: Option<Arc<AtomicBool>>,
    /// Set by the runner itself (a checkpoint could not be written).
    halt: AtomicBool,
    rounds: Mutex<StopRounds>,
}

struct StopRounds {
    /// Rounds each agent has started (or, before its first, its starting round).
    started: Vec<u64>,
    at: Option<u64>,
}

impl StopControl {
    fn new(flag: Option<Arc<AtomicBool>>, start_rounds: Vec<u64>) -> Self {
        StopControl { flag, halt: AtomicBool::new(false), rounds: Mutex::new(StopRounds { started: start_rounds, at: None }) }
    }

    fn requested(&self) -> bool {
        self.halt.load(Ordering::SeqCst) || self.flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Whether `agent` may start round `round` (0-based); false from the agreed stop round on.
    fn may_start(&self, agent: usize, round: u64) -> bool {
        let mut s = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if s.at.is_none() && self.requested() {
            s.at = Some(s.started.iter().copied().max().unwrap_or(round).max(round));
        }
        if s.at.is_some_and(|at| round >= at) {
            return false;
        }
        s.started[agent] = round + 1;
        true
    }

    fn stop_round(&self) -> Option<u64> {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner()).at
    }
}


/// What every agent thread of a session shares.
struct Shared<'a> {
    config: &'a Config,
    /// Rounds each agent completes (the frame budget's).
    rounds: u64,
    threads: usize,
    gossip: &'a Gossip,
    hooks: &'a AsyncHooks,
    backend_name: &'a Mutex<String>,
    resume: Option<&'a Checkpoint>,
    /// Lock-step after a resume from agents at different rounds: agents behind this round
    /// first catch up alone (updates without gossip), then all gossip in step from it.
    align: u64,
    stop: &'a StopControl,
    cuts: Option<&'a Cuts>,
    link: Option<&'a Link>,
    /// Local agents whose thread has ended (with its last messages posted).
    local_done: &'a AtomicUsize,
    save: SavePlan,
    started: Instant,
    /// Wall-clock seconds of earlier sessions of the run.
    wall_before: f64,
}

impl Shared<'_> {
    fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    /// Whether agents leave checkpoint parts: a run folder here, or on rank 0 of a run across
    /// ranks.
    fn saving(&self) -> bool {
        self.cuts.is_some() || self.link.is_some_and(|l| !l.lead() && l.has_run)
    }

    /// Deposits an agent's part of a cut (after `rounds`) or, with `last`, its final state —
    /// here, or at rank 0.
    fn deposit(&self, agent: usize, rounds: u64, last: bool, part: Checkpoint) -> Result<()> {
        match (self.cuts, self.link) {
            (Some(cuts), _) if last => cuts.set_last(agent, part),
            (Some(cuts), _) => cuts.deposit(agent, rounds, part),
            (None, Some(link)) if self.saving() => link.send(0, &Wire::Part { agent, rounds, last, checkpoint: part.to_bytes()? })?,
            _ => {}
        }
        Ok(())
    }
}

/// How one agent's thread ended: its result, its trainer, whether that trainer is between
/// rounds' steps (not inside an update, so its state can be saved), and whether its resume
/// restored every environment.
struct AgentRun {
    result: Result<()>,
    trainer: Option<Trainer>,
    clean: bool,
    exact: bool,
}

fn agent_loop(shared: &Shared<'_>, agent: usize, counters: &AgentCounters) -> AgentRun {
    let Shared { config, gossip, hooks, .. } = *shared;
    let mut trainer = match Trainer::for_agent_on(config, agent, shared.threads, &gossip.device) {
        Ok(t) => t,
        Err(e) => return AgentRun { result: Err(e), trainer: None, clean: false, exact: false },
    };
    let mut exact = true;
    if let Some(ck) = shared.resume {
        match ck.agent_part(agent).and_then(|part| trainer.restore(&part)) {
            Ok(e) => exact = e,
            Err(e) => return AgentRun { result: Err(e), trainer: None, clean: false, exact: false },
        }
    }
    *shared.backend_name.lock().unwrap_or_else(|e| e.into_inner()) = trainer.backend_name().to_string();
    let start = trainer.updates();
    counters.rounds.store(start, Ordering::Relaxed);
    counters.frames.store(trainer.frames(), Ordering::Relaxed);
    counters.episodes.store(trainer.episodes(), Ordering::Relaxed);
    let mut clean = true;
    // One round: update, gossip, counters, snapshot, and at a save round the agent's part of
    // the cut.
    let one_round = |trainer: &mut Trainer, clean: &mut bool, round: u64| -> Result<()> {
        if hooks.fail_agent == Some((agent, round)) {
            return Err(Error::Backend(format!("injected failure at round {round} (test hook)")));
        }
        if let Some((at, pause)) = hooks.hang.filter(|(at, _)| round >= *at || gossip.hung.load(Ordering::SeqCst)) {
            gossip.hung.store(true, Ordering::SeqCst);
            std::thread::sleep(pause);
            return Err(Error::Backend(format!("this rank stopped answering from round {at} (test hook)")));
        }
        *clean = false;
        trainer.update()?;
        // After the update and before the mix: a valid (unmixed) round if gossip fails.
        *clean = true;
        if let Some(pause) = hooks.pause_of(agent) {
            std::thread::sleep(pause);
        }
        if gossip.lockstep() && round < shared.align {
            gossip.log(agent, round, "catch_up", vec![]);
        } else {
            gossip.send(agent, round, trainer, counters)?;
            gossip.receive(agent, round, trainer, counters)?;
        }
        counters.rounds.store(round + 1, Ordering::Relaxed);
        counters.frames.store(trainer.frames(), Ordering::Relaxed);
        counters.episodes.store(trainer.episodes(), Ordering::Relaxed);
        if (round + 1) % config.metrics_every == 0 {
            let snapshot = AgentSnapshot {
                params: trainer.backend_mut().read_params()?,
                stats: trainer.last_stats().first().copied().unwrap_or_default(),
                games: trainer.recent_games().copied().collect(),
            };
            *counters.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
        }
        if shared.saving() && shared.save.at(round + 1) {
            shared.deposit(agent, round + 1, false, trainer.checkpoint(shared.wall())?)?;
        }
        Ok(())
    };
    let run = |trainer: &mut Trainer, clean: &mut bool| -> Result<()> {
        for round in start..shared.rounds {
            if !shared.stop.may_start(agent, round) {
                break;
            }
            if let Err(e) = one_round(trainer, clean, round) {
                gossip.log(agent, round, "failed", vec![]);
                return Err(e);
            }
        }
        // The agent's final state: the end of the budget or the agreed stop round.
        if shared.saving() {
            shared.deposit(agent, trainer.updates(), true, trainer.checkpoint(shared.wall())?)?;
        }
        Ok(())
    };
    let result = run(&mut trainer, &mut clean);
    AgentRun { result, trainer: Some(trainer), clean, exact }
}

/// Runs every agent on its own thread until each has done the updates the frame budget allows
/// (the same number as the batched trainer would), then gathers their parameters.
pub fn run_async(config: &Config, hooks: &AsyncHooks, counters: &[AgentCounters]) -> Result<AsyncOutcome> {
    let session = AsyncSession { hooks: hooks.clone(), ..AsyncSession::default() };
    run_agents(config, counters, &session, None, &StopControl::new(None, vec![0; counters.len()]))
}

/// The rounds every agent completes within `config.frames` (the batched trainer's updates), the
/// frames one round of all agents consumes, and the game's action count.
fn rounds_for_budget(config: &Config, agents: usize) -> Result<(u64, u64, usize)> {
    // Frames per update of one agent need the game's frame skip: ask a throwaway env.
    let game = crate::env::GameId::parse(&config.game)?;
    let settings = crate::env::EnvSettings { game, preset: config.preset, seed: config.seed, rom: config.rom.clone(), episodic_life: None };
    let probe = crate::env::make_vec_env_range(&settings, 0..1, 1)?;
    let (_, envs) = config.learner_layout();
    let frames_per_round_all = probe.frames_per_step() * (agents * envs * config.n_steps) as u64;
    Ok((config.frames.div_ceil(frames_per_round_all), frames_per_round_all, probe.num_actions()))
}

fn run_agents(
    config: &Config, counters: &[AgentCounters], session: &AsyncSession<'_>, cuts: Option<&Cuts>, stop: &StopControl,
) -> Result<AsyncOutcome> {
    let mut config = config.clone();
    config.resolve_game_defaults()?;
    config.validate()?;
    let (agents, _) = config.learner_layout();
    if !config.gossips() || counters.len() != agents {
        return Err(Error::Config("asynchronous gossip needs `algo = gala` with at least 2 agents".into()));
    }
    if let Some(ck) = session.resume {
        let (_, envs) = config.learner_layout();
        if (ck.agents, ck.envs_per_agent) != (agents, envs) || ck.config.net != config.net || !ck.pipeline.is_empty() {
            return Err(Error::Config(format!(
                "the checkpoint holds {} agents × {} envs ({:?} net{}) but this run has {agents} × {envs} ({:?}); resume with the checkpoint's own configuration",
                ck.agents,
                ck.envs_per_agent,
                ck.config.net,
                if ck.pipeline.is_empty() { "" } else { ", pipelined" },
                config.net
            )));
        }
    }
    let graph = GossipGraph::new(config.topology, agents, config.peers)?;
    // One device for every agent's backend (and the mailboxes), opened once.
    let device = SharedDevice::open(config.backend)?;
    let (rounds, frames_per_round, actions) = rounds_for_budget(&config, agents)?;
    let param_count = crate::model::NetSpec::new(config.net, actions).layout().total;
    let link = session.link.as_deref();
    let local = link.map_or(0..agents, Link::local);
    let gossip = Gossip::new(&config, graph, agents, device, param_count, session.link.clone())?;
    let local_done = AtomicUsize::new(0);
    let start_rounds = session.resume.map_or_else(|| vec![0; agents], Checkpoint::agent_rounds);
    let align = start_rounds.iter().copied().max().unwrap_or(0);
    let backend_name = Mutex::new(String::new());
    let started = Instant::now();
    let shared = Shared {
        config: &config,
        rounds,
        threads: (config.resolved_threads() / local.len().max(1)).max(1),
        gossip: &gossip,
        hooks: &session.hooks,
        backend_name: &backend_name,
        resume: session.resume,
        align,
        stop,
        cuts,
        link,
        local_done: &local_done,
        save: SavePlan { every: config.save_every, frames_per_round, after: align, before: rounds },
        started,
        wall_before: session.resume.map_or(0.0, |ck| ck.wall_seconds),
    };
    let (mut runs, remote): (Vec<(AgentOutcome, bool)>, _) = std::thread::scope(|scope| {
        // Across ranks: the pump applies what the other ranks post (`ranks`).
        let pump = link.map(|l| {
            let (gossip, local_done, metrics_every) = (&gossip, &local_done, config.metrics_every);
            std::thread::Builder::new()
                .name("gala-gossip-pump".into())
                .spawn_scoped(scope, move || ranks::pump(gossip, l, counters, cuts, stop, local_done, metrics_every))
                .expect("spawn the gossip pump")
        });
        let handles: Vec<_> = local
            .clone()
            .map(|agent| {
                let (shared, counters) = (&shared, &counters[agent]);
                std::thread::Builder::new()
                    .name(format!("gala-agent-{agent}"))
                    .spawn_scoped(scope, move || {
                        let run = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent_loop(shared, agent, counters))) {
                            Ok(run) => run,
                            Err(_) => AgentRun {
                                result: Err(Error::Backend(format!("agent {agent}'s thread panicked"))),
                                trainer: None,
                                clean: false,
                                exact: false,
                            },
                        };
                        let AgentRun { result, trainer, clean, exact } = run;
                        shared.gossip.set_state(
                            agent,
                            match &result {
                                Ok(()) => AgentState::Finished,
                                Err(e) => AgentState::Failed(cause(e)),
                            },
                        );
                        let mut outcome = AgentOutcome {
                            agent,
                            rounds: counters.rounds.load(Ordering::Relaxed),
                            result,
                            params: None,
                            games: Vec::new(),
                            episodes: 0,
                            frames: 0,
                        };
                        if let Some(mut t) = trainer {
                            // A failed agent's state, when the failure left it whole, for the
                            // checkpoint the run leaves behind.
                            if let (Err(_), true, true) = (&outcome.result, clean, shared.saving()) {
                                if let Ok(part) = t.checkpoint(shared.wall()) {
                                    let _ = shared.deposit(agent, t.updates(), true, part);
                                }
                            }
                            outcome.params = t.backend_mut().read_params().ok();
                            outcome.games = t.recent_games().copied().collect();
                            outcome.episodes = t.episodes();
                            outcome.frames = t.frames();
                        }
                        // Across ranks, rank 0 gets every agent's outcome (best effort: a
                        // missing one fails the run there).
                        if let Some(link) = shared.link.filter(|l| !l.lead()) {
                            let _ = link.send(0, &Wire::Outcome {
                                agent,
                                rounds: outcome.rounds,
                                error: outcome.result.as_ref().err().map(cause),
                                params: outcome.params.clone(),
                                games: outcome.games.clone(),
                                episodes: outcome.episodes,
                                frames: outcome.frames,
                                exact,
                            });
                        }
                        shared.local_done.fetch_add(1, Ordering::SeqCst);
                        (outcome, exact)
                    })
                    .expect("spawn agent thread")
            })
            .collect();
        let runs = handles.into_iter().map(|h| h.join().expect("agent thread outcome")).collect();
        let remote = pump.map(|h| h.join().unwrap_or_else(|_| Err(Error::Backend("the gossip pump thread panicked".into()))));
        (runs, remote)
    });
    let mut ranks_error = None;
    match remote {
        Some(Ok(r)) => {
            runs.extend(r.outcomes);
            gossip.events.lock().unwrap_or_else(|e| e.into_inner()).extend(r.events);
        }
        Some(Err(e)) => ranks_error = Some(cause(&e)),
        None => {}
    }
    // Rank 0 answers for every agent of the run: one whose outcome never came failed.
    if let Some(link) = link.filter(|l| l.lead()) {
        for a in 0..agents {
            if !runs.iter().any(|(o, _)| o.agent == a) {
                let why = format!("no outcome came from rank {}", link.rank_of(a));
                let rounds = counters[a].rounds.load(Ordering::Relaxed);
                runs.push((AgentOutcome { agent: a, rounds, result: Err(Error::Backend(why)), params: None, games: Vec::new(), episodes: 0, frames: 0 }, false));
            }
        }
    }
    runs.sort_by_key(|(o, _)| o.agent);
    let exact_resume = runs.iter().all(|(_, exact)| *exact);
    let outcomes: Vec<AgentOutcome> = runs.into_iter().map(|(o, _)| o).collect();
    let mut events = std::mem::take(&mut *gossip.events.lock().unwrap_or_else(|e| e.into_inner()));
    if link.is_some() {
        // Ranks' clocks started within the start-up handshake of each other.
        events.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    }
    let backend = backend_name.into_inner().unwrap_or_else(|e| e.into_inner());
    let interrupted = stop.stop_round().is_some_and(|at| at < rounds);
    Ok(AsyncOutcome { agents: outcomes, events, wall_seconds: started.elapsed().as_secs_f64(), backend, interrupted, exact_resume, ranks_error })
}

/// A metrics row from the agents' latest snapshots (consensus distance once all have published).
fn metrics_from_snapshots(counters: &[AgentCounters], frames: u64, wall: f64) -> MetricsRow {
    let snaps: Vec<Option<AgentSnapshot>> = counters.iter().map(|c| c.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
    let published: Vec<&AgentSnapshot> = snaps.iter().flatten().collect();
    let n = published.len().max(1) as f64;
    let mean = |f: fn(&AgentSnapshot) -> f64| published.iter().map(|s| f(s)).sum::<f64>() / n;
    let consensus_distance = if published.len() == counters.len() {
        let arena: Vec<f32> = published.iter().flat_map(|s| s.params.iter().copied()).collect();
        crate::backend::cpu::gossip::consensus_distance(&arena, counters.len())
    } else {
        0.0
    };
    let mut games: Vec<GameRecord> = published.iter().flat_map(|s| s.games.iter().copied()).collect();
    MetricsRow {
        frames,
        updates: counters.iter().map(|c| c.rounds.load(Ordering::Relaxed)).min().unwrap_or(0),
        episodes: counters.iter().map(|c| c.episodes.load(Ordering::Relaxed)).sum(),
        mean_return_100: mean_of_last_games(&mut games),
        consensus_distance,
        value_loss: mean(|s| s.stats.value_loss),
        policy_loss: mean(|s| s.stats.policy_loss),
        entropy: mean(|s| s.stats.entropy),
        grad_norm: mean(|s| s.stats.grad_norm),
        sps: frames as f64 / wall.max(1e-9),
        wall_seconds: wall,
    }
}

pub const GOSSIP_EVENTS_HEADER: &str = "agent,round,seconds,event,peers";
pub const GOSSIP_AGENTS_HEADER: &str = "wall_seconds,agent,rounds,frames,sps,staleness,mixes,skipped_sends,blocked_waits";

/// The rows of an earlier session's CSV log that a resume keeps: those of rounds before each
/// agent's resumed round (`keep(agent, round)`), when the file has the expected header.
fn kept_log_rows(path: &std::path::Path, header: &str, agent_col: usize, round_col: usize, keep: impl Fn(usize, u64) -> bool) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return String::new() };
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return String::new();
    }
    let mut kept = String::new();
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        let agent = cols.get(agent_col).and_then(|c| c.parse::<usize>().ok());
        let round = cols.get(round_col).and_then(|c| c.parse::<u64>().ok());
        if let (Some(a), Some(r)) = (agent, round) {
            if keep(a, r) {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    kept
}

/// `train` in asynchronous mode: runs the agents, reports progress from their counters, writes
/// the audit log and per-agent statistics to the run folder, and returns the summary.
pub fn train_async(config: &Config, run: Option<&mut RunDir>, progress: &mut dyn ProgressSink) -> Result<Summary> {
    train_async_session(config, run, progress, &AsyncSession::default()).map(|t| t.summary)
}

/// `train_async` with a resume, a stop flag and test hooks (`AsyncSession`).
///
/// With a run folder, checkpoints are cuts: every agent, on completing a round that crosses a
/// multiple of `save_every` frames, deposits its state, and the file is written (atomically) once
/// all agents' states for that round are in — agents never wait for each other for it. Every
/// agent also deposits its state after its last round: the final checkpoint, or on the stop flag
/// the cut at the agreed stop round (then `interrupted` is true and no summary.json is written).
/// Messages in flight are not saved: a resumed session starts with empty mailboxes (and its
/// unmixed-round counters at 0). In lock-step (`sync_freq = 0`) a cut is exact: a resumed run is
/// bit-identical to an uninterrupted one. Asynchronous runs depend on thread timing anyway.
///
/// When an agent fails, the run stops with its error and leaves a checkpoint to resume from:
/// in lock-step the last cut if there is one (exact); otherwise each agent's state after its
/// last completed round (the failed agent's own, if the failure struck between updates, else
/// its part of the last cut), agents possibly at different rounds (`agent_updates`), which
/// resumes but not exactly as an uninterrupted run would. The error says which and where.
pub fn train_async_session(
    config: &Config, mut run: Option<&mut RunDir>, progress: &mut dyn ProgressSink, session: &AsyncSession<'_>,
) -> Result<AsyncTraining> {
    let mut config = config.clone();
    config.resolve_game_defaults()?;
    let (agents, envs) = config.learner_layout();
    let counters: Vec<AgentCounters> = (0..agents).map(|_| AgentCounters::default()).collect();
    let resume = session.resume;
    let wall_before = resume.map_or(0.0, |ck| ck.wall_seconds);
    let start_rounds = resume.map_or_else(|| vec![0; agents], Checkpoint::agent_rounds);
    let stop = StopControl::new(session.stop.clone(), start_rounds.clone());
    let cuts = run.is_some().then(|| Cuts::new(agents));
    let mut on_disk: Option<OnDisk> = resume.map(OnDisk::of);
    let mut save_error: Option<Error> = None;
    let started = Instant::now();
    // The audit logs continue those of earlier sessions up to the rounds resumed from.
    let (mut events_text, mut agent_rows) = match (run.as_deref(), resume) {
        (Some(run), Some(_)) => (
            kept_log_rows(&run.path().join("gossip_events.csv"), GOSSIP_EVENTS_HEADER, 0, 1, |a, r| start_rounds.get(a).is_some_and(|&s| r < s)),
            kept_log_rows(&run.path().join("gossip_agents.csv"), GOSSIP_AGENTS_HEADER, 1, 2, |a, r| start_rounds.get(a).is_some_and(|&s| r <= s)),
        ),
        _ => (String::new(), String::new()),
    };
    events_text.insert_str(0, &format!("{GOSSIP_EVENTS_HEADER}\n"));
    agent_rows.insert_str(0, &format!("{GOSSIP_AGENTS_HEADER}\n"));
    let outcome = std::thread::scope(|scope| -> Result<AsyncOutcome> {
        let worker = scope.spawn(|| run_agents(&config, &counters, session, cuts.as_ref(), &stop));
        let mut last_report = Instant::now();
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            let frames: u64 = counters.iter().map(|c| c.frames.load(Ordering::Relaxed)).sum();
            progress.tick(frames);
            // A cut every agent has deposited: write it (a failed write stops the run at a round
            // the agents agree on, and is reported after).
            if let (Some(run), Some(cuts)) = (run.as_deref(), cuts.as_ref()) {
                if let Some((k, parts)) = cuts.unwritten().filter(|_| save_error.is_none()) {
                    match write_parts(run, &parts, true) {
                        Ok(saved) => on_disk = Some(saved),
                        Err(e) => {
                            save_error = Some(e);
                            stop.halt.store(true, Ordering::SeqCst);
                        }
                    }
                    cuts.mark_written(k);
                }
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                let wall = wall_before + started.elapsed().as_secs_f64();
                for (a, c) in counters.iter().enumerate() {
                    let f = c.frames.load(Ordering::Relaxed);
                    let _ = writeln!(
                        agent_rows,
                        "{wall:.3},{a},{},{f},{:.1},{},{},{},{}",
                        c.rounds.load(Ordering::Relaxed),
                        f as f64 / wall.max(1e-9),
                        c.staleness.load(Ordering::Relaxed),
                        c.mixes.load(Ordering::Relaxed),
                        c.skipped_sends.load(Ordering::Relaxed),
                        c.blocked_waits.load(Ordering::Relaxed)
                    );
                }
                let row = metrics_from_snapshots(&counters, frames, wall);
                if let Some(run) = run.as_deref_mut() {
                    run.append_metrics(&row)?;
                }
                progress.report(&row);
            }
        }
        worker.join().map_err(|_| Error::Backend("the asynchronous runner panicked".into()))?
    })?;
    let wall = wall_before + outcome.wall_seconds;
    if let Some(run) = run.as_deref_mut() {
        let frames: u64 = counters.iter().map(|c| c.frames.load(Ordering::Relaxed)).sum();
        run.append_metrics(&metrics_from_snapshots(&counters, frames, wall))?;
        for e in &outcome.events {
            let peers: Vec<String> = e.peers.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(events_text, "{},{},{:.6},{},{}", e.agent, e.round, wall_before + e.seconds, e.kind, peers.join(" "));
        }
        crate::run::write_atomic(&run.path().join("gossip_events.csv"), events_text.as_bytes())?;
        crate::run::write_atomic(&run.path().join("gossip_agents.csv"), agent_rows.as_bytes())?;
    }
    if let Some(e) = save_error {
        return Err(e);
    }
    if let Some(err) = outcome.first_error() {
        let done: Vec<String> = outcome.agents.iter().filter(|a| a.result.is_ok()).map(|a| format!("{} ({} rounds)", a.agent, a.rounds)).collect();
        let kept = match (run.as_deref(), cuts.as_ref()) {
            (Some(run), Some(cuts)) => failure_checkpoint(run, cuts, resume, config.sync_freq == 0, &mut on_disk),
            _ => "nothing was saved (no run folder)".into(),
        };
        return Err(Error::Backend(format!("{err}; agents that finished: [{}]; training stopped; {kept}", done.join(", "))));
    }
    // Every agent's final state: the end of the budget, or the agreed stop round.
    if let (Some(run), Some(parts)) = (run.as_deref(), cuts.as_ref().and_then(Cuts::finals)) {
        write_parts(run, &parts, true)?;
    }
    let mut params = Vec::new();
    for a in &outcome.agents {
        params.extend_from_slice(a.params.as_deref().unwrap_or_default());
    }
    // Every agent here, except on ranks other than 0 of a run across ranks (whose summary is
    // replaced by rank 0's).
    let held = outcome.agents.len().max(1);
    let p = params.len() / held;
    let mut games: Vec<GameRecord> = outcome.agents.iter().flat_map(|a| a.games.iter().copied()).collect();
    let frames = outcome.agents.iter().map(|a| a.frames).sum();
    let summary = Summary {
        game: crate::env::GameId::parse(&config.game)?.canonical().to_string(),
        algo: "gala".into(),
        seed: config.seed,
        agents,
        envs_per_agent: envs,
        frames,
        updates: outcome.agents.iter().map(|a| a.rounds).min().unwrap_or(0),
        episodes: outcome.agents.iter().map(|a| a.episodes).sum(),
        mean_return_100: mean_of_last_games(&mut games),
        consensus_distance: if p > 0 { crate::backend::cpu::gossip::consensus_distance(&params, held) } else { 0.0 },
        sps: frames as f64 / wall.max(1e-9),
        wall_seconds: wall,
        backend: outcome.backend.clone(),
        params_sha256: params_sha256(&params),
    };
    if let Some(run) = run {
        if !outcome.interrupted {
            run.write_summary(&summary)?;
        }
    }
    Ok(AsyncTraining { summary, interrupted: outcome.interrupted, exact_resume: outcome.exact_resume })
}
