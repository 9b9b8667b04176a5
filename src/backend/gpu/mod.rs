//! The GPU backend: kernel launchers (one per kernel, `launch`) and the device-resident
//! parameter arena they operate on, generic over a [`Device`] (the CUDA driver or the
//! simulator).
//!
//! `GpuArena` holds the parameters, gradients and optimizer state and runs the optimizer step,
//! gossip mixing and the consensus distance; `GpuBackend` (backend.rs) adds the network's
//! forward/backward kernels and implements the `Backend` trait on top of it; `mailbox` is the
//! device-resident message transport of asynchronous gossip.

mod backend;
pub mod launch;
pub mod mailbox;

pub use backend::{CountingDevice, GpuBackend};

use crate::backend::cpu::optim::RmsProp;
use crate::device::{Device, DeviceBuffer, Event, Stream};
use crate::dist::DeviceMessage;
use crate::error::{Error, Result};

/// All agents' parameters, gradients and RMSprop state, [agents][P] each, in device memory,
/// plus the scratch buffers of the fused optimizer, gossip and consensus launches.
pub struct GpuArena<D: Device> {
    device: D,
    stream: Stream,
    agents: usize,
    param_count: usize,
    /// Floats per agent row on the device (`launch::arena_stride`: P padded to 128-byte lines);
    /// the host sees [agents][P], the pads stay 0.
    stride: usize,
    params: DeviceBuffer<f32>,
    grads: DeviceBuffer<f32>,
    square_avg: DeviceBuffer<f32>,
    /// Pre-round copy of `params` that gossip reads, so no agent sees a half-mixed peer.
    snapshot: DeviceBuffer<f32>,
    norm_partials: DeviceBuffer<f64>,
    norms: DeviceBuffer<f64>,
    /// First non-finite parameter index per (agent, optimizer chunk), see `find_nonfinite`.
    nonfinite_first: DeviceBuffer<u32>,
    /// The optimizer's skip flag for `clip_and_rmsprop_guarded` [1] (written on the device by
    /// the update's loss guard), and an always-zero one for unguarded steps.
    step_guard: DeviceBuffer<u32>,
    no_guard: DeviceBuffer<u32>,
    consensus_partials: DeviceBuffer<f64>,
    consensus_result: DeviceBuffer<f64>,
    /// Rounds over a device link (`mix_over_link`): (rows, snapshot [rows][P], mixed [rows][P])
    /// per row count seen so far (local agents + received messages; with `exp` the count
    /// changes with the round), kept because NCCL receives into them and reallocating every
    /// round would synchronise the device each time.
    link_rows: Vec<(usize, DeviceBuffer<f32>, DeviceBuffer<f32>)>,
}

impl<D: Device> GpuArena<D> {
    /// An arena for `agents` agents of `param_count` parameters, all starting from `initial`
    /// ([agents][P]); gradients and RMSprop state start at zero.
    pub fn new(device: D, agents: usize, param_count: usize, initial: &[f32]) -> Result<Self> {
        if agents == 0 || param_count == 0 {
            return Err(Error::Shape(format!("GpuArena: {agents} agents of {param_count} parameters")));
        }
        if initial.len() != agents * param_count {
            return Err(Error::Shape(format!("GpuArena: initial parameters hold {}, expected {}", initial.len(), agents * param_count)));
        }
        let stride = launch::arena_stride(param_count);
        let n = agents * stride;
        // A stream of its own, never the default one: on CUDA the default stream is the legacy
        // NULL stream, which serialises with every blocking stream, so backends sharing a GPU
        // (one per agent in asynchronous gossip) would never overlap. Harmless for one backend.
        let stream = device.new_stream()?;
        let optim_chunks = launch::optim_chunks(stride) as usize;
        let gossip_chunks = launch::gossip_chunks(stride) as usize;
        let mut arena = GpuArena {
            params: device.alloc_zeros(n)?,
            grads: device.alloc_zeros(n)?,
            square_avg: device.alloc_zeros(n)?,
            snapshot: device.alloc_zeros(n)?,
            norm_partials: device.alloc_zeros(agents * optim_chunks)?,
            norms: device.alloc_zeros(agents)?,
            nonfinite_first: device.alloc_zeros(agents * optim_chunks)?,
            step_guard: device.alloc_zeros(1)?,
            no_guard: device.alloc_zeros(1)?,
            consensus_partials: device.alloc_zeros((agents + 1) * gossip_chunks)?,
            consensus_result: device.alloc_zeros(1)?,
            link_rows: Vec::new(),
            device,
            stream,
            agents,
            param_count,
            stride,
        };
        arena.write_params(initial)?;
        Ok(arena)
    }

    pub fn device(&self) -> &D {
        &self.device
    }
    /// Frees the arena and gives the device back.
    pub fn into_device(self) -> D {
        self.device
    }
    pub fn agents(&self) -> usize {
        self.agents
    }
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// A whole arena buffer as the host sees it, [agents][P] (the rows' pads dropped).
    fn read(&self, buf: &DeviceBuffer<f32>) -> Result<Vec<f32>> {
        let mut padded = vec![0f32; buf.len()];
        self.device.download(self.stream, buf, 0, &mut padded)?;
        if self.stride == self.param_count {
            return Ok(padded);
        }
        Ok(padded.chunks(self.stride).flat_map(|row| &row[..self.param_count]).copied().collect())
    }

    /// Uploads [agents][P] from the host into a whole arena buffer `dst` of rows of `stride`,
    /// the rows' pads 0. (An associated function, so callers can borrow `dst` beside the device.)
    fn upload_rows(dev: &D, stream: Stream, host: &[f32], dst: &mut DeviceBuffer<f32>, p: usize, stride: usize) -> Result<()> {
        if stride == p {
            return dev.upload(stream, host, dst, 0);
        }
        let mut padded = vec![0f32; host.len() / p * stride];
        for (row, src) in padded.chunks_mut(stride).zip(host.chunks(p)) {
            row[..p].copy_from_slice(src);
        }
        dev.upload(stream, &padded, dst, 0)
    }

    fn check_arena(&self, what: &str, len: usize) -> Result<()> {
        let n = self.agents * self.param_count;
        if len == n {
            Ok(())
        } else {
            Err(Error::Shape(format!("{what}: {len} elements, expected {n} ([agents][P])")))
        }
    }

    /// The device, the arena's stream, the parameters and the gradients, borrowed together so
    /// that the network's backward kernels can read the one and write the other.
    pub(crate) fn params_and_grads(&mut self) -> (&D, Stream, &DeviceBuffer<f32>, &mut DeviceBuffer<f32>) {
        (&self.device, self.stream, &self.params, &mut self.grads)
    }
    pub(crate) fn stream(&self) -> Stream {
        self.stream
    }

    /// All agents' parameters [agents][P].
    pub fn read_params(&self) -> Result<Vec<f32>> {
        self.read(&self.params)
    }
    pub fn write_params(&mut self, params: &[f32]) -> Result<()> {
        self.check_arena("write_params", params.len())?;
        Self::upload_rows(&self.device, self.stream, params, &mut self.params, self.param_count, self.stride)
    }
    /// The gradients [agents][P] (after `clip_and_rmsprop`: the clipped ones).
    pub fn read_grads(&self) -> Result<Vec<f32>> {
        self.read(&self.grads)
    }
    /// Sets the gradients; until the backward kernels land, tests and callers provide them.
    pub fn write_grads(&mut self, grads: &[f32]) -> Result<()> {
        self.check_arena("write_grads", grads.len())?;
        Self::upload_rows(&self.device, self.stream, grads, &mut self.grads, self.param_count, self.stride)
    }
    /// RMSprop square averages [agents][P].
    pub fn read_optimizer_state(&self) -> Result<Vec<f32>> {
        self.read(&self.square_avg)
    }
    pub fn write_optimizer_state(&mut self, square_avg: &[f32]) -> Result<()> {
        self.check_arena("write_optimizer_state", square_avg.len())?;
        Self::upload_rows(&self.device, self.stream, square_avg, &mut self.square_avg, self.param_count, self.stride)
    }

    /// Per-agent clipping to `max_norm` and one RMSprop step for every agent (two launches);
    /// returns each agent's pre-clip gradient norm.
    pub fn clip_and_rmsprop(&mut self, max_norm: f64, opt: RmsProp) -> Result<Vec<f64>> {
        self.enqueue_clip_and_rmsprop(max_norm, opt, false)?;
        self.read_norms()
    }

    /// The optimizer's two launches, enqueued without waiting; with `guarded`, the step is
    /// skipped on the device when the guard flag (`step_guard_mut`) is set.
    pub(crate) fn enqueue_clip_and_rmsprop(&mut self, max_norm: f64, opt: RmsProp, guarded: bool) -> Result<()> {
        // Over whole padded rows: the pads' gradients are 0, so they add nothing to the norms
        // and RMSprop leaves them 0.
        let (dev, s, a, stride) = (&self.device, self.stream, self.agents, self.stride);
        launch::optim_sumsq_partials(dev, s, &self.grads, &mut self.norm_partials, a, stride)?;
        launch::optim_clip_rmsprop(
            dev,
            s,
            &mut self.params,
            &mut self.grads,
            &mut self.square_avg,
            &self.norm_partials,
            &mut self.norms,
            if guarded { &self.step_guard } else { &self.no_guard },
            a,
            stride,
            max_norm,
            opt,
        )
    }

    /// The pre-clip gradient norms [agents] of the last optimizer step (a blocking download).
    pub(crate) fn read_norms(&self) -> Result<Vec<f64>> {
        let mut norms = vec![0f64; self.agents];
        self.device.download(self.stream, &self.norms, 0, &mut norms)?;
        Ok(norms)
    }

    /// The device, the stream and the optimizer's guard flag, for the update's loss guard.
    pub(crate) fn step_guard_mut(&mut self) -> (&D, Stream, &mut DeviceBuffer<u32>) {
        (&self.device, self.stream, &mut self.step_guard)
    }

    /// Whether `other`'s buffers live on this arena's device (a shared device).
    pub fn same_device(&self, other: &GpuArena<D>) -> bool {
        self.params.same_device(&other.params)
    }

    /// Copies every agent's parameters into `dst` (an arena of the same shape on the same
    /// device) device-to-device, without the host waiting: the copy runs on this arena's stream
    /// after both arenas' earlier work, and `dst`'s later work waits for it (events both ways),
    /// so the copy can neither race `dst`'s kernels still reading the old values nor be read
    /// before it lands. The pipelined trainer's hand-off of θ from learner to actor.
    pub fn copy_params_into(&self, dst: &mut GpuArena<D>) -> Result<()> {
        if (self.agents, self.param_count) != (dst.agents, dst.param_count) || !self.same_device(dst) {
            return Err(Error::Shape(format!(
                "copy_params_into: {} agents x {} parameters into {} x {}{}",
                self.agents,
                self.param_count,
                dst.agents,
                dst.param_count,
                if self.same_device(dst) { "" } else { " on another device" }
            )));
        }
        let dev = &self.device;
        let dst_idle = dev.record_event(dst.stream)?;
        dev.stream_wait_event(self.stream, &dst_idle)?;
        dev.copy(self.stream, &self.params, 0, &mut dst.params, 0, self.params.len())?;
        let copied = dev.record_event(self.stream)?;
        dev.stream_wait_event(dst.stream, &copied)
    }

    /// The first parameter that is NaN or infinite, as (agent, index in the agent's P, value):
    /// one launch and a download of agents × chunks indices, so checking after every update
    /// does not move the arena to the host.
    pub fn find_nonfinite(&mut self) -> Result<Option<(usize, usize, f32)>> {
        // Over whole padded rows (the pads are 0, never the hit).
        let (dev, s, a, stride) = (&self.device, self.stream, self.agents, self.stride);
        launch::optim_find_nonfinite(dev, s, &self.params, &mut self.nonfinite_first, a, stride)?;
        let mut first = vec![0u32; self.nonfinite_first.len()];
        dev.download(s, &self.nonfinite_first, 0, &mut first)?;
        let chunks = first.len() / a;
        let hit = first.chunks(chunks).enumerate().find_map(|(r, c)| c.iter().copied().min().filter(|&i| i != u32::MAX).map(|i| (r, i as usize)));
        match hit {
            None => Ok(None),
            Some((r, i)) => {
                let mut value = [0f32];
                dev.download(s, &self.params, r * stride + i, &mut value)?;
                Ok(Some((r, i, value[0])))
            }
        }
    }

    /// One lock-step gossip round: agent r mixes in the parameters of `in_peers[r]`.
    pub fn mix(&mut self, in_peers: &[Vec<usize>]) -> Result<()> {
        if in_peers.len() != self.agents {
            return Err(Error::Shape(format!("mix: {} peer lists for {} agents", in_peers.len(), self.agents)));
        }
        if let Some((r, s)) = in_peers.iter().enumerate().find_map(|(r, l)| l.iter().find(|&&s| s >= self.agents).map(|&s| (r, s))) {
            return Err(Error::Shape(format!("mix: agent {r} lists peer {s}, but there are {} agents", self.agents)));
        }
        let Some((offsets_dev, peers_dev)) = self.peer_tables(in_peers, self.agents)? else {
            return Ok(());
        };
        let dev = &self.device;
        let n = self.params.len();
        dev.copy(self.stream, &self.params, 0, &mut self.snapshot, 0, n)?;
        launch::gossip_mix(dev, self.stream, &self.snapshot, &mut self.params, &offsets_dev, &peers_dev, self.agents, self.stride)?;
        // The peer tables are freed on return; make sure the launch that reads them is done.
        dev.synchronize(self.stream)
    }

    /// One lock-step round in which some in-peers are messages from other processes
    /// (scale-out, `dist::RankGossip`): the peers in `in_peers[r]` index this arena's agents,
    /// then `remote` (index `agents + j` is `remote[j]`). Runs the batched `gossip_mix` launch
    /// over `agents + m` rows — the local agents and the uploaded messages, whose rows have no
    /// peers and stay as they are — so arithmetic and summation order are exactly those of the
    /// whole run's batched round on this device (on CUDA too, where the kernel's sums may be
    /// fused and a host-side mix would differ in the last bit).
    pub fn mix_with_remote(&mut self, in_peers: &[Vec<usize>], remote: &[&[f32]]) -> Result<()> {
        let (a, stride, m) = (self.agents, self.stride, remote.len());
        if in_peers.len() != a || remote.iter().any(|r| r.len() != self.param_count) || in_peers.iter().flatten().any(|&s| s >= a + m) {
            return Err(Error::Shape(format!(
                "mix_with_remote: {} peer lists for {a} agents, {m} remote messages of {} parameters each expected",
                in_peers.len(),
                self.param_count
            )));
        }
        let rows = a + m;
        let Some((offsets_dev, peers_dev)) = self.peer_tables(in_peers, rows)? else {
            return Ok(());
        };
        // Rows of the arena's stride; a message fills the first P floats of its row.
        let dev = &self.device;
        let mut snapshot = dev.alloc_zeros::<f32>(rows * stride)?;
        let mut mixed = dev.alloc_zeros::<f32>(rows * stride)?;
        dev.copy(self.stream, &self.params, 0, &mut snapshot, 0, a * stride)?;
        for (j, msg) in remote.iter().enumerate() {
            dev.upload(self.stream, msg, &mut snapshot, (a + j) * stride)?;
        }
        dev.copy(self.stream, &snapshot, 0, &mut mixed, 0, rows * stride)?;
        launch::gossip_mix(dev, self.stream, &snapshot, &mut mixed, &offsets_dev, &peers_dev, rows, stride)?;
        dev.copy(self.stream, &mixed, 0, &mut self.params, 0, a * stride)?;
        // The temporaries are freed on return; make sure the work that reads them is done.
        dev.synchronize(self.stream)
    }

    /// The CSR peer tables of a round over `rows` rows (lists past `in_peers.len()` are empty),
    /// uploaded; None when no row has a peer (nothing to mix).
    fn peer_tables(&self, in_peers: &[Vec<usize>], rows: usize) -> Result<Option<(DeviceBuffer<u32>, DeviceBuffer<u32>)>> {
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut flat = Vec::new();
        offsets.push(0u32);
        for r in 0..rows {
            flat.extend(in_peers.get(r).into_iter().flatten().map(|&s| s as u32));
            offsets.push(flat.len() as u32);
        }
        if flat.is_empty() {
            return Ok(None);
        }
        let dev = &self.device;
        let mut offsets_dev = dev.alloc_zeros::<u32>(offsets.len())?;
        let mut peers_dev = dev.alloc_zeros::<u32>(flat.len())?;
        dev.upload(self.stream, &offsets, &mut offsets_dev, 0)?;
        dev.upload(self.stream, &flat, &mut peers_dev, 0)?;
        Ok(Some((offsets_dev, peers_dev)))
    }

    /// One lock-step round whose cross-rank messages travel device to device over `link`
    /// (scale-out with NCCL, `dist::RankGossip`). The same rows as `mix_with_remote` — this
    /// arena's agents, then the messages `recvs` lists, (source rank, tag) — but the messages
    /// are received by the link straight into rows `agents + j` of a device snapshot, and
    /// `sends`, (local agent, destination rank, tag), go out from that snapshot's rows: the
    /// pre-round parameters, the values every local sum reads too. Everything is ordered on the
    /// arena's stream — snapshot copy, the link's group of receives and sends, the batched
    /// `gossip_mix` launch over all rows, the copy back — so the mix waits for the messages on
    /// the device, and the sums are those of the whole run's batched round bit for bit. The host
    /// then waits once, at most `timeout` (the link names the silent ranks).
    pub fn mix_over_link(
        &mut self, in_peers: &[Vec<usize>], sends: &[(usize, usize, u32)], recvs: &[(usize, u32)], link: &mut dyn crate::dist::DeviceLink,
        timeout: std::time::Duration,
    ) -> Result<()> {
        // Rows of the arena's stride; messages are the first P floats of a row (`len`).
        let (a, stride, m, len) = (self.agents, self.stride, recvs.len(), self.param_count);
        if in_peers.len() != a || in_peers.iter().flatten().any(|&s| s >= a + m) || sends.iter().any(|&(r, ..)| r >= a) {
            return Err(Error::Shape(format!(
                "mix_over_link: {} peer lists for {a} agents, {m} received messages, senders {:?}",
                in_peers.len(),
                sends.iter().map(|s| s.0).collect::<Vec<_>>()
            )));
        }
        let rows = a + m;
        let tables = self.peer_tables(in_peers, rows)?;
        if !self.link_rows.iter().any(|(r, ..)| *r == rows) {
            let buffers = (rows, self.device.alloc_zeros::<f32>(rows * stride)?, self.device.alloc_zeros::<f32>(rows * stride)?);
            self.link_rows.push(buffers);
        }
        let (dev, s) = (&self.device, self.stream);
        let (_, snapshot, mixed) = self.link_rows.iter_mut().find(|(r, ..)| *r == rows).expect("allocated above");
        dev.copy(s, &self.params, 0, snapshot, 0, a * stride)?;
        let row = |r: usize| snapshot.device_ptr() + (r * stride * std::mem::size_of::<f32>()) as u64;
        let out: Vec<DeviceMessage> = sends.iter().map(|&(r, peer, tag)| DeviceMessage { peer, tag, ptr: row(r), len }).collect();
        let into: Vec<DeviceMessage> = recvs.iter().enumerate().map(|(j, &(peer, tag))| DeviceMessage { peer, tag, ptr: row(a + j), len }).collect();
        let native = dev.native_stream(s)?;
        link.exchange(&native, &out, &into, timeout)?;
        if let Some((offsets_dev, peers_dev)) = &tables {
            // Rows without peers are left alone by the kernel: start from the pre-round values.
            dev.copy(s, snapshot, 0, mixed, 0, a * stride)?;
            launch::gossip_mix(dev, s, snapshot, mixed, offsets_dev, peers_dev, rows, stride)?;
            dev.copy(s, mixed, 0, &mut self.params, 0, a * stride)?;
        }
        let done = dev.record_event(s)?;
        let mut peers: Vec<usize> = out.iter().chain(&into).map(|msg| msg.peer).collect();
        peers.sort_unstable();
        peers.dedup();
        if let Err(e) = link.wait(&mut || dev.event_done(&done), &peers, timeout) {
            // The stream may never get past the exchange: freeing the tables (cuMemFree waits
            // for the device) could hang, so they are left to the process's end.
            std::mem::forget(tables);
            return Err(e);
        }
        // The peer tables are freed on return: the stream is past the launch that reads them.
        dev.synchronize(s)
    }

    /// Asynchronous gossip, sender side: enqueues on the arena's stream a device-to-device copy
    /// of agent `agent`'s parameters into `slot` (a [P] mailbox buffer of the same device),
    /// ordered after `after` — the event a receiver recorded once its mix kernel had read the
    /// slot's previous message, so the copy cannot overwrite a message still being read — and
    /// returns an event marking the copy's completion. Never blocks the host.
    pub fn post_params(&mut self, agent: usize, slot: &mut DeviceBuffer<f32>, after: Option<&Event>) -> Result<Event> {
        let p = self.param_count;
        if agent >= self.agents || slot.len() != p {
            return Err(Error::Shape(format!(
                "post_params: agent {agent} of {}, mailbox slot of {} elements (expected {p})",
                self.agents,
                slot.len()
            )));
        }
        if let Some(e) = after {
            self.device.stream_wait_event(self.stream, e)?;
        }
        self.device.copy(self.stream, &self.params, agent * self.stride, slot, 0, p)?;
        self.device.record_event(self.stream)
    }

    /// Asynchronous gossip, receiver side: mixes the mailbox slots that `take_mask` picks from
    /// the table `slot_addresses` into agent `agent` (one fused `gossip_mix_mailbox` launch on the
    /// arena's stream, see the launcher for the contract) and returns an event marking when the
    /// kernel, hence its reads of the slots, is done. The caller must know the messages have
    /// landed (their copy events are done). Never blocks the host.
    pub fn mix_mailboxes(&mut self, agent: usize, slot_addresses: &DeviceBuffer<u64>, take_mask: u64) -> Result<Event> {
        let (dev, s, a, p) = (&self.device, self.stream, self.agents, self.param_count);
        launch::gossip_mix_mailbox(dev, s, &mut self.params, slot_addresses, take_mask, agent, a, p, self.stride)?;
        dev.record_event(s)
    }

    /// max_r ‖θ_r − θ̄‖ / ‖θ̄‖ over the agents' parameters.
    pub fn consensus_distance(&mut self) -> Result<f64> {
        // Over whole padded rows: the pads are 0 in every agent and add 0 to every sum.
        let (dev, s, a, stride) = (&self.device, self.stream, self.agents, self.stride);
        launch::consensus_partials(dev, s, &self.params, &mut self.consensus_partials, a, stride)?;
        launch::consensus_finish(dev, s, &self.consensus_partials, &mut self.consensus_result, a, stride)?;
        let mut out = [0f64];
        dev.download(s, &self.consensus_result, 0, &mut out)?;
        Ok(out[0])
    }
}
