//! The protocol of asynchronous gossip, written once for every transport: who sends to whom
//! each round, the skip rule (a message is never overwritten before it is read), the sync_freq
//! bound on unmixed rounds and the blocked wait, the failure and timeout rules, and the audit
//! events (see the parent module's docs). The bytes travel through `backend::mailbox`'s
//! `Mailboxes` (host or device slots) and, for agents of other ranks, `dist::async_link`.

use super::{AgentCounters, GossipEvent};
use crate::algo::topology::GossipGraph;
use crate::algo::trainer::Trainer;
use crate::backend::mailbox::{self, MailboxKind, MailboxPlan, Mailboxes};
use crate::backend::SharedDevice;
use crate::config::Config;
use crate::dist::async_link::{Link, Wire};
use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub(super) enum AgentState {
    Running,
    Finished,
    Failed(String),
}

/// Flags of every mailbox, under one lock (the messages themselves have their own locks).
pub(super) struct Board {
    /// full[s * n + r]: slot s → r holds an unread message.
    pub(super) full: Vec<bool>,
    pub(super) state: Vec<AgentState>,
}

pub(super) struct Gossip {
    pub(super) n: usize,
    /// The agents this process hosts (all of them, unless the run spans ranks).
    pub(super) local: std::ops::Range<usize>,
    /// The other ranks, when the run spans several (`dist::async_link`): messages for their
    /// agents are posted there, theirs are applied here by the pump thread (`ranks`).
    pub(super) link: Option<Arc<Link>>,
    /// Test hook (`AsyncHooks::hang`): this rank fell silent.
    pub(super) hung: AtomicBool,
    pub(super) graph: GossipGraph,
    pub(super) sync_freq: u64,
    pub(super) timeout: Duration,
    /// The device every agent's backend is built on (see the module docs).
    pub(super) device: SharedDevice,
    /// The slots themselves; `board` holds their flags.
    pub(super) mailboxes: Box<dyn Mailboxes>,
    pub(super) board: Mutex<Board>,
    pub(super) changed: Condvar,
    /// possible_senders[r]: every agent that may ever send to r.
    pub(super) possible_senders: Vec<BTreeSet<usize>>,
    pub(super) events: Mutex<Vec<GossipEvent>>,
    pub(super) started: Instant,
}

impl Gossip {
    /// The protocol state for `agents` agents of `param_count` parameters, with mailboxes on
    /// `device` (host mailboxes for the CPU backend, device mailboxes otherwise).
    pub(super) fn new(config: &Config, graph: GossipGraph, agents: usize, device: SharedDevice, param_count: usize, link: Option<Arc<Link>>) -> Result<Self> {
        let n = agents;
        let local = link.as_ref().map_or(0..n, |l| l.local());
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
        // Slots only for receivers hosted here (every one in a single process).
        let plan = MailboxPlan {
            agents: n,
            param_count,
            senders: possible_senders.iter().enumerate().map(|(r, s)| if local.contains(&r) { s.iter().copied().collect() } else { Vec::new() }).collect(),
            orders: orders.into_iter().enumerate().map(|(r, o)| if local.contains(&r) { o } else { Vec::new() }).collect(),
        };
        let mailboxes = mailbox::open(&device, plan)?;
        Ok(Gossip {
            n,
            local,
            link,
            hung: AtomicBool::new(false),
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

    pub(super) fn lockstep(&self) -> bool {
        self.sync_freq == 0
    }

    /// " (on rank q)" for agents of other ranks, "" otherwise: errors name the process.
    pub(super) fn where_(&self, agents: impl IntoIterator<Item = usize>) -> String {
        self.link.as_ref().map_or_else(String::new, |l| l.where_(agents))
    }

    pub(super) fn log(&self, agent: usize, round: u64, kind: &'static str, peers: Vec<usize>) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(GossipEvent { agent, round, seconds, kind, peers });
    }

    pub(super) fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the message in slot s → r, flagged full on `board`, may be read now (never
    /// blocks: device messages are polled through their events).
    pub(super) fn arrived(&self, board: &Board, s: usize, r: usize) -> Result<bool> {
        Ok(board.full[s * self.n + r] && self.mailboxes.landed(s, r)?)
    }

    /// Waits on the board until `ready` says Some, with the timeout; `who` explains a timeout.
    /// With `poll`, `ready` is re-checked every few hundred microseconds even without a
    /// notification: a device message lands when its copy finishes on the device, which
    /// signals no condition variable.
    pub(super) fn wait_until<'a, T>(
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

    pub(super) fn failed_peer(board: &Board, peers: impl IntoIterator<Item = usize>) -> Option<(usize, String)> {
        peers.into_iter().find_map(|s| match &board.state[s] {
            AgentState::Failed(why) => Some((s, why.clone())),
            _ => None,
        })
    }

    pub(super) fn send(&self, s: usize, round: u64, trainer: &mut Trainer, counters: &AgentCounters) -> Result<()> {
        let mut outs = self.graph.out_peers(s, round);
        let n = self.n;
        let board = self.board();
        let board = if self.lockstep() {
            // Wait until every out-peer has read the previous message (or can no longer read).
            self.wait_until(
                board,
                |b| Ok(outs.iter().all(|&r| !b.full[s * n + r] || b.state[r] != AgentState::Running).then_some(())),
                || format!("agents {outs:?}{} to read agent {s}'s message (round {round})", self.where_(outs.iter().copied())),
                false,
            )?
            .0
        } else {
            // Out-peers that finished or failed never read again: they are left out, or their
            // unread slot would stop every later send to the others, and two agents still
            // running could end up blocked on each other (agents finish at different times).
            let live: Vec<usize> = outs.iter().copied().filter(|&r| board.state[r] == AgentState::Running).collect();
            if live.is_empty() || live.iter().any(|&r| board.full[s * n + r]) {
                drop(board);
                counters.skipped_sends.fetch_add(1, Ordering::Relaxed);
                self.log(s, round, "send_skipped", outs);
                return Ok(());
            }
            outs = live;
            board
        };
        drop(board);
        let (here, away): (Vec<usize>, Vec<usize>) = outs.iter().partition(|&&r| self.local.contains(&r));
        if let (Some(link), false) = (&self.link, away.is_empty()) {
            // Flagged before posting: the receiver's acknowledgement clears the flag, and it
            // may come back at once.
            let mut board = self.board();
            for &r in &away {
                board.full[s * n + r] = true;
            }
            drop(board);
            let params = trainer.backend_mut().read_params()?;
            let mut ranks: Vec<usize> = away.iter().map(|&r| link.rank_of(r)).collect();
            ranks.dedup();
            for q in ranks {
                let to: Vec<usize> = away.iter().copied().filter(|&r| link.rank_of(r) == q).collect();
                link.send(q, &Wire::Data { from: s, to, params: params.clone() })?;
            }
        }
        if !here.is_empty() {
            // The slots are ours: receivers only read a slot while it is flagged full.
            self.mailboxes.post(s, &here, trainer.backend_mut())?;
            if self.mailboxes.kind() == MailboxKind::Device {
                counters.device_messages.fetch_add(here.len() as u64, Ordering::Relaxed);
            }
            let mut board = self.board();
            for &r in &here {
                board.full[s * n + r] = true;
            }
            drop(board);
        }
        self.changed.notify_all();
        self.log(s, round, "sent", outs);
        Ok(())
    }

    pub(super) fn receive(&self, r: usize, round: u64, trainer: &mut Trainer, counters: &AgentCounters) -> Result<()> {
        let n = self.n;
        let poll = self.mailboxes.kind() == MailboxKind::Device;
        let board = self.board();
        let (board, take) = if self.lockstep() {
            let expected = self.graph.in_peers(round).swap_remove(r);
            self.wait_until(
                board,
                |b| {
                    if let Some((s, why)) = Self::failed_peer(b, expected.iter().copied()) {
                        return Err(Error::Backend(format!("gossip: agent {r} waits for agent {s}{}, which stopped: {why}", self.where_([s]))));
                    }
                    for &s in &expected {
                        if !self.arrived(b, s, r)? {
                            return Ok(None);
                        }
                    }
                    Ok(Some(expected.clone()))
                },
                || format!("agent {r} to receive from agents {expected:?}{} (round {round})", self.where_(expected.iter().copied())),
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
                                "gossip: agent {r} had no message for {} rounds (sync_freq {}) and its peer agent {s}{} stopped: {why}",
                                self.sync_freq,
                                self.sync_freq,
                                self.where_([s])
                            )));
                        }
                        // Every peer is done and has nothing in flight (a device message may be
                        // flagged but still copying: it lands, so poll on): nothing will come;
                        // carry on unmixed.
                        Ok(senders.iter().all(|&s| b.state[s] == AgentState::Finished && !b.full[s * n + r]).then(Vec::new))
                    },
                    || format!("a message for agent {r} from agents {senders:?}{} (none for {} rounds)", self.where_(senders.iter().copied()), self.sync_freq),
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
        // Senders on other ranks learn that their slot is free again.
        if let Some(link) = &self.link {
            for &s in take.iter().filter(|s| !self.local.contains(s)) {
                link.send(link.rank_of(s), &Wire::Ack { from: s, to: r })?;
            }
        }
        counters.mixes.fetch_add(1, Ordering::Relaxed);
        counters.staleness.store(0, Ordering::Relaxed);
        self.log(r, round, "mixed", take);
        Ok(())
    }

    pub(super) fn set_state(&self, agent: usize, state: AgentState) {
        if let (Some(link), true) = (&self.link, self.local.contains(&agent)) {
            let failed = match &state {
                AgentState::Failed(why) => Some(why.clone()),
                _ => None,
            };
            // Best effort: a rank that cannot be told notices this one's silence instead.
            let _ = link.send_all(&Wire::State { agent, failed });
        }
        self.board().state[agent] = state;
        self.changed.notify_all();
    }
}
