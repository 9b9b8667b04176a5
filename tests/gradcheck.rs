//! Finite-difference checks of the CPU reference (the spec of every kernel), in f64.
//!
//! Method: central differences (L(θ+h) − L(θ−h)) / 2h on randomly chosen coordinates of every
//! tensor, against the analytic gradient. Tolerance: |fd − analytic| ≤ 1e-5·|analytic| + 1e-8.
//! In f64 with h = 1e-6 the truncation error is ~1e-12 relative and the rounding error
//! ~1e-10 absolute, so a wrong gradient (even one term of a sum off) fails by orders of
//! magnitude. A ReLU can flip inside ±h and spoil one difference; each coordinate is therefore
//! tried with h = 1e-6 and, only if that disagrees, h = 1e-7 — a real bug fails both.

use gala_gpu::backend::cpu::heads::{a2c_loss_backward, log_softmax_row, LossCoefs};
use gala_gpu::backend::cpu::layers::{conv2d_backward, conv2d_forward, linear_backward, linear_forward};
use gala_gpu::backend::cpu::net::{backward, forward, Activations, BackwardScratch};
use gala_gpu::model::{init_params, ConvShape, NetPreset, NetSpec, OBS_BYTES};
use gala_gpu::rng::{PhiloxStream, Purpose};

const REL_TOL: f64 = 1e-5;
const ABS_TOL: f64 = 1e-8;

fn rng(stream: u64) -> PhiloxStream {
    PhiloxStream::new(2024, stream, Purpose::Init)
}

fn normals(n: usize, scale: f64, r: &mut PhiloxStream) -> Vec<f64> {
    (0..n).map(|_| r.next_normal() * scale).collect()
}

/// Checks the analytic gradient `grad` of `loss` at `x` on up to `samples` coordinates
/// (always including the first and last).
fn check(what: &str, x: &mut [f64], grad: &[f64], samples: usize, r: &mut PhiloxStream, loss: &mut dyn FnMut(&[f64]) -> f64) {
    assert_eq!(x.len(), grad.len());
    let mut idx: Vec<usize> = vec![0, x.len() - 1];
    idx.extend((0..samples.saturating_sub(2)).map(|_| r.below(x.len() as u32) as usize));
    for &i in &idx {
        let an = grad[i];
        let mut ok = false;
        let mut fds = Vec::new();
        for h in [1e-6, 1e-7] {
            let x0 = x[i];
            x[i] = x0 + h;
            let lp = loss(x);
            x[i] = x0 - h;
            let lm = loss(x);
            x[i] = x0;
            let fd = (lp - lm) / (2.0 * h);
            fds.push(fd);
            if (fd - an).abs() <= REL_TOL * an.abs() + ABS_TOL {
                ok = true;
                break;
            }
        }
        assert!(ok, "{what}[{i}]: analytic {an:e}, finite differences {fds:?}");
    }
}

/// Σ y ⊙ proj: a loss whose gradient w.r.t. y is `proj`.
fn project(y: &[f64], proj: &[f64]) -> f64 {
    y.iter().zip(proj).map(|(a, b)| a * b).sum()
}

#[test]
fn conv2d_gradients_on_ragged_shapes() {
    let mut r = rng(1);
    // (in_ch, out_ch, kernel, stride, in_hw, batch): odd sizes, strides that leave pixels unread.
    for &(cin, cout, k, s, hw, n) in &[(3, 5, 3, 1, 7, 2), (2, 4, 4, 2, 11, 3), (4, 3, 8, 4, 21, 1), (5, 6, 3, 3, 10, 5)] {
        let shape = ConvShape::new(cin, cout, k, s, hw);
        let mut x = normals(n * shape.in_len(), 1.0, &mut r);
        let mut w = normals(cout * shape.patch_len(), 0.3, &mut r);
        let mut b = normals(cout, 0.1, &mut r);
        let proj = normals(n * shape.out_len(), 1.0, &mut r);
        for relu in [false, true] {
            let mut y = vec![0.0; n * shape.out_len()];
            conv2d_forward(&shape, &x, &w, &b, &mut y, relu);
            let mut dy = proj.clone();
            let (mut dw, mut db, mut dx) = (vec![f64::NAN; w.len()], vec![f64::NAN; b.len()], vec![f64::NAN; x.len()]);
            conv2d_backward(&shape, &x, &w, &y, &mut dy, relu, &mut dw, &mut db, Some(&mut dx));
            let tag = format!("conv {cin}->{cout} k{k} s{s} hw{hw} n{n} relu={relu}");
            let out_len = y.len();
            let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
            check(&format!("{tag} dw"), &mut w, &dw, 12, &mut r, &mut |w: &[f64]| {
                let mut y = vec![0.0; out_len];
                conv2d_forward(&shape, &x0, w, &b0, &mut y, relu);
                project(&y, &proj)
            });
            check(&format!("{tag} db"), &mut b, &db, 6, &mut r, &mut |b: &[f64]| {
                let mut y = vec![0.0; out_len];
                conv2d_forward(&shape, &x0, &w0, b, &mut y, relu);
                project(&y, &proj)
            });
            check(&format!("{tag} dx"), &mut x, &dx, 12, &mut r, &mut |x: &[f64]| {
                let mut y = vec![0.0; out_len];
                conv2d_forward(&shape, x, &w0, &b0, &mut y, relu);
                project(&y, &proj)
            });
        }
    }
}

#[test]
fn linear_gradients() {
    let mut r = rng(2);
    for &(n, fin, fout) in &[(1, 3, 2), (5, 17, 9), (33, 40, 7)] {
        let mut x = normals(n * fin, 1.0, &mut r);
        let mut w = normals(fout * fin, 0.4, &mut r);
        let mut b = normals(fout, 0.1, &mut r);
        let proj = normals(n * fout, 1.0, &mut r);
        for relu in [false, true] {
            let mut y = vec![0.0; n * fout];
            linear_forward(&x, &w, &b, &mut y, relu);
            let mut dy = proj.clone();
            let (mut dw, mut db, mut dx) = (vec![f64::NAN; w.len()], vec![f64::NAN; fout], vec![f64::NAN; x.len()]);
            linear_backward(&x, &w, &y, &mut dy, relu, &mut dw, &mut db, Some(&mut dx));
            let tag = format!("linear {n}x{fin}->{fout} relu={relu}");
            let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
            let eval = |x: &[f64], w: &[f64], b: &[f64]| {
                let mut y = vec![0.0; n * fout];
                linear_forward(x, w, b, &mut y, relu);
                project(&y, &proj)
            };
            check(&format!("{tag} dw"), &mut w, &dw, 12, &mut r, &mut |w: &[f64]| eval(&x0, w, &b0));
            check(&format!("{tag} db"), &mut b, &db, 6, &mut r, &mut |b: &[f64]| eval(&x0, &w0, b));
            check(&format!("{tag} dx"), &mut x, &dx, 12, &mut r, &mut |x: &[f64]| eval(x, &w0, &b0));
        }
    }
}

/// The A2C loss written independently of the library: advantages and ratios are constants
/// (stop-gradient) taken at the base point.
struct ReferenceLoss {
    actions: Vec<u32>,
    returns: Vec<f64>,
    adv_times_rho: Vec<f64>,
    coefs: LossCoefs,
}

impl ReferenceLoss {
    fn new(logits: &[f64], values: &[f64], actions: Vec<u32>, returns: Vec<f64>, behaviour: Option<&[f32]>, coefs: LossCoefs) -> Self {
        let a = logits.len() / values.len();
        let adv_times_rho = (0..values.len())
            .map(|i| {
                let z = &logits[i * a..(i + 1) * a];
                let m = z.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                let logp = z[actions[i] as usize] - lse;
                let rho = behaviour.map_or(1.0, |b| (logp - b[i] as f64).exp().min(1.0));
                (returns[i] - values[i]) * rho
            })
            .collect();
        ReferenceLoss { actions, returns, adv_times_rho, coefs }
    }

    fn eval(&self, logits: &[f64], values: &[f64]) -> f64 {
        let n = values.len();
        let a = logits.len() / n;
        let mut total = 0.0;
        for i in 0..n {
            let z = &logits[i * a..(i + 1) * a];
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let entropy: f64 = z.iter().map(|v| -(v - lse).exp() * (v - lse)).sum();
            let adv = self.returns[i] - values[i];
            total += self.coefs.value * adv * adv - self.adv_times_rho[i] * (z[self.actions[i] as usize] - lse)
                - self.coefs.entropy * entropy;
        }
        total / n as f64
    }
}

#[test]
fn a2c_head_gradients_and_terms() {
    let mut r = rng(3);
    let coefs = LossCoefs { value: 0.5, entropy: 0.01 };
    for &(n, a) in &[(1, 2), (7, 6), (16, 18)] {
        let mut logits = normals(n * a, 1.5, &mut r);
        let mut values = normals(n, 1.0, &mut r);
        let returns = normals(n, 1.0, &mut r);
        let actions: Vec<u32> = (0..n).map(|_| r.below(a as u32)).collect();
        // Behaviour log-probs near the current ones, so some ratios clip at 1 and some do not.
        let behaviour: Vec<f32> = (0..n)
            .map(|i| {
                let mut lp = vec![0.0; a];
                log_softmax_row(&logits[i * a..(i + 1) * a], &mut lp);
                (lp[actions[i] as usize] + r.next_normal() * 0.3) as f32
            })
            .collect();
        for beh in [None, Some(&behaviour[..])] {
            let (mut dl, mut dv) = (vec![f64::NAN; n * a], vec![f64::NAN; n]);
            let terms = a2c_loss_backward(&logits, &values, &actions, &returns, beh, coefs, &mut dl, &mut dv);
            let reference = ReferenceLoss::new(&logits, &values, actions.clone(), returns.clone(), beh, coefs);
            let base = reference.eval(&logits, &values);
            assert!((terms.total(coefs) - base).abs() < 1e-12 * base.abs().max(1.0), "loss {} vs {base}", terms.total(coefs));
            let tag = format!("head n{n} a{a} ratio={}", beh.is_some());
            let v0 = values.clone();
            check(&format!("{tag} dlogits"), &mut logits, &dl, 20, &mut r, &mut |z: &[f64]| reference.eval(z, &v0));
            let l0 = logits.clone();
            check(&format!("{tag} dvalues"), &mut values, &dv, 10, &mut r, &mut |v: &[f64]| reference.eval(&l0, v));
        }
    }
}

/// The whole network and loss, every tensor, both presets.
#[test]
fn whole_network_gradients_both_presets() {
    for (preset, actions, stream) in [(NetPreset::Gala, 6, 10), (NetPreset::Nature, 4, 11)] {
        let mut r = rng(stream);
        let spec = NetSpec::new(preset, actions);
        let layout = spec.layout();
        let mut params: Vec<f64> = init_params(&spec, stream).iter().map(|&v| v as f64).collect();
        // Give the policy head some spread, so its gradients are not all near zero.
        let actor = layout.get("actor.weight").unwrap().range();
        params[actor].iter_mut().for_each(|v| *v *= 50.0);
        let n = 2;
        let frames: Vec<u8> = (0..n * OBS_BYTES).map(|_| r.below(256) as u8).collect();
        let act: Vec<u32> = (0..n).map(|_| r.below(actions as u32)).collect();
        let returns = normals(n, 1.0, &mut r);
        let coefs = LossCoefs { value: 0.5, entropy: 0.01 };
        let mut acts = Activations::default();
        forward(&spec, &layout, &params, &frames, &mut acts);
        let (mut dl, mut dv) = (vec![0.0; n * actions], vec![0.0; n]);
        a2c_loss_backward(&acts.logits, &acts.values, &act, &returns, None, coefs, &mut dl, &mut dv);
        let mut grads = vec![f64::NAN; layout.total];
        backward(&spec, &layout, &params, &acts, &dl, &dv, &mut grads, &mut BackwardScratch::default());
        let reference = ReferenceLoss::new(&acts.logits, &acts.values, act.clone(), returns.clone(), None, coefs);
        for t in &layout.tensors {
            let range = t.range();
            let g = grads[range.clone()].to_vec();
            let mut local = params[range.clone()].to_vec();
            let base = params.clone();
            let mut scratch = Activations::default();
            check(&format!("{preset:?} {}", t.name), &mut local, &g, 8, &mut r, &mut |v: &[f64]| {
                let mut p = base.clone();
                p[range.clone()].copy_from_slice(v);
                forward(&spec, &layout, &p, &frames, &mut scratch);
                reference.eval(&scratch.logits, &scratch.values)
            });
        }
    }
}
