//! A vector of environments with 4-frame stacking, written in place into one contiguous
//! observation buffer [E][4][84][84] (ready for a single upload to a device).
//!
//! Stacking follows baselines' VecFrameStack as GALA uses it: the newest frame is the last
//! channel; on any `done` (including a lost life) the stack is zeroed and the first frame of the
//! next episode is written into the last channel. Finished episodes reset automatically.

use super::{Environment, GameEnd, FRAME_BYTES};
use crate::error::{Error, Result};
use crate::model::{FRAME_STACK, OBS_BYTES};
use rayon::prelude::*;

/// A full game that ended, with the index of the environment that played it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinishedGame {
    pub env: usize,
    pub end: GameEnd,
}

/// Environments are stepped by a persistent pool of worker threads (rayon, private to this
/// vector env), not threads spawned per step; each environment only touches its own slots of
/// the buffers, so results do not depend on the thread count or on which thread ran what.
pub struct VecEnv {
    envs: Vec<Box<dyn Environment>>,
    threads: usize,
    /// `None` when one thread is asked for: the caller's thread steps everything.
    pool: Option<rayon::ThreadPool>,
    obs: Vec<u8>,
    rewards: Vec<f32>,
    dones: Vec<f32>,
    /// Game ends of the last step, per environment (preallocated: no allocation per step).
    ends: Vec<Option<GameEnd>>,
    finished: Vec<FinishedGame>,
    /// One scratch frame per environment (the step's raw output before stacking).
    frames: Vec<u8>,
}

impl VecEnv {
    pub fn new(envs: Vec<Box<dyn Environment>>, threads: usize) -> Result<Self> {
        let (threads, pool) = env_pool(envs.len(), threads)?;
        Self::assemble(envs, threads, pool)
    }

    /// Builds environment `make(i)` for every `i` in `indices`, on the vector env's own worker
    /// threads: building and resetting an emulator costs ~0.1 s (ROM load, reset frames), so
    /// 256 environments built one after another took ~30 s before the first step on a 16-core
    /// machine. Each environment's randomness is keyed by its index, never by the thread that
    /// built it, so the result is the same for any thread count.
    pub fn build<F>(indices: std::ops::Range<usize>, threads: usize, make: F) -> Result<Self>
    where
        F: Fn(usize) -> Result<Box<dyn Environment>> + Sync,
    {
        let (threads, pool) = env_pool(indices.len(), threads)?;
        let envs = match &pool {
            Some(pool) => pool.install(|| indices.into_par_iter().map(&make).collect::<Result<Vec<_>>>())?,
            None => indices.map(&make).collect::<Result<Vec<_>>>()?,
        };
        Self::assemble(envs, threads, pool)
    }

    fn assemble(envs: Vec<Box<dyn Environment>>, threads: usize, pool: Option<rayon::ThreadPool>) -> Result<Self> {
        let actions = envs[0].num_actions();
        if envs.iter().any(|e| e.num_actions() != actions) {
            return Err(Error::Env("all environments of a vector env must have the same action count".into()));
        }
        let n = envs.len();
        let mut v = VecEnv {
            envs,
            threads,
            pool,
            ends: vec![None; n],
            obs: vec![0; n * OBS_BYTES],
            rewards: vec![0.0; n],
            dones: vec![0.0; n],
            finished: Vec::new(),
            frames: vec![0; n * FRAME_BYTES],
        };
        v.reset_all();
        Ok(v)
    }

    pub fn len(&self) -> usize {
        self.envs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
    }

    pub fn num_actions(&self) -> usize {
        self.envs[0].num_actions()
    }

    /// Worker threads stepping the environments (1: the caller's thread).
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn frames_per_step(&self) -> u64 {
        self.envs[0].frames_per_step()
    }

    /// Current observations [E][4][84][84].
    pub fn observations(&self) -> &[u8] {
        &self.obs
    }

    /// The newest frame of every environment [E][84][84] after a `step` (the last channel of
    /// each stack; the first frame of the next episode where one ended): with `dones`, all a
    /// device that keeps the previous stacks needs to build the new ones (`push_frame`).
    /// Meaningful only after a `step` (a `restore` replaces the stacks, not these).
    pub fn newest_frames(&self) -> &[u8] {
        &self.frames
    }

    /// Unclipped rewards of the last step [E].
    pub fn rewards(&self) -> &[f32] {
        &self.rewards
    }

    /// 1.0 where the last step ended a training episode [E].
    pub fn dones(&self) -> &[f32] {
        &self.dones
    }

    /// Games finished since the last call, in environment order within each step.
    pub fn drain_finished(&mut self) -> Vec<FinishedGame> {
        std::mem::take(&mut self.finished)
    }

    /// Every environment's saved state (for checkpoints; the frame stacks are `observations`).
    pub fn save_states(&self) -> Result<Vec<Vec<u8>>> {
        self.envs.iter().map(|e| e.save_state()).collect()
    }

    /// Puts back what `save_states` and `observations` held, so stepping continues bit for bit.
    pub fn restore(&mut self, states: &[Vec<u8>], observations: &[u8]) -> Result<()> {
        if states.len() != self.envs.len() || observations.len() != self.obs.len() {
            return Err(Error::Shape(format!(
                "restoring {} environment states and {} observation bytes into a vector env of {} ({} bytes)",
                states.len(),
                observations.len(),
                self.envs.len(),
                self.obs.len()
            )));
        }
        for (i, (env, state)) in self.envs.iter_mut().zip(states).enumerate() {
            env.load_state(state).map_err(|e| Error::Env(format!("environment {i}: {e}")))?;
        }
        self.obs.copy_from_slice(observations);
        self.finished.clear();
        Ok(())
    }

    /// Resets every environment (on the worker threads: a reset runs emulator frames).
    fn reset_all(&mut self) {
        let VecEnv { envs, pool, obs, frames, .. } = self;
        let reset = |((env, obs), frame): ((&mut Box<dyn Environment>, &mut [u8]), &mut [u8])| {
            env.reset(frame);
            obs.fill(0);
            obs[(FRAME_STACK - 1) * FRAME_BYTES..].copy_from_slice(frame);
        };
        match pool {
            Some(pool) => pool.install(|| {
                envs.par_iter_mut().zip(obs.par_chunks_mut(OBS_BYTES)).zip(frames.par_chunks_mut(FRAME_BYTES)).for_each(reset)
            }),
            None => envs.iter_mut().zip(obs.chunks_mut(OBS_BYTES)).zip(frames.chunks_mut(FRAME_BYTES)).for_each(reset),
        }
    }

    /// Steps every environment with its action; afterwards `observations`, `rewards`, `dones`
    /// describe the new state (episodes that ended were reset and their stack zeroed).
    pub fn step(&mut self, actions: &[u32]) -> Result<()> {
        let n = self.envs.len();
        if actions.len() != n {
            return Err(Error::Shape(format!("VecEnv::step: {} actions for {n} environments", actions.len())));
        }
        let k = self.num_actions() as u32;
        if let Some(&bad) = actions.iter().find(|&&a| a >= k) {
            return Err(Error::Env(format!("action {bad} out of range: the game has {k} actions")));
        }
        let VecEnv { envs, pool, obs, rewards, dones, ends, frames, finished, .. } = self;
        let work = |((((((env, obs), frame), reward), done), end), &action): (Lane, &u32)| {
            *end = step_one(env.as_mut(), action, obs, frame, reward, done);
        };
        match pool {
            Some(pool) => pool.install(|| {
                envs.par_iter_mut()
                    .zip(obs.par_chunks_mut(OBS_BYTES))
                    .zip(frames.par_chunks_mut(FRAME_BYTES))
                    .zip(rewards.par_iter_mut())
                    .zip(dones.par_iter_mut())
                    .zip(ends.par_iter_mut())
                    .zip(actions.par_iter())
                    .for_each(work)
            }),
            None => envs
                .iter_mut()
                .zip(obs.chunks_mut(OBS_BYTES))
                .zip(frames.chunks_mut(FRAME_BYTES))
                .zip(rewards.iter_mut())
                .zip(dones.iter_mut())
                .zip(ends.iter_mut())
                .zip(actions.iter())
                .for_each(work),
        }
        for (env, end) in ends.iter().enumerate() {
            if let Some(end) = *end {
                finished.push(FinishedGame { env, end });
            }
        }
        Ok(())
    }
}

/// The vector env's private worker pool for `envs` environments on `threads` threads (at most
/// one per environment): the thread count in use, and the pool (`None` for one thread: the
/// caller's thread works).
fn env_pool(envs: usize, threads: usize) -> Result<(usize, Option<rayon::ThreadPool>)> {
    if envs == 0 {
        return Err(Error::Config("a vector environment needs at least one environment".into()));
    }
    let threads = threads.max(1).min(envs);
    if threads == 1 {
        return Ok((1, None));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("gala-env-{i}"))
        .build()
        .map(|pool| (threads, Some(pool)))
        .map_err(|e| Error::Env(format!("cannot start {threads} environment threads: {e}; lower --threads")))
}

/// One environment's slots of the buffers, as the zipped iterators above yield them.
type Lane<'a> =
    (((((&'a mut Box<dyn Environment>, &'a mut [u8]), &'a mut [u8]), &'a mut f32), &'a mut f32), &'a mut Option<GameEnd>);

/// One environment's step, frame stacking and auto-reset.
fn step_one(
    env: &mut dyn Environment,
    action: u32,
    obs: &mut [u8],
    frame: &mut [u8],
    reward: &mut f32,
    done: &mut f32,
) -> Option<GameEnd> {
    let out = env.step(action, frame);
    *reward = out.reward;
    *done = if out.done { 1.0 } else { 0.0 };
    if out.done {
        env.reset(frame);
    }
    push_frame(obs, frame, out.done);
    out.game_over
}

/// One step of a frame stack `stack` ([depth][frame.len()] bytes): the oldest frame is dropped
/// (or, on `reset`, every old frame becomes zeros) and `frame` becomes the newest, last one.
/// The host's stacking (`VecEnv::step`) and the CPU twin of the device's `frame_stack_push`
/// (kernels/frames.cu), which builds the same stacks from only the newest frames.
pub fn push_frame(stack: &mut [u8], frame: &[u8], reset: bool) {
    let len = frame.len();
    debug_assert!(len > 0 && stack.len() % len == 0, "a stack is whole frames");
    let last = stack.len() - len;
    if reset {
        stack[..last].fill(0);
    } else {
        stack.copy_within(len.., 0);
    }
    stack[last..].copy_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::catch::Catch;

    fn catch_vec(n: usize, threads: usize, seed: u64) -> VecEnv {
        VecEnv::new((0..n).map(|i| Box::new(Catch::new(seed, i as u64)) as Box<dyn Environment>).collect(), threads).unwrap()
    }

    #[test]
    fn stack_shifts_and_zeroes_on_done() {
        let mut v = catch_vec(3, 1, 4);
        let last = |v: &VecEnv, e: usize, c: usize| v.observations()[e * OBS_BYTES + c * FRAME_BYTES..][..FRAME_BYTES].to_vec();
        assert!(v.observations()[..3 * FRAME_BYTES].iter().all(|&p| p == 0), "initial stack starts zeroed");
        let before = last(&v, 0, 3);
        v.step(&[0, 0, 0]).unwrap();
        assert_eq!(last(&v, 0, 2), before, "previous newest frame moves down one channel");
        for _ in 0..8 {
            v.step(&[0, 0, 0]).unwrap();
        }
        assert_eq!(v.dones(), &[1.0, 1.0, 1.0], "catch episodes last 9 steps");
        assert!(v.observations()[..3 * FRAME_BYTES].iter().all(|&p| p == 0), "stack zeroed on done");
        assert_eq!(v.drain_finished().len(), 3);
    }

    #[test]
    fn threads_do_not_change_results() {
        let mut a = catch_vec(5, 1, 8);
        let mut b = catch_vec(5, 2, 8);
        for t in 0..30u32 {
            let acts: Vec<u32> = (0..5).map(|i| (t + i) % 3).collect();
            a.step(&acts).unwrap();
            b.step(&acts).unwrap();
            assert_eq!(a.observations(), b.observations());
            assert_eq!(a.rewards(), b.rewards());
        }
    }

    #[test]
    fn bad_actions_are_errors() {
        let mut v = catch_vec(2, 1, 0);
        assert!(v.step(&[0]).is_err());
        assert!(v.step(&[0, 7]).is_err());
    }
}
