//! The pump of asynchronous gossip across ranks: one thread per rank that applies what other
//! ranks post (`dist::async_link::Wire`) to this rank's protocol state — messages land in the
//! mailboxes and are flagged full, acknowledgements free a sender's slot, agents of other ranks
//! finish or fail — and posts what this rank owes them: heartbeats, and to rank 0 the reports,
//! checkpoint parts, outcomes and audit events of its agents. The protocol's rules stay in
//! `Gossip::send`/`receive`, the same as in one process.

use super::{AgentCounters, AgentOutcome, AgentState, Cuts, Gossip, GossipEvent, StopControl};
use crate::checkpoint::Checkpoint;
use crate::dist::async_link::{CounterValues, Link, Wire};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What rank 0's pump collected about the other ranks' agents.
#[derive(Default)]
pub(super) struct Remote {
    pub outcomes: Vec<(AgentOutcome, bool)>,
    pub events: Vec<GossipEvent>,
}

impl Gossip {
    /// A message from another rank for agents `to` here: into their mailboxes, flagged full.
    fn deliver(&self, from: usize, to: &[usize], params: &[f32]) -> Result<()> {
        for &r in to {
            if !self.local.contains(&r) {
                return Err(Error::Backend(format!("gossip: a message from agent {from} for agent {r}, which this rank does not host")));
            }
            if self.board().full[from * self.n + r] {
                return Err(Error::Backend(format!("gossip: agent {from} overwrote its unread message to agent {r} (protocol violation)")));
            }
            self.mailboxes.deliver(from, r, params)?;
            self.board().full[from * self.n + r] = true;
        }
        self.changed.notify_all();
        Ok(())
    }

    fn acknowledged(&self, from: usize, to: usize) {
        self.board().full[from * self.n + to] = false;
        self.changed.notify_all();
    }

    /// The state of an agent of another rank (never posted back).
    fn remote_state(&self, agent: usize, state: AgentState) {
        if let Some(s) = self.board().state.get_mut(agent) {
            *s = state;
        }
        self.changed.notify_all();
    }
}

fn counter_values(c: &AgentCounters) -> CounterValues {
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    CounterValues {
        rounds: l(&c.rounds),
        frames: l(&c.frames),
        mixes: l(&c.mixes),
        skipped_sends: l(&c.skipped_sends),
        blocked_waits: l(&c.blocked_waits),
        staleness: l(&c.staleness),
        episodes: l(&c.episodes),
    }
}

fn store_counters(c: &AgentCounters, v: &CounterValues) {
    let s = |a: &std::sync::atomic::AtomicU64, x: u64| a.store(x, Ordering::Relaxed);
    s(&c.rounds, v.rounds);
    s(&c.frames, v.frames);
    s(&c.mixes, v.mixes);
    s(&c.skipped_sends, v.skipped_sends);
    s(&c.blocked_waits, v.blocked_waits);
    s(&c.staleness, v.staleness);
    s(&c.episodes, v.episodes);
}

/// Runs this rank's pump until every rank has said goodbye (after its agents' last messages),
/// or a rank falls silent for `gossip_timeout` (an error naming it; this rank's agents are
/// stopped, and those waiting for that rank's agents fail naming it).
pub(super) fn pump(
    gossip: &Gossip, link: &Link, counters: &[AgentCounters], cuts: Option<&Cuts>, stop: &StopControl, local_done: &AtomicUsize,
    metrics_every: u64,
) -> Result<Remote> {
    let timeout = gossip.timeout;
    let heartbeat = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let (rank, ranks) = (link.rank, link.ranks());
    let local = link.local();
    let mut last_heard = vec![Instant::now(); ranks];
    let mut byes = vec![false; ranks];
    byes[rank] = true;
    let (mut bye_sent, mut stop_sent) = (false, false);
    let mut last_beat: Option<Instant> = None;
    // The metrics round of the snapshot each local agent last reported (rank 0 needs each once).
    let mut reported = vec![u64::MAX; counters.len()];
    let mut remote = Remote::default();
    // Idle polls in a row: the pause between polls grows from 50 µs to 1 ms while nothing comes
    // (a round takes milliseconds; a busy poll would take a core from the agents).
    let mut idle: u32 = 0;
    let report = |reported: &mut Vec<u64>| -> Result<()> {
        for a in local.clone() {
            let c = &counters[a];
            let values = counter_values(c);
            let k = values.rounds / metrics_every.max(1);
            let snapshot = if reported[a] != k { c.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone() } else { None };
            if snapshot.is_some() {
                reported[a] = k;
            }
            link.send(0, &Wire::Report { agent: a, counters: values, snapshot })?;
        }
        Ok(())
    };
    loop {
        if gossip.hung.load(Ordering::SeqCst) {
            // Test hook: a hung process says nothing more; its agents fail after their pause.
            if local_done.load(Ordering::SeqCst) == local.len() {
                return Err(Error::Backend(format!("rank {rank} stopped answering (test hook)")));
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let mut busy = false;
        while let Some((from, message)) = link.poll()? {
            busy = true;
            last_heard[from] = Instant::now();
            match message {
                Wire::Data { from: s, to, params } => gossip.deliver(s, &to, &params)?,
                Wire::Ack { from: s, to } => gossip.acknowledged(s, to),
                Wire::State { agent, failed } => gossip.remote_state(
                    agent,
                    match failed {
                        Some(why) => AgentState::Failed(format!("{why} (rank {from})")),
                        None => AgentState::Finished,
                    },
                ),
                Wire::Report { agent, counters: values, snapshot } => {
                    if let Some(c) = counters.get(agent) {
                        store_counters(c, &values);
                        if snapshot.is_some() {
                            *c.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
                        }
                    }
                }
                Wire::Part { agent, rounds, last, checkpoint } => {
                    if let Some(cuts) = cuts {
                        let origin = format!("(agent {agent}'s checkpoint part from rank {from})");
                        let part = Checkpoint::from_bytes(&checkpoint, std::path::Path::new(&origin))?;
                        if last {
                            cuts.set_last(agent, part);
                        } else {
                            cuts.deposit(agent, rounds, part);
                        }
                    }
                }
                Wire::Outcome { agent, rounds, error, params, games, episodes, frames, exact } => {
                    let result = error.map_or(Ok(()), |e| Err(Error::Backend(format!("{e} (rank {from})"))));
                    remote.outcomes.push((AgentOutcome { agent, rounds, result, params, games, episodes, frames }, exact));
                }
                Wire::Events(events) => remote.events.extend(events),
                Wire::Alive => {}
                Wire::Stop => stop.halt.store(true, Ordering::SeqCst),
                Wire::Bye => byes[from] = true,
            }
        }
        // A stop request here stops every rank (each at a round its own agents agree on).
        if !stop_sent && stop.flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            link.send_all(&Wire::Stop)?;
            stop_sent = true;
        }
        if !bye_sent && last_beat.is_none_or(|t| t.elapsed() >= heartbeat) {
            last_beat = Some(Instant::now());
            link.send_all(&Wire::Alive)?;
            if !link.lead() {
                report(&mut reported)?;
            }
        }
        if !bye_sent && local_done.load(Ordering::SeqCst) == local.len() {
            // Every local agent has posted its last message (and its outcome): the final
            // counters and the audit events, then goodbye.
            if !link.lead() {
                report(&mut reported)?;
                let events = std::mem::take(&mut *gossip.events.lock().unwrap_or_else(|e| e.into_inner()));
                link.send(0, &Wire::Events(events))?;
            }
            link.send_all(&Wire::Bye)?;
            bye_sent = true;
        }
        if bye_sent && byes.iter().all(|&b| b) && link.flushed()? {
            return Ok(remote);
        }
        if let Some(q) = (0..ranks).find(|&q| !byes[q] && last_heard[q].elapsed() > timeout) {
            let why = format!(
                "rank {q} (agents {:?}) sent nothing for {:.0} s (gossip_timeout): stopped, hung or too slow",
                link.blocks.range(q),
                timeout.as_secs_f64()
            );
            for a in link.blocks.range(q) {
                gossip.remote_state(a, AgentState::Failed(why.clone()));
            }
            stop.halt.store(true, Ordering::SeqCst);
            return Err(Error::Backend(why));
        }
        if busy {
            idle = 0;
        } else {
            idle = idle.saturating_add(1);
            std::thread::sleep(Duration::from_micros(50u64 << idle.min(5)).min(Duration::from_millis(1)));
        }
    }
}
