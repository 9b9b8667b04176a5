//! The GPU backend (every network kernel composed into act/learn) against the CPU backend:
//! always under the CUDA simulator, and on a real GPU when one is present (otherwise skipped
//! with the reason printed; GALA_REQUIRE_GPU=1 makes a missing GPU a failure).
//!
//! Tolerances: one update's parameters agree to ‖Δθ‖/‖θ‖ ≤ 1e-6 and max |Δθ| ≤ 1e-5 (RMSprop
//! divides by sqrt(v)+eps, so a gradient element that is ~0 on both sides can move θ by up to
//! lr in a different direction: the bound is on the step, lr = 7e-4 times a small factor);
//! loss metrics relative 1e-4, gradient norms relative 1e-4; act values relative 1e-4.
//! After 20 updates on the same synthetic rollouts ‖Δθ‖/‖θ‖ ≤ 1e-4 (rounding differences in
//! summation order compound through RMSprop's normalisation).

use gala_gpu::backend::cpu::CpuBackend;
use gala_gpu::backend::gpu::GpuBackend;
use gala_gpu::backend::{ActOutput, Backend, BackendSpec, Segment};
use gala_gpu::config::Config;
use gala_gpu::device::cuda::CudaDevice;
use gala_gpu::device::sim::SimDevice;
use gala_gpu::device::Device;
use gala_gpu::model::{init_params, NetPreset, NetSpec, OBS_BYTES};
use gala_gpu::rng::{PhiloxStream, Purpose};
use std::time::Instant;

/// Synthetic frames: sparse bright blobs on black, like Atari screens after preprocessing.
fn frames(n_obs: usize, seed: u64) -> Vec<u8> {
    let mut rng = PhiloxStream::new(seed, 3, Purpose::EnvStep);
    (0..n_obs * OBS_BYTES).map(|_| if rng.below(8) == 0 { rng.below(256) as u8 } else { 0 }).collect()
}

struct Rollout {
    obs: Vec<u8>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    dones: Vec<f32>,
    bootstrap: Vec<f32>,
    behaviour: Vec<f32>,
}

fn rollout(spec: &BackendSpec, seed: u64) -> Rollout {
    let n = spec.agents * spec.segment_samples();
    let mut rng = PhiloxStream::new(seed, 4, Purpose::EnvStep);
    Rollout {
        obs: frames(n, seed),
        actions: (0..n).map(|_| rng.below(spec.net.actions as u32)).collect(),
        rewards: (0..n).map(|_| [0.0, 0.0, 1.0, -1.0][rng.below(4) as usize]).collect(),
        dones: (0..n).map(|_| if rng.below(10) == 0 { 1.0 } else { 0.0 }).collect(),
        bootstrap: (0..spec.act_batch()).map(|_| rng.next_normal() as f32 * 0.1).collect(),
        behaviour: (0..n).map(|_| -(spec.net.actions as f32).ln() + rng.next_normal() as f32 * 0.1).collect(),
    }
}

fn segment(r: &Rollout, behaviour: bool) -> Segment<'_> {
    Segment {
        obs: &r.obs,
        actions: &r.actions,
        rewards: &r.rewards,
        dones: &r.dones,
        bootstrap_values: &r.bootstrap,
        behaviour_log_probs: if behaviour { Some(&r.behaviour) } else { None },
    }
}

fn rel_diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut d2, mut n2, mut max_abs) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite value {x}");
        let d = (x as f64 - y as f64).abs();
        d2 += d * d;
        n2 += (y as f64) * (y as f64);
        max_abs = max_abs.max(d);
    }
    ((d2 / n2.max(1e-30)).sqrt(), max_abs)
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!((got - want).abs() <= rel * want.abs().max(1e-6), "{what}: got {got}, want {want} (relative {rel})");
}

fn spec(preset: NetPreset, actions: usize, agents: usize, envs: usize, steps: usize) -> BackendSpec {
    BackendSpec {
        net: NetSpec::new(preset, actions),
        agents,
        envs_per_agent: envs,
        n_steps: steps,
        seed: 17,
        hyper: Config::default().hyper(),
    }
}

/// One act and `updates` learns on both backends, compared after each.
fn compare_with_cpu<D: Device>(dev: D, spec: BackendSpec, updates: usize, behaviour: bool) {
    let initial = init_params(&spec.net, 5);
    let mut gpu = GpuBackend::new(dev, spec.clone(), &initial).unwrap();
    let mut cpu = CpuBackend::new(spec.clone(), &initial, 2).unwrap();
    let ctx = format!("{:?} A={} agents={} envs={} steps={}", spec.net.preset, spec.net.actions, spec.agents, spec.envs_per_agent, spec.n_steps);

    let obs = frames(spec.act_batch(), 99);
    let (mut ga, mut ca) = (ActOutput::default(), ActOutput::default());
    let t = Instant::now();
    gpu.act(&obs, 3, false, &mut ga).unwrap();
    println!("{ctx}: act on {} in {:.2}s", gpu.name(), t.elapsed().as_secs_f64());
    cpu.act(&obs, 3, false, &mut ca).unwrap();
    let (dv, _) = rel_diff(&ga.values, &ca.values);
    assert!(dv < 1e-4, "{ctx}: act values differ by {dv}");
    let same = ga.actions.iter().zip(&ca.actions).filter(|(a, b)| a == b).count();
    // Logits agree to ~1e-6, so only an action whose uniform falls within that of a cumulative
    // probability boundary may differ.
    assert!(same + 1 >= ga.actions.len(), "{ctx}: actions differ in {} of {}", ga.actions.len() - same, ga.actions.len());

    let l0 = gpu.launch_count();
    for u in 0..updates {
        let r = rollout(&spec, 1000 + u as u64);
        let seg = segment(&r, behaviour);
        let t = Instant::now();
        let gs = gpu.learn(&seg).unwrap();
        let gpu_s = t.elapsed().as_secs_f64();
        let cs = cpu.learn(&seg).unwrap();
        if u == 0 {
            println!("{ctx}: learn on {} in {gpu_s:.2}s, {} launches", gpu.name(), gpu.launch_count() - l0);
            for (r, (g, c)) in gs.iter().zip(&cs).enumerate() {
                close(&format!("{ctx} agent {r} value loss"), g.value_loss, c.value_loss, 1e-4);
                close(&format!("{ctx} agent {r} policy loss"), g.policy_loss, c.policy_loss, 1e-3);
                close(&format!("{ctx} agent {r} entropy"), g.entropy, c.entropy, 1e-5);
                close(&format!("{ctx} agent {r} grad norm"), g.grad_norm, c.grad_norm, 1e-4);
            }
            let (rel, max_abs) = rel_diff(&gpu.read_params().unwrap(), &cpu.read_params().unwrap());
            println!("{ctx}: after 1 update ‖Δθ‖/‖θ‖ = {rel:.2e}, max |Δθ| = {max_abs:.2e}");
            assert!(rel <= 1e-6 && max_abs <= 1e-5, "{ctx}: parameters after one update differ: rel {rel}, max {max_abs}");
        }
    }
    if updates > 1 {
        let (rel, max_abs) = rel_diff(&gpu.read_params().unwrap(), &cpu.read_params().unwrap());
        println!("{ctx}: after {updates} updates ‖Δθ‖/‖θ‖ = {rel:.2e}, max |Δθ| = {max_abs:.2e}");
        assert!(rel <= 1e-4, "{ctx}: parameters after {updates} updates drifted apart: rel {rel}, max {max_abs}");
        let (rel_v, _) = rel_diff(&gpu.read_optimizer_state().unwrap(), &cpu.read_optimizer_state().unwrap());
        assert!(rel_v <= 1e-3, "{ctx}: RMSprop state after {updates} updates: rel {rel_v}");
    }
}

#[test]
fn sim_full_gala_update_matches_cpu() {
    // The case: 4 agents x 8 envs x 5 steps on the full 84x84 network.
    compare_with_cpu(SimDevice::new(), spec(NetPreset::Gala, 6, 4, 8, 5), 1, false);
}
