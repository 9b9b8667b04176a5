//! Criterion benchmarks of the CPU reference backend.
//!
//! `update`: one learner update — forward + backward of the A2C loss, clip and RMSprop — for
//! A agents × 16 envs × 5 steps with the `gala` network (1×16×5 is the batch GALA's code learns
//! from, 4×16×5 the training default), on synthetic frames. `act`: one forward + sampling for
//! 16 observations per agent. `bench/pytorch_cpu_update.py` times the identical work in PyTorch
//! on the same machine.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gala_gpu::backend::cpu::CpuBackend;
use gala_gpu::backend::{ActOutput, Backend, BackendSpec, Segment};
use gala_gpu::config::Config;
use gala_gpu::model::{init_params, NetPreset, NetSpec, OBS_BYTES};
use gala_gpu::rng::{PhiloxStream, Purpose};

fn bench_shape(c: &mut Criterion, agents: usize) {
    let (envs, steps, actions) = (16usize, 5usize, 6usize);
    let net = NetSpec::new(NetPreset::Gala, actions);
    let spec = BackendSpec { net: net.clone(), agents, agent_offset: 0, envs_per_agent: envs, n_steps: steps, seed: 1, hyper: Config::default().hyper() };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut backend = CpuBackend::new(spec, &init_params(&net, 1), threads).unwrap();
    let n = agents * envs * steps;
    let mut rng = PhiloxStream::new(3, 0, Purpose::Init);
    let obs: Vec<u8> = (0..n * OBS_BYTES).map(|_| rng.below(256) as u8).collect();
    let acts: Vec<u32> = (0..n).map(|_| rng.below(actions as u32)).collect();
    let rewards: Vec<f32> = (0..n).map(|_| rng.below(3) as f32 - 1.0).collect();
    let dones: Vec<f32> = (0..n).map(|_| (rng.below(20) == 0) as u32 as f32).collect();
    let boot = vec![0.1f32; agents * envs];
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    let tag = if agents == 1 { String::new() } else { format!("{agents}x") };
    group.bench_function(format!("update_gala_{agents}x16x5"), |b| {
        b.iter(|| {
            let seg = Segment { obs: &obs, actions: &acts, rewards: &rewards, dones: &dones, bootstrap_values: &boot, behaviour_log_probs: None };
            backend.learn(&seg).unwrap()
        })
    });
    group.throughput(Throughput::Elements((agents * envs) as u64));
    let mut out = ActOutput::default();
    let mut step = 0u64;
    group.bench_function(format!("act_gala_{tag}16"), |b| {
        b.iter(|| {
            step += 1;
            backend.act(&obs[..agents * envs * OBS_BYTES], step, false, &mut out).unwrap();
        })
    });
    group.finish();
}

fn bench_cpu(c: &mut Criterion) {
    bench_shape(c, 1);
    bench_shape(c, 4);
}

criterion_group!(benches, bench_cpu);
criterion_main!(benches);
