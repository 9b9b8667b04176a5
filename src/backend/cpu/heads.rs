//! The policy/value heads' loss and its gradient, n-step returns, and action sampling.
//!
//! Loss of one agent over its N = n_steps·envs samples (DESIGN.md, Kostrikov's A2C):
//!   A_i   = R_i − V_i                          (treated as a constant in the policy term)
//!   ρ_i   = min(1, π(a_i|s_i)/μ(a_i|s_i))     (1 when no behaviour log-probs are given)
//!   L     = c_v·mean(A²) − mean(A·ρ·log π(a|s)) − c_e·mean(H(π(·|s)))
//! Gradients (written, not accumulated):
//!   ∂L/∂V_i      = 2·c_v·(V_i − R_i)/N
//!   ∂L/∂z_ij     = [−A_i·ρ_i·(δ_{j,a_i} − p_ij) + c_e·p_ij·(log p_ij + H_i)] / N

use super::real::Real;
use crate::rng::action_uniform;

/// Coefficients of the A2C loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossCoefs {
    pub value: f64,
    pub entropy: f64,
}

/// Mean loss terms of one agent's batch (as logged).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossTerms {
    /// mean((R − V)²)
    pub value_loss: f64,
    /// −mean(A·ρ·log π(a|s))
    pub policy_loss: f64,
    /// mean(H(π))
    pub entropy: f64,
}

impl LossTerms {
    pub fn total(&self, c: LossCoefs) -> f64 {
        c.value * self.value_loss + self.policy_loss - c.entropy * self.entropy
    }
}

/// log-softmax of one row into `out`; returns (entropy).
pub fn log_softmax_row<T: Real>(z: &[T], out: &mut [T]) -> T {
    let m = z.iter().copied().fold(z[0], T::max);
    let sum: T = z.iter().map(|&v| (v - m).exp()).sum();
    let lse = m + sum.ln();
    let mut h = T::ZERO;
    for (o, &v) in out.iter_mut().zip(z) {
        *o = v - lse;
        h -= o.exp() * *o;
    }
    h
}

/// Loss terms and gradients for one agent's batch. `logits` [N, A], the rest [N].
#[allow(clippy::too_many_arguments)]
pub fn a2c_loss_backward<T: Real>(
    logits: &[T], values: &[T], actions: &[u32], returns: &[T], behaviour_log_probs: Option<&[f32]>,
    coefs: LossCoefs, dlogits: &mut [T], dvalues: &mut [T],
) -> LossTerms {
    let n = values.len();
    let a = logits.len() / n.max(1);
    assert_eq!(logits.len(), n * a, "a2c_loss_backward: logits size");
    assert_eq!(actions.len(), n, "a2c_loss_backward: actions size");
    assert_eq!(returns.len(), n, "a2c_loss_backward: returns size");
    assert_eq!(dlogits.len(), logits.len(), "a2c_loss_backward: dlogits size");
    assert_eq!(dvalues.len(), n, "a2c_loss_backward: dvalues size");
    if let Some(b) = behaviour_log_probs {
        assert_eq!(b.len(), n, "a2c_loss_backward: behaviour log-probs size");
    }
    let inv_n = T::from_f64(1.0 / n as f64);
    let (cv, ce) = (T::from_f64(coefs.value), T::from_f64(coefs.entropy));
    let two = T::from_f64(2.0);
    let mut logp = vec![T::ZERO; a];
    let (mut vl, mut pl, mut ent) = (0f64, 0f64, 0f64);
    for i in 0..n {
        let row = &logits[i * a..(i + 1) * a];
        let h = log_softmax_row(row, &mut logp);
        let act = actions[i] as usize;
        assert!(act < a, "a2c_loss_backward: action {act} out of range for {a} actions");
        let adv = returns[i] - values[i];
        let rho = match behaviour_log_probs {
            Some(b) => T::from_f64((logp[act].to_f64() - b[i] as f64).exp().min(1.0)),
            None => T::ONE,
        };
        vl += (adv * adv).to_f64();
        pl -= (adv * rho * logp[act]).to_f64();
        ent += h.to_f64();
        dvalues[i] = two * cv * (values[i] - returns[i]) * inv_n;
        let drow = &mut dlogits[i * a..(i + 1) * a];
        for j in 0..a {
            let p = logp[j].exp();
            let onehot = if j == act { T::ONE } else { T::ZERO };
            drow[j] = (-(adv * rho) * (onehot - p) + ce * p * (logp[j] + h)) * inv_n;
        }
    }
    let nf = n as f64;
    LossTerms { value_loss: vl / nf, policy_loss: pl / nf, entropy: ent / nf }
}

/// n-step returns for one agent, time-major [n_steps][envs]:
/// R_{T} = bootstrap, R_t = r_t + γ·(1 − done_t)·R_{t+1}, where done_t says the episode ended
/// with step t (so nothing after it belongs to the same episode).
pub fn nstep_returns(rewards: &[f32], dones: &[f32], bootstrap: &[f32], gamma: f32, returns: &mut [f32]) {
    let envs = bootstrap.len();
    let steps = rewards.len() / envs.max(1);
    assert_eq!(rewards.len(), steps * envs, "nstep_returns: rewards size");
    assert_eq!(dones.len(), rewards.len(), "nstep_returns: dones size");
    assert_eq!(returns.len(), rewards.len(), "nstep_returns: returns size");
    for e in 0..envs {
        let mut r = bootstrap[e];
        for t in (0..steps).rev() {
            let i = t * envs + e;
            r = rewards[i] + gamma * (1.0 - dones[i]) * r;
            returns[i] = r;
        }
    }
}

/// Sample from softmax(logits) with the counter-based uniform for (seed, agent, env, step):
/// the smallest a with u·Σexp(z−m) < Σ_{j≤a} exp(z_j−m). `greedy` takes the first argmax.
/// Returns (action, log π(action)).
pub fn sample_action(logits: &[f32], seed: u64, agent: u32, env: u32, step: u64, greedy: bool) -> (u32, f32) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&z| (z - m).exp()).sum();
    let action = if greedy {
        logits.iter().position(|&z| z == m).unwrap_or(0)
    } else {
        let target = action_uniform(seed, agent, env, step) * sum;
        let mut acc = 0f32;
        let mut chosen = logits.len() - 1;
        for (j, &z) in logits.iter().enumerate() {
            acc += (z - m).exp();
            if target < acc {
                chosen = j;
                break;
            }
        }
        chosen
    };
    (action as u32, logits[action] - m - sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_cut_at_episode_ends() {
        // 1 env, 4 steps; the episode ends at t = 1.
        let rewards = [1.0, 2.0, 0.0, 3.0];
        let dones = [0.0, 1.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        nstep_returns(&rewards, &dones, &[10.0], 0.5, &mut out);
        let r3 = 3.0 + 0.5 * 10.0; // 8
        let r2 = 0.0 + 0.5 * r3; // 4
        let r1 = 2.0; // episode ended: no bootstrap through it
        let r0 = 1.0 + 0.5 * r1; // 2
        assert_eq!(out, [r0, r1, r2, r3]);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.0f32, (2f32).ln(), (5f32).ln()]; // p = 1/8, 2/8, 5/8
        let mut counts = [0usize; 3];
        for step in 0..40_000 {
            counts[sample_action(&logits, 9, 1, 2, step, false).0 as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.125, 0.25, 0.625]) {
            assert!((*c as f64 / 40_000.0 - p).abs() < 0.01, "{counts:?}");
        }
        let (a, lp) = sample_action(&logits, 9, 1, 2, 0, true);
        assert_eq!(a, 2);
        assert!((lp - 0.625f32.ln()).abs() < 1e-6);
    }
}
