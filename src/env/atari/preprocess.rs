//! Frame preprocessing: max-pooling of two raw frames (over grey levels, or over RGB colours
//! followed by OpenCV's grey conversion) and the 84×84 area-average resize.
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

/// ALE 0.6's NTSC palette (`ale/src/common/Palettes.hpp`, the RGB entries at even indices):
/// colour `c` of a screen byte `p` is `NTSC_RGB[p >> 1]` as 0xRRGGBB. ALE plays every supported
/// ROM with the "standard" NTSC palette, so this is what `getScreenRGB` returns.
pub const NTSC_RGB: [u32; 128] = [
    0x000000, 0x4a4a4a, 0x6f6f6f, 0x8e8e8e, 0xaaaaaa, 0xc0c0c0, 0xd6d6d6, 0xececec,
    0x484800, 0x69690f, 0x86861d, 0xa2a22a, 0xbbbb35, 0xd2d240, 0xe8e84a, 0xfcfc54,
    0x7c2c00, 0x904811, 0xa26221, 0xb47a30, 0xc3903d, 0xd2a44a, 0xdfb755, 0xecc860,
    0x901c00, 0xa33915, 0xb55328, 0xc66c3a, 0xd5824a, 0xe39759, 0xf0aa67, 0xfcbc74,
    0x940000, 0xa71a1a, 0xb83232, 0xc84848, 0xd65c5c, 0xe46f6f, 0xf08080, 0xfc9090,
    0x840064, 0x97197a, 0xa8308f, 0xb846a2, 0xc659b3, 0xd46cc3, 0xe07cd2, 0xec8ce0,
    0x500084, 0x68199a, 0x7d30ad, 0x9246c0, 0xa459d0, 0xb56ce0, 0xc57cee, 0xd48cfc,
    0x140090, 0x331aa3, 0x4e32b5, 0x6848c6, 0x7f5cd5, 0x956fe3, 0xa980f0, 0xbc90fc,
    0x000094, 0x181aa7, 0x2d32b8, 0x4248c8, 0x545cd6, 0x656fe4, 0x7580f0, 0x8490fc,
    0x001c88, 0x183b9d, 0x2d57b0, 0x4272c2, 0x548ad2, 0x65a0e1, 0x75b5ef, 0x84c8fc,
    0x003064, 0x185080, 0x2d6d98, 0x4288b0, 0x54a0c5, 0x65b7d9, 0x75cceb, 0x84e0fc,
    0x004030, 0x18624e, 0x2d8169, 0x429e82, 0x54b899, 0x65d1ae, 0x75e7c2, 0x84fcd4,
    0x004400, 0x1a661a, 0x328432, 0x48a048, 0x5cba5c, 0x6fd26f, 0x80e880, 0x90fc90,
    0x143c00, 0x355f18, 0x527e2d, 0x6e9c42, 0x87b754, 0x9ed065, 0xb4e775, 0xc8fc84,
    0x303800, 0x505916, 0x6d762b, 0x88923e, 0xa0ab4f, 0xb7c25f, 0xccd86e, 0xe0ec7c,
    0x482c00, 0x694d14, 0x866a26, 0xa28638, 0xbb9f47, 0xd2b656, 0xe8cc63, 0xfce070,
];

/// OpenCV's `cvtColor(…, COLOR_RGB2GRAY)` on 8-bit pixels, bit for bit: OpenCV 4's fixed-point
/// `RGB2Gray<uchar>` with 15-bit weights (R 9798, G 19235, B 3735 = round(0.299, 0.587, 0.114 ·
/// 2^15), summing to 2^15) and rounding by adding 2^14 before the shift. This, not ALE's own
/// `round(0.2989 R + 0.587 G + 0.114 B)`, is the grey of baselines' `WarpFrame`.
#[inline]
pub fn cv_rgb_to_grey(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 9798 + g as u32 * 19235 + b as u32 * 3735 + (1 << 14)) >> 15) as u8
}

/// The grey of the channel-wise max of two palette colours, for every pair: what baselines'
/// `MaxAndSkipEnv` (max over the last two RGB frames) followed by `WarpFrame`'s grey
/// conversion makes of two screens whose pixels have palette indices `a` and `b`. A 128×128
/// table (16 KB) turns the RGB path into one lookup per pixel on one byte per pixel, the cost
/// of the grey max-pool.
pub struct RgbMaxGrey {
    table: Box<[u8]>,
}

impl RgbMaxGrey {
    pub fn new() -> RgbMaxGrey {
        let channels = |c: u32| [(c >> 16) as u8, (c >> 8) as u8, c as u8];
        let mut table = vec![0u8; 128 * 128];
        for (a, &ca) in NTSC_RGB.iter().enumerate() {
            for (b, &cb) in NTSC_RGB.iter().enumerate() {
                let (x, y) = (channels(ca), channels(cb));
                table[a * 128 + b] = cv_rgb_to_grey(x[0].max(y[0]), x[1].max(y[1]), x[2].max(y[2]));
            }
        }
        RgbMaxGrey { table: table.into_boxed_slice() }
    }

    /// `out[i]` = grey(max(RGB(a[i]), RGB(b[i]))) for screens of palette indices.
    #[inline]
    pub fn pool_into(&self, a: &[u8], b: &[u8], out: &mut [u8]) {
        let table = &self.table[..128 * 128];
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = table[(x as usize >> 1) * 128 + (y as usize >> 1)];
        }
    }

    /// `out[i]` = grey(RGB(screen[i])) (one screen, no pooling), in place.
    pub fn grey_in_place(&self, screen: &mut [u8]) {
        for p in screen {
            let i = *p as usize >> 1;
            *p = self.table[i * 128 + i];
        }
    }
}

/// The one table every environment shares (built on first use).
pub fn rgb_max_grey() -> &'static RgbMaxGrey {
    static TABLE: std::sync::OnceLock<RgbMaxGrey> = std::sync::OnceLock::new();
    TABLE.get_or_init(RgbMaxGrey::new)
}

impl Default for RgbMaxGrey {
    fn default() -> Self {
        Self::new()
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
