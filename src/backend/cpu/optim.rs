//! Per-agent gradient clipping and RMSprop on the arena, with PyTorch semantics.
//!
//! For each agent r with gradient g_r (its slice of the [agents][P] arena):
//!   n_r   = ‖g_r‖₂                               (the global norm over all its tensors)
//!   c_r   = min(1, max_norm / (n_r + 1e-6))      (torch.nn.utils.clip_grad_norm_)
//!   g     ← c_r·g
//!   v     ← α·v + (1 − α)·g²                     (torch.optim.RMSprop, not centered, no momentum)
//!   θ     ← θ − lr·g / (√v + eps)                (form `torch`: eps outside the square root)
//!   θ     ← θ − lr·g / √(v + eps)                (form `tf`: eps inside, and v starts at 1)
//! The norm is accumulated in f64 over fixed chunks in a fixed order (deterministic).
//!
//! Why two forms: PyTorch's RMSprop starts v at 0, so its first step moves every parameter by
//! about 10·lr whatever its gradient's size (g/√(0.01·g²)), then 7·lr, 5.8·lr, … ; TensorFlow's
//! (OpenAI baselines' A2C) and SB3's `RMSpropTFLike` (the rl-zoo's Atari A2C) start v at 1, so
//! early steps are about lr·g. On Pong with GALA's network the PyTorch form at lr 1.4e-3 leaves
//! 97% of conv1's units dead after the first 10 updates, and the network blind for good
//! (LEARNING.md); the TF form does not.

use rayon::prelude::*;

/// Which RMSprop: PyTorch's `torch.optim.RMSprop`, or TensorFlow's (baselines; SB3's
/// `RMSpropTFLike`). See the module docs for why both exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RmsForm {
    /// v starts at 0; θ ← θ − lr·g/(√v + eps).
    #[default]
    Torch,
    /// v starts at 1; θ ← θ − lr·g/√(v + eps).
    Tf,
}

impl RmsForm {
    /// The value every square_avg entry starts from.
    pub fn initial_square_avg(self) -> f32 {
        match self {
            RmsForm::Torch => 0.0,
            RmsForm::Tf => 1.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RmsForm::Torch => "torch",
            RmsForm::Tf => "tf",
        }
    }
}

/// RMSprop hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    pub form: RmsForm,
}

impl RmsProp {
    /// The step's divisor for a square average `v`.
    #[inline(always)]
    pub fn denominator(&self, v: f32) -> f32 {
        match self.form {
            RmsForm::Torch => v.sqrt() + self.eps,
            RmsForm::Tf => (v + self.eps).sqrt(),
        }
    }
}

const NORM_CHUNK: usize = 1 << 14;

/// ‖g‖₂ of one agent's gradient.
pub fn grad_norm(g: &[f32]) -> f64 {
    let partials: Vec<f64> =
        g.par_chunks(NORM_CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum()).collect();
    partials.iter().sum::<f64>().sqrt()
}

/// The factor clip_grad_norm_ multiplies the gradient by.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0) as f32
}

/// One fused clip + RMSprop step for every agent. `params`, `grads`, `square_avg` are arenas
/// [agents][P]; returns each agent's pre-clip gradient norm.
pub fn clip_and_rmsprop(
    params: &mut [f32], grads: &mut [f32], square_avg: &mut [f32], agents: usize, max_norm: f64, opt: RmsProp,
) -> Vec<f64> {
    let p = params.len() / agents;
    assert_eq!(params.len(), agents * p, "clip_and_rmsprop: params arena size");
    assert_eq!(grads.len(), params.len(), "clip_and_rmsprop: grads arena size");
    assert_eq!(square_avg.len(), params.len(), "clip_and_rmsprop: square_avg arena size");
    let norms: Vec<f64> = grads.chunks(p).map(grad_norm).collect();
    for r in 0..agents {
        let coef = clip_coefficient(norms[r], max_norm);
        let range = r * p..(r + 1) * p;
        params[range.clone()]
            .par_chunks_mut(NORM_CHUNK)
            .zip(grads[range.clone()].par_chunks_mut(NORM_CHUNK))
            .zip(square_avg[range].par_chunks_mut(NORM_CHUNK))
            .for_each(|((th, g), v)| {
                for i in 0..th.len() {
                    let gi = g[i] * coef;
                    g[i] = gi;
                    v[i] = opt.alpha * v[i] + (1.0 - opt.alpha) * gi * gi;
                    th[i] -= opt.lr * gi / opt.denominator(v[i]);
                }
            });
    }
    norms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_step() {
        // g = (3, 4): norm 5, clipped to 0.5 → g = (0.3, 0.4) (up to the 1e-6 in the divisor).
        let mut th = vec![1.0f32, -1.0];
        let mut g = vec![3.0f32, 4.0];
        let mut v = vec![0.0f32, 0.0];
        let opt = RmsProp { lr: 0.01, alpha: 0.99, eps: 1e-5, form: RmsForm::Torch };
        let norms = clip_and_rmsprop(&mut th, &mut g, &mut v, 1, 0.5, opt);
        assert!((norms[0] - 5.0).abs() < 1e-12);
        let c = 0.5 / (5.0 + 1e-6);
        for (i, g0) in [3.0f64, 4.0].into_iter().enumerate() {
            let gi = g0 * c;
            let vi = 0.01 * gi * gi;
            let step = 0.01 * gi / (vi.sqrt() + 1e-5);
            assert!((g[i] as f64 - gi).abs() < 1e-7);
            assert!((v[i] as f64 - vi).abs() < 1e-6 * vi, "{} vs {vi}", v[i]);
            let want = [1.0, -1.0][i] - step;
            assert!((th[i] as f64 - want).abs() < 1e-6, "{} vs {want}", th[i]);
        }
    }

    #[test]
    fn tf_form_starts_from_one_with_eps_inside() {
        // SB3's RMSpropTFLike: v0 = 1, v1 = α + (1 − α)g², θ1 = θ0 − lr·g/√(v1 + eps).
        let opt = RmsProp { lr: 0.01, alpha: 0.99, eps: 1e-5, form: RmsForm::Tf };
        let mut th = vec![0.5f32, 2.0];
        let mut g = vec![0.3f32, -0.2];
        let mut v = vec![RmsForm::Tf.initial_square_avg(); 2];
        clip_and_rmsprop(&mut th, &mut g, &mut v, 1, 10.0, opt);
        for (i, (t0, g0)) in [(0.5f64, 0.3f64), (2.0, -0.2)].into_iter().enumerate() {
            let vi = 0.99 + 0.01 * g0 * g0;
            let want = t0 - 0.01 * g0 / (vi + 1e-5).sqrt();
            assert!((v[i] as f64 - vi).abs() < 1e-6, "{} vs {vi}", v[i]);
            assert!((th[i] as f64 - want).abs() < 1e-6, "{} vs {want}", th[i]);
        }
        // The first step is about lr·g, not PyTorch's 10·lr·sign(g).
        assert!((0.5 - th[0] as f64) < 0.0031 && (0.5 - th[0] as f64) > 0.0029);
    }
}
