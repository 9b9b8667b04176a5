//! Drives `gala_gpu::engine::Engine` with environments the caller owns — here the crate's
//! built-in catch game in a vector env — doing exactly what `gala-gpu train` does per update:
//! act n_steps times, act once more for the bootstrap values, learn, gossip.
//!
//!     cargo run --release --example engine_catch [FRAMES]
//!
//! With 4 agents × 4 envs and lr 1.4e-3 the mean return of the last 100 games passes 0.5
//! within about 20k frames on the CPU backend. `tests/capi.rs` compiles this file as a module
//! and checks that `train` ends with the same parameters as the trainer.

use gala_gpu::backend::{ActOutput, BackendKind, Segment};
use gala_gpu::config::Config;
use gala_gpu::engine::Engine;
use gala_gpu::env::{self, EnvSettings, GameId};
use gala_gpu::model::OBS_BYTES;
use std::collections::VecDeque;

/// The example's settings: 4 agents × 4 catch games, the GALA README's lr, the CPU backend.
pub fn example_config() -> Config {
    Config { agents: 4, envs_per_agent: 4, lr: 1.4e-3, game: "catch".into(), backend: BackendKind::Cpu, seed: 1, ..Config::default() }
}

/// Trains for `updates` updates; returns the engine and the scores of the last 100 games.
pub fn train(config: &Config, updates: u64) -> gala_gpu::Result<(Engine, VecDeque<f64>)> {
    let settings = EnvSettings::new(GameId::parse(&config.game)?, config.preset, config.seed);
    let (agents, envs) = config.learner_layout();
    let mut venv = env::make_vec_env_range(&settings, 0..agents * envs, 1)?;
    let mut engine = Engine::new(config, venv.num_actions())?;
    let steps = engine.n_steps();
    let n = agents * steps * envs;
    let (mut obs, mut actions) = (vec![0u8; n * OBS_BYTES], vec![0u32; n]);
    let (mut rewards, mut dones) = (vec![0f32; n], vec![0f32; n]);
    let (mut out, mut bootstrap) = (ActOutput::default(), ActOutput::default());
    let mut recent = VecDeque::new();
    let mut step = 0u64;
    for _ in 0..updates {
        for t in 0..steps {
            engine.act(venv.observations(), step, false, &mut out)?;
            // The segment is [agents][n_steps][envs]: agent a's envs go to row (a, t).
            for a in 0..agents {
                let (row, src) = ((a * steps + t) * envs, a * envs);
                obs[row * OBS_BYTES..(row + envs) * OBS_BYTES].copy_from_slice(&venv.observations()[src * OBS_BYTES..(src + envs) * OBS_BYTES]);
                actions[row..row + envs].copy_from_slice(&out.actions[src..src + envs]);
            }
            venv.step(&out.actions)?;
            for a in 0..agents {
                let (row, src) = ((a * steps + t) * envs, a * envs);
                rewards[row..row + envs].copy_from_slice(&venv.rewards()[src..src + envs]);
                dones[row..row + envs].copy_from_slice(&venv.dones()[src..src + envs]);
            }
            for game in venv.drain_finished() {
                if recent.len() == 100 {
                    recent.pop_front();
                }
                recent.push_back(game.end.score);
            }
            step += 1;
        }
        // V(s_T) by the parameters that acted, at the step the next segment starts with.
        engine.act(venv.observations(), step, false, &mut bootstrap)?;
        let segment = Segment { obs: &obs, actions: &actions, rewards: &rewards, dones: &dones, bootstrap_values: &bootstrap.values, behaviour_log_probs: None };
        engine.learn(&segment)?;
        engine.gossip()?;
    }
    Ok((engine, recent))
}

#[allow(dead_code)] // compiled as a module by tests/capi.rs, which does not call main
fn main() -> gala_gpu::Result<()> {
    let config = example_config();
    let frames: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(24_000);
    let per_update = (config.agents * config.envs_per_agent * config.n_steps) as u64;
    let (mut engine, recent) = train(&config, frames.div_ceil(per_update))?;
    let mean = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
    println!(
        "backend {}: {} frames, mean return of the last {} games {mean:.2}, consensus distance {:.2e}, params_sha256 {}",
        engine.backend_name(),
        engine.round() * per_update,
        recent.len(),
        engine.consensus_distance()?,
        engine.params_sha256()?
    );
    Ok(())
}
