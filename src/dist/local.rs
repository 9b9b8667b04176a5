//! Ranks as threads of one process: the [`RankTransport`] the protocol is tested with in the
//! default build (no MPI needed). Each rank has an inbox (a channel every other rank holds a
//! sender of); a message that arrives before it is asked for waits in the rank's pending list,
//! so only (sender, tag) order matters, as with MPI.

use super::{Incoming, Outgoing, RankTransport, ASYNC_TAG};
use crate::error::{Error, Result};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

struct Packet {
    from: usize,
    tag: u32,
    data: Vec<u8>,
}

/// One rank's end of an in-process group.
pub struct LocalRanks {
    rank: usize,
    peers: Vec<Option<Sender<Packet>>>,
    inbox: Receiver<Packet>,
    pending: Vec<Packet>,
}

impl LocalRanks {
    /// `ranks` connected endpoints, rank order: hand one to each thread.
    pub fn group(ranks: usize) -> Vec<LocalRanks> {
        let (senders, inboxes): (Vec<Sender<Packet>>, Vec<Receiver<Packet>>) = (0..ranks).map(|_| channel()).unzip();
        inboxes
            .into_iter()
            .enumerate()
            .map(|(rank, inbox)| LocalRanks {
                rank,
                peers: senders.iter().enumerate().map(|(q, s)| (q != rank).then(|| s.clone())).collect(),
                inbox,
                pending: Vec::new(),
            })
            .collect()
    }

    /// Drops the connection to rank `q` (tests: a rank whose process died).
    pub fn disconnect(&mut self, q: usize) {
        if let Some(p) = self.peers.get_mut(q) {
            *p = None;
        }
    }
}

impl RankTransport for LocalRanks {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.peers.len()
    }

    fn describe(&self) -> String {
        format!("in-process ranks ({} threads, host memory)", self.peers.len())
    }

    fn post(&mut self, to: usize, data: Vec<u8>) -> Result<()> {
        let gone = || Error::Backend(format!("rank {to} is gone (its end of the group was closed)"));
        let peer = self.peers.get(to).and_then(Option::as_ref).ok_or_else(gone)?;
        peer.send(Packet { from: self.rank, tag: ASYNC_TAG, data }).map_err(|_| gone())
    }

    fn poll(&mut self) -> Result<Option<(usize, Vec<u8>)>> {
        loop {
            if let Some(at) = self.pending.iter().position(|p| p.tag == ASYNC_TAG) {
                let p = self.pending.remove(at);
                return Ok(Some((p.from, p.data)));
            }
            match self.inbox.try_recv() {
                Ok(packet) => self.pending.push(packet),
                // Every other rank gone: nothing more comes (the caller's deadlines name them).
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(None),
            }
        }
    }

    fn posted_done(&mut self) -> Result<bool> {
        // A channel send is complete when it returns.
        Ok(true)
    }

    fn exchange(&mut self, sends: &[Outgoing<'_>], recvs: &mut [Incoming<'_>], timeout: Duration) -> Result<()> {
        for s in sends {
            let gone = || Error::Backend(format!("rank {} is gone (its end of the group was closed)", s.to));
            let peer = self.peers.get(s.to).and_then(Option::as_ref).ok_or_else(gone)?;
            peer.send(Packet { from: self.rank, tag: s.tag, data: s.data.to_vec() }).map_err(|_| gone())?;
        }
        let deadline = Instant::now() + timeout;
        let mut done = vec![false; recvs.len()];
        loop {
            // Match what has arrived, in arrival order per (sender, tag).
            for (i, want) in recvs.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                if let Some(at) = self.pending.iter().position(|p| p.from == want.from && p.tag == want.tag) {
                    let packet = self.pending.remove(at);
                    if packet.data.len() != want.data.len() {
                        return Err(Error::Backend(format!(
                            "rank {} sent {} bytes with tag {}, rank {} expected {}",
                            packet.from,
                            packet.data.len(),
                            packet.tag,
                            self.rank,
                            want.data.len()
                        )));
                    }
                    want.data.copy_from_slice(&packet.data);
                    done[i] = true;
                }
            }
            if done.iter().all(|&d| d) {
                return Ok(());
            }
            let now = Instant::now();
            let silent = || {
                let mut q: Vec<usize> = recvs.iter().zip(&done).filter(|(_, &d)| !d).map(|(r, _)| r.from).collect();
                q.dedup();
                q
            };
            if now >= deadline {
                return Err(Error::Backend(format!("no message from rank(s) {:?} within {:.0} s (gossip_timeout): stopped or too slow", silent(), timeout.as_secs_f64())));
            }
            match self.inbox.recv_timeout(deadline - now) {
                Ok(packet) => self.pending.push(packet),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Backend(format!("rank(s) {:?} stopped before sending (every other rank is gone)", silent())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_broadcast_and_exchange_between_threads() {
        let t = Duration::from_secs(5);
        let outs: Vec<(Option<Vec<Vec<u8>>>, Vec<u8>, Vec<u8>)> = std::thread::scope(|s| {
            let hs: Vec<_> = LocalRanks::group(3)
                .into_iter()
                .map(|mut ep| {
                    s.spawn(move || {
                        let r = ep.rank() as u8;
                        let g = ep.gather(&vec![r; r as usize + 1], t).unwrap();
                        let b = ep.broadcast(b"from zero", t).unwrap();
                        // A ring: send to the next rank, receive from the previous.
                        let (next, prev) = ((ep.rank() + 1) % 3, (ep.rank() + 2) % 3);
                        let mut got = [0u8; 2];
                        ep.exchange(&[Outgoing { to: next, tag: 7, data: &[r, r] }], &mut [Incoming { from: prev, tag: 7, data: &mut got }], t).unwrap();
                        (g, b, got.to_vec())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outs[0].0, Some(vec![vec![0], vec![1, 1], vec![2, 2, 2]]));
        assert!(outs[1].0.is_none());
        assert!(outs.iter().all(|o| o.1 == b"from zero"));
        assert_eq!(outs.iter().map(|o| o.2.clone()).collect::<Vec<_>>(), vec![vec![2, 2], vec![0, 0], vec![1, 1]]);
    }

    #[test]
    fn a_silent_rank_is_named_within_the_timeout() {
        let mut group = LocalRanks::group(2);
        let mut zero = group.remove(0);
        let started = Instant::now();
        let mut buf = [0u8; 4];
        let err = zero.exchange(&[], &mut [Incoming { from: 1, tag: 3, data: &mut buf }], Duration::from_millis(200)).unwrap_err().to_string();
        assert!(err.contains("rank(s) [1]"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(group);
    }
}
