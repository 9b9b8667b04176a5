//! gala-gpu: Gossip-based Actor-Learner Architectures (GALA, Assran et al., NeurIPS 2019) on
//! A2C, with several actor-learners batched on one device.
//!
//! The pieces, bottom up: [`model`] (network shape, parameter arena, init), [`backend`] (the
//! [`backend::Backend`] trait and its implementations), [`env`] (environments, frame stacking,
//! vector env), [`algo`] (gossip topology, the trainer), [`config`] (every setting), [`run`]
//! (run folders, metrics, summaries), [`checkpoint`] (safetensors checkpoints and resume),
//! [`tfevents`] (TensorBoard), [`eval`] (evaluation, GIFs, reference scores), [`plot`] (SVG curves).
//!
//! To link the engine as a backend under your own environments: [`engine::Engine`] (Rust) or
//! the C ABI of [`capi`] (header `include/gala_gpu.h`, library `libgala_gpu.so`).

pub mod algo;
pub mod backend;
pub mod bench;
pub mod capi;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod dist;
pub mod engine;
pub mod env;
pub mod error;
pub mod eval;
pub mod memory;
pub mod model;
pub mod plot;
pub mod rng;
pub mod run;
pub mod signals;
pub mod tfevents;

pub use error::{Error, Result};

/// Looks for a usable CUDA GPU without panicking: cudarc panics when libcuda is absent, so the
/// library is probed first. Returns the first device's name, or why there is none.
pub fn gpu_probe() -> std::result::Result<String, String> {
    // SAFETY: is_culib_present only tries to dlopen the driver library and drops the handle.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) was not found; install an NVIDIA driver".into());
    }
    let ctx = std::panic::catch_unwind(|| cudarc::driver::CudaContext::new(0))
        .map_err(|_| "the CUDA driver could not be initialised".to_string())?
        .map_err(|e| format!("no CUDA device could be opened: {e}"))?;
    ctx.name().map_err(|e| format!("CUDA device 0 did not report its name: {e}"))
}
