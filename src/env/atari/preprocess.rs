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
    cols: Axis,
    denom: u32,
    tmp: Vec<u32>,
}

impl AreaResize {
    /// Shrinks `src_h×src_w` to `dst_h×dst_w` (each output no larger than its source axis).
    pub fn new(src_h: usize, src_w: usize, dst_h: usize, dst_w: usize) -> Result<AreaResize> {
        if dst_h == 0 || dst_w == 0 || src_h < dst_h || src_w < dst_w {
            return Err(Error::Config(format!(
                "area resize shrinks only: cannot map a {src_h}x{src_w} screen to {dst_h}x{dst_w}"
            )));
        }
        // The largest sum is 255·src_h·src_w; keep it inside u32.
        if (src_h as u64) * (src_w as u64) * 255 * 2 > u32::MAX as u64 {
            return Err(Error::Config(format!("screen {src_h}x{src_w} is too large for the area resize")));
        }
        Ok(AreaResize {
            src_h,
            src_w,
            dst_h,
            dst_w,
            rows: Axis::new(src_h, dst_h),
            cols: Axis::new(src_w, dst_w),
            denom: (src_h * src_w) as u32,
            tmp: vec![0; src_w],
        })
    }

    /// Resizes `src` [src_h·src_w] into `dst` [dst_h·dst_w].
    pub fn apply(&mut self, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), self.src_h * self.src_w, "area resize: source size");
        assert_eq!(dst.len(), self.dst_h * self.dst_w, "area resize: destination size");
        let denom = self.denom;
        let w = self.src_w;
        for (y, out_row) in dst.chunks_exact_mut(self.dst_w).enumerate() {
            // Vertical pass: weighted sum of the covered source rows, per source column.
            let (a, b) = self.rows.ranges[y];
            let taps = &self.rows.taps[a..b];
            let first = taps[0];
            let row = &src[first.src as usize * w..][..w];
            for (t, &p) in self.tmp.iter_mut().zip(row) {
                *t = first.weight * p as u32;
            }
            for tap in &taps[1..] {
                let row = &src[tap.src as usize * w..][..w];
                for (t, &p) in self.tmp.iter_mut().zip(row) {
                    *t += tap.weight * p as u32;
                }
            }
            // Horizontal pass and exact rounding (ties to even).
            for (x, out) in out_row.iter_mut().enumerate() {
                let (a, b) = self.cols.ranges[x];
                let sum: u32 = self.cols.taps[a..b].iter().map(|t| t.weight * self.tmp[t.src as usize]).sum();
                let (q, r) = (sum / denom, sum % denom);
                let up = 2 * r > denom || (2 * r == denom && q % 2 == 1);
                *out = (q + up as u32).min(255) as u8;
            }
        }
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
