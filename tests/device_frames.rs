//! Issue 12, "frames stay on the device": the frames `act` uploads are kept in a device rollout
//! (`DeviceRollout`) that `learn` reads in place, so no frame of a segment crosses the bus twice;
//! and per env step only each env's newest frame goes up, the device building the 4-frame
//! stacks itself (`frame_stack_push`, whose CPU twin is the host's own stacking).
//! Only where the bytes come from changes, so every result must be bit-identical to the upload
//! path (which is still the fallback whenever the device copy cannot be proven whole). Checked
//! under the CUDA simulator: training (lock-step and pipelined, and a pipelined resume whose
//! restored segment must take the fallback), the backend's fallback rules, the byte counters, and
//! `bench learner`.

use gala_gpu::algo::{NoProgress, Trainer};
use gala_gpu::backend::gpu::GpuBackend;
use gala_gpu::backend::{ActOutput, Backend, BackendKind, BackendSpec, ObsChange, Precision, Segment};
use gala_gpu::bench::{bench_learner, LearnerBenchOptions};
use gala_gpu::config::Config;
use gala_gpu::device::sim::SimDevice;
use gala_gpu::env::{vec_env::push_frame, EnvPreset, EnvSettings, GameId, FRAME_BYTES};
use gala_gpu::model::{init_params, NetPreset, NetSpec, FRAME_STACK, OBS_BYTES};
use gala_gpu::backend::gpu::launch;
use gala_gpu::device::Device;
use gala_gpu::rng::{PhiloxStream, Purpose};
use std::sync::Arc;

type SimBackend = GpuBackend<Arc<SimDevice>>;

fn config(pipeline: bool, agents: usize, envs: usize, n_steps: usize, updates: u64) -> Config {
    Config {
        game: "catch".into(),
        agents,
        envs_per_agent: envs,
        n_steps,
        // catch: one raw frame per agent step
        frames: updates * (agents * envs * n_steps) as u64,
        backend: BackendKind::Sim,
        threads: 2,
        seed: 33,
        pipeline,
        ..Config::default()
    }
}

/// The trainer's backends (learner, and the pipelined actor), with the device-frames check on:
/// every update that reads the device rollout first compares it with the segment's host frames
/// byte for byte, and every act the stacks built on the device with the host's observations.
fn check_frames(t: &mut Trainer) {
    let sim = |b: &mut dyn Backend| {
        b.as_any_mut().downcast_mut::<SimBackend>().expect("a sim trainer's backend is a GpuBackend<Arc<SimDevice>>").set_check_device_frames(true);
    };
    sim(t.backend_mut());
    if let Some(actor) = t.actor_backend_mut() {
        sim(actor);
    }
}

fn uploaded(t: &Trainer) -> (u64, u64) {
    let (learner, actor) = t.transfer_bytes();
    (learner.expect("device backend").uploaded, actor.map_or(0, |a| a.uploaded))
}

/// Trains `c` with the frames read from the device (checked against the host copy) and with the
/// old upload path; returns both summaries' params_sha256 and each run's uploaded bytes
/// (learner, actor) — over the whole run, after construction.
fn both_paths(c: &Config) -> ((String, (u64, u64)), (String, (u64, u64))) {
    let mut dev = Trainer::new(c).unwrap();
    check_frames(&mut dev);
    let before = uploaded(&dev);
    let a = dev.train(None, &mut NoProgress).unwrap();
    let after = uploaded(&dev);
    let mut host = Trainer::new(c).unwrap();
    host.set_device_frames(false).unwrap();
    let hb = uploaded(&host);
    let b = host.train(None, &mut NoProgress).unwrap();
    let ha = uploaded(&host);
    assert_eq!(a.updates, b.updates);
    ((a.params_sha256, (after.0 - before.0, after.1 - before.1)), (b.params_sha256, (ha.0 - hb.0, ha.1 - hb.1)))
}

/// Bytes one `learn` uploads besides frames: actions, rewards, dones [agents][n][envs] (4 bytes
/// each), the bootstrap values [agents][envs], and the behaviour log-probs when off-policy.
fn scalar_bytes(agents: usize, envs: usize, n: usize, behaviour: bool) -> u64 {
    let samples = (agents * envs * n) as u64;
    4 * (3 * samples + (agents * envs) as u64 + if behaviour { samples } else { 0 })
}

/// Bytes one env step's act uploads when the device builds the stacks: each env's newest frame
/// and its done flag (f32).
fn stepped_bytes(agents: usize, envs: usize) -> u64 {
    (agents * envs * (FRAME_BYTES + 4)) as u64
}

/// Bytes one lock-step gossip round on the ring uploads: the fused mix's peer table, offsets
/// [agents + 1] and one in-peer per agent (u32 each).
fn gossip_bytes(agents: usize) -> u64 {
    4 * ((agents + 1) + agents) as u64
}

#[test]
fn lock_step_training_reads_its_frames_from_the_device_bit_identically() {
    let (agents, envs, n, updates) = (2, 3, 3, 3u64);
    let ((dev_sha, dev_up), (host_sha, host_up)) = both_paths(&config(false, agents, envs, n, updates));
    assert_eq!(dev_sha, host_sha, "the device rollout must give exactly the upload path's parameters");
    let act_bytes = (agents * envs * OBS_BYTES) as u64;
    // Per update: the first act sees the previous bootstrap act's observations (nothing goes
    // up; the very first act of the run uploads whole stacks), the other n - 1 acts and the
    // bootstrap act one env step each (newest frames and done flags); the learner only the
    // scalars, gossip its peer table.
    let scalars = scalar_bytes(agents, envs, n, false) + gossip_bytes(agents);
    assert_eq!(dev_up.0, act_bytes + updates * (n as u64 * stepped_bytes(agents, envs) + scalars), "no frame goes up twice, only the newest ones");
    // Before issue 12: n + 1 acts uploaded whole stacks and the learner the segment's again.
    assert_eq!(host_up.0, updates * ((2 * n as u64 + 1) * act_bytes + scalars), "the upload path sends every segment's frames again");
}

#[test]
fn pipelined_training_reads_the_actors_frames_from_the_device_bit_identically() {
    // The actor (its own backend and stream) records into the rollout the learner (another
    // backend on the same device) reads; the rollouts are double-buffered with the host ones.
    let (agents, envs, n, updates) = (2, 2, 3, 4u64);
    let ((dev_sha, dev_up), (host_sha, host_up)) = both_paths(&config(true, agents, envs, n, updates));
    assert_eq!(dev_sha, host_sha, "pipelined: the device rollout must give exactly the upload path's parameters");
    let act_bytes = (agents * envs * OBS_BYTES) as u64;
    // The learner uploads the scalars (the first segment is on-policy, the others carry
    // behaviour log-probs) and, for each of those stale segments, s_T's stacks for its own
    // V(s_T) (the trainer's module docs): one act's worth, never the segment's frames; the
    // actor uploads each frame once, when acting.
    let scalars = scalar_bytes(agents, envs, n, false) + (updates - 1) * scalar_bytes(agents, envs, n, true) + updates * gossip_bytes(agents);
    assert_eq!(dev_up.0, scalars + (updates - 1) * act_bytes, "the pipelined learner uploads no segment frames, only s_T's stacks");
    assert_eq!(dev_up.1, act_bytes + updates * n as u64 * stepped_bytes(agents, envs), "the actor uploads every new frame once");
    assert_eq!(host_up.0, dev_up.0 + updates * n as u64 * act_bytes);
    assert_eq!(host_up.1, updates * (n as u64 + 1) * act_bytes);
}

#[test]
fn a_resumed_pipelined_run_uploads_its_restored_segment_and_stays_bit_exact() {
    // A checkpoint taken mid-run holds the collected segment not learned from yet: restored,
    // its frames are only on the host, so the first update must take the upload path (the
    // device check would fail if it read the stale device copy), and the rest the device one.
    let (agents, envs, n, updates) = (2, 2, 2, 4u64);
    let c = config(true, agents, envs, n, updates);
    let straight = Trainer::new(&c).unwrap().train(None, &mut NoProgress).unwrap();
    let mut first = Trainer::new(&c).unwrap();
    first.update().unwrap();
    first.update().unwrap();
    let ck = first.checkpoint(0.0).unwrap();
    assert!(ck.pipeline.pending.is_some(), "a mid-run pipelined checkpoint carries its pending segment");
    drop(first);
    let (mut resumed, exact) = Trainer::from_checkpoint(&ck, &c).unwrap();
    assert!(exact);
    check_frames(&mut resumed);
    let before = uploaded(&resumed).0;
    resumed.update().unwrap();
    let act_bytes = (agents * envs * OBS_BYTES) as u64;
    // The restored (stale) segment's frames, plus s_T's stacks for the learner's V(s_T).
    let restored = n as u64 * act_bytes + act_bytes;
    assert_eq!(uploaded(&resumed).0 - before, restored + scalar_bytes(agents, envs, n, true) + gossip_bytes(agents), "the restored segment's frames go up once");
    let summary = resumed.train(None, &mut NoProgress).unwrap();
    assert_eq!(summary.updates, updates);
    assert_eq!(summary.params_sha256, straight.params_sha256, "resumed pipelined run on the simulator must equal the straight one");
}

// --- the backend's rules -------------------------------------------------------------------

fn spec(agents: usize, envs: usize, n_steps: usize) -> BackendSpec {
    BackendSpec { net: NetSpec::new(NetPreset::Gala, 5), agents, agent_offset: 0, envs_per_agent: envs, n_steps, seed: 9, hyper: Config::default().hyper(), precision: Precision::Fp32 }
}

struct Data {
    obs: Vec<u8>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    dones: Vec<f32>,
    bootstrap: Vec<f32>,
}

fn data(spec: &BackendSpec, seed: u64) -> Data {
    let n = spec.agents * spec.segment_samples();
    let mut rng = PhiloxStream::new(seed, 7, Purpose::EnvStep);
    Data {
        obs: (0..n * OBS_BYTES).map(|_| if rng.below(6) == 0 { rng.below(256) as u8 } else { 0 }).collect(),
        actions: (0..n).map(|_| rng.below(spec.net.actions as u32)).collect(),
        rewards: (0..n).map(|_| [0.0, 1.0, -1.0][rng.below(3) as usize]).collect(),
        dones: (0..n).map(|_| if rng.below(5) == 0 { 1.0 } else { 0.0 }).collect(),
        bootstrap: (0..spec.act_batch()).map(|_| rng.next_normal() as f32 * 0.1).collect(),
    }
}

impl Data {
    fn segment(&self) -> Segment<'_> {
        Segment { obs: &self.obs, actions: &self.actions, rewards: &self.rewards, dones: &self.dones, bootstrap_values: &self.bootstrap, behaviour_log_probs: None }
    }
    /// Step t's frames as `act` takes them, [agents][envs] out of [agents][n][envs].
    fn step_obs(&self, spec: &BackendSpec, t: usize) -> Vec<u8> {
        let rows = spec.envs_per_agent * OBS_BYTES;
        (0..spec.agents).flat_map(|a| self.obs[(a * spec.n_steps + t) * rows..][..rows].iter().copied()).collect()
    }
}

fn backend(spec: &BackendSpec) -> GpuBackend<SimDevice> {
    let mut b = GpuBackend::new(SimDevice::new(), spec.clone(), &init_params(&spec.net, 4)).unwrap();
    b.set_check_device_frames(true);
    b
}

#[test]
fn learn_reads_a_whole_device_rollout_and_falls_back_to_uploading_otherwise() {
    // Ragged shapes: 3 agents x 2 envs x 3 steps.
    let s = spec(3, 2, 3);
    let d = data(&s, 1);
    let frames = (s.agents * s.segment_samples() * OBS_BYTES) as u64;
    // The reference: the plain upload path.
    let mut plain = backend(&s);
    let want_stats = plain.learn(&d.segment()).unwrap();
    let want = plain.read_params().unwrap();

    let mut out = ActOutput::default();
    // Whole rollout, consecutive RNG steps from 40: read in place, nothing of the frames uploaded.
    let mut b = backend(&s);
    let mut ro = b.alloc_device_rollout().unwrap().unwrap();
    for t in 0..s.n_steps {
        b.act_training(&d.step_obs(&s, t), ObsChange::Unknown, 40 + t as u64, &mut out, Some((&mut ro, t))).unwrap();
    }
    assert!(ro.is_complete());
    let up = b.transfer_bytes().unwrap().uploaded;
    let stats = b.learn_recorded(&d.segment(), &ro).unwrap();
    assert_eq!(b.transfer_bytes().unwrap().uploaded - up, scalar_bytes(s.agents, s.envs_per_agent, s.n_steps, false));
    assert_eq!(stats, want_stats);
    assert_eq!(b.read_params().unwrap(), want, "bit-identical to the upload path");

    // The C ABI's case: the segment was never acted on (an empty rollout), or only partly, or
    // at RNG steps that are not one segment's: every one uploads and learns the same.
    let cases: [&[Option<u64>]; 3] = [&[None, None, None], &[Some(0), None, Some(2)], &[Some(0), Some(1), Some(5)]];
    for steps in cases {
        let mut b = backend(&s);
        let mut ro = b.alloc_device_rollout().unwrap().unwrap();
        for (t, step) in steps.iter().enumerate() {
            if let Some(step) = step {
                b.act_training(&d.step_obs(&s, t), ObsChange::Unknown, *step, &mut out, Some((&mut ro, t))).unwrap();
            }
        }
        assert!(!ro.is_complete(), "{steps:?}");
        let up = b.transfer_bytes().unwrap().uploaded;
        b.learn_recorded(&d.segment(), &ro).unwrap();
        assert_eq!(b.transfer_bytes().unwrap().uploaded - up, frames + scalar_bytes(s.agents, s.envs_per_agent, s.n_steps, false), "{steps:?}: the fallback uploads the frames");
        assert_eq!(b.read_params().unwrap(), want, "{steps:?}: the fallback learns the same");
    }

    // `clear` forgets a whole rollout (the trainer calls it whenever the host frames change).
    let mut b = backend(&s);
    let mut ro = b.alloc_device_rollout().unwrap().unwrap();
    for t in 0..s.n_steps {
        b.act_training(&d.step_obs(&s, t), ObsChange::Unknown, t as u64, &mut out, Some((&mut ro, t))).unwrap();
    }
    ro.clear();
    assert_eq!(ro.recorded_steps(), 0);
    let up = b.transfer_bytes().unwrap().uploaded;
    b.learn_recorded(&d.segment(), &ro).unwrap();
    assert!(b.transfer_bytes().unwrap().uploaded - up >= frames);
    assert_eq!(b.read_params().unwrap(), want);
}

#[test]
fn device_rollouts_of_another_device_or_shape_are_never_read() {
    let s = spec(2, 2, 2);
    let d = data(&s, 2);
    let frames = (s.agents * s.segment_samples() * OBS_BYTES) as u64;
    let mut out = ActOutput::default();
    // Another device: act cannot copy into it, so nothing is recorded and learn uploads.
    let other = backend(&s);
    let mut foreign = other.alloc_device_rollout().unwrap().unwrap();
    let mut b = backend(&s);
    for t in 0..s.n_steps {
        b.act_training(&d.step_obs(&s, t), ObsChange::Unknown, t as u64, &mut out, Some((&mut foreign, t))).unwrap();
    }
    assert_eq!(foreign.recorded_steps(), 0);
    let up = b.transfer_bytes().unwrap().uploaded;
    b.learn_recorded(&d.segment(), &foreign).unwrap();
    assert!(b.transfer_bytes().unwrap().uploaded - up >= frames);

    // Another shape: recording into it is a caller bug (an error that changes nothing); a
    // complete rollout of another shape is not read (the learner uploads).
    let s3 = spec(2, 2, 3);
    let mut small = backend(&s3);
    let mut ro3 = small.alloc_device_rollout().unwrap().unwrap();
    let mut b = backend(&s);
    let e = b.act_training(&d.step_obs(&s, 0), ObsChange::Unknown, 0, &mut out, Some((&mut ro3, 0))).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let e = b.act_training(&d.step_obs(&s, 0), ObsChange::Unknown, 0, &mut out, Some((&mut ro3, 7))).unwrap_err().to_string();
    assert!(e.contains("step 7"), "{e}");
    let d3 = data(&s3, 3);
    for t in 0..s3.n_steps {
        small.act_training(&d3.step_obs(&s3, t), ObsChange::Unknown, t as u64, &mut out, Some((&mut ro3, t))).unwrap();
    }
    assert!(ro3.is_complete());
    let up = b.transfer_bytes().unwrap().uploaded;
    b.learn_recorded(&d.segment(), &ro3).unwrap();
    assert!(b.transfer_bytes().unwrap().uploaded - up >= frames, "a rollout of another shape is not read");
}

#[test]
fn the_device_frames_check_catches_a_segment_that_is_not_what_was_acted_on() {
    // What the device cannot prove alone (the host segment holds the frames acted on) is the
    // caller's contract; the test aid catches a caller that breaks it, before anything changes.
    let s = spec(2, 3, 2);
    let d = data(&s, 4);
    let mut b = backend(&s);
    let before = b.read_params().unwrap();
    let mut ro = b.alloc_device_rollout().unwrap().unwrap();
    let mut out = ActOutput::default();
    for t in 0..s.n_steps {
        b.act_training(&d.step_obs(&s, t), ObsChange::Unknown, t as u64, &mut out, Some((&mut ro, t))).unwrap();
    }
    let mut other = data(&s, 4);
    let i = OBS_BYTES * 4 + 1000;
    other.obs[i] ^= 0x55;
    let e = b.learn_recorded(&other.segment(), &ro).unwrap_err().to_string();
    assert!(e.contains(&format!("byte {i}")), "{e}");
    assert_eq!(b.read_params().unwrap(), before, "a refused update changes nothing");
    // The same rollout with the right segment learns.
    b.learn_recorded(&d.segment(), &ro).unwrap();
}

#[test]
fn bench_learner_reads_the_frames_from_the_device_as_training_does() {
    let opts = LearnerBenchOptions {
        agents: 2,
        envs_per_agent: 2,
        n_steps: 2,
        net: NetPreset::Gala,
        actions: 6,
        backend: BackendKind::Sim,
        updates: 1,
        threads: 1,
        profile: false,
        host_frames: false,
        precision: Precision::Fp32,
    };
    let dev = bench_learner(&opts).unwrap();
    let host = bench_learner(&LearnerBenchOptions { host_frames: true, ..opts.clone() }).unwrap();
    let scalars = scalar_bytes(2, 2, 2, false);
    assert_eq!(dev.uploaded_bytes_per_update, Some(scalars));
    assert_eq!(host.uploaded_bytes_per_update, Some(scalars + (2 * 2 * 2 * OBS_BYTES) as u64));
    assert_eq!((dev.frames.as_str(), host.frames.as_str()), ("device rollout", "pinned upload"));
    assert_eq!(dev.launches_per_update, host.launches_per_update, "the same 24 launches either way");
    // Its act step in the steady state: the frames' device stacking, the forward pass (3 convs,
    // fc and its split sum, heads), sampling and the output packing.
    assert_eq!(dev.launches_per_act, Some(9));
    assert!(dev.act_us > 0.0);
}

// --- stage two: only the newest frame per env step goes up -----------------------------------

#[test]
fn sim_frame_stack_push_equals_the_host_stacking_on_ragged_shapes() {
    // The kernel text under the simulator against its CPU twin (the host's own stacking), in
    // place over several steps, on shapes that fit no block evenly; resets every few steps.
    let dev = SimDevice::new();
    let st = dev.default_stream();
    // Pixel by pixel where frame_len % 4 != 0, else by words; depths 1 to the kernel's 8.
    for (rows, frame_len, depth) in
        [(1usize, 1usize, 1usize), (7, 13, 4), (3, 300, 3), (5, 257, 2), (2, FRAME_BYTES, FRAME_STACK), (3, 4, 1), (2, 1028, 8), (4, 36, 5), (3, 7, 8)]
    {
        let mut rng = PhiloxStream::new(rows as u64, frame_len as u64, Purpose::EnvStep);
        let mut host: Vec<u8> = (0..rows * depth * frame_len).map(|_| rng.below(256) as u8).collect();
        let mut stacks = dev.alloc_zeros::<u8>(host.len()).unwrap();
        dev.upload(st, &host, &mut stacks, 0).unwrap();
        let mut frames_dev = dev.alloc_zeros::<u8>(rows * frame_len).unwrap();
        let mut resets_dev = dev.alloc_zeros::<f32>(rows).unwrap();
        for step in 0..6 {
            let frames: Vec<u8> = (0..rows * frame_len).map(|_| rng.below(256) as u8).collect();
            // Any non-zero flag resets, as in the twin's `reset != 0.0`.
            let resets: Vec<f32> = (0..rows).map(|_| [0.0, 0.0, 1.0, 2.0][rng.below(4) as usize]).collect();
            dev.upload(st, &frames, &mut frames_dev, 0).unwrap();
            dev.upload(st, &resets, &mut resets_dev, 0).unwrap();
            launch::frame_stack_push(&dev, st, &mut stacks, &frames_dev, &resets_dev, rows, frame_len, depth).unwrap();
            for r in 0..rows {
                push_frame(&mut host[r * depth * frame_len..(r + 1) * depth * frame_len], &frames[r * frame_len..(r + 1) * frame_len], resets[r] != 0.0);
            }
            let mut got = vec![0u8; host.len()];
            dev.download(st, &stacks, 0, &mut got).unwrap();
            assert!(got == host, "rows {rows} frame_len {frame_len} depth {depth} step {step}: device stacks differ from the host's");
        }
        // Preconditions are errors, not out-of-bounds writes.
        let e = launch::frame_stack_push(&dev, st, &mut stacks, &frames_dev, &resets_dev, rows + 1, frame_len, depth).unwrap_err().to_string();
        assert!(e.contains("stacks"), "{e}");
    }
    let mut deep = dev.alloc_zeros::<u8>(9 * 4).unwrap();
    let (frame, reset) = (dev.alloc_zeros::<u8>(4).unwrap(), dev.alloc_zeros::<f32>(1).unwrap());
    let e = launch::frame_stack_push(&dev, st, &mut deep, &frame, &reset, 1, 4, 9).unwrap_err().to_string();
    assert!(e.contains("at most 8"), "{e}");
}

#[test]
fn acting_on_catch_with_only_the_newest_frames_uploaded_sees_the_hosts_stacks() {
    // A real vector env (catch: a game ends every 9 steps, so stacks are zeroed on done) stepped
    // 25 times; every act after the first gets only the newest frames and done flags, and the
    // device-frames check compares the stacks it forwards with the host's observations.
    let s = BackendSpec { net: NetSpec::new(NetPreset::Gala, 3), ..spec(2, 3, 5) }; // catch: 3 actions
    let settings = EnvSettings { game: GameId::Catch, preset: EnvPreset::Gala, seed: 5, rom: None, episodic_life: None };
    let mut venv = gala_gpu::env::make_vec_env(&settings, s.act_batch(), 1).unwrap();
    let (mut gpu, mut reference) = (backend(&s), backend(&s));
    reference.set_check_device_frames(false);
    let (mut out, mut want) = (ActOutput::default(), ActOutput::default());
    let rows = s.act_batch();
    let mut dones = 0;
    for step in 0..25u64 {
        let change = if step == 0 { ObsChange::Unknown } else { ObsChange::Stepped { frames: venv.newest_frames(), resets: venv.dones() } };
        let up = gpu.transfer_bytes().unwrap().uploaded;
        gpu.act_training(venv.observations(), change, step, &mut out, None).unwrap();
        let sent = gpu.transfer_bytes().unwrap().uploaded - up;
        assert_eq!(sent, if step == 0 { (rows * OBS_BYTES) as u64 } else { stepped_bytes(s.agents, s.envs_per_agent) }, "step {step}");
        // Acting on the same observations again: nothing goes up, the same outputs come back.
        let again = out.clone();
        gpu.act_training(venv.observations(), ObsChange::Same, step, &mut out, None).unwrap();
        assert_eq!(out, again);
        assert_eq!(gpu.transfer_bytes().unwrap().uploaded - up, sent);
        reference.act(venv.observations(), step, false, &mut want).unwrap();
        assert_eq!(out, want, "step {step}: the same actions, values and log-probs as whole-stack uploads");
        venv.step(&out.actions).unwrap();
        dones += venv.dones().iter().filter(|&&d| d != 0.0).count();
    }
    assert!(dones >= rows, "episodes ended ({dones} dones), so stacks were zeroed on the way");
}

#[test]
fn a_change_without_the_previous_stacks_uploads_them_and_a_wrong_one_is_refused() {
    let s = spec(2, 2, 2);
    let d = data(&s, 6);
    let obs = d.step_obs(&s, 0);
    let rows = s.act_batch();
    let (frames, resets) = (vec![7u8; rows * FRAME_BYTES], vec![0f32; rows]);
    let mut out = ActOutput::default();
    // No previous act: the change cannot be applied; the whole stacks go up (and match).
    let mut b = backend(&s);
    let up = b.transfer_bytes().unwrap().uploaded;
    b.act_training(&obs, ObsChange::Stepped { frames: &frames, resets: &resets }, 0, &mut out, None).unwrap();
    assert_eq!(b.transfer_bytes().unwrap().uploaded - up, (rows * OBS_BYTES) as u64, "a change without previous stacks uploads them whole");
    let mut fresh = backend(&s);
    let up = fresh.transfer_bytes().unwrap().uploaded;
    fresh.act_training(&obs, ObsChange::Same, 0, &mut out, None).unwrap();
    assert_eq!(fresh.transfer_bytes().unwrap().uploaded - up, (rows * OBS_BYTES) as u64, "Same without a previous act uploads the stacks");
    // Wrong sizes are a caller bug: an error.
    let e = b.act_training(&obs, ObsChange::Stepped { frames: &frames[1..], resets: &resets }, 1, &mut out, None).unwrap_err().to_string();
    assert!(e.contains("frame bytes"), "{e}");
    // A change that is not true of the observations is caught by the device-frames check, and
    // the next act cannot build on the unproven stacks: it uploads them whole and succeeds.
    let e = b.act_training(&obs, ObsChange::Stepped { frames: &frames, resets: &resets }, 1, &mut out, None).unwrap_err().to_string();
    assert!(e.contains("differ"), "{e}");
    let up = b.transfer_bytes().unwrap().uploaded;
    b.act_training(&obs, ObsChange::Same, 2, &mut out, None).unwrap();
    assert_eq!(b.transfer_bytes().unwrap().uploaded - up, (rows * OBS_BYTES) as u64);
}
