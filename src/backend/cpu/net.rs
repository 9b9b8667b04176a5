//! The whole policy network for one agent's batch on the CPU: forward to logits and values, and
//! backward from ∂L/∂logits, ∂L/∂values to the gradient of every parameter (same flat layout).

use super::layers::{conv2d_backward, conv2d_forward, linear_backward, linear_forward};
use super::real::Real;
use crate::model::{tensor, NetSpec, ParamLayout, OBS_BYTES};
use rayon::prelude::*;

/// Every intermediate the backward pass needs, sized for a batch of `n` observations.
#[derive(Clone, Debug, Default)]
pub struct Activations<T> {
    pub n: usize,
    /// frames ÷ 255, [N, 4, 84, 84]
    pub input: Vec<T>,
    /// post-ReLU conv outputs
    pub conv: [Vec<T>; 3],
    /// post-ReLU fc output [N, 512]
    pub hidden: Vec<T>,
    pub logits: Vec<T>,
    pub values: Vec<T>,
}

impl<T: Real> Activations<T> {
    pub fn resize(&mut self, spec: &NetSpec, n: usize) {
        self.n = n;
        self.input.resize(n * OBS_BYTES, T::ZERO);
        for (buf, c) in self.conv.iter_mut().zip(&spec.convs) {
            buf.resize(n * c.out_len(), T::ZERO);
        }
        self.hidden.resize(n * spec.hidden, T::ZERO);
        self.logits.resize(n * spec.actions, T::ZERO);
        self.values.resize(n, T::ZERO);
    }
}

/// Scratch gradients w.r.t. activations, reused across calls.
#[derive(Clone, Debug, Default)]
pub struct BackwardScratch<T> {
    conv: [Vec<T>; 3],
    hidden: Vec<T>,
    hidden_from_critic: Vec<T>,
}

/// Forward pass for one agent: `frames` [N, 4, 84, 84] uint8 → acts (logits [N, A], values [N]).
pub fn forward<T: Real>(spec: &NetSpec, layout: &ParamLayout, params: &[T], frames: &[u8], acts: &mut Activations<T>) {
    assert_eq!(params.len(), layout.total, "forward: parameter count");
    let n = frames.len() / OBS_BYTES;
    assert_eq!(frames.len(), n * OBS_BYTES, "forward: frames must be whole observations");
    acts.resize(spec, n);
    let scale = T::from_f64(1.0 / 255.0);
    acts.input.par_chunks_mut(OBS_BYTES).zip(frames.par_chunks(OBS_BYTES)).for_each(|(d, s)| {
        for (o, &b) in d.iter_mut().zip(s) {
            *o = T::from_f64(b as f64) * scale;
        }
    });
    let view = |i: usize| layout.view(params, i);
    for l in 0..3 {
        let (before, after) = acts.conv.split_at_mut(l);
        let x: &[T] = if l == 0 { &acts.input } else { &before[l - 1] };
        conv2d_forward(&spec.convs[l], x, view(tensor::CONV_W[l]), view(tensor::CONV_B[l]), &mut after[0], true);
    }
    linear_forward(&acts.conv[2], view(tensor::FC_W), view(tensor::FC_B), &mut acts.hidden, true);
    linear_forward(&acts.hidden, view(tensor::ACTOR_W), view(tensor::ACTOR_B), &mut acts.logits, false);
    linear_forward(&acts.hidden, view(tensor::CRITIC_W), view(tensor::CRITIC_B), &mut acts.values, false);
}

/// Backward pass for one agent. `dlogits` [N, A] and `dvalues` [N] are ∂L/∂ of the heads'
/// outputs; `grads` (layout-shaped) is written with ∂L/∂params. conv1's input gradient is skipped.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    spec: &NetSpec, layout: &ParamLayout, params: &[T], acts: &Activations<T>,
    dlogits: &[T], dvalues: &[T], grads: &mut [T], scratch: &mut BackwardScratch<T>,
) {
    assert_eq!(grads.len(), layout.total, "backward: gradient buffer size");
    let n = acts.n;
    assert_eq!(dlogits.len(), n * spec.actions, "backward: dlogits size");
    assert_eq!(dvalues.len(), n, "backward: dvalues size");
    let view = |i: usize| layout.view(params, i);
    let mut g = split_tensors(layout, grads);
    scratch.hidden.resize(n * spec.hidden, T::ZERO);
    scratch.hidden_from_critic.resize(n * spec.hidden, T::ZERO);
    for (buf, c) in scratch.conv.iter_mut().zip(&spec.convs) {
        buf.resize(n * c.out_len(), T::ZERO);
    }
    // Heads (no activation): the hidden layer receives the sum of both heads' input gradients.
    let mut dl = dlogits.to_vec();
    let mut dv = dvalues.to_vec();
    {
        let (gaw, gab) = two(&mut g, tensor::ACTOR_W, tensor::ACTOR_B);
        linear_backward(&acts.hidden, view(tensor::ACTOR_W), &acts.logits, &mut dl, false, gaw, gab, Some(&mut scratch.hidden));
    }
    {
        let (gcw, gcb) = two(&mut g, tensor::CRITIC_W, tensor::CRITIC_B);
        linear_backward(&acts.hidden, view(tensor::CRITIC_W), &acts.values, &mut dv, false, gcw, gcb, Some(&mut scratch.hidden_from_critic));
    }
    scratch.hidden.iter_mut().zip(&scratch.hidden_from_critic).for_each(|(a, b)| *a += *b);
    {
        let (gw, gb) = two(&mut g, tensor::FC_W, tensor::FC_B);
        linear_backward(&acts.conv[2], view(tensor::FC_W), &acts.hidden, &mut scratch.hidden, true, gw, gb, Some(&mut scratch.conv[2]));
    }
    for l in (0..3).rev() {
        let (gw, gb) = two(&mut g, tensor::CONV_W[l], tensor::CONV_B[l]);
        let (lower, upper) = scratch.conv.split_at_mut(l);
        let dy = &mut upper[0];
        let x: &[T] = if l == 0 { &acts.input } else { &acts.conv[l - 1] };
        let dx = if l == 0 { None } else { Some(&mut lower[l - 1][..]) };
        conv2d_backward(&spec.convs[l], x, view(tensor::CONV_W[l]), &acts.conv[l], dy, true, gw, gb, dx);
    }
}

/// The gradient buffer as one mutable slice per tensor (layout order = memory order).
pub(super) fn split_tensors<'a, T>(layout: &ParamLayout, grads: &'a mut [T]) -> Vec<&'a mut [T]> {
    let mut g: Vec<&mut [T]> = Vec::with_capacity(layout.tensors.len());
    let mut rest = grads;
    for t in &layout.tensors {
        let (head, tail) = rest.split_at_mut(t.len);
        g.push(head);
        rest = tail;
    }
    g
}

/// Two distinct mutable entries of a slice list (w, b).
pub(super) fn two<'a, 'b, T>(g: &'a mut [&'b mut [T]], i: usize, j: usize) -> (&'a mut [T], &'a mut [T]) {
    assert!(i < j);
    let (lo, hi) = g.split_at_mut(j);
    (&mut *lo[i], &mut *hi[0])
}
