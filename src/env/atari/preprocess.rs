//! Frame preprocessing: max-pooling of two raw frames and the 84×84 area-average resize.
//!
//! The resize reproduces OpenCV's `INTER_AREA` for shrinking by a non-integer factor (210×160 →
//! 84×84: 2.5 rows and 1.905 columns per output pixel): every output pixel is the mean of the
//! source area it covers, each source pixel weighted by the fraction of it inside that area.
//! The weights are exact rationals: along an axis of `n` source and `m` output pixels, output `i`
//! covers [i·n, (i+1)·n) in units of 1/m of a source pixel, so every overlap is an integer and the
//! weights of one output sum to `n`. The 2-D average is therefore an exact integer sum divided by
//! `src_h·src_w`, rounded to nearest with ties to even (as OpenCV's `cvRound`). OpenCV itself
//! accumulates in f32, so it can differ from this exact value by one grey level where the true
//! mean lies within float error of a half.

use crate::error::{Error, Result};

/// One source pixel's integer weight in an output pixel along one axis.
#[derive(Clone, Copy, Debug)]
struct Tap {
    src: u32,
    weight: u32,
}

/// Per-axis coverage table: `taps[ranges[i].0..ranges[i].1]` are output i's source pixels.
#[derive(Clone, Debug)]
struct Axis {
    taps: Vec<Tap>,
    ranges: Vec<(usize, usize)>,
}

impl Axis {
    fn new(n: usize, m: usize) -> Axis {
        let mut taps = Vec::new();
        let mut ranges = Vec::with_capacity(m);
        for i in 0..m {
            let (lo, hi) = (i * n, (i + 1) * n); // in units of 1/m source pixel
            let start = taps.len();
            for j in lo / m..hi.div_ceil(m) {
                let overlap = hi.min((j + 1) * m) - lo.max(j * m);
                if overlap > 0 {
                    taps.push(Tap { src: j as u32, weight: overlap as u32 });
                }
            }
            ranges.push((start, taps.len()));
        }
        Axis { taps, ranges }
    }
}

/// Area-average resize of a grayscale image, with precomputed coverage tables and a scratch row
/// buffer (no allocation per frame).
#[derive(Clone, Debug)]
pub struct AreaResize {
    src_h: usize,
    src_w: usize,
    dst_h: usize,
    dst_w: usize,
    rows: Axis,
    /// The column taps padded to `col_k` per output (weight 0 on the padding), so the
    /// horizontal pass is a fixed-length, branch-free loop the compiler unrolls.
    col_src: Vec<u32>,
    col_w: Vec<u32>,
    col_k: usize,
    denom: u32,
    /// ceil(2^48 / denom): `(n·recip) >> 48` is exactly `n / denom` for every n ≤ 255·denom < 2^24 (the
    /// error n·ε/2^48 < 2^-24 is below the smallest gap 1/denom to the next integer), so the
    /// per-pixel division (≈40 µs per frame) becomes a multiply.
    recip: u64,
    /// One row of the vertical pass. u16 is enough (≤ 255·src_h < 2^16) and lets the pass use
    /// 8-lane 16-bit multiplies, which halves the resize time.
    tmp: Vec<u16>,
}

impl AreaResize {
    /// Shrinks `src_h×src_w` to `dst_h×dst_w` (each output no larger than its source axis).
    pub fn new(src_h: usize, src_w: usize, dst_h: usize, dst_w: usize) -> Result<AreaResize> {
        if dst_h == 0 || dst_w == 0 || src_h < dst_h || src_w < dst_w {
            return Err(Error::Config(format!(
                "area resize shrinks only: cannot map a {src_h}x{src_w} screen to {dst_h}x{dst_w}"
            )));
        }
        // The largest sum is 255·src_h·src_w; the reciprocal division is exact below 2^24,
        // and the vertical pass's u16 sums hold up to 255·src_h.
        if (src_h as u64) * (src_w as u64) * 255 >= 1 << 24 || src_h * 255 > u16::MAX as usize {
            return Err(Error::Config(format!("screen {src_h}x{src_w} is too large for the area resize")));
        }
        let cols = Axis::new(src_w, dst_w);
        let col_k = cols.ranges.iter().map(|&(a, b)| b - a).max().unwrap_or(1);
        let (mut col_src, mut col_w) = (Vec::new(), Vec::new());
        for &(a, b) in &cols.ranges {
            for j in 0..col_k {
                let t = cols.taps.get(a + j).filter(|_| a + j < b);
                col_src.push(t.map_or(cols.taps[a].src, |t| t.src));
                col_w.push(t.map_or(0, |t| t.weight));
            }
        }
        Ok(AreaResize {
            col_src,
            col_w,
            col_k,
            src_h,
            src_w,
            dst_h,
            dst_w,
            rows: Axis::new(src_h, dst_h),
            denom: (src_h * src_w) as u32,
            recip: (1u64 << 48).div_ceil((src_h * src_w) as u64),
            tmp: vec![0; src_w],
        })
    }

    /// Resizes `src` [src_h·src_w] into `dst` [dst_h·dst_w].
    pub fn apply(&mut self, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), self.src_h * self.src_w, "area resize: source size");
        assert_eq!(dst.len(), self.dst_h * self.dst_w, "area resize: destination size");
        let (denom, recip) = (self.denom, self.recip);
        let w = self.src_w;
        for (y, out_row) in dst.chunks_exact_mut(self.dst_w).enumerate() {
            // Vertical pass: weighted sum of the covered source rows, per source column.
            let (a, b) = self.rows.ranges[y];
            let taps = &self.rows.taps[a..b];
            let first = taps[0];
            let row = &src[first.src as usize * w..][..w];
            let w0 = first.weight as u16;
            for (t, &p) in self.tmp.iter_mut().zip(row) {
                *t = w0 * p as u16;
            }
            for tap in &taps[1..] {
                let row = &src[tap.src as usize * w..][..w];
                let wt = tap.weight as u16;
                for (t, &p) in self.tmp.iter_mut().zip(row) {
                    *t += wt * p as u16;
                }
            }
            // Horizontal pass and exact rounding (ties to even).
            let (tmp, src_idx, w) = (&self.tmp[..], &self.col_src[..], &self.col_w[..]);
            match self.col_k {
                2 => horizontal::<2>(tmp, src_idx, w, denom, recip, out_row),
                3 => horizontal::<3>(tmp, src_idx, w, denom, recip, out_row),
                4 => horizontal::<4>(tmp, src_idx, w, denom, recip, out_row),
                _ => horizontal_any(tmp, src_idx, w, self.col_k, denom, recip, out_row),
            }
        }
    }
}

/// `round_half_even(sum / denom)`, with the exact reciprocal multiply.
#[inline(always)]
fn round_div(sum: u32, denom: u32, recip: u64) -> u8 {
    let q = ((sum as u64 * recip) >> 48) as u32;
    let r2 = 2 * (sum - q * denom);
    let up = (r2 > denom) | ((r2 == denom) & (q & 1 == 1));
    (q + up as u32).min(255) as u8
}

fn horizontal<const K: usize>(tmp: &[u16], src: &[u32], w: &[u32], denom: u32, recip: u64, out: &mut [u8]) {
    for ((o, s), w) in out.iter_mut().zip(src.chunks_exact(K)).zip(w.chunks_exact(K)) {
        let mut sum = 0u32;
        for k in 0..K {
            sum += w[k] * tmp[s[k] as usize] as u32;
        }
        *o = round_div(sum, denom, recip);
    }
}

fn horizontal_any(tmp: &[u16], src: &[u32], w: &[u32], k: usize, denom: u32, recip: u64, out: &mut [u8]) {
    for ((o, s), w) in out.iter_mut().zip(src.chunks_exact(k)).zip(w.chunks_exact(k)) {
        let sum: u32 = s.iter().zip(w).map(|(&s, &w)| w * tmp[s as usize] as u32).sum();
        *o = round_div(sum, denom, recip);
    }
}

/// `out[i] = max(a[i], b[i])`: the max-pool over the last two raw frames that removes Atari
/// sprite flicker.
#[inline]
pub fn max_into(a: &[u8], b: &[u8], out: &mut [u8]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x.max(y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_cover_each_output_exactly() {
        for (n, m) in [(210, 84), (160, 84), (250, 84), (84, 84), (7, 3)] {
            let a = Axis::new(n, m);
            for &(s, e) in &a.ranges {
                assert_eq!(a.taps[s..e].iter().map(|t| t.weight as usize).sum::<usize>(), n);
            }
        }
    }

    #[test]
    fn reciprocal_division_is_exact() {
        for denom in [210 * 160, 250 * 160, 97 * 85, 7, 1] {
            let recip = (1u64 << 48).div_ceil(denom);
            // Sums never exceed 255·denom (< 2^24), which also keeps n·recip below 2^57.
            for n in (0..=255 * denom).step_by(97).chain([denom - 1, denom, 255 * denom - 1, 255 * denom]) {
                assert_eq!((n * recip) >> 48, n / denom, "{n} / {denom}");
            }
        }
    }

    #[test]
    fn constant_and_identity() {
        let mut r = AreaResize::new(210, 160, 84, 84).unwrap();
        let src = vec![77u8; 210 * 160];
        let mut dst = vec![0u8; 84 * 84];
        r.apply(&src, &mut dst);
        assert!(dst.iter().all(|&p| p == 77));
        let mut id = AreaResize::new(3, 2, 3, 2).unwrap();
        let mut out = [0u8; 6];
        id.apply(&[1, 2, 3, 4, 5, 255], &mut out);
        assert_eq!(out, [1, 2, 3, 4, 5, 255]);
        assert!(AreaResize::new(80, 80, 84, 84).is_err());
    }
}
