//! The GPU backend: the `Backend` trait over any `Device` (the CUDA driver or the simulator).
//!
//! Everything lives on the device for the backend's lifetime: parameters, gradients, RMSprop
//! state (in the `GpuArena`), every activation and gradient of the network for the acting batch
//! and the learning batch, and the scratch of the two-pass weight-gradient reductions. During
//! training only each env's newest frame and done flag per step (the previous act's stacks stay
//! on the device and `frame_stack_push` shifts them: `ObsChange`), actions, rewards, dones,
//! bootstrap values (and behaviour log-probs) go up; only actions, values, log-probs and
//! per-agent loss/norm metrics come down. The frames the learner reads are the ones the acts
//! copied, device to device, into a `DeviceRollout` (`act_training`, `learn_recorded`): nothing
//! of a segment is uploaded twice. Where that copy cannot be proven whole (`learn`, the C ABI,
//! a restored segment) the segment's frames are uploaded as before. The learning segment goes
//! up on a stream of its own (the compute stream waits for it by an event); when the trainer's
//! rollout buffers are pinned (`alloc_pinned_bytes`), those copies are DMA transfers the host
//! does not wait for. Each backend computes on its own stream, so
//! several backends on one shared device (the pipelined actor and learner, the agents of
//! asynchronous gossip) overlap on the GPU.
//!
//! One update (`learn`) is 24 launches whatever the number of agents (every kernel has an agent
//! dimension in its grid): returns 1, forward 5 (conv1-3, fc GEMM + its split-K sum), heads 2
//! (forward+loss, backward), fc backward 3 (filter, data GEMM + split-K sum), conv3 and conv2
//! backward 4 each (filter, chunk sum, weights regrouped per tap, data GEMM straight into the
//! input gradient), conv1 backward 2 (no input gradient), the device-side loss guard 1, clip +
//! RMSprop 2; nothing waits for the host until
//! the loss sums and norms come down after the last launch. `act` is 8 launches (forward 5,
//! heads, sampling, packing its outputs for one download into pinned memory), 9 when it builds
//! the stacks from the newest frames (`frame_stack_push`). The split-K sums
//! run only where a layer's reduction spans more than one `FC_SPLIT_K` slice (the gala and
//! nature fc layers do). `launch_count` reports the running total.

use super::launch::{self, FilterTarget, HeadsLossBuffers, HeadsParams, LayerParams};
use super::GpuArena;
use crate::backend::cpu::heads::LossTerms;
use crate::backend::cpu::optim::RmsProp;
use crate::backend::{ActOutput, AgentLearnStats, Backend, BackendSpec, DeviceRollout, ObsChange, Segment, TransferBytes};
use crate::env::FRAME_BYTES;
use crate::model::FRAME_STACK;
use crate::device::{Device, DeviceBuffer, DeviceElem, Event, Graph, HostBuffer, KernelArg, LaunchConfig, Stream};
use crate::error::{Error, Result};
use crate::model::{tensor, ConvShape, ParamLayout, OBS_BYTES};
use std::sync::atomic::{AtomicU64, Ordering};

/// A device that counts the kernel launches going through it (for launches-per-update reports)
/// and the bytes it copies (host to device, device to host, device to device), so tests and
/// `bench learner` can tell what crosses the bus per update.
pub struct CountingDevice<D: Device> {
    inner: D,
    launches: AtomicU64,
    /// `launches` when the current graph capture began: the launches recorded since then did
    /// not run; they are counted when the graph is (each replay runs them all).
    capture_start: AtomicU64,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    copied: AtomicU64,
}

/// Bytes in `len` elements of `T`.
fn bytes_of<T: DeviceElem>(len: usize) -> u64 {
    (len * std::mem::size_of::<T>()) as u64
}

impl<D: Device> CountingDevice<D> {
    pub fn new(inner: D) -> Self {
        CountingDevice {
            inner,
            launches: AtomicU64::new(0),
            capture_start: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            copied: AtomicU64::new(0),
        }
    }
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }
    /// Bytes copied so far, counted when each copy is enqueued (failed copies included: they
    /// are errors that end the run anyway).
    pub fn transfer_bytes(&self) -> TransferBytes {
        TransferBytes {
            uploaded: self.uploaded.load(Ordering::Relaxed),
            downloaded: self.downloaded.load(Ordering::Relaxed),
            copied: self.copied.load(Ordering::Relaxed),
        }
    }
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: Device> Device for CountingDevice<D> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn has_kernel(&self, name: &str) -> bool {
        self.inner.has_kernel(name)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn alloc_zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        self.inner.alloc_zeros(len)
    }
    fn upload<T: DeviceElem>(&self, stream: Stream, src: &[T], dst: &mut DeviceBuffer<T>, offset: usize) -> Result<()> {
        self.uploaded.fetch_add(bytes_of::<T>(src.len()), Ordering::Relaxed);
        self.inner.upload(stream, src, dst, offset)
    }
    fn alloc_host<T: DeviceElem>(&self, len: usize) -> Result<HostBuffer<T>> {
        self.inner.alloc_host(len)
    }
    unsafe fn upload_async<T: DeviceElem>(&self, stream: Stream, src: &[T], dst: &mut DeviceBuffer<T>, offset: usize) -> Result<()> {
        self.uploaded.fetch_add(bytes_of::<T>(src.len()), Ordering::Relaxed);
        // SAFETY: the caller upholds the contract, which is the same.
        unsafe { self.inner.upload_async(stream, src, dst, offset) }
    }
    fn download<T: DeviceElem>(&self, stream: Stream, src: &DeviceBuffer<T>, offset: usize, dst: &mut [T]) -> Result<()> {
        self.downloaded.fetch_add(bytes_of::<T>(dst.len()), Ordering::Relaxed);
        self.inner.download(stream, src, offset, dst)
    }
    fn copy<T: DeviceElem>(
        &self, stream: Stream, src: &DeviceBuffer<T>, src_offset: usize, dst: &mut DeviceBuffer<T>, dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.copied.fetch_add(bytes_of::<T>(len), Ordering::Relaxed);
        self.inner.copy(stream, src, src_offset, dst, dst_offset, len)
    }
    fn launch(&self, stream: Stream, name: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        self.launches.fetch_add(1, Ordering::Relaxed);
        self.inner.launch(stream, name, config, args)
    }
    fn default_stream(&self) -> Stream {
        self.inner.default_stream()
    }
    fn new_stream(&self) -> Result<Stream> {
        self.inner.new_stream()
    }
    fn record_event(&self, stream: Stream) -> Result<Event> {
        self.inner.record_event(stream)
    }
    fn record_timed_event(&self, stream: Stream) -> Result<Event> {
        self.inner.record_timed_event(stream)
    }
    fn elapsed_seconds(&self, start: &Event, end: &Event) -> Result<f64> {
        self.inner.elapsed_seconds(start, end)
    }
    fn event_done(&self, event: &Event) -> Result<bool> {
        self.inner.event_done(event)
    }
    fn stream_wait_event(&self, stream: Stream, event: &Event) -> Result<()> {
        self.inner.stream_wait_event(stream, event)
    }
    fn synchronize(&self, stream: Stream) -> Result<()> {
        self.inner.synchronize(stream)
    }
    fn native_stream(&self, stream: Stream) -> Result<crate::device::NativeStream> {
        self.inner.native_stream(stream)
    }
    fn begin_capture(&self, stream: Stream) -> Result<bool> {
        self.capture_start.store(self.launches(), Ordering::Relaxed);
        self.inner.begin_capture(stream)
    }
    fn end_capture(&self, stream: Stream) -> Result<Graph> {
        let recorded = self.launches() - self.capture_start.load(Ordering::Relaxed);
        self.launches.fetch_sub(recorded, Ordering::Relaxed);
        let mut graph = self.inner.end_capture(stream)?;
        graph.launches = recorded;
        Ok(graph)
    }
    fn launch_graph(&self, graph: &Graph) -> Result<()> {
        self.launches.fetch_add(graph.launches, Ordering::Relaxed);
        self.inner.launch_graph(graph)
    }
}

/// The network's forward activations for a batch of `n` observations per agent.
struct Forward {
    n: usize,
    obs: DeviceBuffer<u8>,
    /// post-ReLU conv outputs [agents][n][C][H][W]
    conv: [DeviceBuffer<f32>; 3],
    /// post-ReLU fc output [agents][n][hidden]
    hidden: DeviceBuffer<f32>,
    /// fc forward's split-K partials (see `launch::fc_forward`; empty with one slice)
    fc_partials: DeviceBuffer<f32>,
    logits: DeviceBuffer<f32>,
    values: DeviceBuffer<f32>,
}

impl Forward {
    fn new<D: Device>(dev: &D, spec: &BackendSpec, n: usize) -> Result<Self> {
        let (a, net) = (spec.agents, &spec.net);
        Ok(Forward {
            n,
            obs: dev.alloc_zeros(a * n * OBS_BYTES)?,
            conv: [
                dev.alloc_zeros(a * n * net.convs[0].out_len())?,
                dev.alloc_zeros(a * n * net.convs[1].out_len())?,
                dev.alloc_zeros(a * n * net.convs[2].out_len())?,
            ],
            hidden: dev.alloc_zeros(a * n * net.hidden)?,
            fc_partials: dev.alloc_zeros(launch::fc_partials_len(a, n, net.flat_features(), net.hidden))?,
            logits: dev.alloc_zeros(a * n * net.actions)?,
            values: dev.alloc_zeros(a * n)?,
        })
    }
}

/// Everything `learn` needs beyond the forward activations.
struct LearnScratch {
    actions: DeviceBuffer<u32>,
    rewards: DeviceBuffer<f32>,
    dones: DeviceBuffer<f32>,
    bootstrap: DeviceBuffer<f32>,
    behaviour: DeviceBuffer<f32>,
    returns: DeviceBuffer<f32>,
    dlogits: DeviceBuffer<f32>,
    dvalues: DeviceBuffer<f32>,
    terms: DeviceBuffer<f32>,
    stats: DeviceBuffer<f64>,
    dhidden: DeviceBuffer<f32>,
    /// ∂L/∂(pre-ReLU conv output) per layer, i.e. already masked by the layer's ReLU where it is
    /// produced (fc backward-data for conv3, conv backward-data for the layers below), so the
    /// backward kernels read no `y` (always Some; Option so layers can be split).
    dconv: [Option<DeviceBuffer<f32>>; 3],
    /// conv2/conv3's weights regrouped per tap for their backward-data GEMM (the larger of the two).
    weight_taps: DeviceBuffer<f32>,
    /// fc backward-data's split-K partials (see `launch::fc_backward_data`).
    fc_data_partials: DeviceBuffer<f32>,
    /// Per-chunk weight-gradient partials per conv layer, [agents][chunks][Cout*R + Cout].
    partials: [DeviceBuffer<f32>; 3],
}

/// Update graphs kept per backend (one per rollout buffer the update reads and behaviour-ratio
/// mode); act's forward pass has one.
const UPDATE_GRAPHS_KEPT: usize = 4;
const ACT_GRAPHS_KEPT: usize = 1;

/// What a recording depends on beyond the backend's fixed buffers and shapes: for the update,
/// the frames buffer it reads (its address, or None for the uploaded frames) and whether the
/// behaviour ratio is on; act's forward pass depends on nothing else ((None, false)).
type GraphKey = (Option<u64>, bool);

/// One sequence's recorded CUDA graphs (see `GpuBackend::run_recorded`).
struct RecordedGraphs {
    /// What the warning of a failed recording calls the sequence.
    what: &'static str,
    /// Try to record and replay: wanted, and neither refused by the device (the simulator's
    /// `begin_capture` says it records none) nor failed so far.
    enabled: bool,
    kept: usize,
    recorded: Vec<(GraphKey, Graph)>,
}

impl RecordedGraphs {
    fn new(what: &'static str, wanted: bool, kept: usize) -> Self {
        RecordedGraphs { what, enabled: wanted, kept, recorded: Vec::new() }
    }
}

/// Which of the backend's recorded sequences.
#[derive(Clone, Copy)]
enum Recorded {
    /// The learner update's kernels (`enqueue_update`).
    Update,
    /// act's forward pass (`forward` on `act_fwd`): the launches whose arguments are the same at
    /// every step; the frames' upload, the sampling (its step and greedy flag change) and the
    /// packed download stay outside.
    ActForward,
}

/// The GPU backend over device `D`.
pub struct GpuBackend<D: Device> {
    arena: GpuArena<CountingDevice<D>>,
    spec: BackendSpec,
    layout: ParamLayout,
    convs: [LayerParams; 3],
    fc: LayerParams,
    fc_shape: ConvShape,
    heads: HeadsParams,
    act_fwd: Forward,
    act_actions: DeviceBuffer<u32>,
    act_log_probs: DeviceBuffer<f32>,
    /// act's outputs packed on the device ([actions | values | log-probs], see
    /// `launch::act_pack_outputs`) and their pinned host copy: one download per step.
    act_packed: DeviceBuffer<u32>,
    act_host: HostBuffer<u32>,
    /// The newest frame of every env [agents][envs][84][84] and its reset flag [agents][envs]
    /// (`ObsChange::Stepped`): what goes up per env step when `act_fwd.obs` holds the previous
    /// act's stacks and `frame_stack_push` builds the new ones on the device.
    act_frames: DeviceBuffer<u8>,
    act_resets: DeviceBuffer<f32>,
    /// `act_fwd.obs` holds the observations of this backend's previous act (it succeeded), so a
    /// change relative to them (`ObsChange::Same`, `Stepped`) may be applied on the device.
    act_obs_valid: bool,
    learn_fwd: Forward,
    learn: LearnScratch,
    update_graphs: RecordedGraphs,
    act_graphs: RecordedGraphs,
    /// The stream the learning segment goes up on (its copies overlap other streams' kernels).
    upload_stream: Stream,
    /// Device seconds between the first and the last operation of every act/learn/mix so far
    /// (timed events on the backend's stream), for the GPU-busy fraction of `bench e2e`.
    device_seconds: f64,
    /// Test aid (`set_check_device_frames`): before learning from a device rollout, download it
    /// and compare it with the segment's host frames.
    check_device_frames: bool,
}

/// Length of conv layer `c`'s weight-gradient partials for a learning batch of `n` per agent.
fn partials_len(spec: &BackendSpec, c: &ConvShape, n: usize) -> usize {
    spec.agents * launch::filter_chunks(n, launch::CONV_FILTER_SAMPLES_PER_CHUNK) * launch::filter_grad_len(c)
}

impl<D: Device> GpuBackend<D> {
    /// `initial` is one agent's parameters (copied to every agent) or the whole arena.
    pub fn new(device: D, spec: BackendSpec, initial: &[f32]) -> Result<Self> {
        let layout = spec.net.layout();
        let p = layout.total;
        let arena_init = spec.initial_arena(initial)?;
        if !device.has_kernel(&spec.precision.kernel("conv_forward_f32")) {
            return Err(Error::Config(format!(
                "precision {}: {} has no tensor-core (TF32) kernels; TF32 needs an sm_80 or newer GPU: use --precision fp32",
                spec.precision.name(),
                device.describe()
            )));
        }
        if spec.agents == 0 || spec.envs_per_agent == 0 || spec.n_steps == 0 {
            return Err(Error::Shape(format!(
                "GPU backend: {} agents x {} envs x {} steps; all must be at least 1",
                spec.agents, spec.envs_per_agent, spec.n_steps
            )));
        }
        if spec.net.actions + 1 > launch::HEADS_MAX_OUT {
            return Err(Error::Unsupported(format!(
                "GPU backend: {} actions; the heads kernels support at most {}",
                spec.net.actions,
                launch::HEADS_MAX_OUT - 1
            )));
        }
        let mut arena = GpuArena::new(CountingDevice::new(device), spec.agents, p, &arena_init)?;
        let square_avg_start = spec.hyper.rms_form.initial_square_avg();
        if square_avg_start != 0.0 {
            arena.write_optimizer_state(&vec![square_avg_start; spec.agents * p])?;
        }
        let dev = arena.device();
        let (a, n) = (spec.agents, spec.segment_samples());
        let net = &spec.net;
        let fc_shape = launch::linear_shape(net.flat_features(), net.hidden);
        let learn = LearnScratch {
            actions: dev.alloc_zeros(a * n)?,
            rewards: dev.alloc_zeros(a * n)?,
            dones: dev.alloc_zeros(a * n)?,
            bootstrap: dev.alloc_zeros(a * spec.envs_per_agent)?,
            behaviour: dev.alloc_zeros(a * n)?,
            returns: dev.alloc_zeros(a * n)?,
            dlogits: dev.alloc_zeros(a * n * net.actions)?,
            dvalues: dev.alloc_zeros(a * n)?,
            terms: dev.alloc_zeros(a * n * 3)?,
            stats: dev.alloc_zeros(a * 3)?,
            dhidden: dev.alloc_zeros(a * n * net.hidden)?,
            dconv: [
                Some(dev.alloc_zeros(a * n * net.convs[0].out_len())?),
                Some(dev.alloc_zeros(a * n * net.convs[1].out_len())?),
                Some(dev.alloc_zeros(a * n * net.convs[2].out_len())?),
            ],
            weight_taps: dev.alloc_zeros(launch::weight_taps_len(&net.convs[1], a).max(launch::weight_taps_len(&net.convs[2], a)))?,
            fc_data_partials: dev.alloc_zeros(launch::fc_partials_len(a, n, net.hidden, net.flat_features()))?,
            partials: [
                dev.alloc_zeros(partials_len(&spec, &net.convs[0], n))?,
                dev.alloc_zeros(partials_len(&spec, &net.convs[1], n))?,
                dev.alloc_zeros(partials_len(&spec, &net.convs[2], n))?,
            ],
        };
        let act_fwd = Forward::new(dev, &spec, spec.envs_per_agent)?;
        let learn_fwd = Forward::new(dev, &spec, n)?;
        let act_actions = dev.alloc_zeros(a * spec.envs_per_agent)?;
        let act_log_probs = dev.alloc_zeros(a * spec.envs_per_agent)?;
        let act_packed = dev.alloc_zeros(3 * a * spec.envs_per_agent)?;
        let act_host = dev.alloc_host(3 * a * spec.envs_per_agent)?;
        let act_frames = dev.alloc_zeros(a * spec.envs_per_agent * FRAME_BYTES)?;
        let act_resets = dev.alloc_zeros(a * spec.envs_per_agent)?;
        let upload_stream = dev.new_stream()?;
        let graphs_wanted = std::env::var("GALA_CUDA_GRAPHS").map_or(true, |v| v != "0");
        Ok(GpuBackend {
            convs: [0, 1, 2].map(|l| LayerParams::of(&layout, tensor::CONV_W[l], tensor::CONV_B[l])),
            fc: LayerParams::of(&layout, tensor::FC_W, tensor::FC_B),
            heads: HeadsParams::of(net, &layout),
            fc_shape,
            act_fwd,
            act_actions,
            act_log_probs,
            act_packed,
            act_host,
            act_frames,
            act_resets,
            act_obs_valid: false,
            learn_fwd,
            learn,
            update_graphs: RecordedGraphs::new("the update", graphs_wanted, UPDATE_GRAPHS_KEPT),
            act_graphs: RecordedGraphs::new("act's forward pass", graphs_wanted, ACT_GRAPHS_KEPT),
            arena,
            layout,
            spec,
            upload_stream,
            device_seconds: 0.0,
            check_device_frames: false,
        })
    }

    /// Kernel launches so far (every launch of every method).
    pub fn launch_count(&self) -> u64 {
        self.arena.device().launches()
    }

    /// Test aid: when on, every `learn_recorded` that reads a device rollout first downloads it
    /// and fails (changing nothing) unless it equals the segment's host frames byte for byte —
    /// the check of the caller's side of the [`DeviceRollout`] contract — and every act checks
    /// likewise that the stacks it forwards (built on the device from an `ObsChange`) equal the
    /// observations passed. Costs downloads of every frame; off by default.
    pub fn set_check_device_frames(&mut self, on: bool) {
        self.check_device_frames = on;
    }

    /// Turns the CUDA graphs of the update and of act's forward pass off (or back on, where the
    /// device records graphs): for comparing the two paths. `GALA_CUDA_GRAPHS=0` turns them off
    /// for a whole run.
    pub fn set_graphs(&mut self, on: bool) {
        self.update_graphs = RecordedGraphs::new(self.update_graphs.what, on, UPDATE_GRAPHS_KEPT);
        self.act_graphs = RecordedGraphs::new(self.act_graphs.what, on, ACT_GRAPHS_KEPT);
    }

    /// How many update graphs this backend has recorded and keeps (0 where it records none).
    pub fn update_graphs_recorded(&self) -> usize {
        self.update_graphs.recorded.len()
    }

    /// How many graphs of act's forward pass this backend keeps (0 or 1).
    pub fn act_graphs_recorded(&self) -> usize {
        self.act_graphs.recorded.len()
    }

    /// Marks the start of a timed section on the backend's stream (see `device_seconds`).
    fn begin_timed(&self) -> Result<Event> {
        self.arena.device().record_timed_event(self.arena.stream())
    }

    /// Ends a timed section begun with `begin_timed`: adds the device time between the two
    /// events. Called after the section's results came down, so it never adds a wait.
    fn end_timed(&mut self, start: Event) -> Result<()> {
        let dev = self.arena.device();
        let end = dev.record_timed_event(self.arena.stream())?;
        self.device_seconds += dev.elapsed_seconds(&start, &end)?;
        Ok(())
    }

    /// Enqueues the segment's host-to-device copies on the upload stream (HTS-RL: uploads on a
    /// stream of their own; from the trainer's pinned rollout buffers they are DMA transfers the
    /// host does not wait for) and makes the compute stream wait for them by an event. The
    /// upload stream first waits for the compute stream, whose earlier kernels read the same
    /// buffers. The caller must drain the upload stream before `seg`'s borrow ends. The frames
    /// go up only with `frames` (not when `learn` reads them from a device rollout).
    fn upload_segment(&mut self, seg: &Segment, frames: bool) -> Result<()> {
        let (s, up) = (self.arena.stream(), self.upload_stream);
        let dev = self.arena.device();
        let sc = &mut self.learn;
        let reads_done = dev.record_event(s)?;
        dev.stream_wait_event(up, &reads_done)?;
        // SAFETY: every source is borrowed from `seg` for the whole `learn` call, which drains
        // the upload stream before returning (see `learn`).
        unsafe {
            if frames {
                dev.upload_async(up, seg.obs, &mut self.learn_fwd.obs, 0)?;
            }
            dev.upload_async(up, seg.actions, &mut sc.actions, 0)?;
            dev.upload_async(up, seg.rewards, &mut sc.rewards, 0)?;
            dev.upload_async(up, seg.dones, &mut sc.dones, 0)?;
            dev.upload_async(up, seg.bootstrap_values, &mut sc.bootstrap, 0)?;
            if let Some(b) = seg.behaviour_log_probs {
                dev.upload_async(up, b, &mut sc.behaviour, 0)?;
            }
        }
        let landed = dev.record_event(up)?;
        dev.stream_wait_event(s, &landed)
    }

    /// The update itself, on the compute stream, once `upload_segment` has enqueued the copies.
    /// `frames` is the device rollout to read the observations from in place, None for the
    /// uploaded `learn_fwd.obs`.
    fn learn_uploaded(&mut self, seg: &Segment, frames: Option<&DeviceBuffer<u8>>, timed: Event) -> Result<Vec<AgentLearnStats>> {
        let (agents, n) = (self.spec.agents, self.spec.segment_samples());
        let hyper = self.spec.hyper;
        let s = self.arena.stream();
        self.run_update(seg, frames)?;
        // The update's only waits: the loss sums and the norms, after its last launch.
        let mut sums = vec![0f64; agents * 3];
        self.arena.device().download(s, &self.learn.stats, 0, &mut sums)?;
        let norms = self.arena.read_norms()?;
        self.end_timed(timed)?;
        let nf = n as f64;
        let coefs = crate::backend::cpu::heads::LossCoefs { value: hyper.value_coef, entropy: hyper.entropy_coef };
        let terms: Vec<LossTerms> = sums
            .chunks(3)
            .map(|t| LossTerms { value_loss: t[0] / nf, policy_loss: -t[1] / nf, entropy: t[2] / nf })
            .collect();
        crate::backend::check_losses_finite(&terms, coefs)?;
        crate::backend::learn_stats(&terms, &norms)
    }

    /// The update's kernels (`run_recorded`): one graph per frames buffer and behaviour-ratio
    /// mode. Every argument of every launch is fixed for a backend — the buffers, the shapes,
    /// the hyperparameters — but for those two keys, so a replay is the same work as the launches.
    fn run_update(&mut self, seg: &Segment, frames: Option<&DeviceBuffer<u8>>) -> Result<()> {
        let key = (frames.map(|f| f.device_ptr()), seg.behaviour_log_probs.is_some());
        self.run_recorded(Recorded::Update, key, &mut |b| b.enqueue_update(seg, frames))
    }

    fn recorded(&self, which: Recorded) -> &RecordedGraphs {
        match which {
            Recorded::Update => &self.update_graphs,
            Recorded::ActForward => &self.act_graphs,
        }
    }

    fn recorded_mut(&mut self, which: Recorded) -> &mut RecordedGraphs {
        match which {
            Recorded::Update => &mut self.update_graphs,
            Recorded::ActForward => &mut self.act_graphs,
        }
    }

    /// Runs `enqueue`'s launches on the arena stream: replayed from the CUDA graph recorded for
    /// `key` where the device records graphs (`cuda`; recorded by stream capture on first use),
    /// enqueued one by one otherwise (`sim`, `GALA_CUDA_GRAPHS=0`, or after a failed recording:
    /// a warning, once, and that sequence runs launch by launch from then on — the same kernels,
    /// the same results).
    fn run_recorded(&mut self, which: Recorded, key: GraphKey, enqueue: &mut dyn FnMut(&mut Self) -> Result<()>) -> Result<()> {
        if !self.recorded(which).enabled {
            return enqueue(self);
        }
        if let Some((_, graph)) = self.recorded(which).recorded.iter().find(|(k, _)| *k == key) {
            return self.arena.device().launch_graph(graph);
        }
        let s = self.arena.stream();
        match self.arena.device().begin_capture(s) {
            Ok(true) => {}
            Ok(false) => {
                self.recorded_mut(which).enabled = false;
                return enqueue(self);
            }
            Err(e) => return self.recording_failed(which, e, enqueue),
        }
        let enqueued = enqueue(self);
        // Always end the recording, also after a failed enqueue: the stream leaves capture mode.
        let recorded = self.arena.device().end_capture(s);
        let graph = match (enqueued, recorded) {
            (Ok(()), Ok(graph)) => graph,
            (Err(e), _) | (Ok(()), Err(e)) => return self.recording_failed(which, e, enqueue),
        };
        self.arena.device().launch_graph(&graph)?;
        // A bounded cache: a caller cycling through more rollout buffers than this re-records.
        let graphs = self.recorded_mut(which);
        if graphs.recorded.len() == graphs.kept {
            graphs.recorded.remove(0);
        }
        graphs.recorded.push((key, graph));
        Ok(())
    }

    /// A graph could not be recorded: say so once, run this and every later time launch by
    /// launch.
    fn recording_failed(&mut self, which: Recorded, e: Error, enqueue: &mut dyn FnMut(&mut Self) -> Result<()>) -> Result<()> {
        let graphs = self.recorded_mut(which);
        eprintln!("warning: recording {} as a CUDA graph failed ({e}); it runs launch by launch from now on", graphs.what);
        graphs.enabled = false;
        graphs.recorded.clear();
        enqueue(self)
    }

    /// Enqueues the update's kernels on the compute stream (no host transfer, no wait: the
    /// sequence a graph records).
    fn enqueue_update(&mut self, seg: &Segment, frames: Option<&DeviceBuffer<u8>>) -> Result<()> {
        let (agents, envs, n) = (self.spec.agents, self.spec.envs_per_agent, self.spec.segment_samples());
        let hyper = self.spec.hyper;
        let s = self.arena.stream();
        {
            let dev = self.arena.device();
            let sc = &mut self.learn;
            launch::nstep_returns(dev, s, &sc.rewards, &sc.dones, &sc.bootstrap, &mut sc.returns, agents, self.spec.n_steps, envs, hyper.gamma)?;
        }
        Self::forward(&mut self.arena, &self.spec, &self.convs, self.fc, &self.fc_shape, None, &mut self.learn_fwd, frames)?;
        {
            let (dev, s, params, grads) = self.arena.params_and_grads();
            let f = &mut self.learn_fwd;
            let sc = &mut self.learn;
            let loss = HeadsLossBuffers {
                actions: &sc.actions,
                returns: &sc.returns,
                behaviour_log_probs: seg.behaviour_log_probs.map(|_| &sc.behaviour),
                dlogits: &mut sc.dlogits,
                dvalues: &mut sc.dvalues,
                terms: &mut sc.terms,
            };
            launch::heads_forward_loss(
                dev, s, &f.hidden, params, &mut f.logits, &mut f.values, loss, agents, n, self.heads,
                hyper.value_coef as f32, hyper.entropy_coef as f32,
            )?;
            launch::heads_backward(
                dev, s, &f.hidden, params, &sc.dlogits, &sc.dvalues, &sc.terms, &mut sc.dhidden, grads, &mut sc.stats,
                agents, n, self.heads,
            )?;
        }
        // No host sync inside the update: the loss guard checks every agent's total loss on the
        // device and the optimizer skips the whole step when one is not finite, so a non-finite
        // loss leaves the parameters unchanged (as the CPU backend does); the host reads the
        // stats once the update is enqueued, and reports it exactly as before.
        {
            let (dev, s, guard) = self.arena.step_guard_mut();
            launch::heads_loss_guard(dev, s, &self.learn.stats, guard, agents, n, hyper.value_coef, hyper.entropy_coef)?;
        }
        {
            let (dev, s, params, grads) = self.arena.params_and_grads();
            let f = &self.learn_fwd;
            let sc = &mut self.learn;
            let dconv3 = sc.dconv[2].as_mut().expect("dconv3 exists");
            // fc as a GEMM: the weight gradient is one ascending sum over the batch straight into
            // the arena; the input gradient is split-K over the 512 outputs (fixed slices).
            // dhidden is masked by the fc ReLU already (heads_backward), dconv3 comes out masked by
            // conv3's.
            let precision = self.spec.precision;
            launch::fc_backward_filter(dev, s, &self.fc_shape, &f.conv[2], &sc.dhidden, grads, agents, n, self.fc, precision)?;
            let below = Some(&f.conv[2]);
            launch::fc_backward_data(dev, s, &self.fc_shape, &sc.dhidden, params, &mut sc.fc_data_partials, below, dconv3, agents, n, self.fc, precision)?;
        }
        for l in (0..3).rev() {
            self.conv_backward(l, frames)?;
        }
        let opt = RmsProp { lr: hyper.lr, alpha: hyper.rms_alpha, eps: hyper.rms_eps, form: hyper.rms_form };
        self.arena.enqueue_clip_and_rmsprop(hyper.max_grad_norm, opt, true)?;
        Ok(())
    }

    /// What runs the kernels.
    pub fn device_description(&self) -> String {
        self.arena.device().describe()
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The gradients [agents][P] of the last `learn` (after clipping).
    pub fn read_grads(&self) -> Result<Vec<f32>> {
        self.arena.read_grads()
    }

    /// Asynchronous gossip, sender side: `GpuArena::post_params` on this backend's stream.
    pub fn post_params(&mut self, agent: usize, slot: &mut DeviceBuffer<f32>, after: Option<&Event>) -> Result<Event> {
        self.arena.post_params(agent, slot, after)
    }

    /// Asynchronous gossip, receiver side: `GpuArena::mix_mailboxes` on this backend's stream.
    pub fn mix_mailboxes(&mut self, agent: usize, slot_addresses: &DeviceBuffer<u64>, take_mask: u64) -> Result<Event> {
        self.arena.mix_mailboxes(agent, slot_addresses, take_mask)
    }

    /// Forward of `fwd.obs` (already uploaded), or of `frames` (a device rollout of the same
    /// layout) when given, through the trunk and the heads' linear part.
    #[allow(clippy::too_many_arguments)]
    fn forward(arena: &mut GpuArena<CountingDevice<D>>, spec: &BackendSpec, convs: &[LayerParams; 3], fc: LayerParams,
               fc_shape: &ConvShape, heads: Option<HeadsParams>, fwd: &mut Forward, frames: Option<&DeviceBuffer<u8>>) -> Result<()> {
        let (dev, s, params, _) = arena.params_and_grads();
        let (a, n, net) = (spec.agents, fwd.n, &spec.net);
        let obs = frames.unwrap_or(&fwd.obs);
        let [c1, c2, c3] = &mut fwd.conv;
        let p = spec.precision;
        launch::conv_forward(dev, s, &net.convs[0], obs, params, c1, a, n, convs[0], true, p)?;
        launch::conv_forward(dev, s, &net.convs[1], c1, params, c2, a, n, convs[1], true, p)?;
        launch::conv_forward(dev, s, &net.convs[2], c2, params, c3, a, n, convs[2], true, p)?;
        launch::fc_forward(dev, s, fc_shape, c3, params, &mut fwd.fc_partials, &mut fwd.hidden, a, n, fc, true, p)?;
        if let Some(hp) = heads {
            launch::heads_forward(dev, s, &fwd.hidden, params, &mut fwd.logits, &mut fwd.values, a, n, hp)?;
        }
        Ok(())
    }

    /// `act` once the frames' upload is enqueued: forward, sampling, and the packed outputs'
    /// one download (which waits for the stream).
    fn act_enqueued(&mut self, step: u64, greedy: bool, out: &mut ActOutput) -> Result<()> {
        let (agents, envs) = (self.spec.agents, self.spec.envs_per_agent);
        let s = self.arena.stream();
        self.run_recorded(Recorded::ActForward, (None, false), &mut |b| {
            Self::forward(&mut b.arena, &b.spec, &b.convs, b.fc, &b.fc_shape, Some(b.heads), &mut b.act_fwd, None)
        })?;
        let dev = self.arena.device();
        let f = &self.act_fwd;
        launch::sample_actions(
            dev,
            s,
            &f.logits,
            &mut self.act_actions,
            &mut self.act_log_probs,
            agents,
            self.spec.agent_offset,
            envs,
            self.spec.net.actions,
            self.spec.seed,
            step,
            greedy,
        )?;
        let rows = agents * envs;
        launch::act_pack_outputs(dev, s, &self.act_actions, &f.values, &self.act_log_probs, &mut self.act_packed, rows)?;
        dev.download(s, &self.act_packed, 0, &mut self.act_host)?;
        let (actions, rest) = self.act_host.split_at(rows);
        let (values, log_probs) = rest.split_at(rows);
        out.actions.clear();
        out.actions.extend_from_slice(actions);
        out.values.clear();
        out.values.extend(values.iter().map(|&b| f32::from_bits(b)));
        out.log_probs.clear();
        out.log_probs.extend(log_probs.iter().map(|&b| f32::from_bits(b)));
        Ok(())
    }

    /// `act` on `obs`, which differ from the previous act's as `change` says (only the change
    /// goes up when `act_fwd.obs` holds the previous act's stacks), and with `record =
    /// (rollout, t)` the frames also go to step `t` of the device rollout: `agents`
    /// device-to-device copies ([agents][envs] rows into [agents][n_steps][envs] at step t), on
    /// the same stream, so the frames cross the bus once.
    fn act_impl(
        &mut self, obs: &[u8], change: ObsChange, step: u64, greedy: bool, out: &mut ActOutput, mut record: Option<(&mut DeviceRollout, usize)>,
    ) -> Result<()> {
        self.spec.check_act_obs(obs.len())?;
        if let Some((rollout, t)) = record.as_mut() {
            rollout.forget(*t)?;
            if !rollout.fits(&self.spec) {
                return Err(Error::Shape(format!(
                    "act: {rollout:?} does not fit this backend's {} agents x {} steps x {} envs",
                    self.spec.agents, self.spec.n_steps, self.spec.envs_per_agent
                )));
            }
        }
        let rows = self.spec.act_batch();
        if let ObsChange::Stepped { frames, resets } = change {
            if frames.len() != rows * FRAME_BYTES || resets.len() != rows {
                return Err(Error::Shape(format!(
                    "act: a step's change is {} frame bytes and {} resets, expected {} and {rows} ([agents][envs][84][84], [agents][envs])",
                    frames.len(),
                    resets.len(),
                    rows * FRAME_BYTES
                )));
            }
        }
        // Without the previous act's stacks on the device a change means nothing: all goes up.
        let change = if self.act_obs_valid { change } else { ObsChange::Unknown };
        self.act_obs_valid = false;
        // A rollout on another device cannot take a device copy: its step stays unrecorded, so
        // the learner uploads the segment (nothing is lost but the saving).
        let mut record = record.filter(|(rollout, _)| rollout.obs.same_device(&self.act_fwd.obs));
        let s = self.arena.stream();
        let timed = self.begin_timed()?;
        // Every path below drains the stream before `obs` and `change`'s slices are released:
        // the one download at the end of `act_enqueued` waits for it, and on an error the stream
        // is synchronised here. So the asynchronous uploads (DMA from the trainer's pinned
        // buffers) never outlive their sources.
        let result = self
            .enqueue_obs(obs, change)
            .and_then(|()| if self.check_device_frames { self.check_act_stacks(obs) } else { Ok(()) })
            .and_then(|()| match record.as_mut() {
                Some((rollout, t)) => self.record_frames(rollout, *t),
                None => Ok(()),
            })
            .and_then(|()| self.act_enqueued(step, greedy, out));
        if result.is_err() {
            let _ = self.arena.device().synchronize(s);
        }
        result?;
        self.act_obs_valid = true;
        // Only a whole act marks the step: a failed one leaves it unrecorded (upload path).
        if let Some((rollout, t)) = record {
            rollout.recorded[t] = Some(step);
        }
        self.end_timed(timed)
    }

    /// Enqueues what makes `act_fwd.obs` equal `obs`: the whole stacks, nothing, or each env's
    /// newest frame and reset flag and the device-side stacking. The caller drains the stream
    /// before the slices' borrows end (see `act_impl`).
    fn enqueue_obs(&mut self, obs: &[u8], change: ObsChange) -> Result<()> {
        let (dev, s) = (self.arena.device(), self.arena.stream());
        match change {
            // SAFETY (both arms): the stream is drained before the sources' borrows end.
            ObsChange::Unknown => unsafe { dev.upload_async(s, obs, &mut self.act_fwd.obs, 0) },
            ObsChange::Same => Ok(()),
            ObsChange::Stepped { frames, resets } => {
                unsafe {
                    dev.upload_async(s, frames, &mut self.act_frames, 0)?;
                    dev.upload_async(s, resets, &mut self.act_resets, 0)?;
                }
                launch::frame_stack_push(dev, s, &mut self.act_fwd.obs, &self.act_frames, &self.act_resets, self.spec.act_batch(), FRAME_BYTES, FRAME_STACK)
            }
        }
    }

    /// Test aid (`set_check_device_frames`): the stacks the act is about to forward must equal
    /// the host's observations byte for byte.
    fn check_act_stacks(&self, obs: &[u8]) -> Result<()> {
        let mut on_device = vec![0u8; obs.len()];
        self.arena.device().download(self.arena.stream(), &self.act_fwd.obs, 0, &mut on_device)?;
        match on_device.iter().zip(obs).position(|(d, h)| d != h) {
            None => Ok(()),
            Some(i) => Err(Error::Backend(format!(
                "act: the device's frame stacks differ from the observations at byte {i} (env {}, frame {}): the caller's ObsChange is not true of them",
                i / OBS_BYTES,
                i % OBS_BYTES / FRAME_BYTES
            ))),
        }
    }

    /// Enqueues the copies of the just-uploaded act frames into step `t` of `rollout` and
    /// records the event a learner on another stream waits for before reading them.
    fn record_frames(&mut self, rollout: &mut DeviceRollout, t: usize) -> Result<()> {
        let (agents, envs, n_steps) = (self.spec.agents, self.spec.envs_per_agent, self.spec.n_steps);
        let (dev, s) = (self.arena.device(), self.arena.stream());
        let rows = envs * OBS_BYTES;
        for a in 0..agents {
            dev.copy(s, &self.act_fwd.obs, a * rows, &mut rollout.obs, (a * n_steps + t) * rows, rows)?;
        }
        rollout.ready = Some(dev.record_event(s)?);
        Ok(())
    }

    /// `learn`, reading the frames from `rollout` in place when given (the caller checked it is
    /// complete and fits), else uploading them from `seg.obs`.
    fn learn_impl(&mut self, seg: &Segment, rollout: Option<&DeviceRollout>) -> Result<Vec<AgentLearnStats>> {
        seg.check(&self.spec)?;
        let num_actions = self.spec.net.actions;
        if let Some((i, a)) = seg.actions.iter().enumerate().find(|(_, &a)| a as usize >= num_actions) {
            return Err(Error::Shape(format!("segment action {a} at index {i} is out of range for {num_actions} actions")));
        }
        let s = self.arena.stream();
        if let Some(ro) = rollout {
            // The recording copies ran on the actor's stream (this backend's own when not
            // pipelined): the update's kernels wait for the last of them.
            if let Some(ready) = &ro.ready {
                self.arena.device().stream_wait_event(s, ready)?;
            }
            if self.check_device_frames {
                let mut on_device = vec![0u8; ro.obs.len()];
                self.arena.device().download(s, &ro.obs, 0, &mut on_device)?;
                if let Some(i) = on_device.iter().zip(seg.obs).position(|(d, h)| d != h) {
                    return Err(Error::Backend(format!(
                        "learn: the device rollout differs from the segment's frames at byte {i} (sample {}): the caller broke the DeviceRollout contract",
                        i / OBS_BYTES
                    )));
                }
            }
        }
        let timed = self.begin_timed()?;
        // `seg` is borrowed for this whole call and the upload stream is drained before it
        // returns, on every path: the asynchronous copies never outlive their sources. The
        // rollout is borrowed as long; the update's last download waits for the compute stream,
        // so its reads of the rollout are finished too before the caller may refill it.
        let result = self.upload_segment(seg, rollout.is_none()).and_then(|()| self.learn_uploaded(seg, rollout.map(|r| &r.obs), timed));
        let drained = self.arena.device().synchronize(self.upload_stream);
        let stats = result?;
        drained?;
        Ok(stats)
    }

    /// Backward of one conv layer `l`: weight/bias gradients into the arena (two passes), and
    /// for l > 0 the gradient w.r.t. the layer's input into `dconv[l-1]`. `frames` as in
    /// `learn_uploaded` (conv1's input).
    fn conv_backward(&mut self, l: usize, frames: Option<&DeviceBuffer<u8>>) -> Result<()> {
        let (a, n) = (self.spec.agents, self.learn_fwd.n);
        let shape = self.spec.net.convs[l];
        let lp = self.convs[l];
        let fwd = &self.learn_fwd;
        let sc = &mut self.learn;
        let (dev, s, params, grads) = self.arena.params_and_grads();
        let (lower, upper) = sc.dconv.split_at_mut(l);
        let dy = upper[0].as_ref().expect("dconv of every layer exists");
        let per_chunk = launch::CONV_FILTER_SAMPLES_PER_CHUNK;
        let chunks = launch::filter_chunks(n, per_chunk);
        let partials = &mut sc.partials[l];
        let p = self.spec.precision;
        // dy is masked already (see `dconv`).
        if l == 0 {
            let obs = frames.unwrap_or(&fwd.obs);
            launch::conv_backward_filter(dev, s, &shape, obs, dy, partials, a, n, per_chunk, FilterTarget::Partials, p)?;
        } else {
            launch::conv_backward_filter(dev, s, &shape, &fwd.conv[l - 1], dy, partials, a, n, per_chunk, FilterTarget::Partials, p)?;
        }
        launch::conv_grad_sum_chunks(dev, s, &shape, partials, grads, a, chunks, lp)?;
        if l > 0 {
            let dx = lower[l - 1].as_mut().expect("dconv of every layer exists");
            let below = Some(&fwd.conv[l - 1]);
            launch::conv_backward_data(dev, s, &shape, dy, params, &mut sc.weight_taps, below, dx, a, n, lp, p)?;
        }
        Ok(())
    }
}

impl<D: Device> Backend for GpuBackend<D> {
    fn name(&self) -> &'static str {
        self.arena.device().kind()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    fn act(&mut self, obs: &[u8], step: u64, greedy: bool, out: &mut ActOutput) -> Result<()> {
        self.act_impl(obs, ObsChange::Unknown, step, greedy, out, None)
    }

    fn act_training(&mut self, obs: &[u8], change: ObsChange, step: u64, out: &mut ActOutput, record: Option<(&mut DeviceRollout, usize)>) -> Result<()> {
        self.act_impl(obs, change, step, false, out, record)
    }

    fn learn(&mut self, seg: &Segment) -> Result<Vec<AgentLearnStats>> {
        self.learn_impl(seg, None)
    }

    fn learn_recorded(&mut self, seg: &Segment, rollout: &DeviceRollout) -> Result<Vec<AgentLearnStats>> {
        // Read in place only what is provably the acted-on frames of a rollout of this shape on
        // this device; anything else (a partly recorded rollout after a failed or restored
        // collection, another device) takes the upload path, which learns from the same bytes.
        let usable = rollout.is_complete() && rollout.fits(&self.spec) && rollout.obs.same_device(&self.learn_fwd.obs);
        self.learn_impl(seg, usable.then_some(rollout))
    }

    fn alloc_device_rollout(&self) -> Result<Option<DeviceRollout>> {
        let bytes = self.spec.agents * self.spec.segment_samples() * OBS_BYTES;
        DeviceRollout::new(self.arena.device().alloc_zeros(bytes)?, &self.spec).map(Some)
    }

    fn transfer_bytes(&self) -> Option<TransferBytes> {
        Some(self.arena.device().transfer_bytes())
    }

    fn kernel_launches(&self) -> Option<u64> {
        Some(self.launch_count())
    }

    fn mix(&mut self, in_peers: &[Vec<usize>]) -> Result<()> {
        let agents = self.spec.agents;
        crate::backend::check_peer_lists(in_peers, agents)?;
        let timed = self.begin_timed()?;
        self.arena.mix(in_peers)?;
        self.end_timed(timed)
    }

    fn mix_with_remote(&mut self, in_peers: &[Vec<usize>], remote: &[&[f32]]) -> Result<()> {
        let timed = self.begin_timed()?;
        self.arena.mix_with_remote(in_peers, remote)?;
        self.end_timed(timed)
    }

    fn mix_over_link(
        &mut self, in_peers: &[Vec<usize>], sends: &[(usize, usize, u32)], recvs: &[(usize, u32)], link: &mut dyn crate::dist::DeviceLink,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let timed = self.begin_timed()?;
        self.arena.mix_over_link(in_peers, sends, recvs, link, timeout)?;
        self.end_timed(timed)
    }

    fn native_stream(&mut self) -> Result<Option<crate::device::NativeStream>> {
        self.arena.device().native_stream(self.arena.stream()).map(Some)
    }

    fn device_seconds(&self) -> Option<f64> {
        Some(self.device_seconds)
    }

    fn find_nonfinite_param(&mut self) -> Result<Option<(usize, usize, f32)>> {
        self.arena.find_nonfinite()
    }

    fn alloc_pinned_bytes(&self, len: usize) -> Result<Option<HostBuffer<u8>>> {
        self.arena.device().alloc_host(len).map(Some)
    }

    fn copy_params_into(&mut self, dst: &mut dyn Backend) -> Result<()> {
        if self.spec != *dst.spec() {
            return Err(Error::Shape("copy_params_into: the two backends have different specs".into()));
        }
        if let Some(other) = dst.as_any_mut().downcast_mut::<GpuBackend<D>>() {
            if self.arena.same_device(&other.arena) {
                let timed = self.begin_timed()?;
                self.arena.copy_params_into(&mut other.arena)?;
                return self.end_timed(timed);
            }
        }
        // Another device or another kind of backend: through the host.
        let params = self.read_params()?;
        dst.write_params(&params)
    }

    fn consensus_distance(&mut self) -> Result<f64> {
        self.arena.consensus_distance()
    }

    fn read_params(&mut self) -> Result<Vec<f32>> {
        self.arena.read_params()
    }

    fn write_params(&mut self, params: &[f32]) -> Result<()> {
        self.arena.write_params(params)
    }

    fn read_optimizer_state(&mut self) -> Result<Vec<f32>> {
        self.arena.read_optimizer_state()
    }

    fn write_optimizer_state(&mut self, square_avg: &[f32]) -> Result<()> {
        self.arena.write_optimizer_state(square_avg)
    }
}
