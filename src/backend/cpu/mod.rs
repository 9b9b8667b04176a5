//! The plain-Rust backend: the spec every GPU kernel is tested against, and the CPU fallback.

pub mod amx;
pub mod fast;
pub mod gemm;
pub mod gossip;
pub mod heads;
pub mod layers;
pub mod net;
pub mod optim;
pub mod real;

use super::{ActOutput, AgentLearnStats, Backend, BackendSpec, Precision, Segment};
use crate::error::{Error, Result};
use crate::model::{NetSpec, ParamLayout, OBS_BYTES};
use heads::{a2c_loss_backward, nstep_returns, sample_action, LossCoefs};
use fast::FastNet;
use net::{Activations, BackwardScratch};
use optim::RmsProp;
use rayon::prelude::*;

/// Per-agent working memory for an act or learn step (kept across calls: no reallocation).
#[derive(Default)]
struct AgentWork {
    net: FastNet,
    /// The generic reference path's buffers (empty unless `use_reference_net` is set).
    acts: Activations<f32>,
    scratch: BackwardScratch<f32>,
    returns: Vec<f32>,
    dlogits: Vec<f32>,
    dvalues: Vec<f32>,
}

impl AgentWork {
    /// Forward on one agent's frames; returns (logits [N, A], values [N]).
    fn forward(&mut self, reference: bool, spec: &NetSpec, layout: &ParamLayout, theta: &[f32], frames: &[u8]) -> (&[f32], &[f32]) {
        if reference {
            net::forward(spec, layout, theta, frames, &mut self.acts);
            (&self.acts.logits, &self.acts.values)
        } else {
            self.net.forward(spec, layout, theta, frames);
            (&self.net.logits, &self.net.values)
        }
    }

    /// Backward from `dlogits`/`dvalues` after `forward` on the same inputs; writes `grads`.
    fn backward(&mut self, reference: bool, spec: &NetSpec, layout: &ParamLayout, theta: &[f32], frames: &[u8], grads: &mut [f32]) {
        if reference {
            net::backward(spec, layout, theta, &self.acts, &self.dlogits, &self.dvalues, grads, &mut self.scratch);
        } else {
            self.net.backward(spec, layout, theta, frames, &self.dlogits, &self.dvalues, grads);
        }
    }
}

pub struct CpuBackend {
    spec: BackendSpec,
    layout: ParamLayout,
    params: Vec<f32>,
    grads: Vec<f32>,
    square_avg: Vec<f32>,
    work: Vec<AgentWork>,
    act_work: Vec<AgentWork>,
    /// Run the generic reference network (net.rs) instead of the fast f32 path (fast.rs).
    reference: bool,
    /// Per segment step: `act_segment_step` left that step's forward pass in `work`, by the
    /// current parameters (every change of them clears all: `params_changed`). When every step
    /// is set, `learn` takes the forward from there instead of recomputing it.
    recorded: Vec<bool>,
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    /// `initial` is one agent's parameters (copied to every agent) or the whole arena.
    pub fn new(spec: BackendSpec, initial: &[f32], threads: usize) -> Result<Self> {
        if spec.precision != Precision::Fp32 {
            return Err(Error::Config(format!(
                "precision {} runs the tensor-core kernels of the cuda and sim backends; the cpu backend computes fp32 only (use --precision fp32, or --backend sim/cuda)",
                spec.precision.name()
            )));
        }
        let layout = spec.net.layout();
        let p = layout.total;
        let params = spec.initial_arena(initial)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("gala-cpu-{i}"))
            .build()
            .map_err(|e| Error::Backend(format!("cannot start the CPU thread pool: {e}")))?;
        let n = spec.agents;
        Ok(CpuBackend {
            grads: vec![0.0; p * n],
            square_avg: vec![spec.hyper.rms_form.initial_square_avg(); p * n],
            params,
            layout,
            work: (0..n).map(|_| AgentWork::default()).collect(),
            act_work: (0..n).map(|_| AgentWork::default()).collect(),
            reference: false,
            recorded: vec![false; spec.n_steps],
            pool,
            spec,
        })
    }

    /// Act and learn with the generic reference network (`net.rs`, the one the finite-difference
    /// checks and the GPU kernels' tests use) instead of the fast f32 path: for tests comparing
    /// the two end to end and for benches timing both in one run. Same results to f32 rounding.
    pub fn use_reference_net(&mut self, on: bool) {
        self.reference = on;
    }

    /// The parameters changed: a kept forward pass no longer belongs to them.
    fn params_changed(&mut self) {
        self.recorded.fill(false);
    }

    /// `act` on every agent in parallel; with `segment_step = Some(t)` the forward runs into
    /// the learner's `work` as rows t·envs.. of the segment (`act_segment_step`), otherwise
    /// into `act_work`, leaving the learner's buffers alone.
    fn act_agents(&mut self, obs: &[u8], step: u64, greedy: bool, out: &mut ActOutput, segment_step: Option<usize>) -> Result<()> {
        self.spec.check_act_obs(obs.len())?;
        let (agents, envs) = (self.spec.agents, self.spec.envs_per_agent);
        let (spec, layout, params, seed) = (&self.spec, &self.layout, &self.params, self.spec.seed);
        let (p, a_n, total) = (layout.total, spec.net.actions, spec.segment_samples());
        out.actions.resize(agents * envs, 0);
        out.values.resize(agents * envs, 0.0);
        out.log_probs.resize(agents * envs, 0.0);
        let reference = self.reference;
        let works = if segment_step.is_some() { &mut self.work } else { &mut self.act_work };
        self.pool.install(|| {
            works
                .par_iter_mut()
                .zip(out.actions.par_chunks_mut(envs))
                .zip(out.values.par_chunks_mut(envs))
                .zip(out.log_probs.par_chunks_mut(envs))
                .enumerate()
                .for_each(|(r, (((w, actions), values), log_probs))| {
                    let frames = &obs[r * envs * OBS_BYTES..(r + 1) * envs * OBS_BYTES];
                    let theta = &params[r * p..(r + 1) * p];
                    let (logits, vals) = match segment_step {
                        Some(t) => {
                            let row0 = t * envs;
                            w.net.forward_rows(&spec.net, layout, theta, frames, row0, total);
                            (&w.net.logits[row0 * a_n..], &w.net.values[row0..])
                        }
                        None => w.forward(reference, &spec.net, layout, theta, frames),
                    };
                    for e in 0..envs {
                        let (a, lp) =
                            sample_action(&logits[e * a_n..(e + 1) * a_n], seed, (spec.agent_offset + r) as u32, e as u32, step, greedy);
                        actions[e] = a;
                        log_probs[e] = lp;
                        values[e] = vals[e];
                    }
                });
        });
        Ok(())
    }

    fn check_arena(&self, what: &str, len: usize) -> Result<()> {
        let want = self.layout.total * self.spec.agents;
        if len != want {
            return Err(Error::Shape(format!("{what}: {len} values, expected {want} ([agents][P])")));
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    fn act(&mut self, obs: &[u8], step: u64, greedy: bool, out: &mut ActOutput) -> Result<()> {
        self.act_agents(obs, step, greedy, out, None)
    }

    fn act_segment_step(&mut self, obs: &[u8], step: u64, out: &mut ActOutput, t: usize) -> Result<()> {
        if self.reference {
            return self.act(obs, step, false, out);
        }
        if t >= self.spec.n_steps {
            return Err(Error::Shape(format!("act_segment_step: step {t} of a {}-step segment", self.spec.n_steps)));
        }
        if t == 0 {
            self.recorded.fill(false);
        }
        self.act_agents(obs, step, false, out, Some(t))?;
        self.recorded[t] = true;
        Ok(())
    }

    fn learn(&mut self, seg: &Segment) -> Result<Vec<AgentLearnStats>> {
        seg.check(&self.spec)?;
        // Every step acted by these very parameters (`act_segment_step`): the forward is done.
        let kept = !self.reference && self.recorded.iter().all(|&r| r);
        self.params_changed();
        let spec = &self.spec;
        let layout = &self.layout;
        let p = layout.total;
        let (n, envs) = (spec.segment_samples(), spec.envs_per_agent);
        let coefs = LossCoefs { value: spec.hyper.value_coef, entropy: spec.hyper.entropy_coef };
        let gamma = spec.hyper.gamma;
        let params = &self.params;
        let (work, reference) = (&mut self.work, self.reference);
        let grads = &mut self.grads;
        let terms: Vec<heads::LossTerms> = self.pool.install(|| {
            work.par_iter_mut()
                .zip(grads.par_chunks_mut(p))
                .enumerate()
                .map(|(r, (w, g))| {
                    let rows = r * n..(r + 1) * n;
                    w.returns.resize(n, 0.0);
                    nstep_returns(
                        &seg.rewards[rows.clone()],
                        &seg.dones[rows.clone()],
                        &seg.bootstrap_values[r * envs..(r + 1) * envs],
                        gamma,
                        &mut w.returns,
                    );
                    let theta = &params[r * p..(r + 1) * p];
                    let frames = &seg.obs[rows.start * OBS_BYTES..rows.end * OBS_BYTES];
                    w.dlogits.resize(n * spec.net.actions, 0.0);
                    w.dvalues.resize(n, 0.0);
                    let mut dlogits = std::mem::take(&mut w.dlogits);
                    let mut dvalues = std::mem::take(&mut w.dvalues);
                    let returns = std::mem::take(&mut w.returns);
                    let (logits, values) =
                        if kept { (&w.net.logits[..], &w.net.values[..]) } else { w.forward(reference, &spec.net, layout, theta, frames) };
                    let t = a2c_loss_backward(
                        logits,
                        values,
                        &seg.actions[rows.clone()],
                        &returns,
                        seg.behaviour_log_probs.map(|b| &b[rows.clone()]),
                        coefs,
                        &mut dlogits,
                        &mut dvalues,
                    );
                    (w.dlogits, w.dvalues, w.returns) = (dlogits, dvalues, returns);
                    w.backward(reference, &spec.net, layout, theta, frames, g);
                    t
                })
                .collect()
        });
        super::check_losses_finite(&terms, coefs)?;
        let opt = RmsProp { lr: spec.hyper.lr, alpha: spec.hyper.rms_alpha, eps: spec.hyper.rms_eps, form: spec.hyper.rms_form };
        let (agents, max_norm) = (spec.agents, spec.hyper.max_grad_norm);
        let (params, grads, sq) = (&mut self.params, &mut self.grads, &mut self.square_avg);
        let norms = self.pool.install(|| optim::clip_and_rmsprop(params, grads, sq, agents, max_norm, opt));
        super::learn_stats(&terms, &norms)
    }

    fn mix(&mut self, in_peers: &[Vec<usize>]) -> Result<()> {
        let agents = self.spec.agents;
        super::check_peer_lists(in_peers, agents)?;
        let params = &mut self.params;
        self.pool.install(|| gossip::mix(params, agents, in_peers));
        self.params_changed();
        Ok(())
    }

    fn mix_messages(&mut self, agent: usize, messages: &[&[f32]]) -> Result<()> {
        let p = self.layout.total;
        if agent >= self.spec.agents || messages.iter().any(|m| m.len() != p) {
            return Err(Error::Shape(format!("mix_messages: agent {agent} or message sizes (expected {p}) out of range")));
        }
        gossip::mix_one(&mut self.params[agent * p..(agent + 1) * p], messages);
        self.params_changed();
        Ok(())
    }

    fn consensus_distance(&mut self) -> Result<f64> {
        let (params, agents) = (&self.params, self.spec.agents);
        Ok(self.pool.install(|| gossip::consensus_distance(params, agents)))
    }

    fn read_params(&mut self) -> Result<Vec<f32>> {
        Ok(self.params.clone())
    }

    /// Scans the arena where it lies (the default reads a copy: a 7 MB-per-agent allocation
    /// and copy after every update, for a check that almost always finds nothing).
    fn find_nonfinite_param(&mut self) -> Result<Option<(usize, usize, f32)>> {
        const BLOCK: usize = 1 << 16;
        let (params, p) = (&self.params, self.layout.total);
        let block = self.pool.install(|| params.par_chunks(BLOCK).position_first(|c| c.iter().any(|x| !x.is_finite())));
        Ok(block.and_then(|b| {
            let i = b * BLOCK + params[b * BLOCK..].iter().position(|x| !x.is_finite())?;
            Some((i / p, i % p, params[i]))
        }))
    }

    fn write_params(&mut self, params: &[f32]) -> Result<()> {
        self.check_arena("write_params", params.len())?;
        self.params.copy_from_slice(params);
        self.params_changed();
        Ok(())
    }

    fn read_optimizer_state(&mut self) -> Result<Vec<f32>> {
        Ok(self.square_avg.clone())
    }

    fn write_optimizer_state(&mut self, square_avg: &[f32]) -> Result<()> {
        self.check_arena("write_optimizer_state", square_avg.len())?;
        self.square_avg.copy_from_slice(square_avg);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::{init_params, NetPreset};
    use crate::rng::{PhiloxStream, Purpose};

    /// The gala net (4 actions) on `agents` × `envs` × `steps` with the default hyper-parameters.
    fn gala_spec(agents: usize, envs: usize, steps: usize, seed: u64) -> BackendSpec {
        let net = NetSpec::new(NetPreset::Gala, 4);
        BackendSpec { net, agents, agent_offset: 0, envs_per_agent: envs, n_steps: steps, seed, hyper: Config::default().hyper(), precision: Precision::Fp32 }
    }

    /// Two updates and an act through the fast path and through the reference network agree to
    /// f32 rounding (parameters after RMSprop, values, log-probabilities).
    #[test]
    fn fast_path_learns_and_acts_like_the_reference() {
        let (agents, envs, steps) = (2, 3, 2);
        let spec = gala_spec(agents, envs, steps, 5);
        let net = &spec.net;
        let n = agents * envs * steps;
        let mut r = PhiloxStream::new(8, 0, Purpose::Init);
        let obs: Vec<u8> = (0..n * OBS_BYTES).map(|_| r.below(256) as u8).collect();
        let actions: Vec<u32> = (0..n).map(|_| r.below(4)).collect();
        let rewards: Vec<f32> = (0..n).map(|_| r.below(3) as f32 - 1.0).collect();
        let dones = vec![0.0f32; n];
        let boot = vec![0.3f32; agents * envs];
        let run = |reference: bool| {
            let mut b = CpuBackend::new(spec.clone(), &init_params(net, 2), 2).unwrap();
            b.use_reference_net(reference);
            let mut stats = Vec::new();
            for _ in 0..2 {
                let seg = Segment { obs: &obs, actions: &actions, rewards: &rewards, dones: &dones, bootstrap_values: &boot, behaviour_log_probs: None };
                stats.push(b.learn(&seg).unwrap());
            }
            let mut out = ActOutput::default();
            b.act(&obs[..agents * envs * OBS_BYTES], 3, true, &mut out).unwrap();
            (b.read_params().unwrap(), out, stats)
        };
        let (p_fast, a_fast, _) = run(false);
        let (p_ref, a_ref, _) = run(true);
        let max_diff = p_fast.iter().zip(&p_ref).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Two RMSprop steps of lr 7e-4 move each weight ~1.4e-3; f32 rounding differences in the
        // gradients shift that by far less than 1e-5.
        assert!(max_diff < 1e-5, "parameters differ by {max_diff}");
        assert_ne!(p_fast, init_params(net, 2).repeat(agents), "the updates changed nothing");
        for (x, y) in a_fast.values.iter().zip(&a_ref.values).chain(a_fast.log_probs.iter().zip(&a_ref.log_probs)) {
            assert!((x - y).abs() < 1e-5, "act outputs differ: {x} vs {y}");
        }
        assert_eq!(a_fast.actions, a_ref.actions);
    }

    /// The in-place scan names the first non-finite parameter exactly as the trait's default
    /// (a scan of a copy) does, in later agents and blocks too, and finds none in a clean arena.
    #[test]
    fn the_nonfinite_scan_names_the_first_bad_parameter() {
        let spec = gala_spec(3, 1, 1, 1);
        let mut b = CpuBackend::new(spec.clone(), &init_params(&spec.net, 1), 2).unwrap();
        assert_eq!(b.find_nonfinite_param().unwrap(), None);
        let p = b.layout.total;
        let clean = b.read_params().unwrap();
        for (bad, value) in [(vec![2 * p - 1], f32::NAN), (vec![p + 70_000, 2 * p + 3], f32::INFINITY), (vec![5], f32::NEG_INFINITY)] {
            let mut params = clean.clone();
            bad.iter().for_each(|&i| params[i] = value);
            b.write_params(&params).unwrap();
            let got = b.find_nonfinite_param().unwrap().expect("a non-finite parameter");
            let i = bad[0];
            assert_eq!((got.0, got.1), (i / p, i % p));
            assert!(got.2.to_bits() == value.to_bits());
        }
    }

    /// A segment acted step by step (`act_segment_step`) is learned from with the acts' forward
    /// pass, bit-identically to a learn that computes it; once the parameters change between
    /// the acts and the learn, the kept pass is not used (ragged envs: 3 per agent).
    #[test]
    fn a_learn_after_acting_the_segment_reuses_the_forward_bit_identically() {
        let (agents, envs, steps) = (2, 3, 3);
        let spec = gala_spec(agents, envs, steps, 7);
        let net = &spec.net;
        let n = agents * envs * steps;
        let mut r = PhiloxStream::new(9, 0, Purpose::Init);
        let obs: Vec<u8> = (0..n * OBS_BYTES).map(|_| r.below(256) as u8).collect();
        let rewards: Vec<f32> = (0..n).map(|_| r.below(3) as f32 - 1.0).collect();
        let (dones, boot) = (vec![0.0f32; n], vec![0.2f32; agents * envs]);
        // The segment's layout is [agents][steps][envs]; an act's is [agents][envs].
        let step_obs = |t: usize| -> Vec<u8> {
            (0..agents).flat_map(|a| obs[((a * steps + t) * envs) * OBS_BYTES..((a * steps + t + 1) * envs) * OBS_BYTES].to_vec()).collect()
        };
        let learn_after = |act_first: bool, poke: bool| {
            let mut b = CpuBackend::new(spec.clone(), &init_params(net, 3), 2).unwrap();
            let mut actions = vec![0u32; n];
            let mut out = ActOutput::default();
            for t in 0..steps {
                // Both variants act (same actions); only the recorded one keeps the forward.
                if act_first { b.act_segment_step(&step_obs(t), t as u64, &mut out, t).unwrap() } else { b.act(&step_obs(t), t as u64, false, &mut out).unwrap() }
                for a in 0..agents {
                    actions[(a * steps + t) * envs..][..envs].copy_from_slice(&out.actions[a * envs..][..envs]);
                }
            }
            let kept = b.recorded.iter().all(|&r| r);
            if poke {
                let mut p = b.read_params().unwrap();
                p[0] += 0.5;
                b.write_params(&p).unwrap();
            }
            let seg = Segment { obs: &obs, actions: &actions, rewards: &rewards, dones: &dones, bootstrap_values: &boot, behaviour_log_probs: None };
            b.learn(&seg).unwrap();
            (b.read_params().unwrap(), kept)
        };
        let (computed, kept_none) = learn_after(false, false);
        let (reused, kept_all) = learn_after(true, false);
        assert!(!kept_none && kept_all, "only act_segment_step keeps the forward");
        assert!(computed.iter().zip(&reused).all(|(a, b)| a.to_bits() == b.to_bits()), "reusing the acts' forward must not change a bit");
        let (poked_computed, _) = learn_after(false, true);
        let (poked_acted, _) = learn_after(true, true);
        assert_ne!(poked_computed, computed);
        assert!(poked_computed.iter().zip(&poked_acted).all(|(a, b)| a.to_bits() == b.to_bits()), "a forward kept for older parameters must not be used");
    }
}
