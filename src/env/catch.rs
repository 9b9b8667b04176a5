//! `catch`: a built-in pixel game that needs no ROM (after bsuite's Catch, rendered to 84×84).
//!
//! A board of 10 rows × 5 columns; a ball appears in a random column of the top row and falls
//! one row per step; the paddle moves along the bottom row (actions: 0 stay, 1 left, 2 right).
//! When the ball reaches the bottom row the game ends: +1 if the paddle is under it, −1 if not.
//! Each cell is drawn as a block of 8×16 pixels (ball 255, paddle 160, background 0), so the
//! DQN trunk's 8×8/4 first layer sees it the way it sees Atari sprites.
//! One game = one episode of 9 steps; a random policy scores about −0.6, a perfect one +1.

use super::{Environment, GameEnd, StepOutcome, FRAME_BYTES};
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
    fn frame_shows_ball_and_paddle() {
        let mut g = Catch::new(1, 2);
        let mut frame = vec![0u8; FRAME_BYTES];
        g.reset(&mut frame);
        assert_eq!(frame.iter().filter(|&&p| p == BALL).count(), CELL_H * CELL_W);
        assert_eq!(frame.iter().filter(|&&p| p == PADDLE).count(), CELL_H * CELL_W);
    }
}
