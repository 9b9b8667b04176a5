//! `mpirun -np R gala-gpu train …` (cargo feature `mpi`; needs Open MPI's `mpirun` on PATH):
//! lock-step across processes equals one process, checkpoints resume across process counts, a
//! rank that stops answering ends the job with an error naming it, and asynchronous gossip
//! across processes keeps GALA's protocol (the sync_freq bound in the audit log).
//! Run with: `cargo test --release --features mpi --test mpi` (CI: .ci/run).
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Frames of one round of 4 agents (catch: 2 envs × 5 steps each).
const ROUND: u64 = 4 * 2 * 5;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gala-gpu")
}

/// `gala-gpu ARGS` on `np` processes (1: no mpirun), with `env` set.
fn launch(np: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = if np == 1 {
        Command::new(bin())
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), bin()]);
        c
    };
    cmd.args(args).envs(env.iter().copied()).output().expect("mpirun (Open MPI) must be on PATH for the mpi tests")
}

/// A catch run of 4 agents on `np` processes into a fresh folder under `out`; returns the run folder.
fn train(np: usize, out: &Path, topology: &str, frames: u64, extra: &[&str], env: &[(&str, &str)]) -> (Output, Option<PathBuf>) {
    let frames = frames.to_string();
    let mut args = vec![
        "train", "--game", "catch", "--agents", "4", "--envs-per-agent", "2", "--n-steps", "5", "--backend", "cpu", "--threads", "1",
        "--seed", "7", "--topology", topology, "--frames", &frames, "--metrics-every", "2", "-q", "--out", out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = launch(np, &args, env);
    let run = std::fs::read_dir(out).ok().and_then(|d| d.map(|e| e.unwrap().path()).find(|p| p.is_dir()));
    (output, run)
}

fn ok(out: &Output) {
    assert!(out.status.success(), "exit {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn sha(run: &Path) -> String {
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    s["params_sha256"].as_str().unwrap().to_string()
}

#[test]
fn lock_step_on_2_and_4_processes_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    for topology in ["ring", "exp", "all"] {
        let (out, one) = train(1, &dir.path().join(format!("{topology}-1")), topology, 6 * ROUND, &[], &[]);
        ok(&out);
        let want = sha(&one.unwrap());
        for np in [2, 4] {
            let (out, run) = train(np, &dir.path().join(format!("{topology}-{np}")), topology, 6 * ROUND, &[], &[]);
            ok(&out);
            let run = run.expect("rank 0 made the run folder");
            // Only rank 0 made a run folder, and it printed its path once.
            assert_eq!(std::fs::read_dir(dir.path().join(format!("{topology}-{np}"))).unwrap().count(), 1);
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), run.to_str().unwrap());
            assert_eq!(sha(&run), want, "{topology} on {np} processes differs from one process");
        }
    }
}

#[test]
fn a_distributed_checkpoint_resumes_in_one_process_and_on_4() {
    let dir = tempfile::tempdir().unwrap();
    let (out, straight) = train(1, &dir.path().join("straight"), "exp", 8 * ROUND, &[], &[]);
    ok(&out);
    let want = sha(&straight.unwrap());
    for (np_first, np_then) in [(2, 1), (2, 4)] {
        let (out, run) = train(np_first, &dir.path().join(format!("{np_first}-{np_then}")), "exp", 4 * ROUND, &["--save-every", "80"], &[]);
        ok(&out);
        let run = run.unwrap();
        let frames = (8 * ROUND).to_string();
        ok(&launch(np_then, &["train", "--resume", run.to_str().unwrap(), "--frames", &frames, "-q"], &[]));
        assert_eq!(sha(&run), want, "{np_first} processes, then resumed on {np_then}, differs from one straight run");
    }
}

#[test]
fn a_rank_that_stops_answering_ends_the_job_naming_it_and_the_last_checkpoint_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Rank 1 hangs before update 5; checkpoints every 2 updates (80 frames).
    let (out, run) = train(2, &dir.path().join("hang"), "ring", 100 * ROUND, &["--save-every", "80", "--gossip-timeout", "3"], &[(
        "GALA_GPU_DEBUG_HANG_RANK",
        "1:5",
    )]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rank 0 of 2") && stderr.contains("rank(s) [1]"), "rank 0 names rank 1:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    let run = run.unwrap();
    assert!(!run.join("summary.json").exists());
    let ck = gala_gpu::checkpoint::Checkpoint::load(&run).unwrap();
    assert_eq!((ck.updates, ck.frames), (4, 4 * ROUND), "the checkpoint of update 4 is kept");
    // It resumes in one process, exactly as a straight run of 6 updates.
    ok(&launch(1, &["train", "--resume", run.to_str().unwrap(), "--frames", &(6 * ROUND).to_string(), "-q"], &[]));
    let (out, straight) = train(1, &dir.path().join("straight"), "ring", 6 * ROUND, &[], &[]);
    ok(&out);
    assert_eq!(sha(&run), sha(&straight.unwrap()));
}

#[test]
fn async_on_2_processes_with_a_slow_rank_honours_sync_freq() {
    let dir = tempfile::tempdir().unwrap();
    let (sync_freq, rounds) = (2, 12);
    // Rank 1 (agents 2 and 3) sleeps 40 ms after each update; agent 0 receives from agent 3.
    let (out, run) = train(2, &dir.path().join("async"), "ring", rounds * ROUND, &["--sync-freq", "2"], &[("GALA_GPU_DEBUG_SLOW_RANK", "1:40")]);
    ok(&out);
    let run = run.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), run.to_str().unwrap());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["updates"].as_u64(), summary["agents"].as_u64()), (Some(rounds), Some(4)));
    let events = common::events_from_csv(&run);
    for agent in 0..4 {
        let receives = common::receive_events(&events, agent);
        assert_eq!(receives.iter().filter(|e| e.kind != "blocked").count() as u64, rounds, "agent {agent}: one receive per round");
        common::assert_sync_freq_bound(&receives, agent, sync_freq, |_| {});
    }
    // Messages crossed the processes both ways, and the fast rank felt the slow one.
    assert!(events.iter().any(|e| e.agent == 0 && e.kind == "mixed" && e.peers == vec![3]));
    assert!(events.iter().any(|e| e.agent == 2 && e.kind == "mixed" && e.peers == vec![1]));
    assert!(events.iter().any(|e| e.agent < 2 && matches!(e.kind, "send_skipped" | "unmixed" | "blocked")));
    let ck = gala_gpu::checkpoint::Checkpoint::load(&run).unwrap();
    assert_eq!((ck.agents, ck.agent_rounds()), (4, vec![rounds; 4]));
}

#[test]
fn async_on_3_and_4_processes_with_exp_and_all_keeps_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = 8;
    for (np, topology) in [(4, "exp"), (3, "all"), (4, "all")] {
        let (out, run) = train(np, &dir.path().join(format!("{topology}-{np}")), topology, rounds * ROUND, &["--sync-freq", "1", "--gossip-timeout", "30"], &[]);
        ok(&out);
        let run = run.unwrap();
        let events = common::events_from_csv(&run);
        for agent in 0..4 {
            let receives = common::receive_events(&events, agent);
            assert_eq!(receives.iter().filter(|e| e.kind != "blocked").count() as u64, rounds, "{topology} on {np}: agent {agent}");
            common::assert_sync_freq_bound(&receives, agent, 1, |_| {});
        }
        let ck = gala_gpu::checkpoint::Checkpoint::load(&run).unwrap();
        assert_eq!(ck.agent_rounds(), vec![rounds; 4], "{topology} on {np}");
    }
}

#[test]
fn async_a_silent_rank_ends_the_job_naming_it_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Fully asynchronous (no receiver ever blocks): rank 1 falls silent at round 5; cuts every
    // 2 rounds (80 frames).
    let (out, run) = train(2, &dir.path().join("hang"), "ring", 100_000 * ROUND, &[
        "--sync-freq", "1000000000", "--gossip-timeout", "3", "--save-every", "80",
    ], &[("GALA_GPU_DEBUG_HANG_RANK", "1:5")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rank 0 of 2") && stderr.contains("rank 1 (agents 2..4) sent nothing"), "rank 0 names rank 1:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    // As in one process, each agent's last state is kept: rank 0's after its last round, the
    // silent rank's from the last cut it deposited (round 4); it resumes in one process.
    let run = run.unwrap();
    assert!(!run.join("summary.json").exists());
    let rounds = gala_gpu::checkpoint::Checkpoint::load(&run).unwrap().agent_rounds();
    assert!(rounds[2..] == [4, 4] && rounds[..2].iter().all(|&r| r >= 4), "{rounds:?}");
    let target = rounds.iter().max().unwrap() + 2;
    ok(&launch(1, &["train", "--resume", run.to_str().unwrap(), "--frames", &(target * ROUND).to_string(), "-q"], &[]));
    let ck = gala_gpu::checkpoint::Checkpoint::load(&run).unwrap();
    assert_eq!(ck.agent_rounds(), vec![target; 4]);
    assert!(run.join("summary.json").exists());
}

#[test]
fn async_a_failed_agent_on_one_rank_fails_the_job_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = train(2, &dir.path().join("fail"), "ring", 20 * ROUND, &["--sync-freq", "2", "--gossip-timeout", "10"], &[("GALA_GPU_DEBUG_FAIL_AGENT", "3:1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("agent 3") && stderr.contains("injected failure"), "{stderr}");
    assert!(!run.unwrap().join("summary.json").exists());
}

/// GPU to GPU with NCCL (cargo feature `nccl`), for a machine with two GPUs or more, libnccl
/// (`. bench/gpu/nccl-env.sh`) and Open MPI:
///
///   cargo test --release --features nccl --test mpi -- --ignored nccl --nocapture
///
/// Lock-step on 2 processes over NCCL, each on its own GPU, equals one process on one GPU bit for
/// bit (ring, exp, all), and so does the host-staged path (`GALA_GPU_NCCL=0`); rank 0 says which
/// path it took. Skips, saying why, with fewer than 2 GPUs or without libnccl (GALA_REQUIRE_GPU=1
/// makes that a failure). Not run in CI (no GPU there); not yet run on hardware either.
#[cfg(feature = "nccl")]
#[test]
#[ignore = "needs 2 GPUs, libnccl and Open MPI: cargo test --release --features nccl --test mpi -- --ignored nccl"]
fn nccl_lock_step_on_2_gpus_equals_one_process() {
    let gpus = gala_gpu::backend::cuda_device_count();
    let missing = match (gpus, gala_gpu::dist::link::probe_nccl()) {
        (g, _) if g < 2 => Some(format!("{g} GPU(s) visible; NCCL between processes needs 2")),
        (_, Err(why)) => Some(why),
        _ => None,
    };
    if let Some(why) = missing {
        assert_ne!(std::env::var("GALA_REQUIRE_GPU").as_deref(), Ok("1"), "GALA_REQUIRE_GPU=1, but {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |np: usize, topology: &str, env: &[(&str, &str)]| -> (String, String) {
        let out_dir = dir.path().join(format!("{topology}-{np}-{}", env.len()));
        let frames = (6 * ROUND).to_string();
        let args = [
            "train", "--game", "catch", "--agents", "4", "--envs-per-agent", "2", "--n-steps", "5", "--backend", "cuda", "--seed", "7",
            "--topology", topology, "--frames", &frames, "--metrics-every", "2", "--out", out_dir.to_str().unwrap(),
        ];
        let out = launch(np, &args, env);
        ok(&out);
        let run = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).expect("a run folder");
        (sha(&run), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for topology in ["ring", "exp", "all"] {
        let (want, _) = run(1, topology, &[]);
        let (got, stderr) = run(2, topology, &[]);
        assert!(stderr.contains("cross-rank gossip: NCCL device to device"), "{topology}: rank 0 did not take the NCCL path:\n{stderr}");
        assert_eq!(got, want, "{topology}: 2 processes over NCCL differ from one process");
        let (staged, stderr) = run(2, topology, &[("GALA_GPU_NCCL", "0")]);
        assert!(stderr.contains("cross-rank gossip: host-staged MPI (GALA_GPU_NCCL=0)"), "{stderr}");
        assert_eq!(staged, want, "{topology}: 2 processes host-staged differ from one process");
    }
}

/// Built with `nccl` but run where NCCL cannot be used (the CPU backend here): rank 0 says the
/// run stays host-staged, and why.
#[cfg(feature = "nccl")]
#[test]
fn with_the_nccl_feature_a_cpu_run_says_it_stays_host_staged() {
    let dir = tempfile::tempdir().unwrap();
    let frames = (2 * ROUND).to_string();
    let out_dir = dir.path().join("cpu");
    let args = [
        "train", "--game", "catch", "--agents", "4", "--envs-per-agent", "2", "--n-steps", "5", "--backend", "cpu", "--threads", "1", "--seed", "7",
        "--frames", &frames, "--out", out_dir.to_str().unwrap(),
    ];
    let out = launch(2, &args, &[]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cross-rank gossip: host-staged MPI (the cpu backend keeps its parameters in host memory"), "{stderr}");
    assert_eq!(stderr.matches("cross-rank gossip:").count(), 1, "only rank 0 says it:\n{stderr}");
}
