//! Network health during training: how much of each ReLU layer still fires.
//!
//! Why: a run can look alive (losses move, games finish) while its network has gone blind. With
//! PyTorch's RMSprop at GALA's lr 1.4e-3 the first ten updates push every conv1 filter by ~10·lr
//! per weight whatever its gradient's size, the filters pushed below zero never fire again, and
//! the policy is the same for every screen for the rest of the run (LEARNING.md: 40M frames at
//! random level). The return curve shows that only after millions of frames; this shows it
//! after the first update, so the run can be stopped and changed (`--rms-form tf`, a lower lr).
//!
//! Measured with the CPU reference forward pass on the agent's current observations (the ones
//! it acts on next), from its parameters as they are after the update: for conv1..conv3 and fc,
//! the fraction of units (channels for the convs, neurons for fc) active somewhere in the batch
//! (pre-activation > 0 for some observation and position) and the fraction of all activations
//! that are positive; and the spread of the policy logits across the batch (their standard
//! deviation over observations, averaged over actions: 0 means the policy ignores the screen).
//! Same definitions as `bench/learning/conv_alive.py`.

use crate::backend::cpu::net::{forward, Activations};
use crate::model::{NetSpec, ParamLayout, OBS_BYTES};

/// Layers measured, in network order.
pub const LAYERS: [&str; 4] = ["conv1", "conv2", "conv3", "fc"];

/// One layer: units that fire for some input in the batch, and positive activations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerHealth {
    /// Fraction of units (channels / neurons) active for at least one observation and position.
    pub units_alive: f64,
    /// Fraction of all activations that are positive.
    pub active: f64,
}

/// One agent's network on one batch of observations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetHealth {
    pub layers: [LayerHealth; 4],
    /// Standard deviation of each logit across the batch, averaged over actions.
    pub logit_std: f64,
}

impl NetHealth {
    /// Measures one agent's network (`params`, layout-shaped) on `frames` ([N, 4, 84, 84] uint8).
    pub fn measure(spec: &NetSpec, layout: &ParamLayout, params: &[f32], frames: &[u8]) -> NetHealth {
        assert!(!frames.is_empty() && frames.len() % OBS_BYTES == 0, "health: frames must be whole observations");
        let mut acts = Activations::<f32>::default();
        forward(spec, layout, params, frames, &mut acts);
        let n = acts.n;
        let mut layers = [LayerHealth::default(); 4];
        // Post-ReLU outputs: positive exactly where the pre-activation is.
        for (l, conv) in spec.convs.iter().enumerate() {
            layers[l] = layer_health(&acts.conv[l], n, conv.out_channels, conv.out_pixels()); // [N, C, H, W]
        }
        layers[3] = layer_health(&acts.hidden, n, spec.hidden, 1); // [N, hidden]: a neuron is a unit
        let a = spec.actions;
        let mut logit_std = 0.0;
        for j in 0..a {
            let col = (0..n).map(|i| acts.logits[i * a + j] as f64);
            let mean = col.clone().sum::<f64>() / n as f64;
            logit_std += (col.map(|z| (z - mean) * (z - mean)).sum::<f64>() / n as f64).sqrt();
        }
        NetHealth { layers, logit_std: logit_std / a as f64 }
    }

    /// Layers (almost) silent: fewer than `DEAD_ACTIVE` of their activations positive.
    pub fn dead_layers(&self) -> Vec<&'static str> {
        LAYERS.iter().zip(&self.layers).filter(|(_, h)| h.active < DEAD_ACTIVE).map(|(name, _)| *name).collect()
    }

    /// What to tell the user when `dead_layers` has stayed non-empty (see `DEAD_CHECKS`) for
    /// `agents` (this health is the first's).
    pub fn dead_layer_warning(&self, agents: &[usize], lr: f64, torch_form: bool) -> Option<String> {
        let dead = self.dead_layers();
        if dead.is_empty() {
            return None;
        }
        let activity: Vec<String> = LAYERS.iter().zip(&self.layers).map(|(name, h)| format!("{name} {:.2}%", 100.0 * h.active)).collect();
        let advice = if torch_form {
            format!("with PyTorch's RMSprop (square average from 0) the first updates move every weight by ~10×lr whatever its gradient; start again with --rms-form tf, or a lower --lr than {lr:.2e}")
        } else {
            format!("start again with a lower --lr than {lr:.2e}")
        };
        Some(format!(
            "{} {}: {} (almost) never fires on the current screens, at {DEAD_CHECKS} health checks in a row (agent {}'s activations > 0: {}; at initialisation ~40%; logit spread {:.1e}); a unit that does not fire gets no gradient, so this network has stopped learning from the screen and is unlikely to recover: {advice} (health.csv, LEARNING.md)",
            if agents.len() == 1 { "agent" } else { "agents" },
            agents.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
            dead.join(", "),
            agents.first().copied().unwrap_or(0),
            activity.join(", "),
            self.logit_std
        ))
    }
}

/// A layer with fewer positive activations than this is counted as dead.
pub const DEAD_ACTIVE: f64 = 0.005;
/// Consecutive health checks a layer must be dead at before the warning: one batch of screens
/// can be unlucky, and gossip can revive a layer from a neighbour's parameters.
pub const DEAD_CHECKS: u32 = 2;

/// Health of `channels` units of `plane` activations each, over `n` samples ([N, C, plane]).
fn layer_health(post_relu: &[f32], n: usize, channels: usize, plane: usize) -> LayerHealth {
    debug_assert_eq!(post_relu.len(), n * channels * plane);
    let mut alive = vec![false; channels];
    let mut positive = 0usize;
    for sample in post_relu.chunks_exact(channels * plane) {
        for (c, unit) in sample.chunks_exact(plane).enumerate() {
            let p = unit.iter().filter(|&&x| x > 0.0).count();
            positive += p;
            alive[c] |= p > 0;
        }
    }
    LayerHealth {
        units_alive: alive.iter().filter(|&&a| a).count() as f64 / channels.max(1) as f64,
        active: positive as f64 / post_relu.len().max(1) as f64,
    }
}

/// Updates after which health is measured: densely at first (a network dies in its first ten
/// updates), then every 500 updates (640k frames at 4 agents × 16 envs × 5 steps).
pub fn due(updates: u64) -> bool {
    matches!(updates, 1 | 2 | 5 | 10 | 20 | 50 | 100 | 200) || (updates > 0 && updates % 500 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tensor, NetPreset};

    fn spec_and_params(seed: u64) -> (NetSpec, ParamLayout, Vec<f32>) {
        let spec = NetSpec::new(NetPreset::Gala, 6);
        let layout = spec.layout();
        let params = crate::model::init::init_params(&spec, seed);
        (spec, layout, params)
    }

    fn screens(n: usize) -> Vec<u8> {
        // Textured frames (a flat screen would leave half the filters silent by chance).
        (0..n * OBS_BYTES).map(|i| ((i * 2654435761usize) >> 13) as u8).collect()
    }

    #[test]
    fn a_fresh_network_is_alive_and_a_dead_conv1_is_reported() {
        let (spec, layout, mut params) = spec_and_params(3);
        let frames = screens(4);
        let h = NetHealth::measure(&spec, &layout, &params, &frames);
        for l in &h.layers {
            assert!(l.units_alive > 0.5 && l.active > 0.1 && l.active < 0.9, "{h:?}");
        }
        assert!(h.logit_std > 0.0);
        assert_eq!(h.dead_layer_warning(&[0], 7e-4, true), None);
        assert!(h.dead_layers().is_empty());

        // conv1's biases far below zero: no unit fires, nothing above it varies with the screen.
        let b = layout.tensors[tensor::CONV_B[0]].range();
        params[b].iter_mut().for_each(|x| *x = -1e3);
        let h = NetHealth::measure(&spec, &layout, &params, &frames);
        assert_eq!(h.layers[0], LayerHealth { units_alive: 0.0, active: 0.0 });
        assert_eq!(h.logit_std, 0.0);
        // Everything above a silent conv1 sees zeros and zero biases: silent too.
        assert_eq!(h.dead_layers(), LAYERS);
        let w = h.dead_layer_warning(&[2, 3], 1.4e-3, true).expect("a dead conv1 must be reported");
        assert!(w.contains("agents 2, 3:") && w.contains("conv1") && w.contains("--rms-form tf"), "{w}");
        assert!(!h.dead_layer_warning(&[2], 1.4e-3, false).unwrap().contains("--rms-form"));
    }

    #[test]
    fn counts_units_and_activations() {
        // 2 samples, 3 channels of 2 positions: channel 0 fires once, channel 1 never, 2 always.
        let x = [1.0, 0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0, 5.0];
        let h = layer_health(&x, 2, 3, 2);
        assert_eq!(h, LayerHealth { units_alive: 2.0 / 3.0, active: 5.0 / 12.0 });
    }

    #[test]
    fn schedule_is_dense_early_then_regular() {
        let first: Vec<u64> = (0..1001).filter(|&u| due(u)).collect();
        assert_eq!(first, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]);
    }
}
