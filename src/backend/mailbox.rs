//! Message transport of asynchronous gossip: the mailboxes, one slot per directed pair
//! (sender → receiver) that can ever communicate.
//!
//! In asynchronous gossip every agent has a backend of its own, driven from its own host thread.
//! A message is a copy of the sender's parameters θ_s into the slot s → r; the receiver later
//! mixes the slots it finds fresh into its own θ_r. Where the bytes live depends on the backend:
//!
//! * [`HostMailboxes`] (the CPU backend, the reference): a slot is a host `Vec<f32>`; the sender
//!   reads its parameters to the host, the receiver mixes with `Backend::mix_messages`
//!   (`cpu::gossip::mix_one`). Everything is complete when a call returns.
//! * [`gpu::mailbox::DeviceMailboxes`](super::gpu::mailbox::DeviceMailboxes) (the GPU backend on a
//!   CUDA device or the simulator): a slot is a device buffer on the one device every agent's
//!   backend shares; the sender enqueues a device-to-device copy on its own stream and records an
//!   event, the receiver polls that event without blocking and mixes with one fused kernel launch
//!   on its stream. Parameters never cross to the host.
//!
//! The protocol around the slots (who may write or read which slot when) is the caller's:
//! `algo::async_gossip` keeps a host-side `full` flag per slot under one lock and calls
//! * [`Mailboxes::post`] only for slots not flagged full (no receiver reads them), then flags them;
//! * [`Mailboxes::landed`] for a slot flagged full, to learn whether the message may be read now;
//! * [`Mailboxes::mix`] only for slots flagged full and landed, and clears the flags after it
//!   returns.
//!
//! A transport is shared by every agent thread (`Sync`); the protocol makes each slot's use
//! exclusive, the locks inside only make that safe to express.

use super::{Backend, DeviceHandle, SharedDevice};
use crate::error::{Error, Result};
use std::sync::{Mutex, MutexGuard};

/// Where messages live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxKind {
    /// Host memory: the sender reads its parameters to the host (the CPU backend).
    Host,
    /// Device memory: device-to-device copies signalled with events (the GPU backend).
    Device,
}

impl MailboxKind {
    pub fn name(self) -> &'static str {
        match self {
            MailboxKind::Host => "host",
            MailboxKind::Device => "device",
        }
    }
}

/// Which slots exist and in which orders receivers mix them.
#[derive(Clone, Debug, PartialEq)]
pub struct MailboxPlan {
    pub agents: usize,
    /// Parameters per agent (one message).
    pub param_count: usize,
    /// senders[r]: every agent that may ever send to r, ascending, without r. One slot per pair.
    pub senders: Vec<Vec<usize>>,
    /// orders[r]: the sender lists r may be asked to mix in that exact order (the lock-step
    /// in-peer lists of every round: the batched trainer sums messages in in-peer order, and the
    /// threaded lock-step must match it bit for bit). Any ascending subset of `senders[r]` may
    /// be mixed without being listed.
    pub orders: Vec<Vec<Vec<usize>>>,
}

impl MailboxPlan {
    /// Checks the plan's shape: one sender list per agent, ascending, naming other agents.
    pub fn check(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(format!("mailbox plan: {why}")));
        if self.senders.len() != self.agents || self.orders.len() != self.agents || self.param_count == 0 {
            return bad(format!(
                "{} sender lists and {} order lists for {} agents of {} parameters",
                self.senders.len(),
                self.orders.len(),
                self.agents,
                self.param_count
            ));
        }
        for (r, senders) in self.senders.iter().enumerate() {
            if senders.windows(2).any(|w| w[0] >= w[1]) || senders.iter().any(|&s| s >= self.agents || s == r) {
                return bad(format!("agent {r}'s senders {senders:?} must be ascending other agents below {}", self.agents));
            }
            for order in &self.orders[r] {
                let mut seen = order.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != order.len() || order.iter().any(|s| senders.binary_search(s).is_err()) {
                    return bad(format!("agent {r}'s mixing order {order:?} must list distinct senders among {senders:?}"));
                }
            }
        }
        Ok(())
    }

    /// The slot of pair `from` → `to`: slots are numbered receiver by receiver, senders
    /// ascending.
    pub fn slot(&self, from: usize, to: usize) -> Result<usize> {
        let pos = self.senders.get(to).and_then(|s| s.binary_search(&from).ok()).ok_or_else(|| {
            Error::Backend(format!("gossip: agent {from} never sends to agent {to}: there is no mailbox {from} → {to}"))
        })?;
        Ok(self.senders[..to].iter().map(Vec::len).sum::<usize>() + pos)
    }

    /// Slots in all: one per directed pair that can ever communicate.
    pub fn slot_count(&self) -> usize {
        self.senders.iter().map(Vec::len).sum()
    }
}

/// The message transport of asynchronous gossip (the protocol is in the module docs).
pub trait Mailboxes: Send + Sync {
    fn kind(&self) -> MailboxKind;
    /// Writes the parameters of agent `from` (held by `backend`, which runs that agent) into
    /// the slots `from` → r for every r in `to`. The caller guarantees no receiver reads those
    /// slots now (none is flagged full). On the device the copies are only enqueued.
    fn post(&self, from: usize, to: &[usize], backend: &mut dyn Backend) -> Result<()>;
    /// Whether the message in slot `from` → `to` (flagged full) may be read now. Never blocks.
    fn landed(&self, from: usize, to: usize) -> Result<bool>;
    /// Mixes the messages of `from` (in that order, each flagged full and landed) into agent
    /// `to`'s parameters (held by `backend`): θ ← θ/(m+1) + Σ msg/(m+1), the arithmetic of
    /// `cpu::gossip::mix_one`.
    fn mix(&self, to: usize, from: &[usize], backend: &mut dyn Backend) -> Result<()>;
    /// Stores a message that came from another process (asynchronous gossip across ranks,
    /// host-staged) in slot `from` → `to`, under the same guarantee as `post`; it has landed
    /// when this returns.
    fn deliver(&self, from: usize, to: usize, params: &[f32]) -> Result<()>;
}

/// The transport for `device`: host mailboxes for the CPU backend, device mailboxes (on that
/// very device) for the simulator and CUDA.
pub fn open(device: &SharedDevice, plan: MailboxPlan) -> Result<Box<dyn Mailboxes>> {
    plan.check()?;
    Ok(match &device.handle {
        DeviceHandle::Cpu => Box::new(HostMailboxes::new(plan)),
        DeviceHandle::Sim(dev) => Box::new(super::gpu::mailbox::DeviceMailboxes::new(dev.clone(), plan)?),
        DeviceHandle::Cuda(dev) => Box::new(super::gpu::mailbox::DeviceMailboxes::new(dev.clone(), plan)?),
    })
}

/// Local index of global agent `agent` in `backend` (each agent of asynchronous gossip has a
/// backend of its own, whose first agent is `spec().agent_offset`).
pub(crate) fn local_agent(backend: &dyn Backend, agent: usize) -> Result<usize> {
    let spec = backend.spec();
    agent
        .checked_sub(spec.agent_offset)
        .filter(|&a| a < spec.agents)
        .ok_or_else(|| Error::Backend(format!("gossip: agent {agent} is not on this backend (agents {}..{})", spec.agent_offset, spec.agent_offset + spec.agents)))
}

/// Mailboxes in host memory: the reference transport of the CPU backend.
pub struct HostMailboxes {
    plan: MailboxPlan,
    slots: Vec<Mutex<Vec<f32>>>,
}

impl HostMailboxes {
    pub fn new(plan: MailboxPlan) -> Self {
        let slots = (0..plan.slot_count()).map(|_| Mutex::new(Vec::new())).collect();
        HostMailboxes { plan, slots }
    }

    fn slot(&self, from: usize, to: usize) -> Result<MutexGuard<'_, Vec<f32>>> {
        Ok(self.slots[self.plan.slot(from, to)?].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Mailboxes for HostMailboxes {
    fn kind(&self) -> MailboxKind {
        MailboxKind::Host
    }

    fn post(&self, from: usize, to: &[usize], backend: &mut dyn Backend) -> Result<()> {
        let local = local_agent(backend, from)?;
        let p = self.plan.param_count;
        let params = backend.read_params()?;
        let mine = params.get(local * p..(local + 1) * p).ok_or_else(|| {
            Error::Shape(format!("gossip: agent {from}'s backend holds {} parameters, expected {p} per agent", params.len()))
        })?;
        for &r in to {
            let mut slot = self.slot(from, r)?;
            slot.clear();
            slot.extend_from_slice(mine);
        }
        Ok(())
    }

    fn landed(&self, from: usize, to: usize) -> Result<bool> {
        // A host message is complete when `post` returns.
        self.plan.slot(from, to).map(|_| true)
    }

    fn mix(&self, to: usize, from: &[usize], backend: &mut dyn Backend) -> Result<()> {
        let local = local_agent(backend, to)?;
        let guards = from.iter().map(|&s| self.slot(s, to)).collect::<Result<Vec<_>>>()?;
        let messages: Vec<&[f32]> = guards.iter().map(|g| g.as_slice()).collect();
        backend.mix_messages(local, &messages)
    }

    fn deliver(&self, from: usize, to: usize, params: &[f32]) -> Result<()> {
        if params.len() != self.plan.param_count {
            return Err(Error::Shape(format!("gossip: a message of {} parameters from agent {from}, expected {}", params.len(), self.plan.param_count)));
        }
        let mut slot = self.slot(from, to)?;
        slot.clear();
        slot.extend_from_slice(params);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> MailboxPlan {
        MailboxPlan {
            agents: 3,
            param_count: 4,
            senders: vec![vec![1, 2], vec![0], vec![0, 1]],
            orders: vec![vec![vec![2, 1]], vec![vec![0]], vec![]],
        }
    }

    #[test]
    fn slots_exist_only_for_pairs_that_communicate() {
        let p = plan();
        p.check().unwrap();
        assert_eq!(p.slot_count(), 5);
        assert_eq!((p.slot(1, 0).unwrap(), p.slot(2, 0).unwrap(), p.slot(0, 1).unwrap(), p.slot(1, 2).unwrap()), (0, 1, 2, 4));
        let err = p.slot(2, 1).unwrap_err().to_string();
        assert!(err.contains("never sends"), "{err}");
    }

    #[test]
    fn bad_plans_are_refused() {
        let mut p = plan();
        p.senders[0] = vec![2, 1];
        assert!(p.check().is_err());
        let mut p = plan();
        p.orders[1] = vec![vec![0, 0]];
        assert!(p.check().is_err());
        let mut p = plan();
        p.senders[2] = vec![2];
        assert!(p.check().is_err());
    }
}
