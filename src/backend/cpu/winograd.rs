//! Winograd minimal filtering F(m×m, 2×2) for the fast path's strided convolutions, forward only.
//!
//! After space-to-depth by its stride f, an f·2 × f·2 conv of stride f (conv1: 8×8 stride 4,
//! conv2: 4×4 stride 2) is a 2×2 stride-1 conv on f²·Cin channels. For a 2×2 stride-1 conv,
//! Winograd's algorithm (Lavin & Gray 2016) computes an m×m output tile from an n×n input tile,
//! n = m + 1, with n² products per (input, output) channel pair instead of 4·m² — 9 instead of
//! 16 for m = 2 (1.78× fewer), 16 instead of 36 for m = 3 (2.25×):
//!
//!   Y[tile] = Aᵀ · ( Σ_c U[c] ⊙ V[c] ) · A,   U[c] = G · g[c] · Gᵀ (n×n),   V[c] = Bᵀ · d[c] · B,
//!
//! with g[c] the 2×2 kernel of input channel c and d[c] the tile's n×n input. The sum over c is,
//! for each of the n² positions ξ, one GEMM  M_ξ[tiles, Cout] = V_ξ[tiles, C] · U_ξ[C, Cout]
//! (`gemm`: each element summed over c in order, independent of the batch). The matrices come
//! from Toom-Cook at the points (0, 1, ∞) for m = 2 and (0, 1, −1, ∞) for m = 3 (derived in
//! rational arithmetic; the tests check the result against the direct sum). All
//! their entries are 0, ±1 or ±½, so the transforms are a few adds per element and the result
//! differs from the direct conv only by float rounding (tests: within 1e-6 of the output scale).
//!
//! Shapes: input NHWC [N, H, W, Cin] read as folded pixels (Y, X) of f² groups (iy, ix) of Cin
//! channels, group (iy, ix) at pixel (f·Y + iy, f·X + ix): folded channel k = (iy·f + ix)·Cin + c.
//! Output NHWC [N, out, out, Cout] with bias and ReLU applied. Scratch, per round of up to
//! `TILES_PER_ROUND` tiles: V [tiles][n²][C], M [tiles][n²][Cout] (the GEMMs read V_ξ and write
//! M_ξ as strided row views). Cin·f² and Cout must be multiples of 16 (one AVX-512 vector), and
//! the tile must divide the output side (`WinoConv::of` leaves other layers to the implicit GEMM).
//!
//! Measured on the 2-core AVX-512 machine (BENCHMARKS.md): act on 16 observations 10% faster
//! than the implicit GEMM alone; the GEMMs run near the FMA peak, the transforms take about a
//! sixth of the act.
//! The backward pass stays the direct one (`fast.rs`): the gradients of this forward are the
//! conv's own.

use super::gemm::gemm;
use crate::model::ConvShape;

/// Lanes per vector of the transforms: one AVX-512 register of f32 (the compiler vectorises the
/// fixed-size loops; elsewhere they are plain loops).
const L: usize = 16;
type Lanes = [f32; L];

/// A tile size: the Toom-Cook matrices of F(m, 2), padded to the largest (m = 3, n = 4).
pub trait Tile {
    const M: usize;
    const N: usize;
    /// Aᵀ [m][n]
    const AT: [[f32; 4]; 3];
    /// G [n][2]
    const G: [[f32; 2]; 4];
    /// Bᵀ [n][n]
    const BT: [[f32; 4]; 4];
    /// Bᵀ·d on n elements (the rest of the array unused), written out by hand so each output is
    /// an add or two whatever the compiler unrolls; `bt_and_at_are_the_matrices` checks it is `BT`.
    fn bt(d: &[Lanes; 4]) -> [Lanes; 4];
    /// Aᵀ·m on n elements → m outputs, likewise checked against `AT`.
    fn at(m: &[Lanes; 4]) -> [Lanes; 3];
}

/// Lane-wise a + b and a − b.
#[inline(always)]
fn add(a: &Lanes, b: &Lanes) -> Lanes {
    // Plain loops, not `array::from_fn` (whose element-by-element guard does not vectorise).
    let mut r = *a;
    for l in 0..L {
        r[l] += b[l];
    }
    r
}
#[inline(always)]
fn sub(a: &Lanes, b: &Lanes) -> Lanes {
    let mut r = *a;
    for l in 0..L {
        r[l] -= b[l];
    }
    r
}
const ZERO: Lanes = [0.0; L];

/// Tiles per round of `WinoConv::forward` (see there).
const TILES_PER_ROUND: usize = 48;

/// The first `len` elements of `buf`, growing it (zero-filled) only when it is shorter.
fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// F(2×2, 2×2): points 0, 1, ∞.
pub struct F2;
impl Tile for F2 {
    const M: usize = 2;
    const N: usize = 3;
    const AT: [[f32; 4]; 3] = [[1., 1., 0., 0.], [0., 1., 1., 0.], [0.; 4]];
    const G: [[f32; 2]; 4] = [[1., 0.], [1., 1.], [0., 1.], [0.; 2]];
    const BT: [[f32; 4]; 4] = [[1., -1., 0., 0.], [0., 1., 0., 0.], [0., -1., 1., 0.], [0.; 4]];
    #[inline(always)]
    fn bt(d: &[Lanes; 4]) -> [Lanes; 4] {
        [sub(&d[0], &d[1]), d[1], sub(&d[2], &d[1]), ZERO]
    }
    #[inline(always)]
    fn at(m: &[Lanes; 4]) -> [Lanes; 3] {
        [add(&m[0], &m[1]), add(&m[1], &m[2]), ZERO]
    }
}

/// F(3×3, 2×2): points 0, 1, −1, ∞.
pub struct F3;
impl Tile for F3 {
    const M: usize = 3;
    const N: usize = 4;
    const AT: [[f32; 4]; 3] = [[1., 1., 1., 0.], [0., 1., -1., 0.], [0., 1., 1., 1.]];
    const G: [[f32; 2]; 4] = [[1., 0.], [0.5, 0.5], [0.5, -0.5], [0., 1.]];
    const BT: [[f32; 4]; 4] = [[1., 0., -1., 0.], [0., 1., 1., 0.], [0., -1., 1., 0.], [0., -1., 0., 1.]];
    #[inline(always)]
    fn bt(d: &[Lanes; 4]) -> [Lanes; 4] {
        [sub(&d[0], &d[2]), add(&d[1], &d[2]), sub(&d[2], &d[1]), sub(&d[3], &d[1])]
    }
    #[inline(always)]
    fn at(m: &[Lanes; 4]) -> [Lanes; 3] {
        let s12 = add(&m[1], &m[2]);
        [add(&m[0], &s12), sub(&m[1], &m[2]), add(&s12, &m[3])]
    }
}

/// Which tile a layer uses: one that divides its output side (F3 first), so every tile is whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileSize {
    F2,
    F3,
}

/// A 2×2 stride-1 conv on folded input, as the Winograd path sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinoConv {
    /// Space-to-depth factor applied while reading (1: the input is already folded).
    pub fold: usize,
    /// Channels per pixel of the input as stored.
    pub cin: usize,
    /// Input side as stored (unfolded pixels).
    pub in_hw: usize,
    pub out_hw: usize,
    pub cout: usize,
    pub tile: TileSize,
}

impl WinoConv {
    /// The Winograd form of conv `s` on its stored NHWC input, read with space-to-depth by
    /// its stride (conv2: 4×4 stride 2 → 2×2 stride 1 on 4·Cin channels; conv1, whose input
    /// `fast.rs` folds beforehand, is already 2×2 stride 1), or None when `s` is not such a conv,
    /// its channels do not fill whole vectors, or no tile divides its output side (those layers
    /// stay on the implicit GEMM).
    pub fn of(s: &ConvShape) -> Option<WinoConv> {
        let f = s.stride;
        let tile = if s.out_hw % 3 == 0 {
            TileSize::F3
        } else if s.out_hw % 2 == 0 {
            TileSize::F2
        } else {
            return None;
        };
        let ok = f >= 1
            && s.kernel == 2 * f
            && s.in_hw % f == 0
            && s.in_hw / f == s.out_hw + 1
            && s.in_channels % L == 0
            && s.out_channels % L == 0;
        ok.then_some(WinoConv { fold: f, cin: s.in_channels, in_hw: s.in_hw, out_hw: s.out_hw, cout: s.out_channels, tile })
    }

    /// Folded input channels (the GEMMs' reduction length).
    pub fn channels(&self) -> usize {
        self.fold * self.fold * self.cin
    }

    fn in_len(&self) -> usize {
        self.in_hw * self.in_hw * self.cin
    }

    fn out_len(&self) -> usize {
        self.out_hw * self.out_hw * self.cout
    }

    /// U [n²][C][Cout] from the weights as the fast path permutes them, `wperm` [Cout][K·K·Cin]
    /// in (ky, kx, c) order of the stored input (K = 2·fold).
    pub fn transform_weights(&self, wperm: &[f32], u: &mut Vec<f32>) {
        match self.tile {
            TileSize::F2 => self.transform_weights_t::<F2>(wperm, u),
            TileSize::F3 => self.transform_weights_t::<F3>(wperm, u),
        }
    }

    fn transform_weights_t<T: Tile>(&self, wperm: &[f32], u: &mut Vec<f32>) {
        let (f, cin, cout, c, n) = (self.fold, self.cin, self.cout, self.channels(), T::N);
        let k = 2 * f;
        assert_eq!(wperm.len(), cout * k * k * cin, "winograd: weight size");
        u.clear();
        u.resize(n * n * c * cout, 0.0);
        for ch in 0..c {
            // Folded channel ch = (iy·f + ix)·Cin + c0; its 2×2 kernel g[by][bx] is the
            // original tap (f·by + iy, f·bx + ix) of input channel c0.
            let (iy, ix, c0) = (ch / cin / f, ch / cin % f, ch % cin);
            let taps = [[0, 0], [0, 1], [1, 0], [1, 1]].map(|[by, bx]| ((f * by + iy) * k + f * bx + ix) * cin + c0);
            for o in 0..cout {
                let w = &wperm[o * k * k * cin..][..k * k * cin];
                let g = [[w[taps[0]], w[taps[1]]], [w[taps[2]], w[taps[3]]]];
                // U = (G·g)·Gᵀ, the left product first (a fixed order: the same U every time).
                let mut gg = [[0.0f32; 2]; 4];
                for (a, row) in gg.iter_mut().enumerate().take(n) {
                    for (bx, v) in row.iter_mut().enumerate() {
                        *v = T::G[a][0] * g[0][bx] + T::G[a][1] * g[1][bx];
                    }
                }
                for (a, row) in gg.iter().enumerate().take(n) {
                    for b in 0..n {
                        u[((a * n + b) * c + ch) * cout + o] = row[0] * T::G[b][0] + row[1] * T::G[b][1];
                    }
                }
            }
        }
    }

    /// y = ReLU(conv(x) + bias) for the samples of `x` (NHWC, see the module docs); `v` and `m`
    /// are scratch, grown here when too small.
    pub fn forward(&self, x: &[f32], u: &[f32], bias: &[f32], y: &mut [f32], v: &mut Vec<f32>, m: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if super::gemm::uses_avx512() {
            // SAFETY: AVX-512F is present (checked just above).
            return unsafe { self.forward_avx512(x, u, bias, y, v, m) };
        }
        self.forward_tile(x, u, bias, y, v, m);
    }

    /// The same body compiled for AVX-512, so the transforms' 16-lane loops are one register
    /// each (the crate is built for baseline x86-64: SSE2).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn forward_avx512(&self, x: &[f32], u: &[f32], bias: &[f32], y: &mut [f32], v: &mut Vec<f32>, m: &mut Vec<f32>) {
        self.forward_tile(x, u, bias, y, v, m);
    }

    #[inline(always)]
    fn forward_tile(&self, x: &[f32], u: &[f32], bias: &[f32], y: &mut [f32], v: &mut Vec<f32>, m: &mut Vec<f32>) {
        match self.tile {
            TileSize::F2 => self.forward_t::<F2>(x, u, bias, y, v, m),
            TileSize::F3 => self.forward_t::<F3>(x, u, bias, y, v, m),
        }
    }

    #[inline(always)]
    fn forward_t<T: Tile>(&self, x: &[f32], u: &[f32], bias: &[f32], y: &mut [f32], v: &mut Vec<f32>, m: &mut Vec<f32>) {
        let (n, mt) = (T::N, T::M);
        let samples = x.len() / self.in_len();
        assert_eq!(x.len(), samples * self.in_len(), "winograd: input is not whole samples");
        assert_eq!(y.len(), samples * self.out_len(), "winograd: output size");
        let (c, cout, nn) = (self.channels(), self.cout, n * n);
        assert_eq!(u.len(), nn * c * cout, "winograd: transformed weights for another tile or shape");
        assert_eq!(bias.len(), cout, "winograd: bias size");
        // Whole tiles only (`of` picks a tile that divides the side): no tile reads past the
        // input or writes past the output.
        assert_eq!(self.out_hw % mt, 0, "winograd: the tile must divide the output side");
        let side = self.out_hw / mt;
        // Tiles per round of transforms and GEMMs (any samples): a multiple of the GEMM's row
        // blocks, few enough that V and M stay in L1/L2 between the transform and the GEMM.
        let total = samples * side * side;
        let max_tiles = TILES_PER_ROUND.min(total.max(1));
        let (v, m) = (grown(v, max_tiles * nn * c), grown(m, max_tiles * nn * cout));
        let (f, cin, in_hw) = (self.fold, self.cin, self.in_hw);
        // Offsets, in the stored input, of tile pixel (i, j) and of folded channel group g.
        let mut pix = [0usize; 16];
        for i in 0..n {
            for j in 0..n {
                pix[i * n + j] = (f * i * in_hw + f * j) * cin;
            }
        }
        let group_off = |g: usize| ((g / f) * in_hw + g % f) * cin;
        // Every read below is inside its sample: the furthest is the last tile's last pixel, last
        // channel group, last vector. Checked once here, so the loops index through raw
        // pointers (slice bounds checks cost more than the transforms' arithmetic).
        let last_tile = (f * (side - 1) * mt * in_hw + f * (side - 1) * mt) * cin;
        assert!(last_tile + pix[nn - 1] + group_off(f * f - 1) + cin <= self.in_len(), "winograd: a tile reads past its sample");
        let xp = x.as_ptr();
        for t0 in (0..total).step_by(max_tiles) {
            let tiles = max_tiles.min(total - t0);
            // V [tile][ξ][k] = (Bᵀ d B)[ξ] for folded channels k, 16 at a time.
            let vp = v.as_mut_ptr();
            for t in 0..tiles {
                let (s, ty, tx) = ((t0 + t) / (side * side), (t0 + t) / side % side, (t0 + t) % side);
                let base = s * self.in_len() + (f * ty * mt * in_hw + f * tx * mt) * cin;
                for q in 0..c / L {
                    let off = base + group_off(q * L / cin) + q * L % cin;
                    // Bᵀ along each input row, then along each column of the result.
                    let mut rows = [[ZERO; 4]; 4];
                    for (i, row) in rows.iter_mut().enumerate().take(n) {
                        let mut d = [ZERO; 4];
                        for (j, lanes) in d.iter_mut().enumerate().take(n) {
                            // SAFETY: inside sample s (the assert above); `Lanes` has f32's alignment.
                            *lanes = unsafe { xp.add(off + pix[i * n + j]).cast::<Lanes>().read_unaligned() };
                        }
                        *row = T::bt(&d);
                    }
                    for b in 0..n {
                        let col = T::bt(&[rows[0][b], rows[1][b], rows[2][b], rows[3][b]]);
                        for (a, lanes) in col.iter().enumerate().take(n) {
                            // SAFETY: t < tiles ≤ max_tiles, a·n + b < nn, q·L + L ≤ c: inside v.
                            unsafe { vp.add((t * nn + a * n + b) * c + q * L).cast::<Lanes>().write_unaligned(*lanes) };
                        }
                    }
                }
            }
            // M [tile][ξ][o] = V_ξ · U_ξ: rows of V_ξ are nn·c apart, of M_ξ nn·cout.
            for xi in 0..nn {
                let vx = &v[xi * c..(tiles - 1) * nn * c + (xi + 1) * c];
                let mx = &mut m[xi * cout..(tiles - 1) * nn * cout + (xi + 1) * cout];
                gemm(tiles, c, cout, vx, nn * c, 1, &u[xi * c * cout..][..c * cout], cout, mx, nn * cout, false);
            }
            // Y = Aᵀ M A + bias, ReLU.
            let (mp, yp) = (m.as_ptr(), y.as_mut_ptr());
            for t in 0..tiles {
                let (s, ty, tx) = ((t0 + t) / (side * side), (t0 + t) / side % side, (t0 + t) % side);
                let out0 = s * self.out_len() + (ty * mt * self.out_hw + tx * mt) * cout;
                for q in 0..cout / L {
                    // Aᵀ along each row of M, then along each column of the result.
                    let mut rows = [[ZERO; 3]; 4];
                    for (a, row) in rows.iter_mut().enumerate().take(n) {
                        let mut mm = [ZERO; 4];
                        for (b, lanes) in mm.iter_mut().enumerate().take(n) {
                            // SAFETY: t < tiles, a·n + b < nn, q·L + L ≤ cout: inside m.
                            *lanes = unsafe { mp.add((t * nn + a * n + b) * cout + q * L).cast::<Lanes>().read_unaligned() };
                        }
                        *row = T::at(&mm);
                    }
                    let b0: Lanes = bias[q * L..][..L].try_into().expect("16 lanes");
                    for j in 0..mt {
                        let col = T::at(&[rows[0][j], rows[1][j], rows[2][j], rows[3][j]]);
                        for (i, lanes) in col.iter().enumerate().take(mt) {
                            let mut out = add(lanes, &b0);
                            for o in out.iter_mut() {
                                *o = o.max(0.0);
                            }
                            // SAFETY: output pixel (ty·m + i, tx·m + j) < (out, out) of sample s
                            // (whole tiles), channels q·L.. + L ≤ cout: inside y (asserted size).
                            unsafe { yp.add(out0 + (i * self.out_hw + j) * cout + q * L).cast::<Lanes>().write_unaligned(out) };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{PhiloxStream, Purpose};

    /// ReLU(conv + b) summed directly in f64, from the same inputs (`wperm` layout).
    fn direct(wc: &WinoConv, x: &[f32], wperm: &[f32], bias: &[f32]) -> Vec<f64> {
        let (f, cin, cout, out) = (wc.fold, wc.cin, wc.cout, wc.out_hw);
        let k = 2 * f;
        let samples = x.len() / wc.in_len();
        let mut y = vec![0f64; samples * wc.out_len()];
        for s in 0..samples {
            for oy in 0..out {
                for ox in 0..out {
                    for o in 0..cout {
                        let mut acc = bias[o] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                for c in 0..cin {
                                    let xv = x[s * wc.in_len() + ((oy * f + ky) * wc.in_hw + ox * f + kx) * cin + c] as f64;
                                    acc += xv * wperm[o * k * k * cin + (ky * k + kx) * cin + c] as f64;
                                }
                            }
                        }
                        y[s * wc.out_len() + (oy * out + ox) * cout + o] = acc.max(0.0);
                    }
                }
            }
        }
        y
    }

    /// Both tiles on random shapes — conv1's and conv2's own, folds 1 to 3, output sides the
    /// tile does and does not divide (partial last tiles), several samples — against the
    /// direct sum, within 1e-6 of the output scale (f32 rounding of a few hundred terms).
    #[test]
    fn winograd_matches_the_direct_convolution() {
        let mut r = PhiloxStream::new(21, 0, Purpose::Init);
        let mut uni = |scale: f32| (r.below(1 << 20) as f32 / (1 << 20) as f32 - 0.5) * 2.0 * scale;
        // (fold, cin, in_hw, cout, samples, tile)
        let cases = [
            (1, 64, 21, 32, 2, TileSize::F2), // conv1 (folded beforehand)
            (2, 32, 20, 64, 3, TileSize::F3), // conv2
            (1, 16, 7, 16, 1, TileSize::F2),  // out 6 with either tile
            (1, 16, 7, 32, 11, TileSize::F3), // 44 tiles: a ragged last round
            (2, 48, 14, 16, 9, TileSize::F2), // 9 samples of 9 tiles: rounds across samples
            (3, 16, 15, 48, 2, TileSize::F2), // fold 3, out 4
        ];
        for (fold, cin, in_hw, cout, samples, tile) in cases {
            let k = 2 * fold;
            let s = ConvShape { in_channels: cin, out_channels: cout, kernel: k, stride: fold, in_hw, out_hw: in_hw / fold - 1 };
            let mut wc = WinoConv::of(&s).expect("a 2×2 conv after folding");
            wc.tile = tile;
            let x: Vec<f32> = (0..samples * wc.in_len()).map(|_| uni(1.0).abs()).collect();
            let wperm: Vec<f32> = (0..cout * k * k * cin).map(|_| uni(0.1)).collect();
            let bias: Vec<f32> = (0..cout).map(|_| uni(0.1)).collect();
            let mut u = Vec::new();
            wc.transform_weights(&wperm, &mut u);
            let want = direct(&wc, &x, &wperm, &bias);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            // Both code paths (AVX-512 where present, and the portable one), with scratch
            // left larger by an earlier call.
            for portable in [false, true] {
                crate::backend::cpu::gemm::force_portable(portable);
                let mut y = vec![f32::NAN; samples * wc.out_len()];
                let (mut v, mut m) = (vec![f32::NAN; 1 << 18], vec![f32::NAN; 7]);
                wc.forward(&x, &u, &bias, &mut y, &mut v, &mut m);
                let err = y.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
                assert!(scale > 0.1 && err <= 1e-6 * scale, "{s:?} {tile:?} portable={portable}: max error {err:e} at scale {scale}");
            }
            crate::backend::cpu::gemm::force_portable(false);
        }
    }

    /// The hand-written transforms are the matrices (which the direct-sum test checks).
    #[test]
    fn bt_and_at_are_the_matrices() {
        fn check<T: Tile>() {
            for e in 0..T::N {
                // Unit input e (in lane 0): Bᵀ·e_e is BT's column e, Aᵀ·e_e AT's.
                let mut d = [ZERO; 4];
                d[e][0] = 1.0;
                let (b, a) = (T::bt(&d), T::at(&d));
                for r in 0..T::N {
                    assert_eq!(b[r][0], T::BT[r][e], "Bᵀ[{r}][{e}] (n = {})", T::N);
                }
                for r in 0..T::M {
                    assert_eq!(a[r][0], T::AT[r][e], "Aᵀ[{r}][{e}] (n = {})", T::N);
                }
            }
        }
        check::<F2>();
        check::<F3>();
    }

    /// conv1, conv2 and conv3 of both presets: only the first two take the Winograd path.
    #[test]
    fn only_the_strided_2x2_convs_after_folding_qualify() {
        for preset in [crate::model::NetPreset::Gala, crate::model::NetPreset::Nature] {
            let net = crate::model::NetSpec::new(preset, 6);
            let c1 = crate::backend::cpu::fast::folded(&net.convs[0]);
            assert_eq!(WinoConv::of(&c1).map(|w| w.tile), Some(TileSize::F2), "{preset:?} conv1");
            assert_eq!(WinoConv::of(&net.convs[1]).map(|w| w.tile), Some(TileSize::F3), "{preset:?} conv2");
            assert_eq!(WinoConv::of(&net.convs[2]), None, "{preset:?} conv3");
        }
        // A side neither tile divides (7) stays on the implicit GEMM.
        let odd = ConvShape { in_channels: 16, out_channels: 16, kernel: 2, stride: 1, in_hw: 8, out_hw: 7 };
        assert_eq!(WinoConv::of(&odd), None);
    }
}
