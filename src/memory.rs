//! Size checks before allocating: a lower bound of the memory a run or an engine needs,
//! computed from its shapes, compared with what the machine has available. Without it an absurd
//! shape (`--agents 10000`: 104 GB of parameters, gradients and RMSprop state; `actions =
//! 1000000` through the C ABI) ends in the allocator's abort — killing a Python host process —
//! or in minutes of swapping. One estimator serves `train`, `bench learner` and
//! `gala_engine_create`.
//!
//! The estimate counts only buffers that certainly exist (see [`Estimate::engine`]), so it never
//! refuses a shape that would fit; what it leaves out (im2col scratch, emulator state, the
//! checkpoint's copies) makes real use somewhat higher.

use crate::backend::BackendKind;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{NetSpec, OBS_BYTES};

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes needed, in host memory and in device memory (f64: absurd shapes must not overflow).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    pub host: f64,
    pub device: f64,
}

/// Where the backend's buffers live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The CPU backend, or the simulator (whose "device" memory is host memory).
    Host,
    /// A CUDA device.
    Device,
}

impl Placement {
    /// Where `kind` puts its buffers on this machine (`auto`: on the GPU when it finds one, as
    /// `SharedDevice::open` decides).
    pub fn of(kind: BackendKind) -> Placement {
        match kind {
            BackendKind::Cpu | BackendKind::Sim => Placement::Host,
            BackendKind::Cuda => Placement::Device,
            BackendKind::Auto if crate::gpu_probe().is_ok() => Placement::Device,
            BackendKind::Auto => Placement::Host,
        }
    }
}

impl Estimate {
    /// One engine: `learners` learners × `envs` simulators × `n_steps` steps of `net`.
    /// Counted: parameters, gradients and RMSprop state ([learners][P] f32 each); the
    /// activations a learning pass keeps for its backward pass and their gradients (f32 per
    /// sample: the frames as floats, then every layer's output twice); the acting forward
    /// pass's activations (per simulator).
    pub fn engine(net: &NetSpec, learners: usize, envs: usize, n_steps: usize, placement: Placement) -> Estimate {
        let p = net.layout().total as f64;
        let (learners, envs, n_steps) = (learners as f64, envs as f64, n_steps as f64);
        let layer_outputs: f64 = net.convs.iter().map(|c| c.out_len() as f64).sum::<f64>() + net.hidden as f64 + net.actions as f64 + 1.0;
        let per_sample_learn = 4.0 * (OBS_BYTES as f64 + 2.0 * layer_outputs);
        let per_sample_act = 4.0 * (OBS_BYTES as f64 + layer_outputs);
        let bytes = learners * (3.0 * 4.0 * p + n_steps * envs * per_sample_learn + envs * per_sample_act);
        match placement {
            Placement::Host => Estimate { host: bytes, device: 0.0 },
            Placement::Device => Estimate { host: 0.0, device: bytes },
        }
    }

    /// A whole training run of `config` with `actions` actions: its engine (two when
    /// pipelined: the actor has its own), the rollout segments (frames, actions, rewards, dones,
    /// log-probabilities; two when pipelined) and the simulators' frame stacks, in host memory.
    pub fn run(config: &Config, actions: usize) -> Estimate {
        let (learners, envs) = config.learner_layout();
        let net = NetSpec::new(config.net, actions.max(1));
        let engines = if config.pipeline { 2.0 } else { 1.0 };
        let placement = Placement::of(config.backend);
        let mut e = Estimate::engine(&net, learners, envs, config.n_steps, placement);
        e.host *= engines;
        e.device *= engines;
        let samples = learners as f64 * envs as f64 * config.n_steps as f64;
        e.host += engines * samples * (OBS_BYTES as f64 + 16.0) + learners as f64 * envs as f64 * OBS_BYTES as f64;
        // The GPU backends also keep each rollout's frames on the device (`DeviceRollout`,
        // issue 12): the simulator's in host memory, CUDA's in device memory.
        let device_frames = engines * samples * OBS_BYTES as f64;
        match (config.backend, placement) {
            (BackendKind::Sim, _) => e.host += device_frames,
            (_, Placement::Device) => e.device += device_frames,
            _ => {}
        }
        e
    }

    /// Refuses when this needs more than the machine has available: "needs X GiB of host
    /// memory …, this machine has Y GiB available". `what` names the shape in the message.
    pub fn check(&self, what: &str) -> Result<()> {
        if let Some(avail) = host_available_bytes() {
            if self.host > avail as f64 {
                return Err(Error::Config(format!(
                    "{what} needs at least {:.1} GiB of host memory, this machine has {:.1} GiB available; use fewer agents, simulators or steps",
                    self.host / GIB,
                    avail as f64 / GIB
                )));
            }
        }
        if self.device > 0.0 {
            if let Some(free) = device_free_bytes() {
                if self.device > free as f64 {
                    return Err(Error::Config(format!(
                        "{what} needs at least {:.1} GiB of GPU memory, the GPU has {:.1} GiB free; use fewer agents, simulators or steps",
                        self.device / GIB,
                        free as f64 / GIB
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A run's shape in words, for the messages.
pub fn describe_run(config: &Config) -> String {
    let (learners, envs) = config.learner_layout();
    format!("{learners} learner(s) × {envs} simulators × {} steps, {} net", config.n_steps, format!("{:?}", config.net).to_lowercase())
}

/// Checks a training run before anything is allocated (or a run folder created). Atari games
/// have at most 18 actions, which is what is assumed for them.
pub fn check_run(config: &Config) -> Result<()> {
    let actions = match crate::env::GameId::parse(&config.game) {
        Ok(crate::env::GameId::Catch) => 3,
        _ => 18,
    };
    Estimate::run(config, actions).check(&format!("this run ({})", describe_run(config)))
}

/// `MemAvailable` of /proc/meminfo (what can be allocated without swapping), None where unknown.
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Free memory of CUDA device 0, None without a usable GPU.
fn device_free_bytes() -> Option<u64> {
    crate::gpu_probe().ok()?;
    let ctx = std::panic::catch_unwind(|| cudarc::driver::CudaContext::new(0)).ok()?.ok()?;
    ctx.mem_get_info().ok().map(|(free, _total)| free as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetPreset;

    #[test]
    fn the_estimate_counts_the_arenas_and_the_activations() {
        let net = NetSpec::new(NetPreset::Gala, 6);
        assert_eq!(net.layout().total, 866_439);
        let e = Estimate::engine(&net, 10_000, 16, 5, Placement::Host);
        // Parameters, gradients and RMSprop state alone: 10,000 × 866,439 × 12 bytes.
        assert!(e.host >= 10_000.0 * 866_439.0 * 12.0 && e.device == 0.0, "{e:?}");
        let small = Estimate::engine(&net, 4, 16, 5, Placement::Device);
        assert!(small.host == 0.0 && small.device > 4.0 * 866_439.0 * 12.0 && small.device < 200e6, "{small:?}");
        // Absurd shapes do not overflow.
        let huge = Estimate::engine(&NetSpec::new(NetPreset::Gala, 1_000_000), usize::MAX, usize::MAX, usize::MAX, Placement::Host);
        assert!(huge.host > 1e30, "{huge:?}");
    }
}
