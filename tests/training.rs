//! Gossip, determinism and learning, through the library API on the CPU backend.

use gala_gpu::algo::{NoProgress, Topology, Trainer};
use gala_gpu::backend::cpu::CpuBackend;
use gala_gpu::backend::{Backend, BackendKind, BackendSpec, Precision};
use gala_gpu::config::{Algo, Config};
use gala_gpu::model::{NetPreset, NetSpec};
use gala_gpu::rng::{PhiloxStream, Purpose};

fn small_config(seed: u64) -> Config {
    Config {
        agents: 2,
        envs_per_agent: 3,
        n_steps: 5,
        frames: 2 * 3 * 5 * 4, // 4 updates
        seed,
        game: "catch".into(),
        backend: BackendKind::Cpu,
        threads: 2,
        ..Config::default()
    }
}

fn sha_after_training(config: &Config) -> String {
    let mut t = Trainer::new(config).unwrap();
    let summary = t.train(None, &mut NoProgress).unwrap();
    assert_eq!(summary.updates, 4);
    summary.params_sha256
}

#[test]
fn same_seed_same_parameters_different_seed_different() {
    let a = sha_after_training(&small_config(7));
    let b = sha_after_training(&small_config(7));
    assert_eq!(a, b, "same seed must reproduce the parameters bit for bit");
    let c = sha_after_training(&small_config(8));
    assert_ne!(a, c, "a different seed must give different parameters");
    // The CPU backend's sums run in a fixed order whatever the thread count.
    let one_thread = sha_after_training(&Config { threads: 1, ..small_config(7) });
    assert_eq!(a, one_thread, "thread count changed the result");
}

#[test]
fn a2c_is_one_learner_holding_all_simulators() {
    let config = Config { algo: Algo::A2c, ..small_config(3) };
    let mut t = Trainer::new(&config).unwrap();
    t.update().unwrap();
    let spec = t.backend_mut().spec().clone();
    assert_eq!((spec.agents, spec.envs_per_agent), (1, 6));
    assert_eq!(t.frames(), 30);
}

fn agents_with_distinct_params(agents: usize) -> (CpuBackend, usize) {
    let net = NetSpec::new(NetPreset::Gala, 3);
    let p = net.layout().total;
    let spec = BackendSpec { net, agents, agent_offset: 0, envs_per_agent: 1, n_steps: 1, seed: 0, hyper: Config::default().hyper(), precision: Precision::Fp32 };
    let mut rng = PhiloxStream::new(5, 0, Purpose::Init);
    let arena: Vec<f32> = (0..agents * p).map(|_| rng.next_normal() as f32).collect();
    (CpuBackend::new(spec, &arena, 2).unwrap(), p)
}

fn mean_params(arena: &[f32], agents: usize, p: usize) -> Vec<f64> {
    (0..p).map(|i| (0..agents).map(|r| arena[r * p + i] as f64).sum::<f64>() / agents as f64).collect()
}

#[test]
fn lock_step_gossip_preserves_the_mean_and_shrinks_the_distance() {
    for (topology, agents, peers) in [(Topology::Ring, 4, 1), (Topology::All, 4, 3), (Topology::Exp, 8, 2)] {
        let graph = gala_gpu::algo::GossipGraph::new(topology, agents, peers).unwrap();
        let (mut backend, p) = agents_with_distinct_params(agents);
        let mean0 = mean_params(&backend.read_params().unwrap(), agents, p);
        let d0 = backend.consensus_distance().unwrap();
        assert!(d0 > 0.5, "distinct random agents start far apart ({d0})");
        let mut last = d0;
        for round in 0..12 {
            backend.mix(&graph.in_peers(round)).unwrap();
            let d = backend.consensus_distance().unwrap();
            assert!(d <= last * (1.0 + 1e-9), "{topology:?}: distance grew from {last} to {d} in round {round}");
            last = d;
        }
        assert!(last < 0.1 * d0, "{topology:?}: 12 rounds only shrank the distance from {d0} to {last}");
        let mean = mean_params(&backend.read_params().unwrap(), agents, p);
        let max_err = mean.iter().zip(&mean0).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max_err < 1e-5, "{topology:?}: mixing moved the mean by {max_err}");
    }
}

#[test]
fn agents_start_identical_and_gossip_keeps_them_close() {
    let mut t = Trainer::new(&Config { agents: 3, peers: 1, ..small_config(11) }).unwrap();
    assert_eq!(t.backend_mut().consensus_distance().unwrap(), 0.0, "identical start: consensus at t=0");
    for _ in 0..3 {
        t.update().unwrap();
    }
    let d = t.backend_mut().consensus_distance().unwrap();
    assert!(d > 0.0 && d < 0.05, "agents drift apart a little and gossip keeps them close: {d}");
}
