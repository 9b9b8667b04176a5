//! Asynchronous gossip on the CPU backend: agents on their own threads.

use gala_gpu::algo::async_gossip::{run_async, train_async, AgentCounters, AsyncHooks, AsyncOutcome};
use gala_gpu::algo::{NoProgress, Topology, Trainer};
use gala_gpu::backend::BackendKind;
use gala_gpu::config::Config;
use std::time::Duration;

/// catch, `agents` × 2 envs × 5 steps, `rounds` updates per agent.
fn config(agents: usize, rounds: u64) -> Config {
    Config {
        game: "catch".into(),
        agents,
        envs_per_agent: 2,
        n_steps: 5,
        frames: rounds * agents as u64 * 2 * 5,
        backend: BackendKind::Cpu,
        threads: 2,
        seed: 5,
        gossip_timeout: 60.0,
        ..Config::default()
    }
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
        let mut run_len = 0;
        let mut events: Vec<_> = out.events.iter().filter(|e| e.agent == agent && e.kind != "sent" && e.kind != "send_skipped").collect();
        events.sort_by_key(|e| e.round);
        for e in events {
            match e.kind {
                "unmixed" => {
                    run_len += 1;
                    assert!(run_len <= sync_freq, "agent {agent}: {run_len} unmixed rounds in a row at round {}", e.round);
                }
                "blocked" => assert_eq!(run_len, sync_freq, "agent {agent} blocked early at round {}", e.round),
                "mixed" => run_len = 0,
                // After a blocked wait, when every peer has already finished its rounds.
                "peers_done" => {
                    // Ring: agent's only sender is agent − 1, which must have finished by then.
                    let sender = (agent + 3) % 4;
                    assert!(e.seconds >= finished_at[sender], "agent {agent} gave up waiting at round {} before agent {sender} finished", e.round)
                }
                other => panic!("unexpected event {other}"),
            }
        }
    }
    // The fast agents had to skip or wait for the slow one at some point.
    assert!(out.events.iter().any(|e| e.kind == "send_skipped" || e.kind == "blocked" || e.kind == "unmixed"));
    let params: Vec<f32> = out.agents.iter().flat_map(|a| a.params.clone().unwrap()).collect();
    let d = gala_gpu::backend::cpu::gossip::consensus_distance(&params, 4);
    // Lock-step runs of this size end near 0.01-0.02; asynchrony (and the slow agent training
    // alone after its peers finish) adds drift, but it must stay within the same order.
    assert!(d < 0.2, "consensus distance stays bounded: {d}");
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
