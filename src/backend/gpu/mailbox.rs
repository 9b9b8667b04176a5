//! Device mailboxes: the message transport of asynchronous gossip on the GPU backend (a CUDA
//! device or the simulator). The protocol is in `backend::mailbox`; here is how a message moves
//! without touching the host:
//!
//! * Every agent's backend lives on the one shared device (`Arc<D>`), each on its own stream
//!   driven by its own host thread.
//! * A slot is a [P] device buffer, one per directed pair that can ever communicate.
//! * **Send** (sender's thread, sender's stream): if a receiver has mixed the slot's previous
//!   message, the stream first waits for the receiver's "read done" event (a device-side wait:
//!   the host does not block), so the copy cannot overwrite a message a mix kernel is still
//!   reading; then a device-to-device copy of θ_s into the slot, then an event ("written").
//! * **Arrival** (receiver's thread): a slot counts as arrived when the caller's `full` flag is
//!   set AND its written event is done — polled with `event_done`, never waited on.
//! * **Mix** (receiver's thread, receiver's stream): ONE fused `gossip_mix_mailbox` launch. Per
//!   receiver a persistent device table holds its slots' addresses (uploaded once at
//!   construction); a 64-bit mask picks the fresh slots, so a round uploads nothing. After the
//!   launch, a "read done" event is recorded and left in each consumed slot for its sender.
//!
//! Summation order: the kernel sums the picked slots in table order. Asynchronous rounds mix
//! fresh messages in ascending sender order (table 0); lock-step rounds must sum in in-peer
//! order, which need not be ascending (the batched trainer does so, and lock-step on threads
//! must match it bit for bit), so a receiver gets one more table per such order, listed in the
//! plan. `mix` picks the first table in which the senders appear in the requested order.
//!
//! Under the simulator every operation is complete on return, so events are done at once; the
//! ordering above is what makes the CUDA path correct, where copies and kernels are queued.

use super::GpuBackend;
use crate::backend::mailbox::{local_agent, MailboxKind, MailboxPlan, Mailboxes};
use crate::backend::Backend;
use crate::device::{Device, DeviceBuffer, Event};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most possible senders per receiver: the take mask is one 64-bit kernel argument.
pub const MAX_SENDERS: usize = super::launch::GOSSIP_MAILBOX_MAX_SLOTS;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One mailbox slot s → r in device memory.
struct Slot {
    buffer: Mutex<DeviceBuffer<f32>>,
    /// Recorded on the sender's stream after its copy into `buffer`: the message has landed
    /// once this is done.
    written: Mutex<Option<Event>>,
    /// Recorded on the receiver's stream after the mix kernel that read `buffer`: the sender's
    /// next copy waits for it on the device. Shared by every slot that mix consumed.
    read: Mutex<Option<Arc<Event>>>,
}

/// A receiver's slots in one summation order, as a device table of addresses.
struct SlotTable {
    /// Senders, a permutation of the receiver's possible senders.
    order: Vec<usize>,
    addresses: DeviceBuffer<u64>,
}

/// Mailboxes in the memory of device `D`, shared by the agents' `GpuBackend<Arc<D>>`s.
pub struct DeviceMailboxes<D: Device> {
    device: Arc<D>,
    plan: MailboxPlan,
    slots: Vec<Slot>,
    /// tables[r]: receiver r's tables; tables[r][0] lists its senders ascending.
    tables: Vec<Vec<SlotTable>>,
    copies: AtomicU64,
    mixes: AtomicU64,
    /// The mailboxes' own stream: table uploads, and messages from other processes.
    stream: crate::device::Stream,
}

impl<D: Device> DeviceMailboxes<D> {
    /// Allocates one [P] slot per pair of `plan` and every receiver's address tables on
    /// `device` (the device every agent's backend must be built on). Refuses a receiver with
    /// more than 64 possible senders.
    pub fn new(device: Arc<D>, plan: MailboxPlan) -> Result<Self> {
        plan.check()?;
        if let Some((r, s)) = plan.senders.iter().enumerate().find(|(_, s)| s.len() > MAX_SENDERS) {
            return Err(Error::Unsupported(format!(
                "device mailboxes: agent {r} may receive from {} agents; the fused mix kernel takes at most {MAX_SENDERS} \
                 (use fewer agents or peers, or --backend cpu)",
                s.len()
            )));
        }
        let p = plan.param_count;
        let mut slots = Vec::with_capacity(plan.slot_count());
        for _ in 0..plan.slot_count() {
            slots.push(Slot { buffer: Mutex::new(device.alloc_zeros(p)?), written: Mutex::new(None), read: Mutex::new(None) });
        }
        // Uploads happen once, here, on a stream of the mailboxes' own (upload returns when done).
        let stream = device.new_stream()?;
        let mut tables = Vec::with_capacity(plan.agents);
        for r in 0..plan.agents {
            let senders = &plan.senders[r];
            let mut orders: Vec<Vec<usize>> = Vec::new();
            if !senders.is_empty() {
                orders.push(senders.clone());
            }
            for order in &plan.orders[r] {
                if !orders.iter().any(|row| positions_in(row, order).is_some()) {
                    let mut row = order.clone();
                    row.extend(senders.iter().filter(|s| !order.contains(s)));
                    orders.push(row);
                }
            }
            let mut receiver_tables = Vec::with_capacity(orders.len());
            for order in orders {
                let addresses: Vec<u64> = order
                    .iter()
                    .map(|&s| Ok(lock(&slots[plan.slot(s, r)?].buffer).device_ptr()))
                    .collect::<Result<_>>()?;
                let mut table = device.alloc_zeros::<u64>(addresses.len())?;
                device.upload(stream, &addresses, &mut table, 0)?;
                receiver_tables.push(SlotTable { order, addresses: table });
            }
            tables.push(receiver_tables);
        }
        Ok(DeviceMailboxes { device, plan, slots, tables, copies: AtomicU64::new(0), mixes: AtomicU64::new(0), stream })
    }

    /// Device-to-device copies posted so far (one per message).
    pub fn copies(&self) -> u64 {
        self.copies.load(Ordering::Relaxed)
    }

    /// Fused mix launches so far.
    pub fn mixes(&self) -> u64 {
        self.mixes.load(Ordering::Relaxed)
    }

    /// Bytes of device memory the slots take.
    pub fn slot_bytes(&self) -> usize {
        self.slots.len() * self.plan.param_count * std::mem::size_of::<f32>()
    }

    fn slot(&self, from: usize, to: usize) -> Result<&Slot> {
        Ok(&self.slots[self.plan.slot(from, to)?])
    }

    fn gpu<'b>(&self, backend: &'b mut dyn Backend, agent: usize) -> Result<&'b mut GpuBackend<Arc<D>>> {
        let name = backend.name();
        backend.as_any_mut().downcast_mut::<GpuBackend<Arc<D>>>().ok_or_else(|| {
            Error::Backend(format!(
                "device mailboxes on the {} device: agent {agent} runs the {name} backend, not the GPU backend on the shared device",
                self.device.kind()
            ))
        })
    }
}

/// Positions of `wanted` in `row` if they appear there in that order (a subsequence).
fn positions_in(row: &[usize], wanted: &[usize]) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(wanted.len());
    let mut next = 0;
    for w in wanted {
        let at = next + row[next..].iter().position(|s| s == w)?;
        out.push(at);
        next = at + 1;
    }
    Some(out)
}

impl<D: Device> Mailboxes for DeviceMailboxes<D> {
    fn kind(&self) -> MailboxKind {
        MailboxKind::Device
    }

    fn post(&self, from: usize, to: &[usize], backend: &mut dyn Backend) -> Result<()> {
        let local = local_agent(backend, from)?;
        let gpu = self.gpu(backend, from)?;
        for &r in to {
            let slot = self.slot(from, r)?;
            // The last reader's event: once the wait is enqueued it has served its purpose.
            let read = lock(&slot.read).take();
            let written = gpu.post_params(local, &mut lock(&slot.buffer), read.as_deref())?;
            *lock(&slot.written) = Some(written);
            self.copies.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn landed(&self, from: usize, to: usize) -> Result<bool> {
        match &*lock(&self.slot(from, to)?.written) {
            Some(event) => self.device.event_done(event),
            None => Err(Error::Backend(format!("gossip: mailbox {from} → {to} is flagged full but nothing was posted to it"))),
        }
    }

    fn mix(&self, to: usize, from: &[usize], backend: &mut dyn Backend) -> Result<()> {
        if from.is_empty() {
            return Ok(());
        }
        let local = local_agent(backend, to)?;
        let gpu = self.gpu(backend, to)?;
        let tables = self.tables.get(to).map(Vec::as_slice).unwrap_or_default();
        let (table, positions) = tables
            .iter()
            .find_map(|t| positions_in(&t.order, from).map(|p| (t, p)))
            .ok_or_else(|| {
                Error::Backend(format!(
                    "gossip: agent {to} cannot mix {from:?} in that order: its mailbox tables hold the orders {:?}",
                    tables.iter().map(|t| &t.order).collect::<Vec<_>>()
                ))
            })?;
        let mask = positions.iter().fold(0u64, |m, &j| m | (1u64 << j));
        let read = Arc::new(gpu.mix_mailboxes(local, &table.addresses, mask)?);
        self.mixes.fetch_add(1, Ordering::Relaxed);
        for &s in from {
            let slot = self.slot(s, to)?;
            // Set before the caller clears the full flag (under its lock), so the sender's next
            // post sees it.
            *lock(&slot.read) = Some(read.clone());
            *lock(&slot.written) = None;
        }
        Ok(())
    }

    fn deliver(&self, from: usize, to: usize, params: &[f32]) -> Result<()> {
        if params.len() != self.plan.param_count {
            return Err(Error::Shape(format!("gossip: a message of {} parameters from agent {from}, expected {}", params.len(), self.plan.param_count)));
        }
        let slot = self.slot(from, to)?;
        // The last mix that read the slot may still be queued on the receiver's stream: the
        // upload waits for it (briefly, on the host: it is the pump thread's, not an agent's).
        if let Some(read) = lock(&slot.read).take() {
            while !self.device.event_done(&read)? {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
        self.device.upload(self.stream, params, &mut lock(&slot.buffer), 0)?;
        *lock(&slot.written) = Some(self.device.record_event(self.stream)?);
        self.copies.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::positions_in;

    #[test]
    fn orders_are_found_as_subsequences() {
        assert_eq!(positions_in(&[0, 1, 3], &[0, 3]), Some(vec![0, 2]));
        assert_eq!(positions_in(&[0, 1, 3], &[3, 0]), None);
        assert_eq!(positions_in(&[3, 0, 1], &[3, 0]), Some(vec![0, 1]));
        assert_eq!(positions_in(&[3, 0, 1], &[]), Some(vec![]));
        assert_eq!(positions_in(&[3, 0, 1], &[2]), None);
    }
}
