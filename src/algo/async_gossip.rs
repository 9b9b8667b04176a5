//! Asynchronous GALA: every agent on its own host thread with its own backend and simulators,
//! gossiping through mailboxes (GALA's gpu_gossip_buffer.py, with the paper's semantics).
//!
//! Mailboxes are per directed pair (s → r) that can ever communicate: a slot holding θ_s and a
//! `full` flag. The flags live here, on the host, under one lock; the slots are a
//! [`Mailboxes`] transport chosen by the backend kind (`backend::mailbox`):
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
//!   whole round's send is skipped (a message is never overwritten before it is read);
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

use super::topology::GossipGraph;
use super::trainer::{mean_of_last_games, GameRecord, ProgressSink, Trainer};
use crate::backend::mailbox::{self, MailboxKind, MailboxPlan, Mailboxes};
use crate::backend::SharedDevice;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::run::{params_sha256, MetricsRow, RunDir, Summary};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Test hooks: make an agent slow or fail, to exercise the protocol's failure paths.
#[derive(Clone, Debug, Default)]
pub struct AsyncHooks {
    /// (agent, extra sleep per round)
    pub slow_agent: Option<(usize, Duration)>,
    /// (agent, round at which its thread fails)
    pub fail_agent: Option<(usize, u64)>,
}

#[derive(Clone, Debug, PartialEq)]
enum AgentState {
    Running,
    Finished,
    Failed(String),
}

/// Flags of every mailbox, under one lock (the messages themselves have their own locks).
struct Board {
    /// full[s * n + r]: slot s → r holds an unread message.
    full: Vec<bool>,
    state: Vec<AgentState>,
}

/// What happened in one agent's round (the audit log).
#[derive(Clone, Debug)]
pub struct GossipEvent {
    pub agent: usize,
    pub round: u64,
    pub seconds: f64,
    /// "sent", "send_skipped", "mixed", "unmixed", "blocked" (then "mixed", or "peers_done"
    /// when every possible sender has finished and nothing more can come)
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

struct Gossip {
    n: usize,
    graph: GossipGraph,
    sync_freq: u64,
    timeout: Duration,
    /// The device every agent's backend is built on (see the module docs).
    device: SharedDevice,
    /// The slots themselves; `board` holds their flags.
    mailboxes: Box<dyn Mailboxes>,
    board: Mutex<Board>,
    changed: Condvar,
    /// possible_senders[r]: every agent that may ever send to r.
    possible_senders: Vec<BTreeSet<usize>>,
    events: Mutex<Vec<GossipEvent>>,
    started: Instant,
}

impl Gossip {
    /// The protocol state for `agents` agents of `param_count` parameters, with mailboxes on
    /// `device` (host mailboxes for the CPU backend, device mailboxes otherwise).
    fn new(config: &Config, graph: GossipGraph, agents: usize, device: SharedDevice, param_count: usize) -> Result<Self> {
        let n = agents;
        // Exponential peers cycle with a period of at most log2(n) rounds; 2n covers any graph.
        let mut possible_senders = vec![BTreeSet::new(); n];
        // The lock-step in-peer lists, in order: the mix must sum messages in that order.
        let mut orders: Vec<Vec<Vec<usize>>> = vec![Vec::new(); n];
        for round in 0..(2 * n as u64) {
            for (r, ins) in graph.in_peers(round).into_iter().enumerate() {
                possible_senders[r].extend(ins.iter().copied());
                if !orders[r].contains(&ins) {
                    orders[r].push(ins);
                }
            }
        }
        let plan = MailboxPlan {
            agents: n,
            param_count,
            senders: possible_senders.iter().map(|s| s.iter().copied().collect()).collect(),
            orders,
        };
        let mailboxes = mailbox::open(&device, plan)?;
        Ok(Gossip {
            n,
            graph,
            sync_freq: config.sync_freq,
            timeout: Duration::from_secs_f64(config.gossip_timeout),
            device,
            mailboxes,
            board: Mutex::new(Board { full: vec![false; n * n], state: vec![AgentState::Running; n] }),
            changed: Condvar::new(),
            possible_senders,
            events: Mutex::new(Vec::new()),
            started: Instant::now(),
        })
    }

    fn lockstep(&self) -> bool {
        self.sync_freq == 0
    }

    fn log(&self, agent: usize, round: u64, kind: &'static str, peers: Vec<usize>) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(GossipEvent { agent, round, seconds, kind, peers });
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the message in slot s → r, flagged full on `board`, may be read now (never
    /// blocks: device messages are polled through their events).
    fn arrived(&self, board: &Board, s: usize, r: usize) -> Result<bool> {
        Ok(board.full[s * self.n + r] && self.mailboxes.landed(s, r)?)
    }

    /// Waits on the board until `ready` says Some, with the timeout; `who` explains a timeout.
    /// With `poll`, `ready` is re-checked every few hundred microseconds even without a
    /// notification: a device message lands when its copy finishes on the device, which
    /// signals no condition variable.
    fn wait_until<'a, T>(
        &'a self, mut board: MutexGuard<'a, Board>, mut ready: impl FnMut(&Board) -> Result<Option<T>>, who: impl Fn() -> String,
        poll: bool,
    ) -> Result<(MutexGuard<'a, Board>, T)> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(v) = ready(&board)? {
                return Ok((board, v));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Backend(format!(
                    "gossip: waited {:.0} s for {} (raise `gossip_timeout`, or check that peer)",
                    self.timeout.as_secs_f64(),
                    who()
                )));
            }
            let step = if poll { (deadline - now).min(Duration::from_micros(200)) } else { deadline - now };
            board = self.changed.wait_timeout(board, step).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn failed_peer(board: &Board, peers: impl IntoIterator<Item = usize>) -> Option<(usize, String)> {
        peers.into_iter().find_map(|s| match &board.state[s] {
            AgentState::Failed(why) => Some((s, why.clone())),
            _ => None,
        })
    }

    fn send(&self, s: usize, round: u64, trainer: &mut Trainer, counters: &AgentCounters) -> Result<()> {
        let outs = self.graph.out_peers(s, round);
        let n = self.n;
        let board = self.board();
        let board = if self.lockstep() {
            // Wait until every out-peer has read the previous message (or can no longer read).
            self.wait_until(
                board,
                |b| Ok(outs.iter().all(|&r| !b.full[s * n + r] || b.state[r] != AgentState::Running).then_some(())),
                || format!("agents {outs:?} to read agent {s}'s message (round {round})"),
                false,
            )?
            .0
        } else if outs.iter().any(|&r| board.full[s * n + r]) {
            drop(board);
            counters.skipped_sends.fetch_add(1, Ordering::Relaxed);
            self.log(s, round, "send_skipped", outs);
            return Ok(());
        } else {
            board
        };
        drop(board);
        // The slots are ours: receivers only read a slot while it is flagged full.
        self.mailboxes.post(s, &outs, trainer.backend_mut())?;
        if self.mailboxes.kind() == MailboxKind::Device {
            counters.device_messages.fetch_add(outs.len() as u64, Ordering::Relaxed);
        }
        let mut board = self.board();
        for &r in &outs {
            board.full[s * n + r] = true;
        }
        drop(board);
        self.changed.notify_all();
        self.log(s, round, "sent", outs);
        Ok(())
    }

    fn receive(&self, r: usize, round: u64, trainer: &mut Trainer, counters: &AgentCounters) -> Result<()> {
        let n = self.n;
        let poll = self.mailboxes.kind() == MailboxKind::Device;
        let board = self.board();
        let (board, take) = if self.lockstep() {
            let expected = self.graph.in_peers(round).swap_remove(r);
            self.wait_until(
                board,
                |b| {
                    if let Some((s, why)) = Self::failed_peer(b, expected.iter().copied()) {
                        return Err(Error::Backend(format!("gossip: agent {r} waits for agent {s}, which stopped: {why}")));
                    }
                    for &s in &expected {
                        if !self.arrived(b, s, r)? {
                            return Ok(None);
                        }
                    }
                    Ok(Some(expected.clone()))
                },
                || format!("agent {r} to receive from agents {expected:?} (round {round})"),
                poll,
            )?
        } else {
            let pending = |b: &Board| -> Result<Vec<usize>> {
                let mut fresh = Vec::new();
                for &s in &self.possible_senders[r] {
                    if self.arrived(b, s, r)? {
                        fresh.push(s);
                    }
                }
                Ok(fresh)
            };
            let now = pending(&board)?;
            if !now.is_empty() {
                (board, now)
            } else if counters.staleness.load(Ordering::Relaxed) < self.sync_freq {
                drop(board);
                counters.staleness.fetch_add(1, Ordering::Relaxed);
                self.log(r, round, "unmixed", vec![]);
                return Ok(());
            } else {
                counters.blocked_waits.fetch_add(1, Ordering::Relaxed);
                self.log(r, round, "blocked", vec![]);
                let senders = &self.possible_senders[r];
                self.wait_until(
                    board,
                    |b| {
                        let got = pending(b)?;
                        if !got.is_empty() {
                            return Ok(Some(got));
                        }
                        if let Some((s, why)) = Self::failed_peer(b, senders.iter().copied()) {
                            return Err(Error::Backend(format!(
                                "gossip: agent {r} had no message for {} rounds (sync_freq {}) and its peer agent {s} stopped: {why}",
                                self.sync_freq, self.sync_freq
                            )));
                        }
                        // Every peer is done and has nothing in flight (a device message may be
                        // flagged but still copying: it lands, so poll on): nothing will come;
                        // carry on unmixed.
                        Ok(senders.iter().all(|&s| b.state[s] == AgentState::Finished && !b.full[s * n + r]).then(Vec::new))
                    },
                    || format!("a message for agent {r} from agents {senders:?} (none for {} rounds)", self.sync_freq),
                    poll,
                )?
            }
        };
        drop(board);
        if take.is_empty() {
            // Only after a blocked wait: every possible sender has finished its rounds.
            counters.staleness.fetch_add(1, Ordering::Relaxed);
            self.log(r, round, "peers_done", vec![]);
            return Ok(());
        }
        // In `take`'s order: the lock-step in-peer order, or ascending senders.
        self.mailboxes.mix(r, &take, trainer.backend_mut())?;
        let mut board = self.board();
        for &s in &take {
            board.full[s * n + r] = false;
        }
        drop(board);
        self.changed.notify_all();
        counters.mixes.fetch_add(1, Ordering::Relaxed);
        counters.staleness.store(0, Ordering::Relaxed);
        self.log(r, round, "mixed", take);
        Ok(())
    }

    fn set_state(&self, agent: usize, state: AgentState) {
        self.board().state[agent] = state;
        self.changed.notify_all();
    }
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
}

impl AsyncOutcome {
    /// The first failure, as the run's error.
    pub fn first_error(&self) -> Option<String> {
        self.agents.iter().find_map(|a| a.result.as_ref().err().map(|e| format!("agent {}: {e}", a.agent)))
    }
}

fn agent_loop(
    config: &Config, agent: usize, rounds: u64, threads: usize, gossip: &Gossip, counters: &AgentCounters,
    hooks: &AsyncHooks, backend_name: &Mutex<String>,
) -> (Result<()>, Option<Trainer>) {
    let mut trainer = match Trainer::for_agent_on(config, agent, threads, &gossip.device) {
        Ok(t) => t,
        Err(e) => return (Err(e), None),
    };
    *backend_name.lock().unwrap_or_else(|e| e.into_inner()) = trainer.backend_name().to_string();
    let mut run = || -> Result<()> {
        for round in 0..rounds {
            if hooks.fail_agent == Some((agent, round)) {
                return Err(Error::Backend(format!("injected failure at round {round} (test hook)")));
            }
            trainer.update()?;
            if let Some((slow, pause)) = hooks.slow_agent {
                if slow == agent {
                    std::thread::sleep(pause);
                }
            }
            gossip.send(agent, round, &mut trainer, counters)?;
            gossip.receive(agent, round, &mut trainer, counters)?;
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
        }
        Ok(())
    };
    let result = run();
    (result, Some(trainer))
}

/// Runs every agent on its own thread until each has done the updates the frame budget allows
/// (the same number as the batched trainer would), then gathers their parameters.
pub fn run_async(config: &Config, hooks: &AsyncHooks, counters: &[AgentCounters]) -> Result<AsyncOutcome> {
    let mut config = config.clone();
    config.resolve_game_defaults()?;
    config.validate()?;
    let (agents, envs) = config.learner_layout();
    if !config.gossips() || counters.len() != agents {
        return Err(Error::Config("asynchronous gossip needs `algo = gala` with at least 2 agents".into()));
    }
    let graph = GossipGraph::new(config.topology, agents, config.peers)?;
    // One device for every agent's backend (and the mailboxes), opened once.
    let device = SharedDevice::open(config.backend)?;
    // Frames per update of one agent need the game's frame skip: ask a throwaway env.
    let mut probe = Trainer::for_agent_on(&config, 0, 1, &device)?;
    let frames_per_round_all = probe.frames_per_update() * agents as u64;
    let param_count = probe.backend_mut().spec().param_count();
    drop(probe);
    let gossip = Gossip::new(&config, graph, agents, device, param_count)?;
    let rounds = config.frames.div_ceil(frames_per_round_all);
    let threads = (config.resolved_threads() / agents).max(1);
    let backend_name = Mutex::new(String::new());
    let started = Instant::now();
    let outcomes: Vec<AgentOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..agents)
            .map(|agent| {
                let (config, gossip, counters, hooks, backend_name) = (&config, &gossip, &counters[agent], hooks, &backend_name);
                std::thread::Builder::new()
                    .name(format!("gala-agent-{agent}"))
                    .spawn_scoped(scope, move || {
                        let (result, trainer) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            agent_loop(config, agent, rounds, threads, gossip, counters, hooks, backend_name)
                        })) {
                            Ok(v) => v,
                            Err(_) => (Err(Error::Backend(format!("agent {agent}'s thread panicked"))), None),
                        };
                        gossip.set_state(
                            agent,
                            match &result {
                                Ok(()) => AgentState::Finished,
                                Err(e) => AgentState::Failed(e.to_string()),
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
                            outcome.params = t.backend_mut().read_params().ok();
                            outcome.games = t.recent_games().copied().collect();
                            outcome.episodes = t.episodes();
                            outcome.frames = t.frames();
                        }
                        outcome
                    })
                    .expect("spawn agent thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("agent thread outcome")).collect()
    });
    let _ = envs;
    let events = std::mem::take(&mut *gossip.events.lock().unwrap_or_else(|e| e.into_inner()));
    let backend = backend_name.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(AsyncOutcome { agents: outcomes, events, wall_seconds: started.elapsed().as_secs_f64(), backend })
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

/// `train` in asynchronous mode: runs the agents, reports progress from their counters, writes
/// the audit log and per-agent statistics to the run folder, and returns the summary.
pub fn train_async(config: &Config, mut run: Option<&mut RunDir>, progress: &mut dyn ProgressSink) -> Result<Summary> {
    let mut config = config.clone();
    config.resolve_game_defaults()?;
    let (agents, envs) = config.learner_layout();
    let counters: Vec<AgentCounters> = (0..agents).map(|_| AgentCounters::default()).collect();
    let hooks = AsyncHooks::default();
    let started = Instant::now();
    let mut agent_rows = String::from("wall_seconds,agent,rounds,frames,sps,staleness,mixes,skipped_sends,blocked_waits\n");
    let outcome = std::thread::scope(|scope| -> Result<AsyncOutcome> {
        let worker = scope.spawn(|| run_async(&config, &hooks, &counters));
        let mut last_report = Instant::now();
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            let frames: u64 = counters.iter().map(|c| c.frames.load(Ordering::Relaxed)).sum();
            progress.tick(frames);
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                let wall = started.elapsed().as_secs_f64();
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
    if let Some(run) = run.as_deref_mut() {
        let frames: u64 = counters.iter().map(|c| c.frames.load(Ordering::Relaxed)).sum();
        run.append_metrics(&metrics_from_snapshots(&counters, frames, started.elapsed().as_secs_f64()))?;
        let mut events = String::from("agent,round,seconds,event,peers\n");
        for e in &outcome.events {
            let peers: Vec<String> = e.peers.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(events, "{},{},{:.6},{},{}", e.agent, e.round, e.seconds, e.kind, peers.join(" "));
        }
        crate::run::write_atomic(&run.path().join("gossip_events.csv"), events.as_bytes())?;
        crate::run::write_atomic(&run.path().join("gossip_agents.csv"), agent_rows.as_bytes())?;
    }
    if let Some(err) = outcome.first_error() {
        let done: Vec<String> = outcome.agents.iter().filter(|a| a.result.is_ok()).map(|a| format!("{} ({} rounds)", a.agent, a.rounds)).collect();
        return Err(Error::Backend(format!("{err}; agents that finished: [{}]", done.join(", "))));
    }
    let mut params = Vec::new();
    for a in &outcome.agents {
        params.extend_from_slice(a.params.as_deref().unwrap_or_default());
    }
    let p = params.len() / agents;
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
        consensus_distance: if p > 0 { crate::backend::cpu::gossip::consensus_distance(&params, agents) } else { 0.0 },
        sps: frames as f64 / outcome.wall_seconds.max(1e-9),
        wall_seconds: outcome.wall_seconds,
        backend: outcome.backend.clone(),
        params_sha256: params_sha256(&params),
    };
    if let Some(run) = run {
        run.write_summary(&summary)?;
    }
    Ok(summary)
}
