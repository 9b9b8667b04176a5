//! Who gossips with whom: GALA's communication graphs.
//!
//! * `ring`: agent r sends to r+1..r+k and receives from r−1..r−k (mod n). With k = 1 this is
//!   the static directed ring of GALA's released code (FullyConnectedGraph's phone book
//!   [r+1, …, r+n−1] truncated to k entries).
//! * `exp`: the directed exponential graph: peers at distances 2^0, 2^1, …, 2^(L−1) < n; in round
//!   t agent r sends to r + 2^((t·k + j) mod L) for j < k, so the k peers rotate every round.
//!   (GALA's DynamicDirectedExponentialGraph; described in the paper, unused in its code.)
//! * `all`: all-to-all, k = n − 1.
//!
//! Every agent uses the same offsets in a round, so each agent also receives from exactly k
//! peers and uniform 1/(k+1) mixing is doubly stochastic.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    Ring,
    Exp,
    All,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GossipGraph {
    topology: Topology,
    agents: usize,
    peers: usize,
}

/// Number of distinct power-of-two distances below n (L in the module docs).
fn exp_levels(agents: usize) -> usize {
    let mut levels = 0;
    while (1usize << levels) < agents {
        levels += 1;
    }
    levels
}

impl GossipGraph {
    /// `peers` is k; it is ignored (forced to n − 1) for `all`.
    pub fn new(topology: Topology, agents: usize, peers: usize) -> Result<Self> {
        if agents < 2 {
            return Err(Error::Config(format!("gossip needs at least 2 agents, got {agents}")));
        }
        let peers = match topology {
            Topology::All => agents - 1,
            Topology::Ring => {
                if peers == 0 || peers >= agents {
                    return Err(Error::Config(format!("peers must be in 1..{agents} for {agents} agents, got {peers}")));
                }
                peers
            }
            Topology::Exp => {
                let levels = exp_levels(agents);
                if peers == 0 || peers > levels {
                    return Err(Error::Config(format!(
                        "peers must be in 1..={levels} for the exponential graph of {agents} agents (distances 1, 2, 4, … below {agents}), got {peers}"
                    )));
                }
                peers
            }
        };
        Ok(GossipGraph { topology, agents, peers })
    }

    pub fn peers(&self) -> usize {
        self.peers
    }

    /// Distances (r → r + d mod n) used in `round`.
    fn offsets(&self, round: u64) -> Vec<usize> {
        match self.topology {
            Topology::Ring | Topology::All => (1..=self.peers).collect(),
            Topology::Exp => {
                let levels = exp_levels(self.agents) as u64;
                (0..self.peers as u64).map(|j| 1usize << ((round * self.peers as u64 + j) % levels)).collect()
            }
        }
    }

    /// The agents `r` sends to in `round`.
    pub fn out_peers(&self, r: usize, round: u64) -> Vec<usize> {
        self.offsets(round).into_iter().map(|d| (r + d) % self.agents).collect()
    }

    /// For every agent, the agents it receives from in `round`.
    pub fn in_peers(&self, round: u64) -> Vec<Vec<usize>> {
        let offsets = self.offsets(round);
        (0..self.agents).map(|r| offsets.iter().map(|&d| (r + self.agents - d) % self.agents).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_the_papers_directed_ring() {
        let g = GossipGraph::new(Topology::Ring, 4, 1).unwrap();
        assert_eq!(g.in_peers(0), vec![vec![3], vec![0], vec![1], vec![2]]);
        assert_eq!(g.out_peers(3, 7), vec![0]);
    }

    #[test]
    fn exponential_peers_rotate() {
        let g = GossipGraph::new(Topology::Exp, 8, 1).unwrap();
        let rounds: Vec<usize> = (0..4).map(|t| g.out_peers(0, t)[0]).collect();
        assert_eq!(rounds, vec![1, 2, 4, 1]);
        assert!(GossipGraph::new(Topology::Exp, 8, 4).is_err());
    }

    #[test]
    fn in_and_out_agree() {
        for (topo, n, k) in [(Topology::Ring, 5, 2), (Topology::Exp, 6, 2), (Topology::All, 4, 1)] {
            let g = GossipGraph::new(topo, n, k).unwrap();
            for round in 0..5 {
                let ins = g.in_peers(round);
                for s in 0..n {
                    for r in g.out_peers(s, round) {
                        assert!(ins[r].contains(&s), "{topo:?}: {s}->{r} missing from in-peers");
                    }
                }
                assert!(ins.iter().all(|p| p.len() == g.peers()));
            }
        }
    }
}
