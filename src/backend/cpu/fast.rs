//! The fast f32 path of the whole network: what `CpuBackend` acts and learns with.
//!
//! `net.rs` + `layers.rs` stay the generic reference (f32 and f64, finite-difference checked,
//! the spec the GPU kernels are tested against); this module computes the same function and
//! gradients in f32, with a different memory layout and summation order (equal within f32
//! rounding: the tests at the bottom compare the two on both presets). Why it is faster:
//!
//! - Activations are kept pixel-major (NHWC: [N, Ho, Wo, C]), so a conv layer over a chunk of
//!   samples is ONE GEMM `y[rows, Cout] = unfold(x)[rows, K·K·Cin] · W'ᵀ`, rows = samples ×
//!   pixels, instead of one small GEMM per sample, and each unfold row is K runs of K·Cin
//!   contiguous floats. The GEMM reads those runs in place (`gemm::gemm_gather`, an implicit
//!   GEMM driven by a table of row offsets): no unfold buffer is written (conv1's would be 16×
//!   its input), and bias + ReLU happen in the kernel's epilogue. The weights are permuted to
//!   the matching (ky, kx, c) order once per change of the parameters (cached by their bits:
//!   acting calls the forward several times between updates).
//! - conv1 (8×8 stride 4) runs as a 2×2 stride-1 conv on the frames folded space-to-depth
//!   into 21×21×64 (`fold_of`): bytes are converted once each, and its rows are runs too.
//! - Each chunk of `CHUNK` samples runs conv1→conv3 forward, and later conv3→conv1 backward, in
//!   one task, so its activations and scratch stay in cache. The conv weight gradients
//!   dW[Cout, Kp] = dyᵀ · unfold(x) read the unfold in place as well (`gemm::gemm_gather_b`);
//!   only the input gradients go through a (dy · W') buffer and its fold back (col2im).
//! - The fc layer, whose 512×1568 weight matrix dominates the traffic of a small batch, is split
//!   over output features and its input gradient over samples, both written so every task owns
//!   whole rows. The heads (6 and 1 outputs) are dot products.
//! - On a CPU with AMX (`amx.rs`) conv1 and conv2 of the forward run on tiles instead: conv1 on
//!   the folded bytes (exact in bf16) times the exact 3-way bf16 split of its weights, ÷255 once
//!   per sum; its epilogue also writes its output folded by 2 and split the same way, and conv2
//!   (4×4 stride 2 = 2×2 stride 1 on that fold) sums the six significant split products. As
//!   accurate as the f32 path (`the_amx_forward_is_as_accurate_as_f32`), not bit-equal to it; the
//!   backward is the same either way. `GALA_CPU_AMX=0` keeps everything on the f32 path.
//! - Scratch buffers come from a pool kept across calls: after warm-up an act allocates nothing
//!   and a learn only a few small blocks (tests/cpu_alloc.rs counts), on the AVX-512 path; the
//!   portable GEMM (matrixmultiply) allocates its packing buffers inside each call.
//!
//! Determinism: every task is a fixed chunk of samples or of features whatever the thread
//! count, and the weight gradients' per-chunk partials are summed in chunk order afterwards,
//! so results are bit-identical for 1 or N threads.

use super::amx;
use super::gemm::{gemm, gemm_gather, gemm_gather_b, Gather};
use super::net::{split_tensors, two};
use crate::model::{tensor, ConvShape, NetSpec, ParamLayout, OBS_BYTES};
use rayon::prelude::*;
use std::sync::Mutex;

/// Samples per task (forward, backward, and per partial weight gradient). Fixed: the
/// weight gradients' summation order depends on it, never on the thread count.
const CHUNK: usize = 4;
/// fc output features per forward and weight-gradient task.
const FC_TASK: usize = 64;
/// Samples per fc input-gradient task.
const FC_ROWS: usize = 16;

/// One task's scratch; contents are always overwritten before being read.
#[derive(Default)]
struct Scratch {
    /// Observations after `space_to_depth_u8` (the forward: the whole chunk; backward: one).
    xs: Vec<f32>,
    /// The forward's implicit-GEMM row table (`conv_nhwc_forward`).
    rows: Vec<usize>,
    /// `gemm_gather`'s unfold buffer on the portable path.
    tmp: Vec<f32>,
    dcols: Vec<f32>,
    /// conv1's folded input as bf16 for AMX (one observation), and the kernel's C tiles.
    xb: amx::AlignedBf16,
    /// conv2's input on AMX: conv1's output folded by 2, as its exact bf16 split (one observation).
    x2: [amx::AlignedBf16; 3],
    ctiles: Box<amx::CTiles>,
    /// Pre-activation gradients of the chunk's conv outputs (NHWC).
    dy: [Vec<f32>; 3],
}

/// A pool of scratch buffers, so tasks reuse memory across calls without owning a fixed slot.
#[derive(Default)]
struct Pool(Mutex<Vec<Scratch>>);

impl Pool {
    fn take(&self) -> Scratch {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
    }
    fn give(&self, s: Scratch) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

/// Per-agent state of the fast path: permuted weights, activations, gradient partials, scratch.
#[derive(Default)]
pub struct FastNet {
    n: usize,
    /// conv weights in the `perm_index` order of their NHWC unfold.
    wperm: [Vec<f32>; 3],
    /// The same transposed, [Kp, Cout]: the B operand of the forward GEMM.
    wt: [Vec<f32>; 3],
    /// The conv weights (bits) and shapes `wperm`/`wt` were made from: acting calls the forward
    /// several times on unchanged parameters, and comparing is far cheaper than permuting.
    wkey: [Vec<u32>; 3],
    wshape: Option<[ConvShape; 3]>,
    /// conv1's weights packed as AMX tiles of their exact bf16 split (`amx::pack_weights`),
    /// made with `wperm` (and like it, only when the weights change) when conv1 runs on AMX.
    w1_amx: amx::AlignedBf16,
    /// conv2's weights for AMX (`amx::pack_weights_folded`), when conv2 runs there too.
    w2_amx: amx::AlignedBf16,
    /// Scratch of `amx::pack_weights_folded`.
    w2_tmp: Vec<f32>,
    /// Keep conv1 and conv2 off AMX even where it is available (tests of the f32 path). Fixed
    /// for the life of a `FastNet`, so the packed weights follow `wkey` like `wperm` does.
    no_amx: bool,
    /// Post-ReLU conv outputs, NHWC.
    conv: [Vec<f32>; 3],
    /// conv3's output in PyTorch's flatten order [N, C·H·W] (fc input).
    flat: Vec<f32>,
    /// `flat` transposed [C·H·W, N]: the B operand of the fc forward GEMM.
    flat_t: Vec<f32>,
    /// fc pre-bias output transposed [512, N] (forward), reused as ∂L/∂flat [N, C·H·W] (backward).
    tbuf: Vec<f32>,
    pub hidden: Vec<f32>,
    pub logits: Vec<f32>,
    pub values: Vec<f32>,
    dhidden: Vec<f32>,
    /// Per chunk: the conv layers' weight and bias gradient partials, [chunks][conv_grad_len].
    partials: Vec<f32>,
    /// A conv weight gradient in the permuted order [Cout, Kp], before `unpermute_weights`.
    gperm: Vec<f32>,
    pool: Pool,
}

/// Length of conv layer l's (w, b) gradient in the partials row.
fn conv_grad_len(s: &ConvShape) -> usize {
    s.out_channels * s.patch_len() + s.out_channels
}

/// The space-to-depth factor of a layer: conv1 (8×8, stride 4, on 84×84) is computed as a 2×2,
/// stride-1 conv on the input folded into 21×21 pixels of 4·4·4 = 64 channels, so its unfold
/// copies runs of 2·64 contiguous floats instead of gathering 8 strided bytes at a time, and the
/// uint8 → f32 conversion happens once per input byte instead of once per patch element (16×).
/// Only conv1 is folded (the later layers' inputs are produced NHWC, unfolded).
fn fold_of(s: &ConvShape) -> usize {
    if s.in_channels == crate::model::FRAME_STACK && s.stride > 1 && s.kernel % s.stride == 0 && s.in_hw % s.stride == 0 {
        s.stride
    } else {
        1
    }
}

/// The stride-1 (or unfolded) NHWC conv equivalent to `s` after space-to-depth by `fold_of(s)`.
fn folded(s: &ConvShape) -> ConvShape {
    let f = fold_of(s);
    let c = ConvShape {
        in_channels: s.in_channels * f * f,
        out_channels: s.out_channels,
        kernel: s.kernel / f,
        stride: s.stride / f,
        in_hw: s.in_hw / f,
        out_hw: s.out_hw,
    };
    debug_assert_eq!((c.in_hw - c.kernel) / c.stride + 1, c.out_hw);
    c
}

/// conv2 as the stride-1 conv on conv1's output folded by 2 that it runs as on AMX (`amx`
/// module: `NextSplit`, `pack_weights_folded`), when its shape allows: stride 2, even kernel,
/// conv1's even output as its input, whole tiles of channels.
fn conv2_folded(c1: &ConvShape, c2: &ConvShape) -> Option<ConvShape> {
    let ok = c2.stride == 2 && c2.kernel % 2 == 0 && c2.in_hw % 2 == 0 && c1.out_hw == c2.in_hw && c1.out_channels == c2.in_channels;
    let f = ConvShape { in_channels: c2.in_channels * 4, out_channels: c2.out_channels, kernel: c2.kernel / 2, stride: 1, in_hw: c2.in_hw / 2, out_hw: c2.out_hw };
    (ok && f.in_hw - f.kernel + 1 == f.out_hw && amx::supports(f.in_channels, f.out_channels, 1)).then_some(f)
}

/// Where PyTorch's weight w[o][c][ky][kx] sits in the row of the permuted weights [Cout, Kp]
/// that multiplies `folded(s)`'s NHWC unfold: patch order (by, bx, (c, iy, ix)) with
/// ky = by·f + iy, kx = bx·f + ix (f = 1: plain (ky, kx, c)).
fn perm_index(s: &ConvShape, c: usize, ky: usize, kx: usize) -> usize {
    let f = fold_of(s);
    let (kb, chs) = (s.kernel / f, s.in_channels * f * f);
    ((ky / f) * kb + kx / f) * chs + (c * f + ky % f) * f + kx % f
}

/// w [Cout, Cin, K, K] → wp [Cout, Kp] in `perm_index` order.
fn permute_weights(s: &ConvShape, w: &[f32], wp: &mut Vec<f32>) {
    let (k, kk) = (s.kernel, s.patch_len());
    wp.resize(w.len(), 0.0);
    for o in 0..s.out_channels {
        let (src, dst) = (&w[o * kk..][..kk], &mut wp[o * kk..][..kk]);
        for c in 0..s.in_channels {
            for ky in 0..k {
                for kx in 0..k {
                    dst[perm_index(s, c, ky, kx)] = src[(c * k + ky) * k + kx];
                }
            }
        }
    }
}

/// The inverse of `permute_weights`: wp [Cout, Kp] → w.
fn unpermute_weights(s: &ConvShape, wp: &[f32], w: &mut [f32]) {
    let (k, kk) = (s.kernel, s.patch_len());
    for o in 0..s.out_channels {
        let (src, dst) = (&wp[o * kk..][..kk], &mut w[o * kk..][..kk]);
        for c in 0..s.in_channels {
            for ky in 0..k {
                for kx in 0..k {
                    dst[(c * k + ky) * k + kx] = src[perm_index(s, c, ky, kx)];
                }
            }
        }
    }
}

/// src [rows, cols] → dst [cols, rows].
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut Vec<f32>) {
    dst.resize(rows * cols, 0.0);
    for (j, d) in dst.chunks_exact_mut(rows).enumerate() {
        for (i, v) in d.iter_mut().enumerate() {
            *v = src[i * cols + j];
        }
    }
}

/// One observation [C, H, W] uint8 → f32 ÷ 255 (exactly the generic path's input scaling),
/// space-to-depth by f into NHWC [H/f, W/f, (c, iy, ix)] = `folded(s)`'s input layout.
fn space_to_depth_u8(s: &ConvShape, x: &[u8], out: &mut [f32]) {
    let scale = (1.0f64 / 255.0) as f32;
    #[cfg(target_arch = "x86_64")]
    if fold4_avx512_applies(s, x.len(), out.len()) {
        // SAFETY: AVX-512F present; shapes and lengths checked by fold4_avx512_applies.
        unsafe { fold4_avx512::<false>(s.in_channels, s.in_hw, x.as_ptr(), out.as_mut_ptr().cast(), scale) };
        return;
    }
    space_to_depth(s, x, out, |b| b as f32 * scale);
}

/// The same fold of the raw bytes as bfloat16 bits (exact: bytes have 8 significant bits), the
/// input of conv1 on AMX, which applies the 1/255 after its sums; `out` holds
/// `amx::input_rows` pixels, the ones past the image zeroed.
fn space_to_depth_bf16<'a>(s: &ConvShape, x: &[u8], out: &'a mut amx::AlignedBf16) -> &'a [u16] {
    let f = folded(s);
    let len = amx::input_rows(f.in_hw, f.out_hw, f.kernel) * f.in_channels;
    let (image, pad) = out.slice_mut(len).split_at_mut(f.in_len());
    pad.iter_mut().for_each(|v| *v = 0);
    #[cfg(target_arch = "x86_64")]
    if fold4_avx512_applies(s, x.len(), image.len()) {
        // SAFETY: AVX-512F present; shapes and lengths checked by fold4_avx512_applies.
        unsafe { fold4_avx512::<true>(s.in_channels, s.in_hw, x.as_ptr(), image.as_mut_ptr().cast(), 1.0) };
        return out.slice(len);
    }
    space_to_depth(s, x, image, bf16_of_byte);
    out.slice(len)
}

/// A byte's f32 has its low 16 bits zero: the bf16 is its top half, exactly.
fn bf16_of_byte(b: u8) -> u16 {
    ((b as f32).to_bits() >> 16) as u16
}

/// Whether `fold4_avx512` runs: fold 4 of one whole observation, on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
fn fold4_avx512_applies(s: &ConvShape, x_len: usize, out_len: usize) -> bool {
    fold_of(s) == 4 && x_len == s.in_len() && out_len == s.in_len() && !FOLD_PORTABLE.with(|p| p.get()) && std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Tests: fold with the portable loop on this thread.
    static FOLD_PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `space_to_depth` by 4 with AVX-512: for each folded pixel and input channel, the 4 × 4 bytes
/// (4 rows of 4) become one vector of 16 values stored contiguously — f32 × `scale`, or bf16
/// bits (`BF16`) — where the portable loop writes 4 scattered groups of 4. Same values bit for
/// bit (tested). `out` is f32 or u16 elements, `s.in_len()` of them, laid out as the portable
/// loop's.
///
/// # Safety
/// AVX-512F present; x holds cin·hw·hw bytes, out as many elements of the chosen type; hw % 4 == 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fold4_avx512<const BF16: bool>(cin: usize, hw: usize, x: *const u8, out: *mut u8, scale: f32) {
    use std::arch::x86_64::*;
    let (hb, chs) = (hw / 4, cin * 16);
    let vscale = _mm512_set1_ps(scale);
    for yb in 0..hb {
        for c in 0..cin {
            let row = |iy: usize| x.add((c * hw + yb * 4 + iy) * hw);
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            for xb in 0..hb {
                let word = |r: *const u8| (r.add(4 * xb) as *const i32).read_unaligned();
                // Lane iy holds row iy's 4 bytes: byte order iy·4 + ix, the fold's channel order.
                let v = _mm_set_epi32(word(r3), word(r2), word(r1), word(r0));
                let f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
                let at = (yb * hb + xb) * chs + c * 16;
                if BF16 {
                    let h = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(f)));
                    _mm256_storeu_si256(out.add(at * 2).cast(), h);
                } else {
                    _mm512_storeu_ps(out.add(at * 4).cast(), _mm512_mul_ps(f, vscale));
                }
            }
        }
    }
}

/// Fold one observation by `fold_of(s)`, converting each byte with `cvt`.
fn space_to_depth<T: Copy>(s: &ConvShape, x: &[u8], out: &mut [T], cvt: impl Fn(u8) -> T) {
    let (f, hw) = (fold_of(s), s.in_hw);
    let (hb, chs) = (hw / f, s.in_channels * f * f);
    if f == 4 {
        return space_to_depth_fixed::<4, T>(s, x, out, cvt);
    }
    for c in 0..s.in_channels {
        for y in 0..hw {
            let src = &x[(c * hw + y) * hw..][..hw];
            let (yb, iy) = (y / f, y % f);
            for xb in 0..hb {
                let dst = &mut out[(yb * hb + xb) * chs + (c * f + iy) * f..][..f];
                for (d, &b) in dst.iter_mut().zip(&src[xb * f..][..f]) {
                    *d = cvt(b);
                }
            }
        }
    }
}

/// `space_to_depth` for a fold known at compile time (conv1's 4): each group of F bytes
/// becomes F values with fixed-size loads and stores, which the compiler vectorises.
fn space_to_depth_fixed<const F: usize, T: Copy>(s: &ConvShape, x: &[u8], out: &mut [T], cvt: impl Fn(u8) -> T) {
    let hw = s.in_hw;
    let (hb, chs) = (hw / F, s.in_channels * F * F);
    for c in 0..s.in_channels {
        for y in 0..hw {
            let src = &x[(c * hw + y) * hw..][..hb * F];
            let row = &mut out[(y / F) * hb * chs + (c * F + y % F) * F..];
            for (xb, q) in src.chunks_exact(F).enumerate() {
                let q: &[u8; F] = q.try_into().expect("chunks_exact(F)");
                let d: &mut [T; F] = (&mut row[xb * chs..][..F]).try_into().expect("F values");
                for (d, &b) in d.iter_mut().zip(q) {
                    *d = cvt(b);
                }
            }
        }
    }
}

/// Unfold NHWC samples (the tests' model of what `Gather` reads in place): cols[(i·P + p)][(ky·K + kx)·Cin + c] = x[i][oy·s+ky][ox·s+kx][c].
#[cfg(test)]
fn im2col_nhwc(s: &ConvShape, x: &[f32], cols: &mut [f32]) {
    let (k, st, hw, ohw, cin, kk) = (s.kernel, s.stride, s.in_hw, s.out_hw, s.in_channels, s.patch_len());
    let n = x.len() / s.in_len();
    for i in 0..n {
        let xs = &x[i * s.in_len()..][..s.in_len()];
        for oy in 0..ohw {
            for ox in 0..ohw {
                let row = &mut cols[((i * ohw + oy) * ohw + ox) * kk..][..kk];
                for ky in 0..k {
                    // kx = 0..K are K neighbouring pixels: one contiguous run of K·Cin floats.
                    let src = &xs[((oy * st + ky) * hw + ox * st) * cin..][..k * cin];
                    row[ky * k * cin..][..k * cin].copy_from_slice(src);
                }
            }
        }
    }
}

/// The adjoint of `im2col_nhwc`: dx = Σ over the patches that read each element of dcols.
fn col2im_nhwc(s: &ConvShape, dcols: &[f32], dx: &mut [f32]) {
    let (k, st, hw, ohw, cin, kk) = (s.kernel, s.stride, s.in_hw, s.out_hw, s.in_channels, s.patch_len());
    let n = dx.len() / s.in_len();
    dx.iter_mut().for_each(|v| *v = 0.0);
    for i in 0..n {
        let xs = &mut dx[i * s.in_len()..][..s.in_len()];
        for oy in 0..ohw {
            for ox in 0..ohw {
                let row = &dcols[((i * ohw + oy) * ohw + ox) * kk..][..kk];
                for ky in 0..k {
                    let dst = &mut xs[((oy * st + ky) * hw + ox * st) * cin..][..k * cin];
                    dst.iter_mut().zip(&row[ky * k * cin..][..k * cin]).for_each(|(d, g)| *d += *g);
                }
            }
        }
    }
}

/// A conv layer on NHWC samples: y[rows, Cout] = max(0, unfold(x) · wt + b) as ONE implicit
/// GEMM that reads each unfold row in place (K runs of K·Cin floats, see `Gather`): no unfold
/// buffer is written (conv1's would be 16× its input), bias and ReLU happen in the epilogue.
/// `rows` receives the row table, `tmp` is the portable path's unfold buffer.
fn conv_nhwc_forward(rows: &mut Vec<usize>, tmp: &mut Vec<f32>, c: &ConvShape, x: &[f32], wt: &[f32], b: &[f32], y: &mut [f32]) {
    let g = gather_rows(rows, c, x.len() / c.in_len());
    gemm_gather(x, &g, wt, b, true, y, c.out_channels, tmp);
}

/// The unfold of n NHWC samples for conv `c` as a `Gather` (row table written into `rows`):
/// output pixel (i, oy, ox)'s patch is K runs of K·Cin floats, one input row apart.
fn gather_rows<'a>(rows: &'a mut Vec<usize>, c: &ConvShape, n: usize) -> Gather<'a> {
    let (k, st, hw, ohw, cin) = (c.kernel, c.stride, c.in_hw, c.out_hw, c.in_channels);
    rows.clear();
    for i in 0..n {
        for oy in 0..ohw {
            for ox in 0..ohw {
                rows.push(i * c.in_len() + (oy * st * hw + ox * st) * cin);
            }
        }
    }
    Gather { rows, seg: k * cin, nseg: k, seg_stride: hw * cin }
}

/// Weight-gradient partial of one chunk of NHWC samples `x`: pw[Cout, Kp] = dyᵀ · unfold(x),
/// the unfold read in place (`gemm_gather_b`), and pb[Cout] = Σ_rows dy.
fn conv_weight_grad(rows: &mut Vec<usize>, tmp: &mut Vec<f32>, c: &ConvShape, x: &[f32], dy: &[f32], pw: &mut [f32], pb: &mut [f32]) {
    let cout = c.out_channels;
    let g = gather_rows(rows, c, x.len() / c.in_len());
    gemm_gather_b(cout, dy, 1, cout, x, &g, pw, c.patch_len(), false, tmp);
    pb.iter_mut().for_each(|v| *v = 0.0);
    for row in dy.chunks_exact(cout) {
        pb.iter_mut().zip(row).for_each(|(a, g)| *a += *g);
    }
}

/// dy ← dy ⊙ [y > 0]
fn relu_mask(y: &[f32], dy: &mut [f32]) {
    // Branch-free select (vectorises); NaN in y masks like the reference's `!(v > 0)`.
    dy.iter_mut().zip(y).for_each(|(g, &v)| *g = if v > 0.0 { *g } else { 0.0 });
}

/// A linear head without activation: y[N, Out] = x[N, In] · w[Out, In]ᵀ + b, as dot products
/// (Out is the action count or 1: too narrow for a GEMM tile, and unlike the generic layer's
/// matrixmultiply call it allocates no packing buffers).
fn head_forward(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let (out_f, in_f) = (b.len(), w.len() / b.len());
    for (xr, yr) in x.chunks_exact(in_f).zip(y.chunks_exact_mut(out_f)) {
        for (o, v) in yr.iter_mut().enumerate() {
            *v = b[o] + dot(xr, &w[o * in_f..][..in_f]);
        }
    }
}

/// Σ a[l]·b[l] in 16 interleaved partial sums (vectorised), then a fixed pairwise tree.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0] + tail
}

/// Gradients of `head_forward` from dy [N, Out]: dw = dyᵀ·x, db = Σ dy, dx (+)= dy·w.
fn head_backward(x: &[f32], w: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32], dx: &mut [f32], accumulate: bool) {
    let (out_f, in_f) = (db.len(), w.len() / db.len());
    let n = dy.len() / out_f;
    gemm(out_f, n, in_f, dy, 1, out_f, x, in_f, dw, in_f, false);
    for (o, v) in db.iter_mut().enumerate() {
        *v = (0..n).map(|i| dy[i * out_f + o]).sum();
    }
    gemm(n, out_f, in_f, dy, out_f, 1, w, in_f, dx, in_f, accumulate);
}

fn resize(v: &mut Vec<f32>, len: usize) {
    v.resize(len, 0.0);
}

impl FastNet {
    /// Forward pass for one agent: `frames` [N, 4, 84, 84] uint8 → logits [N, A], values [N]
    /// (and every activation the backward needs).
    pub fn forward(&mut self, spec: &NetSpec, layout: &ParamLayout, params: &[f32], frames: &[u8]) {
        let n = frames.len() / OBS_BYTES;
        self.forward_rows(spec, layout, params, frames, 0, n);
    }

    /// Forward on `frames` (m observations) as samples `row0..row0 + m` of a batch of `total`,
    /// keeping the other samples' activations: acting on a segment step by step this way leaves
    /// the learner's forward over the whole segment done (`CpuBackend::act_segment_step`). Every
    /// output is bit-identical to the whole batch's `forward`: each element's sum runs over its
    /// own reduction in a fixed order, whatever the batch, the rows around it or the chunking
    /// (tested below on ragged slices).
    pub fn forward_rows(&mut self, spec: &NetSpec, layout: &ParamLayout, params: &[f32], frames: &[u8], row0: usize, total: usize) {
        assert_eq!(params.len(), layout.total, "forward: parameter count");
        let n = frames.len() / OBS_BYTES;
        assert_eq!(frames.len(), n * OBS_BYTES, "forward: frames must be whole observations");
        assert!(row0 + n <= total, "forward: samples {row0}..{} of a batch of {total}", row0 + n);
        let [c1, c2, c3] = &spec.convs;
        assert_eq!(c1.in_len(), OBS_BYTES, "forward: conv1 reads one observation");
        self.n = total;
        let view = |i: usize| layout.view(params, i);
        let same_shapes = self.wshape == Some(spec.convs);
        let f1 = folded(c1);
        let use_amx = !self.no_amx && fold_of(c1) > 1 && amx::supports(f1.in_channels, f1.out_channels, f1.stride) && amx::enabled();
        let f2 = conv2_folded(c1, c2).filter(|_| use_amx);
        for l in 0..3 {
            let w = view(tensor::CONV_W[l]);
            let bits: &[u32] = bytemuck::cast_slice(w);
            let stale = !same_shapes || self.wkey[l] != bits;
            if stale {
                permute_weights(&spec.convs[l], w, &mut self.wperm[l]);
                transpose(&self.wperm[l], spec.convs[l].out_channels, spec.convs[l].patch_len(), &mut self.wt[l]);
                self.wkey[l].clear();
                self.wkey[l].extend_from_slice(bits);
            }
            if l == 0 && use_amx && stale {
                amx::pack_weights(&self.wperm[0], f1.out_channels, f1.patch_len(), &mut self.w1_amx);
            }
            if l == 1 && f2.is_some() && stale {
                let c = &spec.convs[1];
                amx::pack_weights_folded(w, c.out_channels, c.in_channels, c.kernel, &mut self.w2_tmp, &mut self.w2_amx);
            }
        }
        self.wshape = Some(spec.convs);
        for (buf, c) in self.conv.iter_mut().zip(&spec.convs) {
            resize(buf, total * c.out_len());
        }
        resize(&mut self.flat, total * c3.out_len());
        let (wperm, pool) = (&self.wt, &self.pool);
        let w1_amx = self.w1_amx.slice(if use_amx { amx::packed_len(f1.out_channels, f1.patch_len()) } else { 0 });
        let w2_amx = self.w2_amx.slice(f2.map_or(0, |f| amx::packed_len(f.out_channels, f.patch_len())));
        let [y1, y2, y3] = &mut self.conv;
        let rows_of = |len: usize| row0 * len..(row0 + n) * len;
        let (r1, r2, r3) = (rows_of(c1.out_len()), rows_of(c2.out_len()), rows_of(c3.out_len()));
        // conv1 → conv3 for each chunk of samples, in one task.
        y1[r1].par_chunks_mut(CHUNK * c1.out_len())
            .zip(y2[r2].par_chunks_mut(CHUNK * c2.out_len()))
            .zip(y3[r3.clone()].par_chunks_mut(CHUNK * c3.out_len()))
            .zip(self.flat[r3].par_chunks_mut(CHUNK * c3.out_len()))
            .zip(frames.par_chunks(CHUNK * OBS_BYTES))
            .for_each(|((((y1, y2), y3), flat), frames)| {
                let mut s = pool.take();
                let Scratch { xs, rows, tmp, xb, x2, ctiles, .. } = &mut s;
                if use_amx {
                    // Exact products of the bytes and the weights' bf16 split, ÷255 once per sum;
                    // with conv2 on AMX too, conv1's epilogue also writes conv2's folded split
                    // input, and conv2 sums the six exact products of the splits.
                    let scale = (1.0f64 / 255.0) as f32;
                    let len2 = f2.map_or(0, |f| amx::input_rows(f.in_hw, f.out_hw, f.kernel) * f.in_channels);
                    let frames = frames.chunks_exact(OBS_BYTES);
                    for ((x, y1), y2) in frames.zip(y1.chunks_exact_mut(c1.out_len())).zip(y2.chunks_exact_mut(c2.out_len())) {
                        let xb = space_to_depth_bf16(c1, x, xb);
                        let [h, m, l] = x2;
                        let next = f2.map(|f2| {
                            let mut parts = [h.slice_mut(len2), m.slice_mut(len2), l.slice_mut(len2)];
                            for part in parts.iter_mut() {
                                part[f2.in_len()..].iter_mut().for_each(|v| *v = 0);
                            }
                            amx::NextSplit(parts)
                        });
                        let (cin, cout, kf) = (f1.in_channels, f1.out_channels, f1.kernel);
                        amx::conv_forward(amx::Input::Exact(xb), w1_amx, cin, cout, f1.in_hw, f1.out_hw, kf, scale, view(tensor::CONV_B[0]), y1, next, ctiles);
                        if let Some(f2) = f2 {
                            let parts = [h.slice(len2), m.slice(len2), l.slice(len2)];
                            let (cin, cout, kf) = (f2.in_channels, f2.out_channels, f2.kernel);
                            amx::conv_forward(amx::Input::Split(parts), w2_amx, cin, cout, f2.in_hw, f2.out_hw, kf, 1.0, view(tensor::CONV_B[1]), y2, None, ctiles);
                        }
                    }
                } else {
                    resize(xs, frames.len() / OBS_BYTES * f1.in_len());
                    for (x, xs) in frames.chunks_exact(OBS_BYTES).zip(xs.chunks_exact_mut(f1.in_len())) {
                        space_to_depth_u8(c1, x, xs);
                    }
                    conv_nhwc_forward(rows, tmp, &f1, xs, &wperm[0], view(tensor::CONV_B[0]), y1);
                }
                if f2.is_none() {
                    conv_nhwc_forward(rows, tmp, c2, y1, &wperm[1], view(tensor::CONV_B[1]), y2);
                }
                conv_nhwc_forward(rows, tmp, c3, y2, &wperm[2], view(tensor::CONV_B[2]), y3);
                // NHWC → PyTorch's flatten order (c, y, x).
                let (p3, co3) = (c3.out_pixels(), c3.out_channels);
                for (ys, fs) in y3.chunks_exact(c3.out_len()).zip(flat.chunks_exact_mut(c3.out_len())) {
                    for p in 0..p3 {
                        for c in 0..co3 {
                            fs[c * p3 + p] = ys[p * co3 + c];
                        }
                    }
                }
                pool.give(s);
            });
        // fc, split over output features: hᵀ[o, N] = W[o, :] · flatᵀ, then + b, ReLU, transpose.
        let (hid, f) = (spec.hidden, c3.out_len());
        let (wfc, bfc) = (view(tensor::FC_W), view(tensor::FC_B));
        resize(&mut self.tbuf, hid * n);
        transpose(&self.flat[row0 * f..(row0 + n) * f], n, f, &mut self.flat_t);
        let flat_t = &self.flat_t;
        self.tbuf.par_chunks_mut(FC_TASK * n).enumerate().for_each(|(t, ht)| {
            let o0 = t * FC_TASK;
            let rows = ht.len() / n.max(1);
            gemm(rows, f, n, &wfc[o0 * f..], f, 1, flat_t, n, ht, n, false);
        });
        resize(&mut self.hidden, total * hid);
        let tbuf = &self.tbuf;
        let hidden = &mut self.hidden[row0 * hid..(row0 + n) * hid];
        hidden.par_chunks_mut(hid).enumerate().for_each(|(i, h)| {
            for (o, v) in h.iter_mut().enumerate() {
                *v = (bfc[o] + tbuf[o * n + i]).max(0.0);
            }
        });
        let a = spec.actions;
        resize(&mut self.logits, total * a);
        resize(&mut self.values, total);
        let hidden = &self.hidden[row0 * hid..(row0 + n) * hid];
        head_forward(hidden, view(tensor::ACTOR_W), view(tensor::ACTOR_B), &mut self.logits[row0 * a..(row0 + n) * a]);
        head_forward(hidden, view(tensor::CRITIC_W), view(tensor::CRITIC_B), &mut self.values[row0..row0 + n]);
    }

    /// Backward pass after `forward` on the same parameters and frames. `dlogits` [N, A] and
    /// `dvalues` [N] are ∂L/∂ of the heads' outputs; `grads` (layout-shaped) is written.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self, spec: &NetSpec, layout: &ParamLayout, params: &[f32], frames: &[u8],
        dlogits: &[f32], dvalues: &[f32], grads: &mut [f32],
    ) {
        let n = self.n;
        assert_eq!(frames.len(), n * OBS_BYTES, "backward: frames differ from the forward's");
        assert_eq!(grads.len(), layout.total, "backward: gradient buffer size");
        assert_eq!(dlogits.len(), n * spec.actions, "backward: dlogits size");
        assert_eq!(dvalues.len(), n, "backward: dvalues size");
        let view = |i: usize| layout.view(params, i);
        let mut g = split_tensors(layout, grads);
        let [c1, c2, c3] = &spec.convs;
        let hid = spec.hidden;
        // Heads (tiny); hidden receives the sum of both heads' gradients (actor, then + critic).
        resize(&mut self.dhidden, n * hid);
        {
            let (gw, gb) = two(&mut g, tensor::ACTOR_W, tensor::ACTOR_B);
            head_backward(&self.hidden, view(tensor::ACTOR_W), dlogits, gw, gb, &mut self.dhidden, false);
        }
        {
            let (gw, gb) = two(&mut g, tensor::CRITIC_W, tensor::CRITIC_B);
            head_backward(&self.hidden, view(tensor::CRITIC_W), dvalues, gw, gb, &mut self.dhidden, true);
        }
        let hidden = &self.hidden;
        self.dhidden.par_chunks_mut(hid).zip(hidden.par_chunks(hid)).for_each(|(d, h)| relu_mask(h, d));
        let dh: &[f32] = &self.dhidden;
        let f = c3.out_len();
        let (wfc, flat) = (view(tensor::FC_W), &self.flat);
        {
            // dW[o, :] = Σ_i dh[i, o] · flat[i, :], per task a block of output rows (whole sums).
            let (gw, gb) = two(&mut g, tensor::FC_W, tensor::FC_B);
            gw.par_chunks_mut(FC_TASK * f).enumerate().for_each(|(t, dwc)| {
                let rows = dwc.len() / f;
                gemm(rows, n, f, &dh[t * FC_TASK..], 1, hid, flat, f, dwc, f, false);
            });
            for (o, v) in gb.iter_mut().enumerate() {
                *v = (0..n).map(|i| dh[i * hid + o]).sum();
            }
        }
        // ∂L/∂flat [N, F] = dh · W, per task a block of samples.
        resize(&mut self.tbuf, n * f);
        self.tbuf.par_chunks_mut(FC_ROWS * f).zip(dh.par_chunks(FC_ROWS * hid)).for_each(|(dfl, dhc)| {
            gemm(dhc.len() / hid, hid, f, dhc, hid, 1, wfc, f, dfl, f, false);
        });
        // The convs, conv3 → conv1, per chunk of samples; weight gradients as per-chunk partials.
        let glen = [conv_grad_len(c1), conv_grad_len(c2), conv_grad_len(c3)];
        let row_len: usize = glen.iter().sum();
        let chunks = n.div_ceil(CHUNK);
        resize(&mut self.partials, chunks * row_len);
        let (dft, wperm, pool) = (&self.tbuf, &self.wperm, &self.pool);
        let [y1, y2, y3] = &self.conv;
        self.partials.par_chunks_mut(row_len).enumerate().for_each(|(ci, part)| {
            let s0 = ci * CHUNK;
            let cn = CHUNK.min(n - s0);
            let mut s = pool.take();
            let Scratch { xs, rows: gather, tmp, dcols, dy, .. } = &mut s;
            let (p1, rest) = part.split_at_mut(glen[0]);
            let (p2, p3) = rest.split_at_mut(glen[1]);
            let parts = [p1, p2, p3];
            let ys = [
                &y1[s0 * c1.out_len()..][..cn * c1.out_len()],
                &y2[s0 * c2.out_len()..][..cn * c2.out_len()],
                &y3[s0 * c3.out_len()..][..cn * c3.out_len()],
            ];
            for (d, c) in dy.iter_mut().zip(&spec.convs) {
                resize(d, cn * c.out_len());
            }
            // conv3's output gradient from ∂L/∂flat: dy3[i][p][c] = dfl[s0 + i][c·P + p].
            let (p3, co3) = (c3.out_pixels(), c3.out_channels);
            for i in 0..cn {
                for p in 0..p3 {
                    for c in 0..co3 {
                        dy[2][(i * p3 + p) * co3 + c] = dft[(s0 + i) * f + c * p3 + p];
                    }
                }
            }
            relu_mask(ys[2], &mut dy[2]);
            for l in (1..3).rev() {
                let c = &spec.convs[l];
                let rows = cn * c.out_pixels();
                let (pw, pb) = parts[l].split_at_mut(c.out_channels * c.patch_len());
                conv_weight_grad(gather, tmp, c, ys[l - 1], &dy[l], pw, pb);
                // dcols = dy · W'; fold back into the lower layer's output gradient.
                resize(dcols, rows * c.patch_len());
                let kp = c.patch_len();
                gemm(rows, c.out_channels, kp, &dy[l], c.out_channels, 1, &wperm[l], kp, dcols, kp, false);
                let lo = &mut dy[..l];
                col2im_nhwc(c, dcols, &mut lo[l - 1]);
                relu_mask(ys[l - 1], &mut lo[l - 1]);
            }
            let (pw, pb) = parts[0].split_at_mut(c1.out_channels * c1.patch_len());
            let frames = &frames[s0 * OBS_BYTES..][..cn * OBS_BYTES];
            let f1 = folded(c1);
            resize(xs, cn * f1.in_len());
            for (x, xs) in frames.chunks_exact(OBS_BYTES).zip(xs.chunks_exact_mut(f1.in_len())) {
                space_to_depth_u8(c1, x, xs);
            }
            conv_weight_grad(gather, tmp, &f1, xs, &dy[0], pw, pb);
            pool.give(s);
        });
        // Sum the partials in chunk order, then undo the weight permutation.
        let partials = &self.partials;
        let mut off = 0;
        for (l, c) in spec.convs.iter().enumerate() {
            let wl = c.out_channels * c.patch_len();
            let (gw, gb) = two(&mut g, tensor::CONV_W[l], tensor::CONV_B[l]);
            let sum_into = |dst: &mut [f32], start: usize| {
                dst.par_chunks_mut(4096).enumerate().for_each(|(t, d)| {
                    let j0 = start + t * 4096;
                    d.iter_mut().for_each(|v| *v = 0.0);
                    for ci in 0..chunks {
                        let src = &partials[ci * row_len + j0..][..d.len()];
                        d.iter_mut().zip(src).for_each(|(a, b)| *a += *b);
                    }
                });
            };
            resize(&mut self.gperm, wl);
            sum_into(&mut self.gperm, off);
            unpermute_weights(c, &self.gperm, gw);
            sum_into(gb, off + wl);
            off += glen[l];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::net::{backward, forward, Activations, BackwardScratch};
    use super::*;
    use crate::model::{init_params, NetPreset};
    use crate::rng::{PhiloxStream, Purpose};

    fn case(preset: NetPreset, n: usize) -> (NetSpec, ParamLayout, Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>) {
        let spec = NetSpec::new(preset, 5);
        let layout = spec.layout();
        let mut r = PhiloxStream::new(11, n as u64, Purpose::Init);
        // Non-zero biases, so the bias paths are exercised.
        let mut params = init_params(&spec, 4);
        params.iter_mut().for_each(|v| *v += (r.next_normal() * 0.01) as f32);
        let frames: Vec<u8> = (0..n * OBS_BYTES).map(|_| r.below(256) as u8).collect();
        let dl: Vec<f32> = (0..n * spec.actions).map(|_| r.next_normal() as f32).collect();
        let dv: Vec<f32> = (0..n).map(|_| r.next_normal() as f32).collect();
        (spec, layout, params, frames, dl, dv)
    }

    fn fast(threads: usize, c: &(NetSpec, ParamLayout, Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>)) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        fast_on(threads, true, c)
    }

    /// `fast` with conv1 and conv2 on AMX where the machine has it (`amx`), or on the f32 path.
    fn fast_on(threads: usize, amx: bool, c: &(NetSpec, ParamLayout, Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>)) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (spec, layout, params, frames, dl, dv) = c;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut net = FastNet { no_amx: !amx, ..FastNet::default() };
            let mut grads = vec![f32::NAN; layout.total];
            // Twice, so stale scratch from the first call would show.
            for _ in 0..2 {
                net.forward(spec, layout, params, frames);
                net.backward(spec, layout, params, frames, dl, dv, &mut grads);
            }
            (net.logits.clone(), net.values.clone(), grads)
        })
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().map(|v| v.abs() as f64).fold(0.0, f64::max).max(1e-30);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (*g as f64 - *w as f64).abs();
            assert!(err <= rel * scale, "{what}[{i}]: fast {g} vs reference {w} (max |ref| {scale})");
        }
    }

    /// Largest |got − want| relative to max |want|.
    fn rel_err(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-30);
        got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max) / scale
    }

    /// Both forward paths (conv1 and conv2 on AMX where available, and all f32) against the
    /// generic network in f64: the AMX path must be as accurate as the f32 one.
    #[test]
    fn the_amx_forward_is_as_accurate_as_f32() {
        for (preset, n) in [(NetPreset::Gala, 7), (NetPreset::Nature, 5)] {
            let c = case(preset, n);
            let (spec, layout, params, frames, dl, dv) = &c;
            let p64: Vec<f64> = params.iter().map(|&v| v as f64).collect();
            let mut acts = Activations::default();
            forward(spec, layout, &p64, frames, &mut acts);
            let mut want = vec![f64::NAN; layout.total];
            let (dl64, dv64): (Vec<f64>, Vec<f64>) = (dl.iter().map(|&v| v as f64).collect(), dv.iter().map(|&v| v as f64).collect());
            backward(spec, layout, &p64, &acts, &dl64, &dv64, &mut want, &mut BackwardScratch::default());
            let errs = |amx: bool| {
                let (logits, values, grads) = fast_on(2, amx, &c);
                let g = layout.tensors.iter().map(|t| rel_err(&grads[t.range()], &want[t.range()])).fold(0.0, f64::max);
                (rel_err(&logits, &acts.logits), rel_err(&values, &acts.values), g)
            };
            let (f32_path, amx_path) = (errs(false), errs(true));
            eprintln!("{preset:?} (logits, values, grads): f32 path {f32_path:?}, amx path {amx_path:?} (AMX here: {})", amx::enabled());
            // The f32 path's own error against f64 reaches 1.3e-5 on Nature's value head
            // (cancellation over 512 products), 2.2e-6 on gradients.
            for (what, f, a, tol) in [("logits", f32_path.0, amx_path.0, 5e-5), ("values", f32_path.1, amx_path.1, 5e-5), ("grads", f32_path.2, amx_path.2, 2e-5)] {
                assert!(f <= tol && a <= tol, "{preset:?} {what}: f32 path {f:e}, amx path {a:e} vs f64 (tolerance {tol:e})");
                assert!(a <= 2.0 * f + 1e-7, "{preset:?} {what}: amx path {a:e} less accurate than the f32 path {f:e}");
            }
        }
    }

    /// The fast path computes the reference's function and gradients (both presets, a batch
    /// that is not a multiple of CHUNK), to f32 rounding. With conv1 in f32, as the reference
    /// computes it (x = b·(1/255) first): the AMX path is checked against f64 above.
    #[test]
    fn matches_the_generic_reference() {
        for (preset, n) in [(NetPreset::Gala, 7), (NetPreset::Nature, 5)] {
            let c = case(preset, n);
            let (spec, layout, params, frames, dl, dv) = &c;
            let mut acts = Activations::default();
            forward(spec, layout, params, frames, &mut acts);
            let mut want = vec![f32::NAN; layout.total];
            backward(spec, layout, params, &acts, dl, dv, &mut want, &mut BackwardScratch::default());
            let (logits, values, grads) = fast_on(2, false, &c);
            assert_close("logits", &logits, &acts.logits, 1e-5);
            assert_close("values", &values, &acts.values, 1e-5);
            for t in &layout.tensors {
                assert_close(&format!("{preset:?} grad {}", t.name), &grads[t.range()], &want[t.range()], 1e-4);
            }
        }
    }

    #[test]
    fn bit_identical_for_any_thread_count() {
        let c = case(NetPreset::Gala, 9);
        let one = fast(1, &c);
        let three = fast(3, &c);
        assert!(one.0 == three.0 && one.1 == three.1 && one.2 == three.2, "thread count changed the result");
    }

    #[test]
    fn a_batch_forwarded_slice_by_slice_is_bit_identical_to_one_forward() {
        // Slices of 16 (whole chunks) and ragged ones of 3 and 5, as acting on a segment step
        // by step with 16, 3 or 5 envs fills it (CpuBackend::act_segment_step).
        for (preset, n) in [(NetPreset::Gala, 32), (NetPreset::Gala, 15), (NetPreset::Nature, 10)] {
            let (spec, layout, params, frames, ..) = case(preset, n);
            let mut whole = FastNet::default();
            whole.forward(&spec, &layout, &params, &frames);
            for slice in [16, 5, 3] {
                let mut parts = FastNet::default();
                for row0 in (0..n).step_by(slice).collect::<Vec<_>>().into_iter().rev() {
                    let m = slice.min(n - row0);
                    parts.forward_rows(&spec, &layout, &params, &frames[row0 * OBS_BYTES..(row0 + m) * OBS_BYTES], row0, n);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for (what, a, b) in [
                    ("conv1", &whole.conv[0], &parts.conv[0]),
                    ("conv2", &whole.conv[1], &parts.conv[1]),
                    ("conv3", &whole.conv[2], &parts.conv[2]),
                    ("flat", &whole.flat, &parts.flat),
                    ("hidden", &whole.hidden, &parts.hidden),
                    ("logits", &whole.logits, &parts.logits),
                    ("values", &whole.values, &parts.values),
                ] {
                    assert!(bits(a) == bits(b), "{preset:?} n={n} slices of {slice}: {what} differs");
                }
            }
        }
    }

    /// The AVX-512 fold writes the portable loop's values bit for bit (f32 and bf16).
    #[test]
    fn the_vector_fold_equals_the_portable_one() {
        let spec = NetSpec::new(NetPreset::Gala, 6);
        let c1 = &spec.convs[0];
        let mut r = PhiloxStream::new(3, 0, Purpose::Init);
        let x: Vec<u8> = (0..OBS_BYTES).map(|_| r.below(256) as u8).collect();
        let run = |portable: bool| {
            #[cfg(target_arch = "x86_64")]
            FOLD_PORTABLE.with(|p| p.set(portable));
            let mut f = vec![f32::NAN; c1.in_len()];
            space_to_depth_u8(c1, &x, &mut f);
            let mut b = amx::AlignedBf16::default();
            let bits = space_to_depth_bf16(c1, &x, &mut b).to_vec();
            (f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits)
        };
        let (vector, portable) = (run(false), run(true));
        assert!(vector == portable, "the AVX-512 fold differs from the portable one");
        let scale = (1.0f64 / 255.0) as f32;
        assert_eq!(portable.0[1], (x[1] as f32 * scale).to_bits(), "pixel (0, 0), channel 1 is byte 1");
        assert_eq!(portable.1[64 + 5], bf16_of_byte(x[84 + 4 + 1]), "pixel (0, 1), channel (c 0, iy 1, ix 1)");
    }

    #[test]
    fn weight_permutation_round_trips() {
        let s = ConvShape::new(3, 2, 3, 1, 5);
        assert_eq!(fold_of(&ConvShape::new(32, 64, 4, 2, 20)), 1, "only conv1 is folded");
        let w: Vec<f32> = (0..s.out_channels * s.patch_len()).map(|i| i as f32).collect();
        let mut wp = Vec::new();
        permute_weights(&s, &w, &mut wp);
        assert_ne!(wp, w);
        // w[o=1][c=2][ky=1][kx=0] sits at (ky·K + kx)·Cin + c in the permuted row.
        assert_eq!(wp[27 + 3 * 3 + 2], w[27 + 2 * 9 + 3]);
        let mut back = vec![0.0; w.len()];
        unpermute_weights(&s, &wp, &mut back);
        assert_eq!(back, w);
        // A folded layer (8×8 stride 4 → 2×2 stride 1 on 4·4·C channels): a bijection too.
        let s = ConvShape::new(4, 2, 8, 4, 84);
        assert_eq!((fold_of(&s), folded(&s).kernel, folded(&s).in_channels, folded(&s).in_hw), (4, 2, 64, 21));
        let mut seen = vec![false; s.patch_len()];
        for c in 0..4 {
            for ky in 0..8 {
                for kx in 0..8 {
                    let i = perm_index(&s, c, ky, kx);
                    assert!(!seen[i], "perm_index not injective at ({c}, {ky}, {kx})");
                    seen[i] = true;
                }
            }
        }
        let w: Vec<f32> = (0..s.out_channels * s.patch_len()).map(|i| i as f32).collect();
        permute_weights(&s, &w, &mut wp);
        let mut back = vec![0.0; w.len()];
        unpermute_weights(&s, &wp, &mut back);
        assert_eq!(back, w);
    }

    /// Space-to-depth then the folded unfold reads the same pixels as the plain conv1 unfold.
    #[test]
    fn folded_conv1_unfold_matches_the_plain_one() {
        let s = ConvShape::new(4, 32, 8, 4, 84);
        let f = folded(&s);
        let mut r = PhiloxStream::new(2, 0, Purpose::Init);
        let x: Vec<u8> = (0..s.in_len()).map(|_| r.below(256) as u8).collect();
        let xf: Vec<f32> = x.iter().map(|&b| b as f32 * (1.0f64 / 255.0) as f32).collect();
        let mut plain = vec![0.0; s.patch_len() * s.out_pixels()];
        super::super::layers::im2col(&s, &xf, &mut plain);
        let mut xs = vec![0.0; f.in_len()];
        space_to_depth_u8(&s, &x, &mut xs);
        let mut cols = vec![0.0; f.patch_len() * f.out_pixels()];
        im2col_nhwc(&f, &xs, &mut cols);
        let p = s.out_pixels();
        for c in 0..4 {
            for ky in 0..8 {
                for kx in 0..8 {
                    for px in 0..p {
                        let want = plain[((c * 8 + ky) * 8 + kx) * p + px];
                        assert_eq!(cols[px * s.patch_len() + perm_index(&s, c, ky, kx)], want);
                    }
                }
            }
        }
    }
}
