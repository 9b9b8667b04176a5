//! The kernels of kernels/*.cu against their CPU references (src/backend/cpu), written once and
//! run on every device available: always under the CUDA simulator, and on a real GPU when one
//! is present (otherwise that test prints why it was skipped; GALA_REQUIRE_GPU=1 makes a
//! missing GPU a failure).
//!
//! Every launch writes into outputs poisoned with NaN (or u32::MAX) first, so a kernel that
//! skips an element cannot pass on stale correct values. Tolerances, per comparison:
//!   * optimizer: params/grads/square_avg |got − want| ≤ 1e-5·|want| + 1e-7 (f32; FMA on a GPU);
//!     norms relative 1e-9 (f64 sums in another order);
//!   * gossip mixing: ≤ 1e-6·|want| + 1e-7; consensus distance relative 1e-9 (f64);
//!   * returns: ≤ 1e-5·|want| + 1e-6;
//!   * sampling: the simulator must match exactly (same libm as the CPU); on a GPU, whose expf
//!     differs by a few ulp, an action may differ only where u·S lies within 1e-5·S of a
//!     cumulative sum (the documented boundary), log-probs ≤ 1e-5 absolute.

use gala_gpu::backend::cpu::{gossip, heads, optim};
use gala_gpu::backend::gpu::{launch, GpuArena};
use gala_gpu::device::cuda::CudaDevice;
use gala_gpu::device::sim::SimDevice;
use gala_gpu::device::{Device, DeviceBuffer, DeviceElem, KernelArg, LaunchConfig};
use gala_gpu::rng::{action_uniform, PhiloxStream, Purpose};

/// Parameter counts: 1, and sizes that do not divide the block size (256) or chunk counts.
const SIZES: [usize; 4] = [1, 1000, 4099, 100_003];

fn normals(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = PhiloxStream::new(seed, 0, Purpose::Init);
    (0..n).map(|_| s.next_normal() as f32 * scale).collect()
}

fn upload<D: Device, T: DeviceElem>(dev: &D, host: &[T]) -> DeviceBuffer<T> {
    let mut b = dev.alloc_zeros(host.len()).unwrap();
    dev.upload(dev.default_stream(), host, &mut b, 0).unwrap();
    b
}

fn poisoned<D: Device, T: DeviceElem>(dev: &D, len: usize, poison: T) -> DeviceBuffer<T> {
    upload(dev, &vec![poison; len])
}

fn download<D: Device, T: DeviceElem + Default>(dev: &D, b: &DeviceBuffer<T>) -> Vec<T> {
    let mut out = vec![T::default(); b.len()];
    dev.download(dev.default_stream(), b, 0, &mut out).unwrap();
    out
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * w.abs() + abs, "{what}[{i}]: got {g}, want {w} (rel {rel}, abs {abs})");
    }
}

#[track_caller]
fn assert_rel_f64(what: &str, got: f64, want: f64, rel: f64) {
    assert!(got == want || (got - want).abs() <= rel * want.abs(), "{what}: got {got}, want {want} (relative tolerance {rel})");
}

// ---------------------------------------------------------------------------------------------
// The comparisons, generic over the device.
// ---------------------------------------------------------------------------------------------

/// Two clip + RMSprop steps through `GpuArena` for every size and 1, 2, 5 agents, in both
/// RMSprop forms (the TF form's square_avg starting at 1, as the backends start it).
fn check_optimizer<D: Device>(dev: D) -> D {
    let mut dev = Some(dev);
    for ((case, &p), form) in SIZES.iter().enumerate().flat_map(|c| [optim::RmsForm::Torch, optim::RmsForm::Tf].map(|f| (c, f))) {
        let opt = optim::RmsProp { lr: 7e-4, alpha: 0.99, eps: 1e-5, form };
        for agents in [1usize, 2, 5] {
            let n = agents * p;
            let params0 = normals(n, 10 + case as u64, 1.0);
            let mut arena = GpuArena::new(dev.take().unwrap(), agents, p, &params0).unwrap();
            let (mut th, mut v) = (params0.clone(), vec![form.initial_square_avg(); n]);
            arena.write_optimizer_state(&v).unwrap();
            for step in 0..2u64 {
                let mut g = normals(n, 100 + step * 7 + case as u64, 1.0);
                // Agent r's gradient norm is about 0.09·3.3^r: agents 0 and 1 are not clipped
                // (max norm 0.5), the others are.
                for (r, chunk) in g.chunks_mut(p).enumerate() {
                    let scale = 0.09 * (10f32 / 3.0).powi(r as i32) / (p as f32).sqrt();
                    chunk.iter_mut().for_each(|x| *x *= scale);
                }
                arena.write_grads(&g).unwrap();
                let norms = arena.clip_and_rmsprop(0.5, opt).unwrap();
                let want_norms = optim::clip_and_rmsprop(&mut th, &mut g, &mut v, agents, 0.5, opt);
                let ctx = format!("optimizer {form:?} P={p} agents={agents} step={step}");
                for (r, (&a, &b)) in norms.iter().zip(&want_norms).enumerate() {
                    assert_rel_f64(&format!("{ctx} norm[{r}]"), a, b, 1e-9);
                }
                assert_close(&format!("{ctx} grads"), &arena.read_grads().unwrap(), &g, 1e-5, 1e-7);
                assert_close(&format!("{ctx} square_avg"), &arena.read_optimizer_state().unwrap(), &v, 1e-5, 1e-7);
                assert_close(&format!("{ctx} params"), &arena.read_params().unwrap(), &th, 1e-5, 1e-7);
            }
            dev = Some(arena.into_device());
        }
    }
    dev.unwrap()
}

/// A row long enough that pass 1 and `optim_find_nonfinite` run whole groups of
/// OPTIM_LOADS_IN_FLIGHT (8) strided loads per thread and then a tail (≈ 18.3 strides of 64 × 256).
const P_LOAD_GROUPS: usize = 300_007;

/// The optimizer launchers directly, with NaN-poisoned partials and norms, and a precondition.
fn check_optimizer_launchers<D: Device>(dev: &D) {
    let s = dev.default_stream();
    // Pass 1 on rows with and without whole load groups.
    for &p in &[4099usize, P_LOAD_GROUPS] {
        let agents = 3usize;
        let g = normals(agents * p, 5, 0.01);
        let grads = upload(dev, &g);
        let chunks = launch::optim_chunks(p) as usize;
        let mut partials = poisoned(dev, agents * chunks, f64::NAN);
        launch::optim_sumsq_partials(dev, s, &grads, &mut partials, agents, p).unwrap();
        let got = download(dev, &partials);
        assert!(got.iter().all(|x| x.is_finite()), "every partial must be written (P {p})");
        for r in 0..agents {
            // Each partial is its block's elements exactly: f32 squares are exact in f64, so
            // only the summation order separates it from this plain sum.
            let stride = chunks * launch::OPTIM_BLOCK as usize;
            for c in 0..chunks {
                let want: f64 = (0..p).filter(|i| i % stride / launch::OPTIM_BLOCK as usize == c).map(|i| (g[r * p + i] as f64).powi(2)).sum();
                assert_rel_f64(&format!("P {p} agent {r} partial {c}"), got[r * chunks + c], want, 1e-12);
            }
            let sum: f64 = got[r * chunks..(r + 1) * chunks].iter().sum();
            assert_rel_f64("sum of partials", sum.sqrt(), optim::grad_norm(&g[r * p..(r + 1) * p]), 1e-9);
        }
    }
    let (agents, p) = (3usize, 4099usize);
    let g = normals(agents * p, 5, 0.01);
    let grads = upload(dev, &g);
    let chunks = launch::optim_chunks(p) as usize;
    let mut partials = poisoned(dev, agents * chunks, f64::NAN);
    launch::optim_sumsq_partials(dev, s, &grads, &mut partials, agents, p).unwrap();
    let mut params = poisoned(dev, agents * p, 0f32);
    let mut grads = grads;
    let mut v = poisoned(dev, agents * p, 0f32);
    let mut norms = poisoned(dev, agents, f64::NAN);
    let opt = optim::RmsProp { lr: 1e-3, alpha: 0.99, eps: 1e-5, form: optim::RmsForm::Torch };
    // The device-side skip flag (set by the update's loss guard): norms written, nothing else.
    let skip = upload(dev, &[1u32]);
    launch::optim_clip_rmsprop(dev, s, &mut params, &mut grads, &mut v, &partials, &mut norms, &skip, agents, p, 0.5, opt)
        .unwrap();
    assert!(download(dev, &norms).iter().all(|x| x.is_finite()), "every norm must be written");
    assert!(download(dev, &params).iter().all(|&x| x == 0.0), "a skipped step must leave the parameters alone");
    assert!(download(dev, &v).iter().all(|&x| x == 0.0), "a skipped step must leave the RMSprop state alone");
    assert_eq!(download(dev, &grads), g, "a skipped step must leave the gradients unclipped");
    let no_skip = upload(dev, &[0u32]);
    launch::optim_clip_rmsprop(dev, s, &mut params, &mut grads, &mut v, &partials, &mut norms, &no_skip, agents, p, 0.5, opt)
        .unwrap();
    assert!(download(dev, &params).iter().any(|&x| x != 0.0), "an unskipped step must move the parameters");
    check_loss_guard(dev);
    check_find_nonfinite(dev);
    // A wrong size is an error naming the buffer, not a device fault.
    let mut short = poisoned(dev, agents * chunks - 1, 0f64);
    let err = launch::optim_sumsq_partials(dev, s, &grads, &mut short, agents, p).unwrap_err();
    assert!(err.to_string().contains("partials"), "{err}");
}

/// `heads_loss_guard`: 0 for finite loss sums, 1 when any agent's total loss is NaN or infinite
/// (including a finite sum whose weighted total overflows), and it overwrites a stale flag.
fn check_loss_guard<D: Device>(dev: &D) {
    let s = dev.default_stream();
    let run = |stats: &[f64], n: usize| -> u32 {
        let st = upload(dev, stats);
        let mut guard = upload(dev, &[7u32]);
        launch::heads_loss_guard(dev, s, &st, &mut guard, stats.len() / 3, n, 0.5, 0.01).unwrap();
        download(dev, &guard)[0]
    };
    assert_eq!(run(&[1.0, -2.0, 30.0, 4.0, 5.0, 60.0], 80), 0, "finite losses");
    assert_eq!(run(&[1.0, -2.0, 30.0, 4.0, f64::NAN, 60.0], 80), 1, "NaN policy term of agent 1");
    assert_eq!(run(&[f64::INFINITY, -2.0, 30.0], 80), 1, "infinite value term");
    // 0.5·MAX + MAX overflows although both sums are finite (the host's LossTerms::total does too).
    assert_eq!(run(&[f64::MAX, -f64::MAX, 0.0], 1), 1, "finite sums, infinite total");
    let mut bad = upload(dev, &[0u32; 2]);
    let st = upload(dev, &[0f64; 3]);
    assert!(launch::heads_loss_guard(dev, s, &st, &mut bad, 1, 80, 0.5, 0.01).is_err(), "a guard of 2 elements is refused");
}

/// `optim_find_nonfinite` against a plain scan, for sizes that do not divide the block and
/// non-finite values (NaN, ±inf) planted at the ends of chunks and in the middle; and none.
fn check_find_nonfinite<D: Device>(dev: &D) {
    let s = dev.default_stream();
    for &p in &[1usize, 255, 257, 4099, 100_003, P_LOAD_GROUPS] {
        let agents = 3usize;
        let chunks = launch::optim_chunks(p) as usize;
        let stride = chunks * launch::OPTIM_BLOCK as usize;
        let mut plants: Vec<Vec<(usize, usize, f32)>> = vec![
            vec![],
            vec![(1, p - 1, f32::NAN)],
            vec![(0, p / 2, f32::INFINITY), (0, p - 1, f32::NAN), (2, 0, f32::NEG_INFINITY)],
            vec![(2, (stride + 3).min(p - 1), f32::NAN), (2, (stride - 1).min(p - 1), f32::INFINITY)],
        ];
        if p == P_LOAD_GROUPS {
            // One thread's loads: two hits in one group of 8 (the smaller index must win), a hit
            // in the second group, one in the tail after the groups.
            plants.push(vec![(1, 5 * stride + 7, f32::NAN), (1, 2 * stride + 7, f32::INFINITY)]);
            plants.push(vec![(0, 17 * stride + 1, f32::NAN), (0, 11 * stride + 1, f32::NAN)]);
            plants.push(vec![(2, 17 * stride + 1, f32::NEG_INFINITY)]);
        }
        for plant in plants {
            let mut host = normals(agents * p, p as u64, 1.0);
            for &(r, i, v) in &plant {
                host[r * p + i] = v;
            }
            let params = upload(dev, &host);
            let mut first = poisoned(dev, agents * chunks, 7u32);
            launch::optim_find_nonfinite(dev, s, &params, &mut first, agents, p).unwrap();
            let got = download(dev, &first);
            for r in 0..agents {
                let want = host[r * p..(r + 1) * p].iter().position(|x| !x.is_finite());
                let min = got[r * chunks..(r + 1) * chunks].iter().copied().min().unwrap();
                assert_eq!(want.map(|i| i as u32).unwrap_or(u32::MAX), min, "P {p} agent {r} plants {plant:?}");
            }
        }
    }
}

/// Ring, all-to-all and uneven peer lists for every size and 1..=5 agents, with the consensus
/// distance after each round.
fn check_gossip<D: Device>(dev: D) -> D {
    let mut dev = Some(dev);
    for (case, &p) in SIZES.iter().enumerate() {
        for agents in 1usize..=5 {
            let ring: Vec<Vec<usize>> = (0..agents).map(|r| vec![(r + agents - 1) % agents]).collect();
            let all: Vec<Vec<usize>> = (0..agents).map(|r| (0..agents).filter(|&s| s != r).collect()).collect();
            // Uneven lists, including an agent that receives nothing this round.
            let uneven: Vec<Vec<usize>> = (0..agents).map(|r| (0..r).rev().collect()).collect();
            let params0 = normals(agents * p, 40 + case as u64 * 5 + agents as u64, 1.0);
            let mut arena = GpuArena::new(dev.take().unwrap(), agents, p, &params0).unwrap();
            let mut want = params0.clone();
            for (name, peers) in [("ring", &ring), ("all", &all), ("uneven", &uneven)] {
                arena.mix(peers).unwrap();
                gossip::mix(&mut want, agents, peers);
                let ctx = format!("gossip {name} P={p} agents={agents}");
                assert_close(&ctx, &arena.read_params().unwrap(), &want, 1e-6, 1e-7);
                let d = arena.consensus_distance().unwrap();
                assert_rel_f64(&format!("{ctx} consensus"), d, gossip::consensus_distance(&want, agents), 1e-9);
            }
            dev = Some(arena.into_device());
        }
    }
    let dev = dev.unwrap();
    // Identical agents: distance exactly 0, written into a poisoned result.
    let (agents, p) = (3usize, 1000usize);
    let same: Vec<f32> = normals(p, 3, 1.0).repeat(agents);
    let s = dev.default_stream();
    let params = upload(&dev, &same);
    let chunks = launch::gossip_chunks(p) as usize;
    let mut partials = poisoned(&dev, (agents + 1) * chunks, f64::NAN);
    let mut result = poisoned(&dev, 1, f64::NAN);
    launch::consensus_partials(&dev, s, &params, &mut partials, agents, p).unwrap();
    launch::consensus_finish(&dev, s, &partials, &mut result, agents, p).unwrap();
    assert_eq!(download(&dev, &result)[0], 0.0);
    dev
}

/// The fused mailbox mix (asynchronous gossip) against `mix_one` on the picked messages in
/// ascending slot order: every size, 1..=64 slots, masks empty / single / all / random, into a
/// middle row of a 3-agent arena (the other rows must stay untouched). `exact`: the simulator
/// runs the same float operations in the same order as the CPU, so it must match bit for bit.
fn check_gossip_mailbox<D: Device>(dev: &D, exact: bool) {
    let s = dev.default_stream();
    let (agents, agent) = (3usize, 1usize);
    for (case, &p) in SIZES.iter().enumerate() {
        let slot_counts: &[usize] = if p > 10_000 { &[1, 5] } else { &[1, 3, 17, 64] };
        for &slots in slot_counts {
            let seed = 500 + case as u64 * 100 + slots as u64;
            let messages: Vec<Vec<f32>> = (0..slots).map(|j| normals(p, seed + j as u64, 1.0)).collect();
            let slot_bufs: Vec<DeviceBuffer<f32>> = messages.iter().map(|m| upload(dev, m)).collect();
            let addresses: Vec<u64> = slot_bufs.iter().map(|b| b.device_ptr()).collect();
            let table = upload(dev, &addresses);
            let all = if slots == 64 { u64::MAX } else { (1u64 << slots) - 1 };
            let mut coin = PhiloxStream::new(seed, 2, Purpose::EnvStep);
            let random = (coin.below(u32::MAX) as u64 | (coin.below(u32::MAX) as u64) << 32) & all;
            for mask in [0u64, 1, 1 << (slots - 1), all, random] {
                let arena0 = normals(agents * p, seed + 99, 1.0);
                let mut params = upload(dev, &arena0);
                launch::gossip_mix_mailbox(dev, s, &mut params, &table, mask, agent, agents, p, p).unwrap();
                let mut want = arena0.clone();
                let picked: Vec<&[f32]> = (0..slots).filter(|j| mask >> j & 1 == 1).map(|j| messages[j].as_slice()).collect();
                gossip::mix_one(&mut want[agent * p..(agent + 1) * p], &picked);
                let got = download(dev, &params);
                let ctx = format!("gossip_mix_mailbox P={p} slots={slots} mask={mask:#x}");
                if exact {
                    let differ = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
                    assert!(differ.is_none(), "{ctx}: element {differ:?} differs from mix_one");
                } else {
                    assert_close(&ctx, &got, &want, 1e-6, 1e-7);
                    assert_eq!(&got[..agent * p], &arena0[..agent * p], "{ctx}: other agents untouched");
                    assert_eq!(&got[(agent + 1) * p..], &arena0[(agent + 1) * p..], "{ctx}: other agents untouched");
                }
            }
        }
    }
    // Preconditions are errors naming the problem, not device faults.
    let p = 1000usize;
    let mut params = upload(dev, &normals(2 * p, 1, 1.0));
    let slot = upload(dev, &normals(p, 2, 1.0));
    let table = upload(dev, &[slot.device_ptr(); 3]);
    let err = launch::gossip_mix_mailbox(dev, s, &mut params, &table, 1 << 3, 0, 2, p, p).unwrap_err();
    assert!(err.to_string().contains("beyond"), "{err}");
    let err = launch::gossip_mix_mailbox(dev, s, &mut params, &table, 1, 2, 2, p, p).unwrap_err();
    assert!(err.to_string().contains("agent 2 of 2"), "{err}");
    let err = launch::gossip_mix_mailbox(dev, s, &mut params, &table, 1, 0, 3, p, p).unwrap_err();
    assert!(err.to_string().contains("params"), "{err}");
    let too_many = upload(dev, &[slot.device_ptr(); 65]);
    let err = launch::gossip_mix_mailbox(dev, s, &mut params, &too_many, 1, 0, 2, p, p).unwrap_err();
    assert!(err.to_string().contains("65 mailbox slots"), "{err}");
}

/// The arena's mailbox path: post (copy + event) from one arena into slots, then the fused
/// mix into another arena on another stream of the same device, with events in between.
fn check_arena_mailbox<D: Device>(dev: D) {
    let dev = std::sync::Arc::new(dev);
    let p = 4099usize;
    let (a0, b0) = (normals(2 * p, 61, 1.0), normals(p, 62, 1.0));
    let mut sender = GpuArena::new(dev.clone(), 2, p, &a0).unwrap();
    let mut receiver = GpuArena::new(dev.clone(), 1, p, &b0).unwrap();
    let mut slots = [dev.alloc_zeros::<f32>(p).unwrap(), dev.alloc_zeros::<f32>(p).unwrap()];
    let table = upload(&*dev, &[slots[0].device_ptr(), slots[1].device_ptr()]);
    let written: Vec<_> = (0..2).map(|r| sender.post_params(r, &mut slots[r], None).unwrap()).collect();
    let mut spins = 0u64;
    while !written.iter().all(|e| dev.event_done(e).unwrap()) {
        spins += 1;
        assert!(spins < 50_000_000, "the copies never landed");
        std::hint::spin_loop();
    }
    let read = receiver.mix_mailboxes(0, &table, 0b11).unwrap();
    // A second post into the same slots must wait (on the device) for that read.
    let _ = sender.post_params(0, &mut slots[0], Some(&read)).unwrap();
    let mut want = b0.clone();
    gossip::mix_one(&mut want, &[&a0[..p], &a0[p..]]);
    assert_close("arena mailbox mix", &receiver.read_params().unwrap(), &want, 1e-6, 1e-7);
    // A slot of the wrong size is refused.
    let mut short = dev.alloc_zeros::<f32>(p - 1).unwrap();
    let err = sender.post_params(0, &mut short, None).unwrap_err();
    assert!(err.to_string().contains("mailbox slot"), "{err}");
}

fn check_returns<D: Device>(dev: &D) {
    let s = dev.default_stream();
    for agents in 1usize..=5 {
        for (steps, envs) in [(1usize, 1usize), (5, 16), (20, 3), (5, 129)] {
            let n = agents * steps * envs;
            let seed = (agents * 1000 + steps * 10 + envs) as u64;
            let rewards = normals(n, seed, 1.0);
            let mut coin = PhiloxStream::new(seed, 1, Purpose::EnvStep);
            let dones: Vec<f32> = (0..n).map(|_| if coin.below(5) == 0 { 1.0 } else { 0.0 }).collect();
            let bootstrap = normals(agents * envs, seed + 1, 3.0);
            let gamma = 0.99f32;
            let mut want = vec![0f32; n];
            for r in 0..agents {
                let seg = r * steps * envs..(r + 1) * steps * envs;
                heads::nstep_returns(
                    &rewards[seg.clone()],
                    &dones[seg.clone()],
                    &bootstrap[r * envs..(r + 1) * envs],
                    gamma,
                    &mut want[seg],
                );
            }
            let (rw, dn, bs) = (upload(dev, &rewards), upload(dev, &dones), upload(dev, &bootstrap));
            let mut out = poisoned(dev, n, f32::NAN);
            launch::nstep_returns(dev, s, &rw, &dn, &bs, &mut out, agents, steps, envs, gamma).unwrap();
            let got = download(dev, &out);
            assert_close(&format!("returns agents={agents} steps={steps} envs={envs}"), &got, &want, 1e-5, 1e-6);
        }
    }
}

/// The smallest distance between u·S and a cumulative sum, relative to S: where this is tiny,
/// a few ulp of expf decide the action (the documented boundary for GPU comparisons).
fn sampling_margin(logits: &[f32], u: f32) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&z| (z - m).exp()).sum();
    let target = u * sum;
    let mut acc = 0f32;
    let mut margin = f32::INFINITY;
    for &z in logits {
        acc += (z - m).exp();
        margin = margin.min((target - acc).abs() / sum);
    }
    margin
}

fn check_sampling<D: Device>(dev: &D, exact: bool) {
    let s = dev.default_stream();
    let mut boundary_cases = 0usize;
    for (agents, envs, num_actions) in [(1usize, 1usize, 1usize), (2, 16, 6), (5, 33, 18), (3, 200, 2), (4, 64, 4)] {
        let rows = agents * envs;
        let logits = normals(rows * num_actions, (agents * 100 + num_actions) as u64, 2.0);
        let logits_dev = upload(dev, &logits);
        // Seeds and steps with high bits set (step ≥ 2^32 uses the counter's top word).
        for (seed, step, greedy) in [(7u64, 0u64, false), (7, 12_345, false), (u64::MAX - 3, (5u64 << 32) + 9, false), (1, 3, true)]
        {
            let mut act = poisoned(dev, rows, u32::MAX);
            let mut lp = poisoned(dev, rows, f32::NAN);
            // A backend's first agent need not be agent 0 (asynchronous gossip): global ids key the RNG.
            let agent_offset = agents % 3;
            launch::sample_actions(dev, s, &logits_dev, &mut act, &mut lp, agents, agent_offset, envs, num_actions, seed, step, greedy)
                .unwrap();
            let (got_a, got_lp) = (download(dev, &act), download(dev, &lp));
            for row in 0..rows {
                let (r, e) = ((row / envs + agent_offset) as u32, (row % envs) as u32);
                let z = &logits[row * num_actions..(row + 1) * num_actions];
                let (want_a, want_lp) = heads::sample_action(z, seed, r, e, step, greedy);
                let ctx = format!("sample agents={agents} envs={envs} A={num_actions} seed={seed} step={step} greedy={greedy} row={row}");
                if got_a[row] != want_a {
                    let margin = sampling_margin(z, action_uniform(seed, r, e, step));
                    assert!(!exact && !greedy && margin < 1e-5, "{ctx}: action {} vs {want_a} (margin {margin})", got_a[row]);
                    boundary_cases += 1;
                    continue;
                }
                if exact {
                    assert_eq!(got_lp[row].to_bits(), want_lp.to_bits(), "{ctx}: log-prob {} vs {want_lp}", got_lp[row]);
                } else {
                    assert!((got_lp[row] - want_lp).abs() <= 1e-5, "{ctx}: log-prob {} vs {want_lp}", got_lp[row]);
                }
            }
        }
    }
    if boundary_cases > 0 {
        println!("sampling: {boundary_cases} actions differed at a documented rounding boundary");
    }
}

/// The simulator's own kernels: barrier (correct and deliberately broken), shuffles, ballots.
/// Streams and events: work on a second stream ordered after the first by `stream_wait_event`
/// sees the first stream's result; timed events measure a non-negative span that covers the
/// work between them; an event made without timing is refused by `elapsed_seconds`.
fn check_streams_and_events<D: Device>(dev: &D) {
    let (a, b) = (dev.new_stream().unwrap(), dev.new_stream().unwrap());
    assert_ne!(a, b);
    let n = 777usize; // ragged: 6 blocks of 128, the last one partial
    let input: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 3.0).collect();
    let inp = upload(dev, &input);
    let mut mid = dev.alloc_zeros::<f32>(n).unwrap();
    let out = poisoned(dev, n, f32::NAN);
    let grid = LaunchConfig { grid: (n.div_ceil(128) as u32, 1, 1), block: (128, 1, 1), shared_mem_bytes: 0 };
    let start = dev.record_timed_event(a).unwrap();
    dev.copy(a, &inp, 0, &mut mid, 0, n).unwrap();
    let copied = dev.record_event(a).unwrap();
    let end = dev.record_timed_event(a).unwrap();
    // b reads `mid` only after a's copy, without the host waiting.
    dev.stream_wait_event(b, &copied).unwrap();
    dev.launch(b, "selftest_reverse_with_barrier", grid, &[KernelArg::buf(&mid), KernelArg::buf(&out), KernelArg::U32(n as u32)]).unwrap();
    dev.synchronize(b).unwrap();
    assert!(dev.event_done(&copied).unwrap(), "an event before work the host waited for is done");
    let want: Vec<f32> = (0..n)
        .map(|i| {
            let j = i / 128 * 128 + 127 - i % 128;
            if j < n { input[j] } else { 0.0 }
        })
        .collect();
    assert_eq!(download(dev, &out), want);
    let span = dev.elapsed_seconds(&start, &end).unwrap();
    assert!((0.0..10.0).contains(&span), "timed span {span} s");
    let err = dev.elapsed_seconds(&start, &copied).unwrap_err();
    assert!(err.to_string().contains("record_timed_event"), "{err}");
    // Pinned host memory: zero-filled, writable, and an asynchronous upload from it lands once
    // the stream has passed it.
    let mut pinned = dev.alloc_host::<f32>(n).unwrap();
    assert!(pinned.iter().all(|&x| x == 0.0) && pinned.len() == n);
    pinned.copy_from_slice(&input);
    let mut dst = poisoned(dev, n + 5, f32::NAN);
    // SAFETY: `pinned` outlives the synchronize below and is not written before it.
    unsafe { dev.upload_async(a, &pinned, &mut dst, 5).unwrap() };
    let landed = dev.record_event(a).unwrap();
    dev.stream_wait_event(b, &landed).unwrap();
    dev.synchronize(b).unwrap();
    dev.synchronize(a).unwrap();
    let got = download(dev, &dst);
    assert!(got[..5].iter().all(|x| x.is_nan()), "nothing written before the offset");
    assert_eq!(&got[5..], &input[..]);
    assert!(unsafe { dev.upload_async(a, &pinned, &mut dst, 6) }.is_err(), "out of range is an error");
}

fn check_selftests<D: Device>(dev: &D, expect_race_detected: bool) {
    let s = dev.default_stream();
    let n = 1000usize; // 8 blocks of 128, the last one partial
    let input: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
    let want: Vec<f32> = (0..n)
        .map(|i| {
            let j = i / 128 * 128 + 127 - i % 128;
            if j < n {
                input[j]
            } else {
                0.0
            }
        })
        .collect();
    let inp = upload(dev, &input);
    let grid = LaunchConfig { grid: (n.div_ceil(128) as u32, 1, 1), block: (128, 1, 1), shared_mem_bytes: 0 };
    let args = |out: &DeviceBuffer<f32>| [KernelArg::buf(&inp), KernelArg::buf(out), KernelArg::U32(n as u32)];
    let out = poisoned(dev, n, f32::NAN);
    dev.launch(s, "selftest_reverse_with_barrier", grid, &args(&out)).unwrap();
    assert_eq!(download(dev, &out), want, "the correct kernel (with __syncthreads) must pass");
    if expect_race_detected {
        let out = poisoned(dev, n, f32::NAN);
        dev.launch(s, "selftest_reverse_missing_barrier", grid, &args(&out)).unwrap();
        let got = download(dev, &out);
        let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        assert!(wrong > 0, "the simulator must expose the missing __syncthreads as a wrong result");
        println!("missing-barrier kernel: {wrong} of {n} outputs wrong under the simulator (as intended)");
    }
    // Warp shuffles and ballots.
    let warps = 6usize;
    let vals = normals(32 * warps, 77, 1.0);
    let inp = upload(dev, &vals);
    let sums = poisoned(dev, warps, f32::NAN);
    let counts = poisoned(dev, warps, u32::MAX);
    let cfg = LaunchConfig { grid: (warps as u32 / 2, 1, 1), block: (64, 1, 1), shared_mem_bytes: 0 };
    dev.launch(s, "selftest_warp_ops", cfg, &[KernelArg::buf(&inp), KernelArg::buf(&sums), KernelArg::buf(&counts)]).unwrap();
    let (got_sums, got_counts) = (download(dev, &sums), download(dev, &counts));
    for w in 0..warps {
        let lane_vals = &vals[w * 32..(w + 1) * 32];
        // The __shfl_down tree: offsets 16, 8, 4, 2, 1.
        let mut tree = lane_vals.to_vec();
        let mut off = 16;
        while off > 0 {
            for l in 0..off {
                tree[l] += tree[l + off];
            }
            off /= 2;
        }
        assert!((got_sums[w] - tree[0]).abs() <= 1e-5 * tree[0].abs().max(1.0), "warp {w} sum {} vs {}", got_sums[w], tree[0]);
        assert_eq!(got_counts[w], lane_vals.iter().filter(|&&x| x > 0.0).count() as u32, "warp {w} ballot");
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator: always.
// ---------------------------------------------------------------------------------------------

#[test]
fn sim_detects_missing_barrier_and_runs_warp_ops() {
    check_selftests(&SimDevice::new(), true);
}

#[test]
fn sim_reports_a_deadlock_instead_of_hanging() {
    let dev = SimDevice::new();
    let out = dev.alloc_zeros::<f32>(32).unwrap();
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_mem_bytes: 0 };
    let err = dev.launch(dev.default_stream(), "selftest_divergent_barrier", cfg, &[KernelArg::buf(&out)]).unwrap_err();
    assert!(err.to_string().contains("deadlock"), "{err}");
    // The device stays usable after a failed launch.
    check_selftests(&dev, true);
}

#[test]
fn sim_optimizer_matches_cpu() {
    let dev = check_optimizer(SimDevice::new());
    check_optimizer_launchers(&dev);
}

#[test]
fn sim_gossip_and_consensus_match_cpu() {
    check_gossip(SimDevice::new());
}

#[test]
fn sim_gossip_mailbox_mix_matches_cpu_bit_for_bit() {
    let dev = SimDevice::new();
    check_gossip_mailbox(&dev, true);
    check_arena_mailbox(dev);
}

#[test]
fn sim_returns_match_cpu() {
    check_returns(&SimDevice::new());
}

#[test]
fn sim_sampling_matches_cpu_exactly() {
    check_sampling(&SimDevice::new(), true);
}

#[test]
fn sim_arena_names_the_first_nonfinite_parameter() {
    let (agents, p) = (4usize, 3001usize);
    let mut host = normals(agents * p, 9, 1.0);
    let mut arena = GpuArena::new(SimDevice::new(), agents, p, &host).unwrap();
    assert_eq!(arena.find_nonfinite().unwrap(), None);
    host[2 * p + 2999] = f32::NEG_INFINITY;
    host[3 * p + 5] = f32::NAN;
    arena.write_params(&host).unwrap();
    assert_eq!(arena.find_nonfinite().unwrap(), Some((2, 2999, f32::NEG_INFINITY)), "agent order first, then index");
}

#[test]
fn sim_streams_and_events_order_work_and_time_it() {
    check_streams_and_events(&SimDevice::new());
}

#[test]
fn launches_are_checked_against_kernel_signatures() {
    let dev = SimDevice::new();
    let s = dev.default_stream();
    let cfg = LaunchConfig { grid: (1, 1, 1), block: (32, 1, 1), shared_mem_bytes: 0 };
    let d = dev.alloc_zeros::<f64>(4).unwrap();
    let f = dev.alloc_zeros::<f32>(4).unwrap();
    let k = "selftest_reverse_with_barrier";
    // A double* buffer where the kernel takes float*.
    let err = dev.launch(s, k, cfg, &[KernelArg::buf(&d), KernelArg::buf(&f), KernelArg::U32(4)]).unwrap_err();
    assert!(err.to_string().contains("argument 0"), "{err}");
    let err = dev.launch(s, k, cfg, &[KernelArg::buf(&f), KernelArg::buf(&f)]).unwrap_err();
    assert!(err.to_string().contains("takes 3 arguments"), "{err}");
    let err = dev.launch(s, k, cfg, &[KernelArg::buf(&f), KernelArg::buf(&f), KernelArg::F32(4.0)]).unwrap_err();
    assert!(err.to_string().contains("argument 2"), "{err}");
    let err = dev.launch(s, "no_such_kernel", cfg, &[]).unwrap_err();
    assert!(err.to_string().contains("no kernel named"), "{err}");
    // A buffer of another device.
    let other = SimDevice::new();
    let g = other.alloc_zeros::<f32>(4).unwrap();
    let err = dev.launch(s, k, cfg, &[KernelArg::buf(&g), KernelArg::buf(&f), KernelArg::U32(4)]).unwrap_err();
    assert!(err.to_string().contains("another device"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A real GPU: when one is present.
// ---------------------------------------------------------------------------------------------

#[test]
fn cuda_kernels_match_cpu_when_a_gpu_is_present() {
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var_os("GALA_REQUIRE_GPU").is_some() {
                panic!("GALA_REQUIRE_GPU is set but no CUDA device could be opened: {e}");
            }
            println!("SKIPPED cuda_kernels_match_cpu_when_a_gpu_is_present: {e}");
            return;
        }
    };
    println!("running the kernel comparisons on {}", dev.describe());
    check_selftests(&dev, false);
    check_streams_and_events(&dev);
    check_returns(&dev);
    check_sampling(&dev, false);
    let dev = check_optimizer(dev);
    check_optimizer_launchers(&dev);
    check_gossip_mailbox(&dev, false);
    let dev = check_gossip(dev);
    check_arena_mailbox(dev);
}

/// A device link for one arena under the simulator (device addresses are host addresses): it
/// records what the arena sends and fills the receive rows with `inbox`, in order.
struct Loopback {
    inbox: Vec<Vec<f32>>,
    sent: Vec<(usize, u32, Vec<f32>)>,
    waited_for: Vec<usize>,
}

impl gala_gpu::dist::DeviceLink for Loopback {
    fn describe(&self) -> String {
        "loopback".into()
    }
    fn exchange(
        &mut self, stream: &gala_gpu::device::NativeStream, sends: &[gala_gpu::dist::DeviceMessage], recvs: &[gala_gpu::dist::DeviceMessage],
        _timeout: std::time::Duration,
    ) -> gala_gpu::error::Result<()> {
        assert!(matches!(stream, gala_gpu::device::NativeStream::Host));
        for m in sends {
            // SAFETY: under the simulator the address is that of the arena's live snapshot row.
            let row = unsafe { std::slice::from_raw_parts(m.ptr as *const f32, m.len) };
            self.sent.push((m.peer, m.tag, row.to_vec()));
        }
        assert_eq!(recvs.len(), self.inbox.len());
        for (m, msg) in recvs.iter().zip(&self.inbox) {
            assert_eq!(m.len, msg.len());
            // SAFETY: as above; the receive rows are not the send rows.
            unsafe { std::slice::from_raw_parts_mut(m.ptr as *mut f32, m.len) }.copy_from_slice(msg);
        }
        Ok(())
    }
    fn wait(&mut self, done: &mut dyn FnMut() -> gala_gpu::error::Result<bool>, peers: &[usize], _timeout: std::time::Duration) -> gala_gpu::error::Result<()> {
        assert!(done()?, "the simulator's work is done on return");
        self.waited_for = peers.to_vec();
        Ok(())
    }
}

/// The device-link round (`mix_over_link`, NCCL's path) sends each listed agent's pre-round θ
/// from the snapshot, receives into the rows after the agents, and mixes exactly as
/// `mix_with_remote` does with the same messages (bit for bit); bad lists are refused before
/// anything moves.
#[test]
fn sim_mix_over_link_matches_mix_with_remote() {
    let (a, p) = (3, 4099);
    let initial = normals(a * p, 5, 1.0);
    let inbox = vec![normals(p, 6, 1.0), normals(p, 7, 1.0)];
    // Agent 0 mixes in agent 1 and message 0 (index 3), agent 1 nothing, agent 2 messages 1 then 0 and agent 0.
    let in_peers = vec![vec![1, 3], vec![], vec![4, 3, 0]];
    let mut over_link = GpuArena::new(SimDevice::new(), a, p, &initial).unwrap();
    let mut link = Loopback { inbox: inbox.clone(), sent: Vec::new(), waited_for: Vec::new() };
    let sends = [(0, 1, 10), (2, 2, 12), (2, 1, 12)];
    over_link.mix_over_link(&in_peers, &sends, &[(1, 20), (2, 21)], &mut link, std::time::Duration::from_secs(5)).unwrap();
    let mut staged = GpuArena::new(SimDevice::new(), a, p, &initial).unwrap();
    let messages: Vec<&[f32]> = inbox.iter().map(Vec::as_slice).collect();
    staged.mix_with_remote(&in_peers, &messages).unwrap();
    assert!(over_link.read_params().unwrap() == staged.read_params().unwrap(), "the device-link round differs from mix_with_remote");
    let sent: Vec<(usize, u32, &[f32])> = link.sent.iter().map(|(q, t, d)| (*q, *t, d.as_slice())).collect();
    assert_eq!(sent, vec![(1, 10, &initial[..p]), (2, 12, &initial[2 * p..]), (1, 12, &initial[2 * p..])], "sends are the pre-round rows");
    assert_eq!(link.waited_for, vec![1, 2]);
    // Another round with fewer messages reuses nothing stale: one message, its own buffers.
    let mut one = Loopback { inbox: vec![inbox[1].clone()], sent: Vec::new(), waited_for: Vec::new() };
    over_link.mix_over_link(&[vec![3], vec![], vec![]], &[], &[(1, 20)], &mut one, std::time::Duration::from_secs(5)).unwrap();
    staged.mix_with_remote(&[vec![3], vec![], vec![]], &[&inbox[1]]).unwrap();
    assert!(over_link.read_params().unwrap() == staged.read_params().unwrap());
    // Refused: a peer past the received rows, a sender that is not an agent of the arena.
    let before = over_link.read_params().unwrap();
    let t = std::time::Duration::from_secs(5);
    assert!(over_link.mix_over_link(&[vec![4], vec![], vec![]], &[], &[(1, 20)], &mut one, t).unwrap_err().to_string().contains("mix_over_link"));
    assert!(over_link.mix_over_link(&[vec![], vec![], vec![]], &[(3, 1, 13)], &[], &mut one, t).is_err());
    assert!(over_link.read_params().unwrap() == before);
}
