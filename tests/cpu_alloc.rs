//! The CPU backend's steady state allocates nothing in proportion to its batch: after warm-up,
//! acting and learning reuse the buffers they keep (the fast path's activations, row tables,
//! gradient partials, pooled scratch). Counted with a global allocator wrapper, in a test binary
//! of its own (one test, so no other test allocates while it counts).

use gala_gpu::backend::cpu::CpuBackend;
use gala_gpu::backend::{ActOutput, Backend, BackendSpec, Precision, Segment};
use gala_gpu::config::Config;
use gala_gpu::model::{init_params, NetPreset, NetSpec, OBS_BYTES};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            CALLS.fetch_add(1, Relaxed);
            BYTES.fetch_add(l.size(), Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            CALLS.fetch_add(1, Relaxed);
            BYTES.fetch_add(new, Relaxed);
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocation calls, bytes) made while running `f`.
fn count(f: impl FnOnce()) -> (usize, usize) {
    CALLS.store(0, Relaxed);
    BYTES.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    f();
    COUNTING.store(false, Relaxed);
    (CALLS.load(Relaxed), BYTES.load(Relaxed))
}

#[test]
fn steady_state_act_and_learn_allocate_nothing_per_sample() {
    let net = NetSpec::new(NetPreset::Gala, 6);
    let (agents, envs, steps) = (2, 8, 5);
    let spec = BackendSpec { net: net.clone(), agents, agent_offset: 0, envs_per_agent: envs, n_steps: steps, seed: 3, hyper: Config::default().hyper(), precision: Precision::Fp32 };
    let mut b = CpuBackend::new(spec, &init_params(&net, 1), 2).unwrap();
    let n = agents * envs * steps;
    let obs: Vec<u8> = (0..n * OBS_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    let actions: Vec<u32> = (0..n as u32).map(|i| i % 6).collect();
    let rewards: Vec<f32> = (0..n).map(|i| (i % 3) as f32 - 1.0).collect();
    let dones = vec![0.0f32; n];
    let boot = vec![0.5f32; agents * envs];
    let mut out = ActOutput::default();
    let act_obs = &obs[..agents * envs * OBS_BYTES];
    let seg = Segment { obs: &obs, actions: &actions, rewards: &rewards, dones: &dones, bootstrap_values: &boot, behaviour_log_probs: None };
    // Warm-up: every buffer reaches its size, the thread pool has started.
    for step in 0..3 {
        b.act(act_obs, step, false, &mut out).unwrap();
        b.learn(&seg).unwrap();
    }
    // Counted in windows of 10 calls: a new thread may still take its first pooled scratch now
    // and then (which thread runs which chunk is the scheduler's choice), but that stops; an
    // allocation made on every call shows in every window. The quietest window must be clean.
    let (windows, per) = (6, 10u64);
    let mut act_min = (usize::MAX, usize::MAX);
    let mut learn_min = (usize::MAX, usize::MAX);
    for w in 0..windows {
        let a = count(|| {
            for step in 0..per {
                b.act(act_obs, 10 + w * per + step, false, &mut out).unwrap();
            }
        });
        let l = count(|| {
            for _ in 0..per {
                b.learn(&seg).unwrap();
            }
        });
        eprintln!("window {w}: act {} allocations ({} bytes), learn {} allocations ({} bytes), per {per} calls", a.0, a.1, l.0, l.1);
        act_min = act_min.min(a);
        learn_min = learn_min.min(l);
    }
    let per = per as usize;
    if !gala_gpu::backend::cpu::gemm::uses_avx512() {
        // The portable GEMM (matrixmultiply) allocates its packing buffers on every call.
        eprintln!("no AVX-512 here: the portable GEMM allocates per call; nothing to assert");
        return;
    }
    // Acting allocates nothing at all.
    assert_eq!(act_min, (0, 0), "act allocates on every call (quietest window of {per} calls: (allocations, bytes))");
    // Learning returns its per-agent statistics (a Vec by the trait's signature) and gathers
    // per-agent loss terms and gradient norms: a few small blocks, nothing of a batch's size
    // (80 samples of 28 KB frames here; the generic path's GEMMs allocated 32 KB packing buffers).
    assert!(learn_min.0 <= 12 * per && learn_min.1 <= 2048 * per, "learn allocates {learn_min:?} (allocations, bytes) in {per} calls");
}
