//! Helpers shared by several test files (each test file is its own crate and includes this
//! with `mod common;`; not every file uses every helper).
#![allow(dead_code)]

use gala_gpu::backend::BackendKind;
use gala_gpu::config::Config;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Asynchronous-gossip tests: catch with `agents` × 2 envs × 5 steps on `backend`, the budget
/// of `rounds` updates per agent, seed 5.
pub fn async_catch_config(agents: usize, rounds: u64, backend: BackendKind, gossip_timeout: f64) -> Config {
    Config {
        game: "catch".into(),
        agents,
        envs_per_agent: 2,
        n_steps: 5,
        frames: rounds * agents as u64 * 2 * 5,
        backend,
        threads: 2,
        seed: 5,
        gossip_timeout,
        ..Config::default()
    }
}

/// Starts `gala-gpu train ARGS --out OUT` (ARGS must set a periodic `--save-every`), waits for
/// its first checkpoint to appear — training is then under way and the Ctrl-C handler is
/// installed — lets it run `settle` longer, sends SIGINT and returns the run folder and what
/// the process printed.
pub fn interrupt_after_first_checkpoint(args: &[&str], out: &Path, settle: Duration) -> (PathBuf, Output) {
    let child = Command::new(env!("CARGO_BIN_EXE_gala-gpu"))
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let run = loop {
        let found = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).find(|p| p.join("checkpoint.safetensors").exists());
        if let Some(run) = found {
            break run;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(settle);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    (run, child.wait_with_output().unwrap())
}

/// One agent's receive-side events (sends left out), in round order.
pub fn receive_events(events: &[gala_gpu::algo::async_gossip::GossipEvent], agent: usize) -> Vec<&gala_gpu::algo::async_gossip::GossipEvent> {
    let mut mine: Vec<_> = events.iter().filter(|e| e.agent == agent && e.kind != "sent" && e.kind != "send_skipped").collect();
    mine.sort_by_key(|e| e.round);
    mine
}

/// The sync_freq bound on one agent's receive events (`receive_events`): never more than
/// `sync_freq` unmixed rounds in a row, a blocked wait only after exactly that many, and no
/// other kinds; `peers_done` events go to `on_peers_done` for the caller's own checks.
pub fn assert_sync_freq_bound(
    receives: &[&gala_gpu::algo::async_gossip::GossipEvent], agent: usize, sync_freq: u64,
    mut on_peers_done: impl FnMut(&gala_gpu::algo::async_gossip::GossipEvent),
) {
    let mut run_len = 0;
    for e in receives {
        match e.kind {
            "unmixed" => {
                run_len += 1;
                assert!(run_len <= sync_freq, "agent {agent}: {run_len} unmixed rounds in a row at round {}", e.round);
            }
            "blocked" => assert_eq!(run_len, sync_freq, "agent {agent} blocked early at round {}", e.round),
            "mixed" => run_len = 0,
            "peers_done" => on_peers_done(e),
            other => panic!("unexpected event {other}"),
        }
    }
}

/// The audit log a run folder holds (`gossip_events.csv`), as the runner's events.
pub fn events_from_csv(run: &Path) -> Vec<gala_gpu::algo::async_gossip::GossipEvent> {
    let text = std::fs::read_to_string(run.join("gossip_events.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(gala_gpu::algo::async_gossip::GOSSIP_EVENTS_HEADER));
    lines
        .map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            let kind = ["sent", "send_skipped", "mixed", "unmixed", "blocked", "peers_done", "catch_up", "failed"]
                .into_iter()
                .find(|k| *k == c[3])
                .unwrap_or_else(|| panic!("unknown event in {line}"));
            gala_gpu::algo::async_gossip::GossipEvent {
                agent: c[0].parse().unwrap(),
                round: c[1].parse().unwrap(),
                seconds: c[2].parse().unwrap(),
                kind,
                peers: c[4].split(' ').filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect(),
            }
        })
        .collect()
}

/// The conv/fc GEMM kernels (by name prefix), whose shared-memory tiles issue 12 requires to be
/// conflict-free (the simulator profiler's measured wavefronts equal to the ideal).
pub const GEMM_KERNEL_PREFIXES: [&str; 5] = ["conv_forward", "conv_backward_filter", "conv_backward_data", "fc_forward", "fc_backward"];

pub fn is_gemm_kernel(name: &str) -> bool {
    GEMM_KERNEL_PREFIXES.iter().any(|g| name.starts_with(g))
}
