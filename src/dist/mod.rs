//! Scale-out: the agents of one run spread over several processes ("ranks": `mpirun`, `srun`),
//! each hosting a contiguous block of agents batched on its own backend (DESIGN.md, "Scale-out").
//!
//! Written once here, whatever carries the bytes:
//! * [`Blocks`]: which rank hosts which agents (contiguous blocks; with N agents on R ranks the
//!   first N mod R ranks host one more);
//! * [`RankGossip`]: the lock-step gossip round across ranks — who sends which agent's
//!   parameters to which rank, who expects what from whom, and the order messages are summed in
//!   (the batched trainer's in-peer order), so a run is bit-identical whatever the number of
//!   ranks;
//! * [`train::train_distributed`]: the training loop of one rank (rank 0 owns the run folder:
//!   metrics, per-agent rows, checkpoints, summary; the others send it their parts).
//!
//! The bytes travel through a [`RankTransport`], one small trait with two implementations:
//! [`local::LocalRanks`] (ranks as threads of one process, over channels: the protocol's
//! reference and its tests in the default build) and `mpi::MpiTransport` (cargo feature `mpi`:
//! non-blocking MPI point-to-point, host-staged). On `cuda`, lock-step gossip's parameter
//! messages may instead go device to device through a [`DeviceLink`] (`nccl::NcclLink`, cargo
//! feature `nccl`; [`link`] chooses, and holds the simulator's stand-in that tests the path).
//! Every wait has a deadline (`gossip_timeout`): a silent or dead rank is an error naming it,
//! never a hang.

pub mod async_link;
pub mod link;
pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod train;

pub use link::{CrossRankPath, DeviceLink, DeviceMessage};

use crate::algo::topology::GossipGraph;
use crate::backend::Backend;
use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many processes an MPI launcher started, when this process is one of them: read from
/// what Open MPI's mpirun (`OMPI_COMM_WORLD_SIZE`), PMI/PMIx launchers such as Slurm's srun and
/// MPICH's hydra set. None for a process started on its own.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok()))
}

/// This process's rank among those on its node (to pick a GPU), from the launcher's environment.
pub fn local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMIX_LOCAL_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok()))
}

/// Message tags at or above this are the protocol's own (lengths, gathers, broadcasts);
/// parameter messages are tagged with their sender agent's index. MPI guarantees tags up to
/// 32767.
pub const CONTROL_TAG: u32 = 32_000;

/// Which rank hosts which agents: contiguous blocks, in rank order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub agents: usize,
    pub ranks: usize,
}

impl Blocks {
    /// Refuses more ranks than agents (a rank without agents) and agent counts the message tags
    /// cannot name.
    pub fn new(agents: usize, ranks: usize) -> Result<Self> {
        if ranks == 0 || agents < ranks {
            return Err(Error::Config(format!(
                "{agents} agents cannot be spread over {ranks} processes: every rank hosts at least one agent (use --agents {ranks} or more, or fewer processes)"
            )));
        }
        if agents >= CONTROL_TAG as usize {
            return Err(Error::Config(format!("at most {} agents across processes, got {agents}", CONTROL_TAG - 1)));
        }
        Ok(Blocks { agents, ranks })
    }

    /// The agents rank `rank` hosts.
    pub fn range(&self, rank: usize) -> Range<usize> {
        let (base, extra) = (self.agents / self.ranks, self.agents % self.ranks);
        let start = rank * base + rank.min(extra);
        start..start + base + usize::from(rank < extra)
    }

    /// The rank hosting agent `agent`.
    pub fn rank_of(&self, agent: usize) -> usize {
        (0..self.ranks).find(|&q| self.range(q).contains(&agent)).unwrap_or(self.ranks - 1)
    }
}

/// One message to send: `data` to rank `to`, tagged `tag`.
pub struct Outgoing<'a> {
    pub to: usize,
    pub tag: u32,
    pub data: &'a [u8],
}

/// One message to receive: exactly `data.len()` bytes from rank `from`, tagged `tag`.
pub struct Incoming<'a> {
    pub from: usize,
    pub tag: u32,
    pub data: &'a mut [u8],
}

/// Moves bytes between the ranks of one run. Messages between two ranks with the same tag
/// arrive in the order they were sent (MPI's non-overtaking rule). Every call waits at most
/// `timeout` for a peer; a peer that does not answer in time, or is gone, is an error naming it.
pub trait RankTransport: Send {
    fn rank(&self) -> usize;
    fn ranks(&self) -> usize;
    /// What carries the messages, for the run's log ("mpi (host-staged) …", "in-process …").
    fn describe(&self) -> String;
    /// Posts every send and every receive at once (non-blocking), then waits until all are
    /// complete.
    fn exchange(&mut self, sends: &[Outgoing<'_>], recvs: &mut [Incoming<'_>], timeout: Duration) -> Result<()>;
    /// Variable-length messages: `mine` from every rank, in rank order, at rank 0 (None on the
    /// others).
    fn gather(&mut self, mine: &[u8], timeout: Duration) -> Result<Option<Vec<Vec<u8>>>> {
        gather_p2p(self, mine, timeout)
    }
    /// Rank 0's `bytes` at every rank (the argument is ignored elsewhere).
    fn broadcast(&mut self, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        broadcast_p2p(self, bytes, timeout)
    }
    /// Asynchronous gossip (`async_link`): sends `data` to rank `to` without waiting; the
    /// transport keeps the buffer until it has left. Posted messages from one rank arrive in
    /// the order they were posted, apart from `exchange`'s (they carry [`ASYNC_TAG`]).
    fn post(&mut self, to: usize, data: Vec<u8>) -> Result<()>;
    /// A posted message that has arrived at this rank, with its sender; never blocks.
    fn poll(&mut self) -> Result<Option<(usize, Vec<u8>)>>;
    /// Whether every message this rank posted has left (drives their progress).
    fn posted_done(&mut self) -> Result<bool>;
}

/// The tag of asynchronous gossip's messages (`RankTransport::post`), apart from the blocking
/// exchanges' tags.
pub const ASYNC_TAG: u32 = CONTROL_TAG + 2;

const TAG_LEN: u32 = CONTROL_TAG;
const TAG_BODY: u32 = CONTROL_TAG + 1;

fn gather_p2p<T: RankTransport + ?Sized>(t: &mut T, mine: &[u8], timeout: Duration) -> Result<Option<Vec<Vec<u8>>>> {
    let (rank, ranks) = (t.rank(), t.ranks());
    if rank != 0 {
        let len = (mine.len() as u64).to_le_bytes();
        t.exchange(&[Outgoing { to: 0, tag: TAG_LEN, data: &len }, Outgoing { to: 0, tag: TAG_BODY, data: mine }], &mut [], timeout)?;
        return Ok(None);
    }
    let mut lens = vec![[0u8; 8]; ranks];
    {
        let mut recvs: Vec<Incoming<'_>> = lens.iter_mut().enumerate().skip(1).map(|(q, l)| Incoming { from: q, tag: TAG_LEN, data: l }).collect();
        t.exchange(&[], &mut recvs, timeout)?;
    }
    let mut out: Vec<Vec<u8>> = lens.iter().map(|l| vec![0u8; u64::from_le_bytes(*l) as usize]).collect();
    out[0] = mine.to_vec();
    let mut recvs: Vec<Incoming<'_>> = out.iter_mut().enumerate().skip(1).map(|(q, d)| Incoming { from: q, tag: TAG_BODY, data: d }).collect();
    t.exchange(&[], &mut recvs, timeout)?;
    Ok(Some(out))
}

fn broadcast_p2p<T: RankTransport + ?Sized>(t: &mut T, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let (rank, ranks) = (t.rank(), t.ranks());
    if rank == 0 {
        let len = (bytes.len() as u64).to_le_bytes();
        let mut sends = Vec::with_capacity(2 * ranks);
        for q in 1..ranks {
            sends.push(Outgoing { to: q, tag: TAG_LEN, data: &len });
            sends.push(Outgoing { to: q, tag: TAG_BODY, data: bytes });
        }
        t.exchange(&sends, &mut [], timeout)?;
        return Ok(bytes.to_vec());
    }
    let mut len = [0u8; 8];
    t.exchange(&[], &mut [Incoming { from: 0, tag: TAG_LEN, data: &mut len }], timeout)?;
    let mut out = vec![0u8; u64::from_le_bytes(len) as usize];
    t.exchange(&[], &mut [Incoming { from: 0, tag: TAG_BODY, data: &mut out }], timeout)?;
    Ok(out)
}

/// A transport shared by the gossip (inside the engine) and the training loop (gathers).
pub type SharedTransport = Arc<Mutex<Box<dyn RankTransport>>>;

pub(crate) fn lock(t: &SharedTransport) -> std::sync::MutexGuard<'_, Box<dyn RankTransport>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one rank does in one lock-step round (all agent indices global).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPlan {
    /// (local sender agent, destination rank): each agent's parameters go once to every other
    /// rank hosting at least one of its out-peers, ascending.
    pub sends: Vec<(usize, usize)>,
    /// Agents of other ranks whose parameters this rank needs, ascending.
    pub recvs: Vec<usize>,
    /// For each local agent, its in-peers in the batched trainer's order, as indices into
    /// [local agents of the block…, received messages in `recvs` order…].
    pub in_peers: Vec<Vec<usize>>,
}

impl RoundPlan {
    /// The plan of rank `rank` in `round`: a function of the graph and the blocks only, so every
    /// rank agrees on who sends what without telling each other.
    pub fn new(graph: &GossipGraph, blocks: &Blocks, rank: usize, round: u64) -> Self {
        let mine = blocks.range(rank);
        let all_in = graph.in_peers(round);
        let mut sends = BTreeSet::new();
        for s in mine.clone() {
            for r in graph.out_peers(s, round) {
                let q = blocks.rank_of(r);
                if q != rank {
                    sends.insert((s, q));
                }
            }
        }
        let recvs: Vec<usize> =
            mine.clone().flat_map(|r| all_in[r].iter().copied()).filter(|s| !mine.contains(s)).collect::<BTreeSet<_>>().into_iter().collect();
        let n = mine.len();
        let in_peers = mine
            .clone()
            .map(|r| {
                all_in[r]
                    .iter()
                    .map(|&s| if mine.contains(&s) { s - mine.start } else { n + recvs.binary_search(&s).expect("every remote in-peer is received") })
                    .collect()
            })
            .collect();
        RoundPlan { sends: sends.into_iter().collect(), recvs, in_peers }
    }
}

/// Traffic of the cross-rank gossip so far (for `bench e2e` and the run's log).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GossipTraffic {
    pub rounds: u64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Wall seconds in `RankGossip::round` (reading θ, exchanging, mixing).
    pub seconds: f64,
    /// Of which waiting for the exchange, once the agents that need nothing from other ranks
    /// have mixed meanwhile. Over a device link the host waits once for exchange and mix
    /// together (ordered on the stream): all of the round.
    pub exchange_seconds: f64,
}

/// Lock-step gossip of one rank's block with the rest of the run (the engine calls
/// [`RankGossip::round`] in place of its own batched mix).
pub struct RankGossip {
    graph: GossipGraph,
    blocks: Blocks,
    transport: SharedTransport,
    timeout: Duration,
    traffic: GossipTraffic,
    /// When set, the parameter messages travel device to device over it (the transport still
    /// carries everything else).
    link: Option<Box<dyn DeviceLink>>,
}

impl RankGossip {
    pub fn new(graph: GossipGraph, blocks: Blocks, transport: SharedTransport, timeout: Duration) -> Self {
        RankGossip { graph, blocks, transport, timeout, traffic: GossipTraffic::default(), link: None }
    }

    /// The gossip over `path`: a device link carries the parameter messages, host-staged keeps
    /// them on the transport.
    pub fn with_path(mut self, path: CrossRankPath) -> Self {
        self.link = match path {
            CrossRankPath::Device(link) => Some(link),
            CrossRankPath::HostStaged(_) => None,
        };
        self
    }

    pub fn traffic(&self) -> GossipTraffic {
        self.traffic
    }

    /// One round on `backend` (holding this rank's block): sends the post-update parameters its
    /// agents' out-peers on other ranks need, receives those its agents need, and mixes every
    /// local agent with its in-peers in the batched trainer's order and arithmetic. Messages
    /// from local peers never leave the backend.
    ///
    /// The exchange runs on a helper thread while the agents whose in-peers are all local mix
    /// (`Backend::mix`, the single process's own launch); then the others mix with what
    /// arrived (`Backend::mix_with_remote`), their local in-peers taken from the pre-round
    /// copy of the block's parameters (the one that was sent), so every sum reads the same
    /// post-update values in the same order as one process and the result is bit-identical.
    pub fn round(&mut self, backend: &mut dyn Backend, round: u64) -> Result<()> {
        let t0 = Instant::now();
        let rank = lock(&self.transport).rank();
        let plan = RoundPlan::new(&self.graph, &self.blocks, rank, round);
        if plan.sends.is_empty() && plan.recvs.is_empty() {
            return backend.mix(&plan.in_peers);
        }
        let first = self.blocks.range(rank).start;
        let n = plan.in_peers.len();
        let p = backend.spec().param_count();
        if let Some(link) = self.link.as_deref_mut() {
            // Device to device: the backend points the link at its rows and mixes once the
            // messages are in, on its stream; tags are the sending agents, as on the transport.
            let sends: Vec<(usize, usize, u32)> = plan.sends.iter().map(|&(s, q)| (s - first, q, s as u32)).collect();
            let recvs: Vec<(usize, u32)> = plan.recvs.iter().map(|&s| (self.blocks.rank_of(s), s as u32)).collect();
            backend.mix_over_link(&plan.in_peers, &sends, &recvs, link, self.timeout).map_err(|e| {
                Error::Backend(format!("gossip round {round} across processes over {} (rank {rank}, agents {:?}): {e}", link.describe(), self.blocks.range(rank)))
            })?;
            self.count(&plan, p, t0, t0.elapsed());
            return Ok(());
        }
        // Which agents need a message from another rank (they mix after the exchange).
        let waits: Vec<bool> = plan.in_peers.iter().map(|l| l.iter().any(|&j| j >= n)).collect();
        // Host-staged: θ of the whole block once (the senders' rows are sent from it, and the
        // waiting agents' local in-peers are read from it).
        let params = backend.read_params()?;
        let mut received = vec![0f32; plan.recvs.len() * p];
        let (transport, blocks, timeout) = (&self.transport, &self.blocks, self.timeout);
        let (exchanged, waited) = std::thread::scope(|scope| {
            let (plan, params, received) = (&plan, &params, &mut received);
            let exchange = std::thread::Builder::new()
                .name("gala-rank-exchange".into())
                .spawn_scoped(scope, move || {
                    let sends: Vec<Outgoing<'_>> = plan
                        .sends
                        .iter()
                        .map(|&(s, q)| Outgoing { to: q, tag: s as u32, data: bytemuck::cast_slice(&params[(s - first) * p..(s - first + 1) * p]) })
                        .collect();
                    let mut recvs: Vec<Incoming<'_>> = received
                        .chunks_mut(p)
                        .zip(&plan.recvs)
                        .map(|(buf, &s)| Incoming { from: blocks.rank_of(s), tag: s as u32, data: bytemuck::cast_slice_mut(buf) })
                        .collect();
                    lock(transport).exchange(&sends, &mut recvs, timeout)
                });
            let exchange = match exchange {
                Ok(h) => h,
                Err(e) => return (Err(Error::Backend(format!("cannot start the exchange thread: {e}"))), Duration::ZERO),
            };
            // Meanwhile: the agents that need nothing from other ranks.
            let now: Vec<Vec<usize>> = plan.in_peers.iter().zip(&waits).map(|(l, &w)| if w { Vec::new() } else { l.clone() }).collect();
            let local = if now.iter().any(|l| !l.is_empty()) { backend.mix(&now) } else { Ok(()) };
            let t1 = Instant::now();
            let exchanged = exchange.join().unwrap_or_else(|_| Err(Error::Backend("the exchange thread panicked".into())));
            (local.and(exchanged), t1.elapsed())
        });
        exchanged.map_err(|e| Error::Backend(format!("gossip round {round} across processes (rank {rank}, agents {:?}): {e}", self.blocks.range(rank))))?;
        // The waiting agents: messages from other ranks first, then the pre-round rows of the
        // local in-peers they need (`needed`), as extra messages.
        let mut needed: Vec<usize> = plan.in_peers.iter().zip(&waits).filter(|(_, &w)| w).flat_map(|(l, _)| l.iter().copied().filter(|&j| j < n)).collect();
        needed.sort_unstable();
        needed.dedup();
        let later: Vec<Vec<usize>> = plan
            .in_peers
            .iter()
            .zip(&waits)
            .map(|(l, &w)| {
                if !w {
                    return Vec::new();
                }
                l.iter().map(|&j| if j < n { n + plan.recvs.len() + needed.binary_search(&j).expect("listed") } else { j }).collect()
            })
            .collect();
        let mut messages: Vec<&[f32]> = received.chunks(p).collect();
        messages.extend(needed.iter().map(|&j| &params[j * p..(j + 1) * p]));
        backend.mix_with_remote(&later, &messages)?;
        self.count(&plan, p, t0, waited);
        Ok(())
    }

    fn count(&mut self, plan: &RoundPlan, p: usize, started: Instant, waited: Duration) {
        self.traffic.rounds += 1;
        self.traffic.messages_sent += plan.sends.len() as u64;
        self.traffic.bytes_sent += (plan.sends.len() * p * 4) as u64;
        self.traffic.bytes_received += (plan.recvs.len() * p * 4) as u64;
        self.traffic.exchange_seconds += waited.as_secs_f64();
        self.traffic.seconds += started.elapsed().as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::topology::Topology;

    #[test]
    fn blocks_are_contiguous_and_cover_every_agent() {
        let b = Blocks::new(7, 3).unwrap();
        assert_eq!((b.range(0), b.range(1), b.range(2)), (0..3, 3..5, 5..7));
        assert_eq!((0..7).map(|a| b.rank_of(a)).collect::<Vec<_>>(), vec![0, 0, 0, 1, 1, 2, 2]);
        let err = Blocks::new(2, 3).unwrap_err().to_string();
        assert!(err.contains("2 agents cannot be spread over 3 processes"), "{err}");
    }

    /// NCCL matches the messages between two ranks by order, not by tag: the agents rank q
    /// sends to rank r (in `sends` order) must be the agents r receives from q (in `recvs`
    /// order), every round.
    #[test]
    fn messages_between_two_ranks_are_listed_in_the_same_order_on_both_sides() {
        for (topo, n, k, ranks) in [(Topology::Ring, 7, 2, 3), (Topology::Exp, 16, 1, 4), (Topology::Exp, 12, 3, 5), (Topology::All, 6, 5, 3)] {
            let g = GossipGraph::new(topo, n, k).unwrap();
            let b = Blocks::new(n, ranks).unwrap();
            for round in 0..6 {
                let plans: Vec<RoundPlan> = (0..ranks).map(|q| RoundPlan::new(&g, &b, q, round)).collect();
                for q in 0..ranks {
                    for r in (0..ranks).filter(|&r| r != q) {
                        let sent: Vec<usize> = plans[q].sends.iter().filter(|&&(_, to)| to == r).map(|&(s, _)| s).collect();
                        let received: Vec<usize> = plans[r].recvs.iter().copied().filter(|&s| b.rank_of(s) == q).collect();
                        assert_eq!(sent, received, "{topo:?} round {round}: rank {q} -> rank {r}");
                    }
                }
            }
        }
    }

    /// Every rank's plan together is exactly the batched round: each local in-peer list, mapped
    /// back to global agents, is the graph's, and every message one rank expects is sent to it.
    #[test]
    fn round_plans_agree_with_the_batched_round() {
        for (topo, n, k, ranks) in [(Topology::Ring, 5, 1, 2), (Topology::Exp, 8, 1, 4), (Topology::Exp, 6, 2, 3), (Topology::All, 4, 3, 2)] {
            let g = GossipGraph::new(topo, n, k).unwrap();
            let b = Blocks::new(n, ranks).unwrap();
            for round in 0..4 {
                let plans: Vec<RoundPlan> = (0..ranks).map(|q| RoundPlan::new(&g, &b, q, round)).collect();
                let ins = g.in_peers(round);
                for (q, plan) in plans.iter().enumerate() {
                    let mine = b.range(q);
                    for (i, r) in mine.clone().enumerate() {
                        let global: Vec<usize> =
                            plan.in_peers[i].iter().map(|&j| if j < mine.len() { mine.start + j } else { plan.recvs[j - mine.len()] }).collect();
                        assert_eq!(global, ins[r], "{topo:?} round {round} agent {r}");
                    }
                    for &s in &plan.recvs {
                        assert!(plans[b.rank_of(s)].sends.contains(&(s, q)), "{topo:?}: rank {q} expects agent {s}, never sent");
                    }
                    for &(s, to) in &plan.sends {
                        assert!(plans[to].recvs.contains(&s), "{topo:?}: agent {s} sent to rank {to}, never received");
                    }
                }
            }
        }
    }
}
