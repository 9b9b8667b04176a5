//! HTS-RL pipelining: rollouts collected by the actor while the learner learns, one update old.

use gala_gpu::algo::{NoProgress, Trainer};
use gala_gpu::backend::BackendKind;
use gala_gpu::config::Config;

fn config(pipeline: bool, frames: u64) -> Config {
    Config {
        game: "catch".into(),
        agents: 2,
        envs_per_agent: 3,
        n_steps: 5,
        frames,
        backend: BackendKind::Cpu,
        threads: 2,
        seed: 21,
        pipeline,
        ..Config::default()
    }
}

#[test]
fn pipelined_runs_are_bit_identical_and_learn_every_collected_segment() {
    let frames = 6 * 2 * 3 * 5; // 6 segments
    let a = Trainer::new(&config(true, frames)).unwrap().train(None, &mut NoProgress).unwrap();
    let b = Trainer::new(&config(true, frames)).unwrap().train(None, &mut NoProgress).unwrap();
    assert_eq!(a.params_sha256, b.params_sha256, "same seed, pipelined: must be bit-identical");
    assert_eq!((a.frames, a.updates), (frames, 6), "every collected segment is learned from, none twice");
    let plain = Trainer::new(&config(false, frames)).unwrap().train(None, &mut NoProgress).unwrap();
    assert_eq!(plain.updates, 6);
    // Segments after the first were collected with one-update-old parameters, so the result
    // differs from the on-policy run's (while the first update is identical: checked next).
    assert_ne!(a.params_sha256, plain.params_sha256);
    let one_p = Trainer::new(&config(true, 30)).unwrap().train(None, &mut NoProgress).unwrap();
    let one = Trainer::new(&config(false, 30)).unwrap().train(None, &mut NoProgress).unwrap();
    assert_eq!(one_p.updates, 1);
    assert_eq!(one_p.params_sha256, one.params_sha256, "the first segment is on-policy: ratio exactly 1 (or clipped to 1)");
}

/// On a device backend the learner and the actor share the device (two streams) and θ goes
/// from one to the other device-to-device: still bit-identical run to run, and the actor's
/// parameters equal the learner's after every update that collected.
#[test]
fn pipelined_runs_on_the_simulator_share_one_device_and_stay_bit_identical() {
    let c = Config { backend: BackendKind::Sim, envs_per_agent: 2, n_steps: 2, frames: 3 * 2 * 2 * 2, ..config(true, 0) };
    let a = Trainer::new(&c).unwrap().train(None, &mut NoProgress).unwrap();
    let mut t = Trainer::new(&c).unwrap();
    let b = t.train(None, &mut NoProgress).unwrap();
    assert_eq!(a.backend, "sim");
    assert_eq!(a.params_sha256, b.params_sha256, "same seed, pipelined on the simulator: must be bit-identical");
    assert_eq!(b.updates, 3);
    let (learner, actor) = t.device_seconds();
    assert!(learner.unwrap() > 0.0 && actor.unwrap() > 0.0, "both engines ran on the device");
}

#[test]
fn the_pipeline_refuses_asynchronous_gossip() {
    let c = Config { sync_freq: 3, agents: 2, ..config(true, 100) };
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("pipeline"), "{e}");
}

/// Same budget and threshold as the plain-mode test in tests/cli.rs
/// (`catch_is_learned_within_the_frame_budget`): ≥ 0.8 mean return over the last 100 games
/// after 48,000 frames with 4 agents × 4 envs and lr 1.4e-3 (seen: 1.00 pipelined).
#[test]
fn pipelined_mode_learns_catch_as_well_as_the_plain_mode() {
    let c = Config { agents: 4, envs_per_agent: 4, lr: 1.4e-3, frames: 48_000, seed: 1, ..config(true, 0) };
    let summary = Trainer::new(&c).unwrap().train(None, &mut NoProgress).unwrap();
    let ret = summary.mean_return_100.unwrap();
    assert!(ret >= 0.8, "pipelined catch: mean return {ret} < 0.8 after 48k frames");
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and resume of pipelined runs: the segment in flight, and the actor's parameters.

use gala_gpu::algo::ProgressSink;
use gala_gpu::checkpoint::Checkpoint;
use gala_gpu::run::{MetricsRow, RunDir};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Frames of one segment of `config(..)`: 2 agents × 3 envs × 5 steps.
const SEGMENT: u64 = 30;

fn gala(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gala-gpu")).args(args).output().expect("run gala-gpu")
}

fn summary_sha(run: &Path) -> String {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    v["params_sha256"].as_str().unwrap().to_string()
}

/// Closes a run folder (releasing its lock, so that a `--resume` process may open it) and
/// returns its path.
fn release(run: RunDir) -> std::path::PathBuf {
    let path = run.path().to_path_buf();
    drop(run);
    path
}

fn new_run(config: &Config, out: &Path) -> RunDir {
    RunDir::create(out, "catch", "gala", config.seed, &config.to_toml()).unwrap()
}

/// Sets the stop flag (as Ctrl-C does) once `frames` are reached, and keeps a copy of the first
/// checkpoint that appears in `run` (a `save_every` one).
struct Watch {
    stop: Option<(Arc<AtomicBool>, u64)>,
    run: PathBuf,
    copy: PathBuf,
}

impl ProgressSink for Watch {
    fn tick(&mut self, frames: u64) {
        if let Some((flag, at)) = &self.stop {
            if frames >= *at {
                flag.store(true, Ordering::SeqCst);
            }
        }
        let ck = self.run.join("checkpoint.safetensors");
        if ck.exists() && !self.copy.exists() {
            std::fs::copy(ck, &self.copy).unwrap();
        }
    }
    fn report(&mut self, _row: &MetricsRow) {}
}

const TOTAL: u64 = 10 * SEGMENT;

/// A pipelined run to N/2 frames resumed (through the CLI) to N ends bit for bit where a run
/// straight to N does: its last update collected nothing, so the actor still holds the
/// parameters before it, and the checkpoint carries them.
#[test]
fn pipelined_run_to_half_the_budget_and_resumed_equals_a_straight_run() {
    let total = TOTAL;
    let want = Trainer::new(&config(true, total)).unwrap().train(None, &mut NoProgress).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let half = config(true, 5 * SEGMENT);
    let mut run = new_run(&half, &dir.path().join("a"));
    Trainer::new(&half).unwrap().train(Some(&mut run), &mut NoProgress).unwrap();
    let ck = Checkpoint::load(run.path()).unwrap();
    assert_eq!((ck.frames, ck.updates), (5 * SEGMENT, 5));
    assert!(ck.pipeline.pending.is_none() && ck.pipeline.actor_params.is_some(), "drained: the actor is one update behind");
    assert_ne!(ck.pipeline.actor_params.as_deref(), Some(&ck.params[..]));
    let run = release(run);
    let out = gala(&["train", "--resume", run.to_str().unwrap(), "--frames", &total.to_string(), "--pipeline", "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary_sha(&run), want.params_sha256, "pipelined N/2 + resume to N differs from N straight");
}

/// Mid-run checkpoints hold the segment collected but not learned from: resuming from the stop
/// flag's (Ctrl-C) or from a `save_every` one ends where an uninterrupted run does.
#[test]
fn pipelined_resume_from_a_stop_or_a_periodic_checkpoint_is_bit_exact() {
    let total = TOTAL;
    let want = Trainer::new(&config(true, total)).unwrap().train(None, &mut NoProgress).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The stop flag after 3 updates (frames count the segment collected meanwhile), and the first
    // `save_every` checkpoint (after 2 updates), copied aside while training goes on.
    let c = Config { save_every: 3 * SEGMENT, ..config(true, total) };
    let mut run = new_run(&c, &dir.path().join("b"));
    let copy = dir.path().join("saved_every.safetensors");
    let flag = Arc::new(AtomicBool::new(false));
    let mut t = Trainer::new(&c).unwrap();
    t.set_stop_flag(flag.clone());
    let mut watch = Watch { stop: Some((flag, 4 * SEGMENT)), run: run.path().to_path_buf(), copy: copy.clone() };
    let stopped = t.train(Some(&mut run), &mut watch).unwrap();
    assert!(t.was_interrupted());
    assert_eq!((stopped.updates, stopped.frames), (3, 4 * SEGMENT));
    assert!(!run.path().join("summary.json").exists());
    let from_stop = Checkpoint::load(run.path()).unwrap();
    let from_save = Checkpoint::load(&copy).unwrap();
    assert_eq!((from_save.updates, from_save.frames), (2, 3 * SEGMENT));
    for ck in [&from_stop, &from_save] {
        let seg = ck.pipeline.pending.as_ref().expect("a collected segment awaits learning");
        assert!(seg.stale && ck.pipeline.actor_params.is_none(), "mid-run: the actor holds the learner's parameters");
        assert_eq!(seg.actions.len(), 2 * 5 * 3);
    }
    for ck in [from_stop, from_save] {
        let c = Config { frames: total, ..ck.config.clone() };
        let (mut resumed, exact) = Trainer::from_checkpoint(&ck, &c).unwrap();
        assert!(exact);
        let got = resumed.train(None, &mut NoProgress).unwrap();
        assert_eq!(got.params_sha256, want.params_sha256, "resume from update {} differs", ck.updates);
        assert_eq!((got.frames, got.updates, got.episodes), (want.frames, want.updates, want.episodes));
        assert_eq!(got.mean_return_100, want.mean_return_100);
    }
}

/// The checkpoint's configuration decides whether a run is pipelined: `--pipeline` may repeat
/// it on resume but not add it, and a segment in flight is never silently dropped.
#[test]
fn pipelined_and_plain_checkpoints_do_not_mix_silently() {
    let dir = tempfile::tempdir().unwrap();
    // A pipelined checkpoint with a segment in flight cannot continue unpipelined.
    let mut t = Trainer::new(&config(true, 10 * SEGMENT)).unwrap();
    t.update().unwrap();
    let ck = t.checkpoint(0.0).unwrap();
    assert!(ck.pipeline.pending.is_some());
    let e = Trainer::from_checkpoint(&ck, &config(false, 10 * SEGMENT)).err().expect("refused").to_string();
    assert!(e.contains("pipeline"), "{e}");
    // Round trip through the file: the in-flight state is covered by the checksum.
    let path = dir.path().join("p.safetensors");
    ck.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), ck);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1; // inside the last tensor's data
    std::fs::write(&path, &bytes).unwrap();
    assert!(Checkpoint::load(&path).unwrap_err().to_string().contains("checksum"));

    // A plain run's checkpoint continues pipelined when restored into a pipelined trainer (the
    // library's choice; the CLI keeps the saved configuration), the actor starting from the
    // restored parameters.
    let mut plain = Trainer::new(&config(false, 10 * SEGMENT)).unwrap();
    plain.update().unwrap();
    let ck = plain.checkpoint(0.0).unwrap();
    let (mut p, _) = Trainer::from_checkpoint(&ck, &config(true, 3 * SEGMENT)).unwrap();
    let s = p.train(None, &mut NoProgress).unwrap();
    assert_eq!((s.updates, s.frames), (3, 3 * SEGMENT));

    // CLI: --pipeline on the resume of a plain run is refused on one line.
    let c = config(false, SEGMENT);
    let mut run = new_run(&c, dir.path());
    Trainer::new(&c).unwrap().train(Some(&mut run), &mut NoProgress).unwrap();
    let run = release(run);
    let out = gala(&["train", "--resume", run.to_str().unwrap(), "--pipeline", "--frames", "60"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("--pipeline"), "{stderr}");
}
