//! Asynchronous gossip across ranks: what travels between processes and how it is written.
//!
//! The protocol itself (skip-if-unread sends, the sync_freq bound, blocked waits, audit logs,
//! cuts) is `algo::async_gossip`'s, the same for agents on threads of one process and for agents
//! spread over ranks. What crosses a process boundary is the protocol's state changes, as
//! [`Wire`] messages posted without waiting (`RankTransport::post`, MPI_Isend) and applied by
//! the receiving rank's pump thread (`algo::async_gossip::ranks`):
//! * `Data`: θ of a sender for its out-peers on the destination rank (one message per rank,
//!   listing the receivers); it lands in their mailboxes and flags them full there;
//! * `Ack`: a receiver consumed a message; the sender's rank clears its own `full` flag for
//!   that pair, so the sender may post again (a message is never overwritten before it is
//!   read, exactly as in one process);
//! * `State`: an agent finished or failed (receivers blocked on it stop waiting or fail);
//! * `Report`, `Part`, `Outcome`, `Events`: what rank 0 needs for the metrics, the checkpoint
//!   cuts, the summary and the audit logs of the agents of other ranks;
//! * `Alive` (every second: a silent rank is named within `gossip_timeout`), `Stop`
//!   (a stop request on any rank stops every rank), `Bye` (this rank's last message).
//!
//! Posted messages from one rank arrive in order, so a `State` or `Bye` follows everything its
//! rank sent before it.

use super::{lock, Blocks, SharedTransport};
use crate::algo::async_gossip::{AgentSnapshot, GossipEvent};
use crate::algo::trainer::GameRecord;
use crate::backend::AgentLearnStats;
use crate::error::{Error, Result};
use std::ops::Range;

/// Per-agent counters as rank 0 shows them (`AgentCounters`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CounterValues {
    pub rounds: u64,
    pub frames: u64,
    pub mixes: u64,
    pub skipped_sends: u64,
    pub blocked_waits: u64,
    pub staleness: u64,
    pub episodes: u64,
}

/// One message of asynchronous gossip between ranks (see the module docs).
#[derive(Clone, Debug)]
pub enum Wire {
    Data { from: usize, to: Vec<usize>, params: Vec<f32> },
    Ack { from: usize, to: usize },
    State { agent: usize, failed: Option<String> },
    Report { agent: usize, counters: CounterValues, snapshot: Option<AgentSnapshot> },
    Part { agent: usize, rounds: u64, last: bool, checkpoint: Vec<u8> },
    Outcome { agent: usize, rounds: u64, error: Option<String>, params: Option<Vec<f32>>, games: Vec<GameRecord>, episodes: u64, frames: u64, exact: bool },
    Events(Vec<GossipEvent>),
    Alive,
    Stop,
    Bye,
}

/// The audit log's event kinds (a `GossipEvent` holds a `&'static str`).
const KINDS: [&str; 8] = ["sent", "send_skipped", "mixed", "unmixed", "blocked", "peers_done", "catch_up", "failed"];

struct Writer(Vec<u8>);

impl Writer {
    fn u(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn f(&mut self, x: f64) {
        self.u(x.to_bits());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn text(&mut self, t: Option<&str>) {
        match t {
            Some(t) => {
                self.u(1);
                self.bytes(t.as_bytes());
            }
            None => self.u(0),
        }
    }
    fn floats(&mut self, v: &[f32]) {
        self.bytes(bytemuck::cast_slice(v));
    }
    fn list(&mut self, v: &[usize]) {
        self.u(v.len() as u64);
        v.iter().for_each(|&x| self.u(x as u64));
    }
    fn games(&mut self, g: &[GameRecord]) {
        self.u(g.len() as u64);
        for g in g {
            self.u(g.step);
            self.u(g.env as u64);
            self.f(g.score);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self) -> Error {
        Error::Backend(format!("a malformed gossip message ({} bytes, cut at byte {})", self.bytes.len(), self.at))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let b = self.bytes.get(self.at..self.at.checked_add(n).ok_or_else(|| self.bad())?).ok_or_else(|| self.bad())?;
        self.at += n;
        Ok(b)
    }
    fn u(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn n(&mut self) -> Result<usize> {
        usize::try_from(self.u()?).map_err(|_| self.bad())
    }
    fn f(&mut self) -> Result<f64> {
        self.u().map(f64::from_bits)
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.n()?;
        self.take(n)
    }
    fn text(&mut self) -> Result<Option<String>> {
        Ok(match self.u()? {
            0 => None,
            _ => Some(String::from_utf8_lossy(self.bytes()?).into_owned()),
        })
    }
    fn floats(&mut self) -> Result<Vec<f32>> {
        let b = self.bytes()?;
        if b.len() % 4 != 0 {
            return Err(self.bad());
        }
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
    fn list(&mut self) -> Result<Vec<usize>> {
        let n = self.n()?;
        (0..n).map(|_| self.n()).collect()
    }
    fn games(&mut self) -> Result<Vec<GameRecord>> {
        let n = self.n()?;
        (0..n).map(|_| Ok(GameRecord { step: self.u()?, env: self.n()?, score: self.f()? })).collect()
    }
}

impl Wire {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            Wire::Data { from, to, params } => {
                w.u(0);
                w.u(*from as u64);
                w.list(to);
                w.floats(params);
            }
            Wire::Ack { from, to } => {
                w.u(1);
                w.u(*from as u64);
                w.u(*to as u64);
            }
            Wire::State { agent, failed } => {
                w.u(2);
                w.u(*agent as u64);
                w.text(failed.as_deref());
            }
            Wire::Report { agent, counters: c, snapshot } => {
                w.u(3);
                w.u(*agent as u64);
                for x in [c.rounds, c.frames, c.mixes, c.skipped_sends, c.blocked_waits, c.staleness, c.episodes] {
                    w.u(x);
                }
                match snapshot {
                    Some(s) => {
                        w.u(1);
                        w.floats(&s.params);
                        for x in [s.stats.value_loss, s.stats.policy_loss, s.stats.entropy, s.stats.grad_norm] {
                            w.f(x);
                        }
                        w.games(&s.games);
                    }
                    None => w.u(0),
                }
            }
            Wire::Part { agent, rounds, last, checkpoint } => {
                w.u(4);
                w.u(*agent as u64);
                w.u(*rounds);
                w.u(u64::from(*last));
                w.bytes(checkpoint);
            }
            Wire::Outcome { agent, rounds, error, params, games, episodes, frames, exact } => {
                w.u(5);
                w.u(*agent as u64);
                w.u(*rounds);
                w.text(error.as_deref());
                match params {
                    Some(p) => {
                        w.u(1);
                        w.floats(p);
                    }
                    None => w.u(0),
                }
                w.games(games);
                w.u(*episodes);
                w.u(*frames);
                w.u(u64::from(*exact));
            }
            Wire::Events(events) => {
                w.u(6);
                w.u(events.len() as u64);
                for e in events {
                    w.u(e.agent as u64);
                    w.u(e.round);
                    w.f(e.seconds);
                    w.u(KINDS.iter().position(|k| *k == e.kind).unwrap_or(KINDS.len()) as u64);
                    w.list(&e.peers);
                }
            }
            Wire::Alive => w.u(7),
            Wire::Stop => w.u(8),
            Wire::Bye => w.u(9),
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Wire> {
        let mut r = Reader { bytes, at: 0 };
        let wire = match r.u()? {
            0 => Wire::Data { from: r.n()?, to: r.list()?, params: r.floats()? },
            1 => Wire::Ack { from: r.n()?, to: r.n()? },
            2 => Wire::State { agent: r.n()?, failed: r.text()? },
            3 => {
                let agent = r.n()?;
                let counters = CounterValues {
                    rounds: r.u()?,
                    frames: r.u()?,
                    mixes: r.u()?,
                    skipped_sends: r.u()?,
                    blocked_waits: r.u()?,
                    staleness: r.u()?,
                    episodes: r.u()?,
                };
                let snapshot = match r.u()? {
                    0 => None,
                    _ => {
                        let params = r.floats()?;
                        let stats = AgentLearnStats { value_loss: r.f()?, policy_loss: r.f()?, entropy: r.f()?, grad_norm: r.f()? };
                        Some(AgentSnapshot { params, stats, games: r.games()? })
                    }
                };
                Wire::Report { agent, counters, snapshot }
            }
            4 => Wire::Part { agent: r.n()?, rounds: r.u()?, last: r.u()? != 0, checkpoint: r.bytes()?.to_vec() },
            5 => {
                let (agent, rounds, error) = (r.n()?, r.u()?, r.text()?);
                let params = match r.u()? {
                    0 => None,
                    _ => Some(r.floats()?),
                };
                Wire::Outcome { agent, rounds, error, params, games: r.games()?, episodes: r.u()?, frames: r.u()?, exact: r.u()? != 0 }
            }
            6 => {
                let n = r.n()?;
                let events = (0..n)
                    .map(|_| {
                        let (agent, round, seconds) = (r.n()?, r.u()?, r.f()?);
                        let kind = KINDS.get(r.n()?).copied().unwrap_or("unknown");
                        Ok(GossipEvent { agent, round, seconds, kind, peers: r.list()? })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Wire::Events(events)
            }
            7 => Wire::Alive,
            8 => Wire::Stop,
            9 => Wire::Bye,
            _ => return Err(r.bad()),
        };
        if r.at != bytes.len() {
            return Err(r.bad());
        }
        Ok(wire)
    }
}

/// One rank's end of asynchronous gossip across ranks: its place in the run and the transport
/// (shared with the blocking exchanges before and after the run).
pub struct Link {
    pub blocks: Blocks,
    pub rank: usize,
    transport: SharedTransport,
    /// Rank 0 keeps a run folder: the other ranks send it their checkpoint parts.
    pub has_run: bool,
}

impl Link {
    pub fn new(blocks: Blocks, rank: usize, transport: SharedTransport, has_run: bool) -> Self {
        Link { blocks, rank, transport, has_run }
    }

    pub fn ranks(&self) -> usize {
        self.blocks.ranks
    }

    /// The agents this rank hosts.
    pub fn local(&self) -> Range<usize> {
        self.blocks.range(self.rank)
    }

    pub fn lead(&self) -> bool {
        self.rank == 0
    }

    pub fn rank_of(&self, agent: usize) -> usize {
        self.blocks.rank_of(agent)
    }

    /// Posts `message` to rank `to` (never waits for it).
    pub fn send(&self, to: usize, message: &Wire) -> Result<()> {
        lock(&self.transport).post(to, message.encode()).map_err(|e| Error::Backend(format!("gossip across processes, to rank {to}: {e}")))
    }

    /// Posts `message` to every other rank.
    pub fn send_all(&self, message: &Wire) -> Result<()> {
        let bytes = message.encode();
        let mut t = lock(&self.transport);
        for q in (0..self.ranks()).filter(|&q| q != self.rank) {
            t.post(q, bytes.clone()).map_err(|e| Error::Backend(format!("gossip across processes, to rank {q}: {e}")))?;
        }
        Ok(())
    }

    /// The next message that has arrived, with its sender rank.
    pub fn poll(&self) -> Result<Option<(usize, Wire)>> {
        let got = lock(&self.transport).poll()?;
        got.map(|(from, bytes)| Wire::decode(&bytes).map(|w| (from, w)).map_err(|e| Error::Backend(format!("from rank {from}: {e}")))).transpose()
    }

    /// Whether every posted message has left.
    pub fn flushed(&self) -> Result<bool> {
        lock(&self.transport).posted_done()
    }

    /// " (rank q)" / " (ranks [..])" for agents hosted elsewhere, "" for local ones: error
    /// messages name the process to look at.
    pub fn where_(&self, agents: impl IntoIterator<Item = usize>) -> String {
        let mut ranks: Vec<usize> = agents.into_iter().map(|a| self.rank_of(a)).filter(|&q| q != self.rank).collect();
        ranks.sort_unstable();
        ranks.dedup();
        match ranks.as_slice() {
            [] => String::new(),
            [q] => format!(" (on rank {q})"),
            qs => format!(" (on ranks {qs:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let snap = AgentSnapshot {
            params: vec![1.5, -2.0],
            stats: AgentLearnStats { value_loss: 0.5, policy_loss: -0.25, entropy: 1.75, grad_norm: 3.0 },
            games: vec![GameRecord { step: 3, env: 1, score: -1.0 }],
        };
        let messages = vec![
            Wire::Data { from: 3, to: vec![0, 1], params: vec![0.25, f32::MIN_POSITIVE] },
            Wire::Ack { from: 1, to: 2 },
            Wire::State { agent: 2, failed: Some("injected".into()) },
            Wire::State { agent: 2, failed: None },
            Wire::Report { agent: 1, counters: CounterValues { rounds: 4, frames: 40, mixes: 3, skipped_sends: 1, blocked_waits: 0, staleness: 1, episodes: 2 }, snapshot: Some(snap) },
            Wire::Part { agent: 1, rounds: 7, last: true, checkpoint: vec![1, 2, 3] },
            Wire::Outcome { agent: 0, rounds: 9, error: None, params: Some(vec![1.0]), games: vec![], episodes: 5, frames: 90, exact: true },
            Wire::Events(vec![GossipEvent { agent: 1, round: 2, seconds: 0.5, kind: "send_skipped", peers: vec![2] }]),
            Wire::Alive,
            Wire::Stop,
            Wire::Bye,
        ];
        for m in messages {
            let bytes = m.encode();
            let back = Wire::decode(&bytes).unwrap();
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
            // A cut message is refused, not misread.
            assert!(Wire::decode(&bytes[..bytes.len() - 1]).is_err());
        }
    }
}
