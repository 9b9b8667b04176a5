//! Criterion benchmarks of the CPU reference backend.
//!
//! `update`: one learner update — forward + backward of the A2C loss, clip and RMSprop — for
//! A agents × 16 envs × 5 steps with the `gala` network (1×16×5 is the batch GALA's code learns
//! from, 4×16×5 the training default), on synthetic frames. `act`: one forward + sampling for
//! 16 observations per agent. `bench/pytorch_cpu_update.py` times the identical work in PyTorch
//! on the same machine. The `_reference` entries time the generic reference network
//! (`CpuBackend::use_reference_net`) the fast path replaced. `GALA_BENCH_CPU_TIME=1` reports process CPU time instead of wall time.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput};
use gala_gpu::backend::cpu::CpuBackend;
use gala_gpu::backend::{ActOutput, Backend, BackendSpec, Precision, Segment};
use gala_gpu::config::Config;
use gala_gpu::model::{init_params, NetPreset, NetSpec, OBS_BYTES};
use gala_gpu::rng::{PhiloxStream, Purpose};

/// Process CPU time (all threads; CLOCK_PROCESS_CPUTIME_ID), for a machine shared with other
/// work: wall time there measures the neighbours as much as the code, CPU time mostly the code.
/// On an idle machine with T busy threads, wall ≈ CPU / T. Selected by GALA_BENCH_CPU_TIME=1.
struct CpuTime;

fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_PROCESS_CPUTIME_ID exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = std::time::Duration;
    fn start(&self) -> u64 {
        process_cpu_ns()
    }
    fn end(&self, i: u64) -> std::time::Duration {
        std::time::Duration::from_nanos(process_cpu_ns() - i)
    }
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }
    fn zero(&self) -> Self::Value {
        std::time::Duration::ZERO
    }
    fn to_f64(&self, v: &Self::Value) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

fn bench_shape<M: Measurement>(c: &mut Criterion<M>, agents: usize) {
    let (envs, steps, actions) = (16usize, 5usize, 6usize);
    let net = NetSpec::new(NetPreset::Gala, actions);
    let spec = BackendSpec { net: net.clone(), agents, agent_offset: 0, envs_per_agent: envs, n_steps: steps, seed: 1, hyper: Config::default().hyper(), precision: Precision::Fp32 };
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
    // The fast f32 path (what trains), then the generic reference network it replaced (`_reference`).
    for (reference, suffix) in [(false, ""), (true, "_reference")] {
        backend.use_reference_net(reference);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("update_gala_{agents}x16x5{suffix}"), |b| {
            b.iter(|| {
                let seg = Segment { obs: &obs, actions: &acts, rewards: &rewards, dones: &dones, bootstrap_values: &boot, behaviour_log_probs: None };
                backend.learn(&seg).unwrap()
            })
        });
        group.throughput(Throughput::Elements((agents * envs) as u64));
        let mut out = ActOutput::default();
        let mut step = 0u64;
        group.bench_function(format!("act_gala_{tag}16{suffix}"), |b| {
            b.iter(|| {
                step += 1;
                backend.act(&obs[..agents * envs * OBS_BYTES], step, false, &mut out).unwrap();
            })
        });
    }
    group.finish();
}

fn main() {
    let cpu_time = std::env::var("GALA_BENCH_CPU_TIME").is_ok_and(|v| v == "1");
    if cpu_time {
        let mut c = Criterion::default().with_measurement(CpuTime).configure_from_args();
        bench_shape(&mut c, 1);
        bench_shape(&mut c, 4);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        bench_shape(&mut c, 1);
        bench_shape(&mut c, 4);
        c.final_summary();
    }
}
