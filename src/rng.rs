//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers:
//! as easy as 1, 2, 3").
//!
//! Every random decision in the engine is a pure function of a key and a counter, never of a
//! mutable generator shared between threads, so results do not depend on scheduling or on how a
//! batch is split. The action sampler keys Philox by the run seed and uses the counter
//! (agent, env, step, purpose); the GPU kernel `sample_actions` computes the very same function.

/// Philox4x32 round multipliers and Weyl key increments (the published constants).
const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: maps a 128-bit counter and a 64-bit key to 128 random bits.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = (PHILOX_M0 as u64) * (c[0] as u64);
        let p1 = (PHILOX_M1 as u64) * (c[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The 64-bit run seed split into a Philox key.
#[inline]
pub fn seed_key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// Uniform float in [0, 1) from the top 24 bits of `x` (exactly representable in f32, so the
/// CUDA kernel computes the identical value).
#[inline]
pub fn u32_to_unit_f32(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform float in [0, 1) with 53 random bits, for host-side initialisation.
#[inline]
pub fn u32x2_to_unit_f64(hi: u32, lo: u32) -> f64 {
    let bits = ((hi as u64) << 21) ^ (lo as u64 >> 11);
    (bits & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// What a random draw is for; part of the counter so that different uses never share numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Purpose {
    Action = 0,
    EnvReset = 1,
    EnvStep = 2,
    Init = 3,
}

/// The uniform number used to sample the action of (agent, env) at agent-step `step`.
/// Shared by the CPU sampler and (bit-for-bit) the GPU sampling kernel.
#[inline]
pub fn action_uniform(seed: u64, agent: u32, env: u32, step: u64) -> f32 {
    let counter = [agent, env, step as u32, ((step >> 32) as u32) << 8 | Purpose::Action as u32];
    u32_to_unit_f32(philox4x32_10(counter, seed_key(seed))[0])
}

/// A sequential stream of random numbers over Philox: counter = (stream, purpose, index).
/// Used where a sequence is natural (environment resets, parameter initialisation); every stream
/// is still a pure function of (seed, stream id, purpose).
#[derive(Clone, Debug)]
pub struct PhiloxStream {
    key: [u32; 2],
    stream: u64,
    purpose: Purpose,
    index: u32,
    buf: [u32; 4],
    used: usize,
}

impl PhiloxStream {
    pub fn new(seed: u64, stream: u64, purpose: Purpose) -> Self {
        PhiloxStream { key: seed_key(seed), stream, purpose, index: 0, buf: [0; 4], used: 4 }
    }

    /// The position in the stream, for checkpointing (`resume_at` restores it).
    pub fn position(&self) -> (u32, usize) {
        (self.index, self.used)
    }

    pub fn resume_at(&mut self, position: (u32, usize)) {
        self.index = position.0;
        self.used = 4;
        if position.1 < 4 {
            self.index = position.0.wrapping_sub(1);
            self.refill();
            self.used = position.1;
        }
    }

    fn refill(&mut self) {
        let counter =
            [self.stream as u32, (self.stream >> 32) as u32, self.index, self.purpose as u32];
        self.buf = philox4x32_10(counter, self.key);
        self.index = self.index.wrapping_add(1);
        self.used = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            self.refill();
        }
        let x = self.buf[self.used];
        self.used += 1;
        x
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let hi = self.next_u32();
        let lo = self.next_u32();
        u32x2_to_unit_f64(hi, lo)
    }

    /// Uniform integer in [0, n) (n > 0), by rejection so that it is exactly uniform.
    pub fn below(&mut self, n: u32) -> u32 {
        assert!(n > 0, "PhiloxStream::below(0)");
        let zone = u32::MAX - (u32::MAX % n);
        loop {
            let x = self.next_u32();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal by Box-Muller.
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer tests from the Random123 distribution (kat_vectors, philox4x32 10 rounds).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn stream_resume_replays() {
        let mut a = PhiloxStream::new(7, 3, Purpose::EnvStep);
        for _ in 0..5 {
            a.next_u32();
        }
        let pos = a.position();
        let expect: Vec<u32> = (0..9).map(|_| a.next_u32()).collect();
        let mut b = PhiloxStream::new(7, 3, Purpose::EnvStep);
        b.resume_at(pos);
        let got: Vec<u32> = (0..9).map(|_| b.next_u32()).collect();
        assert_eq!(expect, got);
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut s = PhiloxStream::new(1, 0, Purpose::EnvReset);
        let mut seen = [0usize; 30];
        for _ in 0..3000 {
            seen[s.below(30) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }
}
