//! `catch`: a built-in pixel game that needs no ROM (after bsuite's Catch, rendered to 84×84).
//!
//! A board of 10 rows × 5 columns; a ball appears in a random column of the top row and falls
//! one row per step; the paddle moves along the bottom row (actions: 0 stay, 1 left, 2 right).
//! When the ball reaches the bottom row the game ends: +1 if the paddle is under it, −1 if not.
//! Each cell is drawn as a block of 8×16 pixels (ball 255, paddle 160, background 0), so the
//! DQN trunk's 8×8/4 first layer sees it the way it sees Atari sprites.
//! One game = one episode of 9 steps; a random policy scores about −0.6, a perfect one +1.

use super::{Environment, GameEnd, StepOutcome, FRAME_BYTES};
use crate::error::{Error, Result};
use crate::model::FRAME_HW;
use crate::rng::{PhiloxStream, Purpose};

pub const ROWS: usize = 10;
pub const COLS: usize = 5;
const CELL_H: usize = 8;
const CELL_W: usize = 16;
/// Border that centres the 80×80 board in the 84×84 frame.
const MARGIN: usize = (FRAME_HW - ROWS * CELL_H) / 2;
const BALL: u8 = 255;
const PADDLE: u8 = 160;
const STATE_TAG: &[u8] = b"catch1";
const STATE_LEN: usize = 6 + 4 + 1 + 3 * 4 + 8;

pub struct Catch {
    rng: PhiloxStream,
    ball_row: usize,
    ball_col: usize,
    paddle_col: usize,
    steps: u64,
}

impl Catch {
    /// Game number `index` of a run seeded with `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        Catch { rng: PhiloxStream::new(seed, index, Purpose::EnvReset), ball_row: 0, ball_col: 0, paddle_col: 0, steps: 0 }
    }

    fn render(&self, frame: &mut [u8]) {
        assert_eq!(frame.len(), FRAME_BYTES, "catch renders 84x84 frames");
        frame.fill(0);
        let mut cell = |row: usize, col: usize, value: u8| {
            for y in 0..CELL_H {
                let start = (MARGIN + row * CELL_H + y) * FRAME_HW + MARGIN + col * CELL_W;
                frame[start..start + CELL_W].fill(value);
            }
        };
        cell(ROWS - 1, self.paddle_col, PADDLE);
        cell(self.ball_row, self.ball_col, BALL);
    }
}

impl Environment for Catch {
    fn num_actions(&self) -> usize {
        3
    }

    fn frames_per_step(&self) -> u64 {
        1
    }

    fn reset(&mut self, frame: &mut [u8]) {
        self.ball_row = 0;
        self.ball_col = self.rng.below(COLS as u32) as usize;
        self.paddle_col = self.rng.below(COLS as u32) as usize;
        self.steps = 0;
        self.render(frame);
    }

    /// `b"catch1"`, then u32 LE RNG block index, u8 words used, and u32 LE ball row, ball
    /// column, paddle column, u64 LE steps. The RNG's key and stream are fixed by (seed, index),
    /// which the checkpoint's config supplies when the game is rebuilt.
    fn save_state(&self) -> Result<Vec<u8>> {
        let (index, used) = self.rng.position();
        let mut out = Vec::with_capacity(STATE_LEN);
        out.extend_from_slice(STATE_TAG);
        out.extend_from_slice(&index.to_le_bytes());
        out.push(used as u8);
        for v in [self.ball_row, self.ball_col, self.paddle_col] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        out.extend_from_slice(&self.steps.to_le_bytes());
        Ok(out)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let bad = |why: &str| Err(Error::Env(format!("catch: saved state rejected ({why}); the checkpoint is not from this game or build")));
        if state.len() != STATE_LEN || !state.starts_with(STATE_TAG) {
            return bad(&format!("{} bytes, expected {STATE_LEN} starting with {:?}", state.len(), "catch1"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(state[i..i + 4].try_into().expect("4 bytes"));
        let t = STATE_TAG.len();
        let (index, used) = (u32_at(t), state[t + 4] as usize);
        let (row, col, paddle) = (u32_at(t + 5) as usize, u32_at(t + 9) as usize, u32_at(t + 13) as usize);
        let steps = u64::from_le_bytes(state[t + 17..t + 25].try_into().expect("8 bytes"));
        if used > 4 || row >= ROWS || col >= COLS || paddle >= COLS {
            return bad("values out of range");
        }
        self.rng.resume_at((index, used));
        (self.ball_row, self.ball_col, self.paddle_col, self.steps) = (row, col, paddle, steps);
        Ok(())
    }

    fn step(&mut self, action: u32, frame: &mut [u8]) -> StepOutcome {
        match action {
            1 => self.paddle_col = self.paddle_col.saturating_sub(1),
            2 => self.paddle_col = (self.paddle_col + 1).min(COLS - 1),
            _ => {}
        }
        self.ball_row += 1;
        self.steps += 1;
        self.render(frame);
        if self.ball_row == ROWS - 1 {
            let reward = if self.ball_col == self.paddle_col { 1.0 } else { -1.0 };
            StepOutcome { reward, done: true, game_over: Some(GameEnd { score: reward as f64, steps: self.steps }) }
        } else {
            StepOutcome { reward: 0.0, done: false, game_over: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_the_ball_always_catches_it() {
        let mut g = Catch::new(5, 0);
        let mut frame = vec![0u8; FRAME_BYTES];
        for _ in 0..20 {
            g.reset(&mut frame);
            loop {
                let a = match g.ball_col.cmp(&g.paddle_col) {
                    std::cmp::Ordering::Less => 1,
                    std::cmp::Ordering::Greater => 2,
                    std::cmp::Ordering::Equal => 0,
                };
                let out = g.step(a, &mut frame);
                if out.done {
                    assert_eq!(out.reward, 1.0);
                    assert_eq!(out.game_over.unwrap().steps, (ROWS - 1) as u64);
                    break;
                }
            }
        }
    }

    #[test]
    fn saved_state_continues_identically() {
        let mut a = Catch::new(3, 1);
        let mut frame = vec![0u8; FRAME_BYTES];
        a.reset(&mut frame);
        for t in 0..13u32 {
            if a.step(t % 3, &mut frame).done {
                a.reset(&mut frame);
            }
        }
        let state = a.save_state().unwrap();
        let mut b = Catch::new(3, 1);
        b.load_state(&state).unwrap();
        let mut fb = vec![0u8; FRAME_BYTES];
        for t in 0..40u32 {
            let (oa, ob) = (a.step(t % 3, &mut frame), b.step(t % 3, &mut fb));
            assert_eq!(oa, ob);
            assert_eq!(frame, fb);
            if oa.done {
                a.reset(&mut frame);
                b.reset(&mut fb);
                assert_eq!(frame, fb, "the RNG position was restored");
            }
        }
        assert!(b.load_state(&state[..10]).is_err());
        assert!(b.load_state(b"pong00000000000000000000000000").is_err());
    }

    #[test]
    fn frame_shows_ball_and_paddle() {
        let mut g = Catch::new(1, 2);
        let mut frame = vec![0u8; FRAME_BYTES];
        g.reset(&mut frame);
        assert_eq!(frame.iter().filter(|&&p| p == BALL).count(), CELL_H * CELL_W);
        assert_eq!(frame.iter().filter(|&&p| p == PADDLE).count(), CELL_H * CELL_W);
    }
}
