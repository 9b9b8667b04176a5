//! The GPU backend (every network kernel composed into act/learn) against the CPU backend:
//! always under the CUDA simulator, and on a real GPU when one is present (otherwise skipped
//! with the reason printed; GALA_REQUIRE_GPU=1 makes a missing GPU a failure).
//!
//! Tolerances: one update's parameters agree to ‖Δθ‖/‖θ‖ ≤ 1e-6 and max |Δθ| ≤ 1e-5 (RMSprop
//! divides by sqrt(v)+eps, so a gradient element that is ~0 on both sides can move θ by up to
//! lr in a different direction: the bound is on the step, lr = 7e-4 times a small factor);
//! loss metrics relative 1e-4, gradient norms relative 1e-4; act values relative 1e-4.
//! After 20 updates on the same synthetic rollouts: the median agent's ‖Δθ‖/‖θ‖ ≤ 1e-5, and the
//! whole arena's ≤ max(5e-2, 10x the drift between two CPU runs whose initial parameters differ
//! by rounding-level noise, relative 1e-7). An agent whose ReLU pre-activation sits within
//! rounding of 0 takes a different branch on each backend and separates (see the test).

use gala_gpu::backend::cpu::CpuBackend;
use gala_gpu::backend::gpu::GpuBackend;
use gala_gpu::backend::{ActOutput, Backend, BackendSpec, Precision, Segment};
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
        agent_offset: 0,
        envs_per_agent: envs,
        n_steps: steps,
        seed: 17,
        hyper: Config::default().hyper(),
        precision: Precision::Fp32,
    }
}

/// One act and `updates` learns on both backends, compared after each.
fn compare_with_cpu<D: Device>(dev: D, spec: BackendSpec, updates: usize, behaviour: bool) {
    let initial = init_params(&spec.net, 5);
    let mut gpu = GpuBackend::new(dev, spec.clone(), &initial).unwrap();
    let mut cpu = CpuBackend::new(spec.clone(), &initial, 2).unwrap();
    // The yardstick for many updates: the CPU backend itself, started from parameters perturbed
    // at fp32 rounding level (relative 1e-7). How far that drifts from the unperturbed run is how
    // sensitive these updates are to rounding; the GPU backend must stay within a small multiple.
    let mut rng = PhiloxStream::new(77, 9, Purpose::Init);
    let perturbed: Vec<f32> = initial.iter().map(|&v| v * (1.0 + 1e-7 * rng.next_normal() as f32)).collect();
    let mut cpu_perturbed = if updates > 1 { Some(CpuBackend::new(spec.clone(), &perturbed, 2).unwrap()) } else { None };
    // One step at a time: before every update this CPU backend takes the GPU backend's parameters
    // and RMSprop state, so the two differ by one update's arithmetic only, whatever the
    // free-running trajectories have done by then (see the per-agent note at the end).
    let mut cpu_step = if updates > 1 { Some(CpuBackend::new(spec.clone(), &initial, 2).unwrap()) } else { None };
    let (mut worst_step, mut flipped_steps) = (0f64, Vec::new());
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
        let before = cpu_step.as_ref().map(|_| (gpu.read_params().unwrap(), gpu.read_optimizer_state().unwrap()));
        let t = Instant::now();
        let gs = gpu.learn(&seg).unwrap();
        let gpu_s = t.elapsed().as_secs_f64();
        let cs = cpu.learn(&seg).unwrap();
        if let Some(c) = cpu_perturbed.as_mut() {
            c.learn(&seg).unwrap();
        }
        if let (Some(c), Some((params, square_avg))) = (cpu_step.as_mut(), before) {
            c.write_params(&params).unwrap();
            c.write_optimizer_state(&square_avg).unwrap();
            c.learn(&seg).unwrap();
            let (gp, cp) = (gpu.read_params().unwrap(), c.read_params().unwrap());
            let p = gp.len() / spec.agents;
            for r in 0..spec.agents {
                let (rel, max_abs) = rel_diff(&gp[r * p..(r + 1) * p], &cp[r * p..(r + 1) * p]);
                assert!(rel <= 1e-3, "{ctx}: update {u} of agent {r} from the same parameters differs by {rel} (max {max_abs})");
                if rel > 1e-6 {
                    flipped_steps.push(format!("update {u} agent {r}: {rel:.2e}"));
                }
                worst_step = worst_step.max(rel);
            }
        }
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
        if std::env::var_os("GALA_TRACE_DRIFT").is_some() {
            let (gp, cp) = (gpu.read_params().unwrap(), cpu.read_params().unwrap());
            let p = gp.len() / spec.agents;
            for r in 0..spec.agents {
                let (rel, max_abs) = rel_diff(&gp[r * p..(r + 1) * p], &cp[r * p..(r + 1) * p]);
                println!("{ctx}: update {u} agent {r}: rel {rel:.2e} max {max_abs:.2e}; losses gpu {:?} cpu {:?}", gs[r], cs[r]);
            }
        }
    }
    if updates > 1 {
        let cpu_params = cpu.read_params().unwrap();
        let (rel, max_abs) = rel_diff(&gpu.read_params().unwrap(), &cpu_params);
        let (yardstick, _) = rel_diff(&cpu_perturbed.as_mut().unwrap().read_params().unwrap(), &cpu_params);
        println!(
            "{ctx}: after {updates} updates ‖Δθ‖/‖θ‖ = {rel:.2e} (max |Δθ| = {max_abs:.2e}); CPU vs CPU from a 1e-7 perturbation: {yardstick:.2e}"
        );
        // Per agent: a ReLU pre-activation within rounding of 0 switches on in one backend and off
        // in the other — within ONE update from identical parameters, since the forward passes
        // sum in different orders — after which that agent's trajectory separates at the rate the
        // dynamics set (seen: all agents at 1e-7 for 13 updates, then one step of one agent at
        // 5e-6, growing to 1e-3 by update 20; the 1e-7-perturbed CPU run separates the same way,
        // one agent at 7.2e-5 after 20). So how many agents have separated after 20 updates is
        // no test of the kernels (the median criterion this replaced failed when backward-data's
        // summation order changed, its single steps at rounding level but for 3 flips). What is,
        // per agent and update, from the same parameters (`cpu_step`): rounding level (1e-6) but
        // for rare flips, never more than 1e-3 — a kernel bug moves every step of every agent;
        // and the free-running runs within 5e-2 (or 10x the CPU yardstick) of each other.
        let steps = updates * spec.agents;
        println!("{ctx}: single updates from the same parameters: worst ‖Δθ‖/‖θ‖ {worst_step:.2e}; {} of {steps} over 1e-6: {flipped_steps:?}", flipped_steps.len());
        assert!(flipped_steps.len() * 10 <= steps, "{ctx}: {} of {steps} single updates differ by more than rounding: {flipped_steps:?}", flipped_steps.len());
        let gp = gpu.read_params().unwrap();
        let p = gp.len() / spec.agents;
        let per_agent: Vec<String> = (0..spec.agents).map(|r| format!("{:.2e}", rel_diff(&gp[r * p..(r + 1) * p], &cpu_params[r * p..(r + 1) * p]).0)).collect();
        println!("{ctx}: per-agent drift after {updates} updates: {}", per_agent.join(", "));
        let bound = (10.0 * yardstick).max(5e-2);
        assert!(rel <= bound, "{ctx}: parameters after {updates} updates drifted apart: rel {rel} > {bound} (yardstick {yardstick})");
    }
}

#[test]
fn sim_full_gala_update_matches_cpu() {
    // The case: 4 agents x 8 envs x 5 steps on the full 84x84 network.
    compare_with_cpu(SimDevice::new(), spec(NetPreset::Gala, 6, 4, 8, 5), 1, false);
}

#[test]
fn sim_twenty_updates_stay_close_to_cpu() {
    // 20 updates of the full 84x84 network with 4 agents x 2 envs x 5 steps. The issue's
    // 4 x 8 x 5 batch takes ~2-5 s per simulated update on a shared 2-core machine (about
    // 3.7 G multiply-adds through the simulator's scalar fibers), so 20 of them do not fit the
    // test budget; that run is `sim_twenty_full_size_updates_stay_close_to_cpu` (ignored by
    // default: `cargo test --release -- --ignored`). The one-update comparison above uses the
    // full batch.
    compare_with_cpu(SimDevice::new(), spec(NetPreset::Gala, 6, 4, 2, 5), 20, false);
}

#[test]
#[ignore = "about 2 minutes under the simulator; run with --ignored"]
fn sim_twenty_full_size_updates_stay_close_to_cpu() {
    compare_with_cpu(SimDevice::new(), spec(NetPreset::Gala, 6, 4, 8, 5), 20, false);
}

#[test]
fn sim_nature_update_with_behaviour_ratio_matches_cpu() {
    // Pipelined learning: the truncated ratio min(1, π/μ) weights the policy gradient; ragged
    // batch (3 envs x 3 steps = 9 samples per agent: not a multiple of the 4-sample chunk).
    compare_with_cpu(SimDevice::new(), spec(NetPreset::Nature, 18, 3, 3, 3), 2, true);
}

#[test]
fn gpu_backend_reports_bad_input() {
    let s = spec(NetPreset::Gala, 4, 2, 2, 2);
    let initial = init_params(&s.net, 1);
    let mut gpu = GpuBackend::new(SimDevice::new(), s.clone(), &initial).unwrap();
    let mut out = ActOutput::default();
    let err = gpu.act(&[0u8; 10], 0, false, &mut out).unwrap_err();
    assert!(err.to_string().contains("observation bytes"), "{err}");
    let mut r = rollout(&s, 1);
    r.actions[3] = 4;
    let err = gpu.learn(&segment(&r, false)).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    assert!(GpuBackend::new(SimDevice::new(), s, &initial[1..]).is_err());
}

/// The update has no host sync inside it: a non-finite loss is caught on the device
/// (`heads_loss_guard`), the optimizer skips the step for every agent, and the host reports it
/// after the update exactly as before (agent named, parameters and optimizer state unchanged,
/// bit for bit); the next finite update steps again (the flag is recomputed every update).
#[test]
fn sim_non_finite_loss_skips_the_step_on_the_device() {
    let s = spec(NetPreset::Gala, 4, 2, 2, 2);
    let initial = init_params(&s.net, 1);
    let mut gpu = GpuBackend::new(SimDevice::new(), s.clone(), &initial).unwrap();
    let mut r = rollout(&s, 5);
    gpu.learn(&segment(&r, false)).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let (p0, v0) = (bits(gpu.read_params().unwrap()), bits(gpu.read_optimizer_state().unwrap()));
    // Rewards are [agents][steps][envs]: the last one is agent 1's.
    let last = r.rewards.len() - 1;
    r.rewards[last] = f32::NAN;
    let launches = gpu.launch_count();
    let err = gpu.learn(&segment(&r, false)).unwrap_err().to_string();
    assert!(err.contains("non-finite") && err.contains("agent 1") && err.contains("loss is NaN"), "{err}");
    assert_eq!(gpu.launch_count() - launches, 24, "the whole update is enqueued; the guard skips the step on the device");
    assert!(bits(gpu.read_params().unwrap()) == p0, "a non-finite loss must leave every agent's parameters unchanged");
    assert!(bits(gpu.read_optimizer_state().unwrap()) == v0, "and the RMSprop state");
    r.rewards[last] = 1.0;
    gpu.learn(&segment(&r, false)).unwrap();
    assert!(bits(gpu.read_params().unwrap()) != p0, "the next finite update must step again");
}

/// precision = "tf32" on the simulator: the same start gives bit-identical parameters after two
/// updates (deterministic run to run), the arithmetic really differs from fp32, and the first
/// update's losses and gradient norm agree with fp32's to TF32 accuracy (10-bit operands: a few
/// 1e-4 relative). Likewise "tf32-conv". The cpu backend refuses both.
#[test]
fn sim_tf32_updates_are_deterministic_and_near_fp32() {
    let s32 = spec(NetPreset::Gala, 4, 2, 2, 2);
    let initial = init_params(&s32.net, 1);
    let run = |spec: &BackendSpec| {
        let mut b = GpuBackend::new(SimDevice::new(), spec.clone(), &initial).unwrap();
        let stats: Vec<_> = (0..2).map(|u| b.learn(&segment(&rollout(spec, 40 + u), false)).unwrap()).collect();
        (b.read_params().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>(), stats)
    };
    let (fp32, fp32_stats) = run(&s32);
    let mut seen = vec![fp32];
    // tf32, then tf32-conv (PyTorch's default: TF32 convs, FP32 fc): each deterministic, an
    // arithmetic of its own, its first update within TF32 accuracy of fp32's, refused by cpu.
    for precision in [Precision::Tf32, Precision::Tf32Conv] {
        let name = precision.name();
        let sp = BackendSpec { precision, ..s32.clone() };
        let (bits, stats) = run(&sp);
        assert!(bits == run(&sp).0, "two {name} runs from the same start differ");
        assert!(!seen.contains(&bits), "precision {name} ran the arithmetic of an earlier precision");
        seen.push(bits);
        for (r, (t, f)) in stats[0].iter().zip(&fp32_stats[0]).enumerate() {
            // Seen (tf32): value loss 2e-4, policy loss 2e-4, grad norm 5e-4, entropy 3e-8 apart.
            println!("agent {r}: {name} {t:?}\n         fp32 {f:?}");
            close(&format!("agent {r} value loss, {name} vs fp32"), t.value_loss, f.value_loss, 2e-3);
            close(&format!("agent {r} policy loss, {name} vs fp32"), t.policy_loss, f.policy_loss, 2e-3);
            close(&format!("agent {r} entropy, {name} vs fp32"), t.entropy, f.entropy, 1e-4);
            close(&format!("agent {r} grad norm, {name} vs fp32"), t.grad_norm, f.grad_norm, 5e-3);
        }
        let err = CpuBackend::new(sp, &initial, 1).err().expect("the cpu backend refuses the tf32 modes").to_string();
        assert!(err.contains(name) && err.contains("fp32"), "{err}");
    }
}

fn run_catch(backend: &str, dir: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gala-gpu"))
        .args([
            "train", "--game", "catch", "--agents", "2", "--envs-per-agent", "2", "--frames", "120", "--seed", "3",
            "--threads", "2", "--backend", backend, "--out", dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "train --backend {backend} failed: {stderr}");
    assert!(stderr.contains(&format!("backend: {backend}")), "the run must say which backend it uses: {stderr}");
    let run = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn sim_catch_training_run_matches_cpu_summary() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let sim = run_catch("sim", dir.path());
    println!("train --backend sim --game catch (120 frames): {:.1}s", t.elapsed().as_secs_f64());
    let cpu = run_catch("cpu", dir.path());
    assert_eq!(sim["backend"], "sim");
    assert_eq!(sim["frames"], cpu["frames"]);
    assert_eq!(sim["updates"], cpu["updates"]);
    // Actions are sampled from logits that agree to ~1e-6: the trajectories are the same unless
    // a uniform lands that close to a probability boundary, so the summaries agree closely.
    let (se, ce) = (sim["episodes"].as_i64().unwrap(), cpu["episodes"].as_i64().unwrap());
    assert!((se - ce).abs() <= 2, "episodes: sim {se}, cpu {ce}");
    let (sr, cr) = (sim["mean_return_100"].as_f64().unwrap(), cpu["mean_return_100"].as_f64().unwrap());
    assert!((sr - cr).abs() <= 0.1, "mean return: sim {sr}, cpu {cr}");
    let (sd, cd) = (sim["consensus_distance"].as_f64().unwrap(), cpu["consensus_distance"].as_f64().unwrap());
    assert!((sd - cd).abs() <= 1e-3 * cd.abs().max(1e-6) + 1e-7, "consensus distance: sim {sd}, cpu {cd}");
    println!("summaries: sim {sim}\ncpu {cpu}");
}

/// The pipelined hand-off of θ: learner → actor on one shared device is a device-to-device copy
/// that leaves the actor with exactly the learner's parameters (and so exactly its actions);
/// onto a backend of another device, or a CPU backend, it goes through the host, equally exact.
fn check_params_handoff<D: Device>(dev: std::sync::Arc<D>, other: std::sync::Arc<D>) {
    let spec = spec(NetPreset::Gala, 6, 2, 3, 2);
    let init = init_params(&spec.net, 5);
    let mut learner = GpuBackend::new(dev.clone(), spec.clone(), &init).unwrap();
    let mut actor = GpuBackend::new(dev.clone(), spec.clone(), &init).unwrap();
    let obs = frames(spec.act_batch(), 8);
    let (mut before, mut after, mut want) = (ActOutput::default(), ActOutput::default(), ActOutput::default());
    actor.act(&obs, 0, false, &mut before).unwrap();
    let r = rollout(&spec, 3);
    learner.learn(&segment(&r, false)).unwrap();
    let theta = learner.read_params().unwrap();
    assert_ne!(theta, actor.read_params().unwrap(), "the update must change θ");
    let device_before = learner.device_seconds().unwrap();
    learner.copy_params_into(&mut actor).unwrap();
    assert!(learner.device_seconds().unwrap() >= device_before);
    assert_eq!(actor.read_params().unwrap(), theta, "device-to-device hand-off");
    actor.act(&obs, 0, false, &mut after).unwrap();
    learner.act(&obs, 0, false, &mut want).unwrap();
    assert_eq!(after, want, "the actor acts exactly as the learner after the hand-off");
    // Another device, and the CPU backend: through the host.
    let mut elsewhere = GpuBackend::new(other, spec.clone(), &init).unwrap();
    learner.copy_params_into(&mut elsewhere).unwrap();
    assert_eq!(elsewhere.read_params().unwrap(), theta);
    let mut cpu = CpuBackend::new(spec.clone(), &init, 1).unwrap();
    learner.copy_params_into(&mut cpu).unwrap();
    assert_eq!(cpu.read_params().unwrap(), theta);
    // A backend of another shape is refused, not half-copied.
    let mut small = GpuBackend::new(dev, BackendSpec { agents: 1, ..spec.clone() }, &init).unwrap();
    assert!(learner.copy_params_into(&mut small).is_err());
}

#[test]
fn sim_pipelined_handoff_copies_parameters_on_the_device() {
    check_params_handoff(std::sync::Arc::new(SimDevice::new()), std::sync::Arc::new(SimDevice::new()));
}

/// The update and act's forward pass replayed from their CUDA graphs against the same work
/// launched kernel by kernel: bit-identical parameters, RMSprop state and losses after every
/// update, bit-identical act outputs before and after each (the replayed forward reads the
/// parameters the last update left), the same launches.
fn check_update_graphs<D: Device + Clone>(dev: D, expect_graphs: bool) {
    let spec = spec(NetPreset::Gala, 6, 2, 4, 5);
    let initial = init_params(&spec.net, 5);
    let mut graphed = GpuBackend::new(dev.clone(), spec.clone(), &initial).unwrap();
    let mut eager = GpuBackend::new(dev, spec.clone(), &initial).unwrap();
    eager.set_graphs(false);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let act_both = |graphed: &mut GpuBackend<D>, eager: &mut GpuBackend<D>, step: u64| {
        let obs = frames(spec.act_batch(), 900 + step);
        let (mut g, mut e) = (ActOutput::default(), ActOutput::default());
        let (l0, e0) = (graphed.launch_count(), eager.launch_count());
        graphed.act(&obs, step, step % 2 == 1, &mut g).unwrap();
        eager.act(&obs, step, step % 2 == 1, &mut e).unwrap();
        assert_eq!(graphed.launch_count() - l0, eager.launch_count() - e0, "act {step}: launches differ");
        assert_eq!(g.actions, e.actions, "act {step}: actions differ");
        assert_eq!(bits(g.values), bits(e.values), "act {step}: values differ");
        assert_eq!(bits(g.log_probs), bits(e.log_probs), "act {step}: log-probs differ");
    };
    act_both(&mut graphed, &mut eager, 0);
    for u in 0..4 {
        // Updates 2 and 3 with the behaviour ratio: a second graph.
        let r = rollout(&spec, 500 + u);
        let seg = segment(&r, u >= 2);
        let (l0, e0) = (graphed.launch_count(), eager.launch_count());
        let gs = graphed.learn(&seg).unwrap();
        let es = eager.learn(&seg).unwrap();
        assert_eq!(graphed.launch_count() - l0, eager.launch_count() - e0, "update {u}: launches differ");
        assert_eq!(format!("{gs:?}"), format!("{es:?}"), "update {u}: losses differ");
        assert_eq!(bits(graphed.read_params().unwrap()), bits(eager.read_params().unwrap()), "update {u}: parameters differ");
        assert_eq!(
            bits(graphed.read_optimizer_state().unwrap()),
            bits(eager.read_optimizer_state().unwrap()),
            "update {u}: RMSprop state differs"
        );
        act_both(&mut graphed, &mut eager, 1 + u);
    }
    assert_eq!(graphed.update_graphs_recorded(), if expect_graphs { 2 } else { 0 });
    assert_eq!(graphed.act_graphs_recorded(), if expect_graphs { 1 } else { 0 });
    assert_eq!((eager.update_graphs_recorded(), eager.act_graphs_recorded()), (0, 0));
}

#[test]
fn sim_records_no_graphs_and_runs_the_same_launches() {
    check_update_graphs(std::sync::Arc::new(SimDevice::new()), false);
}

#[test]
fn cuda_update_and_act_graphs_replay_the_launches_bit_for_bit_when_a_gpu_is_present() {
    match CudaDevice::new(0) {
        Ok(d) => check_update_graphs(std::sync::Arc::new(d), true),
        Err(e) => {
            if std::env::var_os("GALA_REQUIRE_GPU").is_some() {
                panic!("GALA_REQUIRE_GPU is set but no CUDA device could be opened: {e}");
            }
            println!("SKIPPED cuda_update_and_act_graphs_replay_the_launches_bit_for_bit_when_a_gpu_is_present: {e}");
        }
    }
}

#[test]
fn cuda_backend_matches_cpu_when_a_gpu_is_present() {
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var_os("GALA_REQUIRE_GPU").is_some() {
                panic!("GALA_REQUIRE_GPU is set but no CUDA device could be opened: {e}");
            }
            println!("SKIPPED cuda_backend_matches_cpu_when_a_gpu_is_present: {e}");
            return;
        }
    };
    println!("running the backend comparison on {}", dev.describe());
    compare_with_cpu(dev, spec(NetPreset::Gala, 6, 4, 8, 5), 20, false);
    let (shared, other) = (CudaDevice::new(0).unwrap(), CudaDevice::new(0).unwrap());
    check_params_handoff(std::sync::Arc::new(shared), std::sync::Arc::new(other));
}
