//! Asynchronous gossip on the GPU backend under the CUDA simulator: every agent's backend on its
//! own stream of ONE shared device, messages as device-to-device copies into device mailboxes
//! (polled through events), mixed by the fused `gossip_mix_mailbox` kernel.
//!
//! Kept small (catch, 2 envs × 5 steps, a few rounds): the simulator runs the conv net on the
//! CPU, about a tenth of a second per agent update on two cores.

mod common;

use gala_gpu::algo::async_gossip::{run_async, AgentCounters, AsyncHooks};
use gala_gpu::algo::{NoProgress, Topology, Trainer};
use gala_gpu::backend::gpu::mailbox::DeviceMailboxes;
use gala_gpu::backend::mailbox::MailboxPlan;
use gala_gpu::backend::BackendKind;
use gala_gpu::config::Config;
use gala_gpu::device::sim::SimDevice;
use gala_gpu::run::params_sha256;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// catch on the simulator, `agents` × 2 envs × 5 steps, `rounds` updates per agent.
fn config(agents: usize, rounds: u64) -> Config {
    common::async_catch_config(agents, rounds, BackendKind::Sim, 120.0)
}

#[test]
fn sim_lock_step_on_threads_through_device_mailboxes_equals_the_batched_trainer_bit_for_bit() {
    // exp with 5 agents and 2 peers: distances 1, 2, 4 rotate, so round 1 receives from
    // [r − 4, r − 1] — not ascending; all-to-all with 3 agents: agent 0 receives [2, 1]. Both
    // check that the mailbox mix sums in in-peer order, as the batched gossip_mix does.
    for (topology, agents, peers, rounds) in [(Topology::Ring, 3, 1, 2), (Topology::Exp, 5, 2, 2), (Topology::All, 3, 2, 2)] {
        let c = Config { topology, peers, ..config(agents, rounds) };
        let t = Instant::now();
        let sync = Trainer::new(&c).unwrap().train(None, &mut NoProgress).unwrap();
        let sync_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let counters: Vec<AgentCounters> = (0..agents).map(|_| AgentCounters::default()).collect();
        let out = run_async(&Config { agent_threads: true, ..c.clone() }, &AsyncHooks::default(), &counters).unwrap();
        println!("{topology:?} ({agents} agents): batched {sync_s:.1} s, threaded {:.1} s", t.elapsed().as_secs_f64());
        assert!(out.first_error().is_none(), "{:?}", out.first_error());
        assert_eq!(sync.backend, "sim");
        assert_eq!(out.backend, "sim");
        assert_eq!(sync.updates, rounds);
        assert!(out.agents.iter().all(|a| a.rounds == rounds));
        let params: Vec<f32> = out.agents.iter().flat_map(|a| a.params.clone().unwrap()).collect();
        assert_eq!(sync.params_sha256, params_sha256(&params), "{topology:?}: lock-step on threads differs from the batched trainer");
        assert_eq!(sync.episodes, out.agents.iter().map(|a| a.episodes).sum::<u64>());
        for (a, c) in counters.iter().enumerate() {
            // Every round, to every out-peer, as a device-to-device copy; every round mixed.
            assert_eq!(c.device_messages.load(Ordering::Relaxed), rounds * peers as u64, "{topology:?} agent {a}");
            assert_eq!(c.mixes.load(Ordering::Relaxed), rounds, "{topology:?} agent {a}");
        }
    }
}

#[test]
fn sim_asynchronous_with_a_slow_agent_neither_deadlocks_nor_breaks_the_sync_freq_bound() {
    let (agents, rounds, sync_freq) = (3usize, 8u64, 2u64);
    let c = Config { sync_freq, ..config(agents, rounds) };
    let counters: Vec<AgentCounters> = (0..agents).map(|_| AgentCounters::default()).collect();
    // Slower than a simulated update, so the others must skip sends, go unmixed and block.
    let hooks = AsyncHooks { slow_agent: Some((1, Duration::from_millis(300))), ..AsyncHooks::default() };
    let t = Instant::now();
    let out = run_async(&c, &hooks, &counters).unwrap();
    println!("asynchronous run: {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.first_error().is_none(), "{:?}", out.first_error());
    assert_eq!(out.backend, "sim");
    assert!(out.agents.iter().all(|a| a.rounds == rounds), "every agent finishes its rounds");
    for (agent, c) in counters.iter().enumerate() {
        let events = common::receive_events(&out.events, agent);
        assert_eq!(events.len() as u64, rounds + events.iter().filter(|e| e.kind == "blocked").count() as u64);
        common::assert_sync_freq_bound(&events, agent, sync_freq, |_| {});
        // Messages went through the device mailboxes: one device-to-device copy per send (ring:
        // one out-peer), and every mix consumed at least one of them.
        let sent = out.events.iter().filter(|e| e.agent == agent && e.kind == "sent").count() as u64;
        assert!(sent > 0, "agent {agent} never sent");
        assert_eq!(c.device_messages.load(Ordering::Relaxed), sent, "agent {agent}: every message is a device copy");
        let mixed = out.events.iter().filter(|e| e.agent == agent && e.kind == "mixed").count() as u64;
        assert_eq!(c.mixes.load(Ordering::Relaxed), mixed);
    }
    // The slow agent made the others skip sends, go unmixed or block.
    assert!(out.events.iter().any(|e| e.agent != 1 && (e.kind == "send_skipped" || e.kind == "blocked" || e.kind == "unmixed")));
    let params: Vec<f32> = out.agents.iter().flat_map(|a| a.params.clone().unwrap()).collect();
    let d = gala_gpu::backend::cpu::gossip::consensus_distance(&params, agents);
    assert!(d.is_finite() && d < 0.2, "consensus distance stays bounded: {d}");
}

#[test]
fn device_mailboxes_refuse_more_than_64_possible_senders() {
    let agents = 66;
    let plan = MailboxPlan {
        agents,
        param_count: 4,
        senders: (0..agents).map(|r| (0..agents).filter(|&s| s != r).collect()).collect(),
        orders: vec![Vec::new(); agents],
    };
    let err = DeviceMailboxes::new(Arc::new(SimDevice::new()), plan).err().expect("65 senders per agent are refused").to_string();
    assert!(err.contains("65 agents") && err.contains("at most 64"), "{err}");
}
