//! Asynchronous gossip on the CPU backend: agents on their own threads.

mod common;

use gala_gpu::algo::async_gossip::{run_async, train_async, AgentCounters, AsyncHooks, AsyncOutcome};
use gala_gpu::algo::{NoProgress, Topology, Trainer};
use gala_gpu::backend::BackendKind;
use gala_gpu::config::Config;
use std::time::Duration;

/// catch, `agents` × 2 envs × 5 steps, `rounds` updates per agent.
fn config(agents: usize, rounds: u64) -> Config {
    common::async_catch_config(agents, rounds, BackendKind::Cpu, 60.0)
}

fn run(config: &Config, hooks: &AsyncHooks) -> AsyncOutcome {
    let counters: Vec<AgentCounters> = (0..config.agents).map(|_| AgentCounters::default()).collect();
    run_async(config, hooks, &counters).unwrap()
}

#[test]
fn lock_step_on_threads_equals_the_synchronous_trainer_bit_for_bit() {
    for (topology, agents, peers) in [(Topology::Ring, 3, 1), (Topology::Exp, 4, 1), (Topology::All, 3, 2)] {
        let c = Config { topology, peers, ..config(agents, 4) };
        let sync = Trainer::new(&c).unwrap().train(None, &mut NoProgress).unwrap();
        let threaded = train_async(&Config { agent_threads: true, ..c.clone() }, None, &mut NoProgress).unwrap();
        assert_eq!(sync.updates, 4);
        assert_eq!(threaded.updates, 4);
        assert_eq!(sync.params_sha256, threaded.params_sha256, "{topology:?}: lock-step on threads differs from the batched trainer");
        assert_eq!(sync.episodes, threaded.episodes);
        assert_eq!(sync.mean_return_100, threaded.mean_return_100);
    }
}

#[test]
fn a_slow_agent_neither_deadlocks_nor_breaks_the_sync_freq_bound() {
    let sync_freq = 3;
    let c = Config { sync_freq, ..config(4, 16) };
    let hooks = AsyncHooks { slow_agent: Some((1, Duration::from_millis(40))), ..AsyncHooks::default() };
    let out = run(&c, &hooks);
    assert!(out.first_error().is_none(), "{:?}", out.first_error());
    assert!(out.agents.iter().all(|a| a.rounds == 16), "every agent finishes its rounds");
    // When each agent logged its last round (its final event).
    let finished_at: Vec<f64> = (0..4)
        .map(|a| out.events.iter().filter(|e| e.agent == a).map(|e| e.seconds).fold(0.0, f64::max))
        .collect();
    // Per agent, in round order: never more than sync_freq unmixed rounds in a row.
    for agent in 0..4 {
        // After a blocked wait, when every peer has already finished its rounds.
        common::assert_sync_freq_bound(&common::receive_events(&out.events, agent), agent, sync_freq, |e| {
            // Ring: agent's only sender is agent − 1, which must have finished by then.
            let sender = (agent + 3) % 4;
            assert!(e.seconds >= finished_at[sender], "agent {agent} gave up waiting at round {} before agent {sender} finished", e.round)
        });
    }
    // The fast agents had to skip or wait for the slow one at some point.
    assert!(out.events.iter().any(|e| e.kind == "send_skipped" || e.kind == "blocked" || e.kind == "unmixed"));
    let params: Vec<f32> = out.agents.iter().flat_map(|a| a.params.clone().unwrap()).collect();
    let d = gala_gpu::backend::cpu::gossip::consensus_distance(&params, 4);
    // Lock-step runs of this size end near 0.01-0.02; asynchrony (and the slow agent training
    // alone after its peers finish) adds drift, but it must stay within the same order.
    assert!(d < 0.2, "consensus distance stays bounded: {d}");
}

/// All-to-all: the fast agents finish first, leaving their slots from the slow ones unread; the
/// slow ones must still reach each other (before, every later send was skipped on those slots
/// and both blocked on each other until the timeout).
#[test]
fn agents_that_finish_early_do_not_starve_the_slow_ones() {
    let c = Config { topology: Topology::All, peers: 3, sync_freq: 1, gossip_timeout: 20.0, ..config(4, 12) };
    let hooks = AsyncHooks { slow_agents: Some((2, 4, Duration::from_millis(40))), ..AsyncHooks::default() };
    let out = run(&c, &hooks);
    assert!(out.first_error().is_none(), "{:?}", out.first_error());
    assert!(out.agents.iter().all(|a| a.rounds == 12));
    // After agents 0 and 1 finished, the slow agents kept mixing each other's messages.
    let finished = (0..2).map(|a| out.events.iter().filter(|e| e.agent == a).map(|e| e.seconds).fold(0.0, f64::max)).fold(0.0, f64::max);
    assert!(out.events.iter().any(|e| e.agent == 2 && e.kind == "mixed" && e.peers == vec![3] && e.seconds > finished), "agent 2 never heard from agent 3 after the others finished");
}

#[test]
fn a_failed_peer_with_large_sync_freq_does_not_stop_the_others() {
    let c = Config { sync_freq: 1_000_000_000, ..config(3, 8) };
    let out = run(&c, &AsyncHooks { fail_agent: Some((2, 2)), ..AsyncHooks::default() });
    let err = out.first_error().expect("agent 2 failed");
    assert!(err.contains("agent 2") && err.contains("injected failure"), "{err}");
    for a in &out.agents[..2] {
        assert!(a.result.is_ok(), "agent {} should finish: {:?}", a.agent, a.result.as_ref().err());
        assert_eq!(a.rounds, 8);
    }
}

#[test]
fn a_failed_peer_with_small_sync_freq_stops_its_receiver_with_a_clear_error() {
    let c = Config { sync_freq: 2, ..config(3, 10) };
    // Ring: agent 0 receives only from agent 2.
    let out = run(&c, &AsyncHooks { fail_agent: Some((2, 1)), ..AsyncHooks::default() });
    let receiver = &out.agents[0];
    let err = receiver.result.as_ref().expect_err("agent 0 cannot wait forever for agent 2").to_string();
    assert!(err.contains("agent 2") && err.contains("stopped"), "{err}");
    assert!(receiver.rounds < 10);
    assert!(receiver.params.is_some(), "the stopped agent's state is still there to checkpoint");
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and resume of runs with agents on threads.

use gala_gpu::algo::async_gossip::{train_async_session, AsyncSession};
use gala_gpu::algo::ProgressSink;
use gala_gpu::checkpoint::Checkpoint;
use gala_gpu::run::{MetricsRow, RunDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Frames of one round of `config(3, ..)`: 3 agents × 2 envs × 5 steps.
const ROUND: u64 = 30;

fn gala(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gala-gpu")).args(args).envs(env.iter().copied()).output().expect("run gala-gpu")
}

/// The CLI flags of `config(3, ..)` (catch, 3 agents × 2 envs × 5 steps, seed 5) plus `extra`.
fn cli_run(out: &Path, frames: u64, extra: &[&str], env: &[(&str, &str)]) -> (Output, PathBuf) {
    let frames = frames.to_string();
    let mut args = vec![
        "train", "--game", "catch", "--agents", "3", "--envs-per-agent", "2", "--n-steps", "5", "--backend", "cpu", "--threads", "2",
        "--seed", "5", "--gossip-timeout", "60", "--frames", &frames, "-q", "--out", out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = gala(&args, env);
    let dirs: Vec<PathBuf> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "one run folder in {}: {dirs:?}", out.display());
    (output, dirs[0].clone())
}

fn resume(run: &Path, frames: u64) -> Output {
    gala(&["train", "--resume", run.to_str().unwrap(), "--frames", &frames.to_string(), "-q"], &[])
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Per agent, the rounds gossip_events.csv accounts for (one receive outcome, or the failure, per round).
fn logged_rounds(run: &Path, agents: usize) -> Vec<Vec<u64>> {
    let text = std::fs::read_to_string(run.join("gossip_events.csv")).unwrap();
    let mut rounds = vec![Vec::new(); agents];
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        if matches!(c[3], "mixed" | "unmixed" | "peers_done" | "catch_up" | "failed") {
            rounds[c[0].parse::<usize>().unwrap()].push(c[1].parse::<u64>().unwrap());
        }
    }
    rounds
}

#[test]
fn lock_step_on_threads_resumes_bit_for_bit_from_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (out, straight) = cli_run(&dir.path().join("a"), 8 * ROUND, &["--agent-threads"], &[]);
    ok(&out);
    let (out, run) = cli_run(&dir.path().join("b"), 4 * ROUND, &["--agent-threads"], &[]);
    ok(&out);
    let ck = Checkpoint::load(&run).unwrap();
    assert_eq!((ck.agents, ck.updates, ck.step, ck.frames, ck.agent_updates.as_ref()), (3, 4, 20, 4 * ROUND, None), "a cut at round 4");
    assert!(ck.env_states.is_some() && ck.pipeline.is_empty());
    assert_eq!(ck.agent_episodes.iter().sum::<u64>(), ck.episodes);
    ok(&resume(&run, 8 * ROUND));
    let (want, got) = (summary(&straight), summary(&run));
    assert_eq!(got["params_sha256"], want["params_sha256"], "lock-step N/2 + resume to N differs from N straight");
    for key in ["frames", "updates", "episodes", "mean_return_100"] {
        assert_eq!(got[key], want[key], "{key}");
    }
    // The audit log continues: every agent's rounds 0..8 once each.
    assert!(logged_rounds(&run, 3).iter().all(|r| *r == (0..8).collect::<Vec<u64>>()), "{:?}", logged_rounds(&run, 3));
    // Lock-step on threads equals the batched trainer, so the batched trainer continues the cut too.
    let (mut batched, exact) = Trainer::from_checkpoint(&ck, &Config { frames: 8 * ROUND, ..ck.config.clone() }).unwrap();
    assert!(exact);
    assert_eq!(batched.train(None, &mut NoProgress).unwrap().params_sha256, want["params_sha256"].as_str().unwrap());
}

#[test]
fn ctrl_c_stops_lock_step_agents_at_one_round_and_the_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (run, out) = common::interrupt_after_first_checkpoint(
        &["train", "--game", "catch", "--agents", "3", "--envs-per-agent", "2", "--n-steps", "5", "--frames", "100000000", "--backend",
            "cpu", "--threads", "2", "--seed", "5", "--agent-threads", "--save-every", "30", "-q"],
        dir.path(),
        Duration::from_millis(200),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("checkpoint saved") && stderr.contains("--resume"), "{stderr}");
    assert!(!run.join("summary.json").exists());
    let ck = Checkpoint::load(&run).unwrap();
    assert!(ck.agent_updates.is_none() && ck.updates >= 1 && ck.frames == ck.updates * ROUND, "a cut: {:?} {}", ck.agent_updates, ck.frames);

    let total = ck.frames + 2 * ROUND;
    let out = resume(&run, total);
    ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), run.to_str().unwrap());
    let straight = train_async(&Config { frames: total, ..ck.config.clone() }, None, &mut NoProgress).unwrap();
    assert_eq!(summary(&run)["params_sha256"], straight.params_sha256.as_str(), "interrupt + resume is not bit-exact");
    assert!(logged_rounds(&run, 3).iter().all(|r| *r == (0..ck.updates + 2).collect::<Vec<u64>>()));
}

/// Sets the stop flag at the first progress tick.
struct StopSoon(Arc<AtomicBool>);
impl ProgressSink for StopSoon {
    fn tick(&mut self, _frames: u64) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn report(&mut self, _row: &MetricsRow) {}
}

#[test]
fn asynchronous_runs_stop_on_one_round_and_resume_to_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config { sync_freq: 2, frames: 100_000_000, metrics_every: 1, ..config(3, 0) };
    let mut run = RunDir::create(dir.path(), "catch", "gala", c.seed, &c.to_toml()).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let session = AsyncSession { stop: Some(flag.clone()), ..AsyncSession::default() };
    let t = train_async_session(&c, Some(&mut run), &mut StopSoon(flag), &session).unwrap();
    assert!(t.interrupted);
    // Dropping the RunDir releases the run folder's lock for the resuming process.
    let run = { let path = run.path().to_path_buf(); drop(run); path };
    assert!(!run.join("summary.json").exists());
    let ck = Checkpoint::load(&run).unwrap();
    assert!(ck.agent_updates.is_none(), "every agent stops after the same round: {:?}", ck.agent_updates);
    assert_eq!((ck.updates, ck.frames), (t.summary.updates, t.summary.frames));

    let total = ck.frames + 4 * ROUND;
    let out = resume(&run, total);
    ok(&out);
    let s = summary(&run);
    assert_eq!((s["frames"].as_u64(), s["updates"].as_u64()), (Some(total), Some(total / ROUND)));
    assert!(s["episodes"].as_u64().unwrap() >= ck.episodes);
    // Each agent's rounds are logged once each across both sessions.
    assert!(logged_rounds(&run, 3).iter().all(|r| *r == (0..total / ROUND).collect::<Vec<u64>>()), "{:?}", logged_rounds(&run, 3));
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let frames: Vec<u64> = metrics.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(frames.last(), Some(&total));
}

const FAIL_AGENT_2_AT_3: [(&str, &str); 1] = [("GALA_GPU_DEBUG_FAIL_AGENT", "2:3")];

/// Asynchronous, small sync_freq: agent 0 (agent 2's receiver) stops naming agent 2, and each
/// agent's last completed round is saved; the resume continues every agent to the budget.
#[test]
fn a_failed_agent_leaves_each_agents_last_round_to_resume_from() {
    let fail = FAIL_AGENT_2_AT_3;
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = cli_run(dir.path(), 8 * ROUND, &["--sync-freq", "2"], &fail);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for needle in ["agent 2", "injected failure at round 3", "stopped", "saved in", "not match", "gala-gpu train --resume"] {
        assert!(stderr.contains(needle), "`{needle}` missing from {stderr}");
    }
    assert!(!run.join("summary.json").exists() && run.join("gossip_events.csv").exists());
    let ck = Checkpoint::load(&run).unwrap();
    let rounds = ck.agent_updates.clone().expect("per-agent rounds");
    assert_eq!(rounds[2], 3, "agent 2 failed before its round 3");
    assert!(rounds.iter().all(|&r| (3..=8).contains(&r)), "{rounds:?}");
    assert!(ck.params.iter().all(|x| x.is_finite()));
    ok(&resume(&run, 8 * ROUND));
    let s = summary(&run);
    assert_eq!((s["frames"].as_u64(), s["updates"].as_u64()), (Some(8 * ROUND), Some(8)));
}

/// Lock-step with periodic cuts: after a failure the last cut stays, and resuming it is exact.
#[test]
fn a_failed_lock_step_agent_leaves_the_last_cut_which_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = cli_run(&dir.path().join("a"), 8 * ROUND, &["--agent-threads", "--save-every", "60"], &[("GALA_GPU_DEBUG_FAIL_AGENT", "2:5")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("round 4, frame 120") && stderr.contains("exact") && stderr.contains("--resume"), "{stderr}");
    assert_eq!(Checkpoint::load(&run).unwrap().updates, 4);
    ok(&resume(&run, 8 * ROUND));
    let (out, straight) = cli_run(&dir.path().join("b"), 8 * ROUND, &["--agent-threads"], &[]);
    ok(&out);
    assert_eq!(summary(&run)["params_sha256"], summary(&straight)["params_sha256"]);
}

/// Lock-step without a cut: each agent's last round is saved; on resume the agents behind
/// catch up alone first, then all gossip in step again.
#[test]
fn a_failed_lock_step_agent_without_a_cut_leaves_each_agents_last_round() {
    let dir = tempfile::tempdir().unwrap();
    let (out, run) = cli_run(dir.path(), 8 * ROUND, &["--agent-threads"], &FAIL_AGENT_2_AT_3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("saved in"), "{stderr}");
    let rounds = Checkpoint::load(&run).unwrap().agent_updates.expect("per-agent rounds");
    ok(&resume(&run, 8 * ROUND));
    assert_eq!(summary(&run)["updates"].as_u64(), Some(8));
    let logged = logged_rounds(&run, 3);
    assert!(logged.iter().all(|r| *r == (0..8).collect::<Vec<u64>>()), "{rounds:?}: {logged:?}");
}
