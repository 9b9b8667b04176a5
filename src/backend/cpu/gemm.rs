//! The f32 GEMM of the fast path: C[m, n] (+)= A[m, k] · B[k, n], B and C row-major.
//!
//! Why not only matrixmultiply: it packs both operands on every call, and on this network's
//! shapes (im2col panels used once, 16-row fc batches against a 512×1568 weight matrix) the
//! packing costs about as much as the multiply. The AVX-512 kernel here reads A in place
//! (broadcasting one element per row and k, any strides) and B's rows directly (unit column
//! stride), so nothing is packed: the im2col buffer *is* the packed A. Each C element is one
//! accumulator lane summed over k in order, whatever the tiling, so results do not depend on
//! m, n or how callers split the work. CPUs without AVX-512F (or `force_portable`) get
//! matrixmultiply, the portable path; tests run both against a plain f64 product.

use super::real::Real;
use std::cell::Cell;

thread_local! {
    /// Per thread, so a test forcing the fallback cannot switch the path under another test.
    static PORTABLE_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Use the portable path on this thread even where AVX-512F is available (tests of the fallback).
pub fn force_portable(on: bool) {
    PORTABLE_ONLY.with(|p| p.set(on));
}

/// Whether `gemm` runs the AVX-512 kernel on this machine (the other path is matrixmultiply).
pub fn uses_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !PORTABLE_ONLY.with(|p| p.get()) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn check(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) {
    if rows > 0 && cols > 0 {
        let last = (rows - 1) * rs + (cols - 1) * cs;
        assert!(last < len, "gemm: {what} view {rows}x{cols} (rs {rs}, cs {cs}) exceeds slice of {len}");
    }
}

/// C[m, n] = A·B (accumulate = false) or C + A·B. A[i][l] = a[i·rsa + l·csa]; B[l][j] =
/// b[l·ldb + j]; C[i][j] = c[i·ldc + j].
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, k: usize, n: usize, a: &[f32], rsa: usize, csa: usize, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
    check(a.len(), m, k, rsa, csa, "A");
    check(b.len(), k, n, ldb, 1, "B");
    check(c.len(), m, n, ldc, 1, "C");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if uses_avx512() {
        // SAFETY: avx512f is present (checked above); the three views lie inside their slices
        // (checked above) and the kernel touches no element outside them (masked tails).
        unsafe { avx512::gemm(m, k, n, a.as_ptr(), rsa, csa, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, accumulate) };
        return;
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    f32::gemm(m, k, n, 1.0, a, rsa as isize, csa as isize, b, ldb as isize, 1, beta, c, ldc as isize, 1);
}

/// The A operand of an implicit-GEMM convolution, read in place from NHWC activations instead of
/// an unfolded copy: A[i][l] = x[rows[i] + (l / seg)·seg_stride + l % seg], k = nseg·seg. An
/// NHWC unfold row is K runs of K·Cin contiguous floats (one per kernel row, `seg_stride` = one
/// input row apart), so `rows` (each output pixel's first input float) says everything else.
pub struct Gather<'a> {
    pub rows: &'a [usize],
    pub seg: usize,
    pub nseg: usize,
    pub seg_stride: usize,
}

impl Gather<'_> {
    /// Panics (a caller's bug, like a bad slice index) unless every element it names lies in x.
    fn check(&self, x_len: usize, what: &str) {
        let span = self.nseg.saturating_sub(1) * self.seg_stride + self.seg;
        let last = self.rows.iter().max().copied().unwrap_or(0) + span;
        assert!(self.seg > 0 && self.nseg > 0 && last <= x_len, "{what}: rows reach {last}, input has {x_len}");
    }

    /// The unfold it reads in place, materialised into `out` [rows, nseg·seg] (the portable path).
    fn unfold(&self, x: &[f32], out: &mut Vec<f32>) {
        let k = self.seg * self.nseg;
        out.resize(self.rows.len() * k, 0.0);
        for (row, &r0) in out.chunks_exact_mut(k).zip(self.rows) {
            for (s, dst) in row.chunks_exact_mut(self.seg).enumerate() {
                dst.copy_from_slice(&x[r0 + s * self.seg_stride..][..self.seg]);
            }
        }
    }
}

/// C[i][j] = bias[j] + Σ_l A[i][l]·B[l][j] (then max(0, ·) if `relu`), A gathered from `x` by
/// `g`, B [k, n] row-major with ldb = n = bias.len(), C [m, n] with row stride ldc. Bit-identical
/// to unfolding A, setting C's rows to the bias and calling `gemm(.., accumulate = true)`, then
/// the ReLU: each element is the same FMA chain over l in order, plus the bias once at the end.
/// The portable path does exactly that, with `tmp` as the unfold buffer.
#[allow(clippy::too_many_arguments)]
pub fn gemm_gather(x: &[f32], g: &Gather, b: &[f32], bias: &[f32], relu: bool, c: &mut [f32], ldc: usize, tmp: &mut Vec<f32>) {
    let (m, n, k) = (g.rows.len(), bias.len(), g.seg * g.nseg);
    if m == 0 || n == 0 {
        return;
    }
    g.check(x.len(), "gemm_gather");
    check(b.len(), k, n, n, 1, "B");
    check(c.len(), m, n, ldc, 1, "C");
    #[cfg(target_arch = "x86_64")]
    if uses_avx512() {
        // SAFETY: avx512f is present; every A element read lies inside x (`Gather::check`), B and C
        // views were checked, and the kernel masks the column tail.
        unsafe {
            avx512_gather::gemm_gather(m, g.rows.as_ptr(), g.seg, g.nseg, g.seg_stride, x.as_ptr(), n, b.as_ptr(), bias.as_ptr(), relu, c.as_mut_ptr(), ldc)
        };
        return;
    }
    g.unfold(x, tmp);
    for i in 0..m {
        c[i * ldc..][..n].copy_from_slice(bias);
    }
    gemm(m, k, n, tmp, k, 1, b, n, c, ldc, true);
    if relu {
        for i in 0..m {
            c[i * ldc..][..n].iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// C[m, n] (+)= A[m, k] · B[k, n] with B gathered by `g` (B = the unfold, k = its rows, n = its
/// length): B[l][j] = x[rows[l] + (j / seg)·seg_stride + j % seg]. A conv's weight gradient
/// dW[Cout, Kp] = dyᵀ · unfold(x) reads its activations in place this way. Each element is one
/// FMA chain over l in order (as in `gemm` on the unfolded B, which the portable path runs, with
/// `tmp` as the unfold buffer). A[i][l] = a[i·rsa + l·csa]; C[i][j] = c[i·ldc + j].
#[allow(clippy::too_many_arguments)]
pub fn gemm_gather_b(
    m: usize, a: &[f32], rsa: usize, csa: usize, x: &[f32], g: &Gather, c: &mut [f32], ldc: usize, accumulate: bool, tmp: &mut Vec<f32>,
) {
    let (k, n) = (g.rows.len(), g.seg * g.nseg);
    if m == 0 || n == 0 {
        return;
    }
    g.check(x.len(), "gemm_gather_b");
    check(a.len(), m, k, rsa, csa, "A");
    check(c.len(), m, n, ldc, 1, "C");
    #[cfg(target_arch = "x86_64")]
    if uses_avx512() && g.seg % 16 == 0 && k > 0 {
        // SAFETY: avx512f is present; each 16-float vector of a B row lies inside one segment
        // (seg % 16 == 0), so every B read lies inside x (`Gather::check`); A and C were checked.
        unsafe {
            avx512_gather::gemm_gather_b(m, k, n, a.as_ptr(), rsa, csa, g.rows.as_ptr(), g.seg, g.seg_stride, x.as_ptr(), c.as_mut_ptr(), ldc, accumulate)
        };
        return;
    }
    g.unfold(x, tmp);
    gemm(m, k, n, a, rsa, csa, tmp, n, c, ldc, accumulate);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize, k: usize, n: usize, a: *const f32, rsa: usize, csa: usize, b: *const f32, ldb: usize,
        c: *mut f32, ldc: usize, accumulate: bool,
    ) {
        // Column blocks of up to 4 vectors of 16; rows per tile so that R·V ≤ 24 accumulators
        // (+ V B-vectors + 1 broadcast stay inside the 32 zmm registers).
        let nv = n.div_ceil(16);
        let mut jv = 0;
        while jv < nv {
            let v = (nv - jv).min(4);
            let j0 = jv * 16;
            match v {
                4 => block::<6, 4>(m, k, n, j0, a, rsa, csa, b, ldb, c, ldc, accumulate),
                3 => block::<8, 3>(m, k, n, j0, a, rsa, csa, b, ldb, c, ldc, accumulate),
                2 => block::<8, 2>(m, k, n, j0, a, rsa, csa, b, ldb, c, ldc, accumulate),
                _ => block::<8, 1>(m, k, n, j0, a, rsa, csa, b, ldb, c, ldc, accumulate),
            }
            jv += v;
        }
    }

    /// Columns j0 .. j0 + 16·V (masked at n) of C, all rows, R rows at a time. A tile's rows
    /// past m re-read row m − 1 (no branch in the k loop) and are not stored.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const V: usize>(
        m: usize, k: usize, n: usize, j0: usize, a: *const f32, rsa: usize, csa: usize, b: *const f32, ldb: usize,
        c: *mut f32, ldc: usize, accumulate: bool,
    ) {
        let mut masks = [0u16; V];
        for (v, mask) in masks.iter_mut().enumerate() {
            let rem = n.saturating_sub(j0 + 16 * v);
            *mask = if rem >= 16 { 0xFFFF } else { ((1u32 << rem) - 1) as u16 };
        }
        let mut i = 0;
        while i < m {
            let mut ap = [a; R];
            for (r, p) in ap.iter_mut().enumerate() {
                *p = a.add((i + r).min(m - 1) * rsa);
            }
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let mut bp = b.add(j0);
            for _ in 0..k {
                let mut bv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    bv[v] = _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v));
                }
                for r in 0..R {
                    let av = _mm512_set1_ps(*ap[r]);
                    ap[r] = ap[r].add(csa);
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                    }
                }
                bp = bp.add(ldb);
            }
            for (r, row) in acc.iter().enumerate().take((m - i).min(R)) {
                let cp = c.add((i + r) * ldc + j0);
                for v in 0..V {
                    let mut x = row[v];
                    if accumulate {
                        x = _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], cp.add(16 * v)), x);
                    }
                    _mm512_mask_storeu_ps(cp.add(16 * v), masks[v], x);
                }
            }
            i += R;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_gather {
    use std::arch::x86_64::*;

    /// See `super::gemm_gather`. Same tiling as `avx512::gemm`; each tile's R row pointers come
    /// from the row table and jump `seg_stride` between segments.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_gather(
        m: usize, rows: *const usize, seg: usize, nseg: usize, seg_stride: usize, x: *const f32, n: usize, b: *const f32,
        bias: *const f32, relu: bool, c: *mut f32, ldc: usize,
    ) {
        let nv = n.div_ceil(16);
        let mut jv = 0;
        while jv < nv {
            let v = (nv - jv).min(4);
            let j0 = jv * 16;
            let g = (m, rows, seg, nseg, seg_stride, x);
            match v {
                4 => block::<6, 4>(g, n, j0, b, bias, relu, c, ldc),
                3 => block::<8, 3>(g, n, j0, b, bias, relu, c, ldc),
                2 => block::<12, 2>(g, n, j0, b, bias, relu, c, ldc),
                _ => block::<12, 1>(g, n, j0, b, bias, relu, c, ldc),
            }
            jv += v;
        }
    }

    /// See `super::gemm_gather_b`: n = nseg·seg with seg % 16 == 0, so each B vector has its
    /// own base pointer (its segment's) plus the row offset of the current l.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_gather_b(
        m: usize, k: usize, n: usize, a: *const f32, rsa: usize, csa: usize, rows: *const usize, seg: usize, seg_stride: usize,
        x: *const f32, c: *mut f32, ldc: usize, accumulate: bool,
    ) {
        let nv = n / 16;
        let mut jv = 0;
        while jv < nv {
            let v = (nv - jv).min(3);
            let j0 = jv * 16;
            let g = (m, k, a, rsa, csa, rows, seg, seg_stride, x);
            match v {
                3 => block_b::<8, 3>(g, j0, c, ldc, accumulate),
                2 => block_b::<8, 2>(g, j0, c, ldc, accumulate),
                _ => block_b::<8, 1>(g, j0, c, ldc, accumulate),
            }
            jv += v;
        }
    }

    type GB = (usize, usize, *const f32, usize, usize, *const usize, usize, usize, *const f32);

    #[target_feature(enable = "avx512f")]
    unsafe fn block_b<const R: usize, const V: usize>(
        (m, k, a, rsa, csa, rows, seg, seg_stride, x): GB, j0: usize, c: *mut f32, ldc: usize, accumulate: bool,
    ) {
        let mut xb = [x; V];
        for (v, p) in xb.iter_mut().enumerate() {
            let j = j0 + 16 * v;
            *p = x.add((j / seg) * seg_stride + j % seg);
        }
        let mut i = 0;
        while i < m {
            let mut ap = [a; R];
            for (r, p) in ap.iter_mut().enumerate() {
                *p = a.add((i + r).min(m - 1) * rsa);
            }
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            for l in 0..k {
                let off = *rows.add(l);
                let mut bv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    bv[v] = _mm512_loadu_ps(xb[v].add(off));
                }
                for r in 0..R {
                    let av = _mm512_set1_ps(*ap[r]);
                    ap[r] = ap[r].add(csa);
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate().take((m - i).min(R)) {
                let cp = c.add((i + r) * ldc + j0);
                for v in 0..V {
                    let mut y = row[v];
                    if accumulate {
                        y = _mm512_add_ps(_mm512_loadu_ps(cp.add(16 * v)), y);
                    }
                    _mm512_storeu_ps(cp.add(16 * v), y);
                }
            }
            i += R;
        }
    }

    type G = (usize, *const usize, usize, usize, usize, *const f32);

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const V: usize>(
        (m, rows, seg, nseg, seg_stride, x): G, n: usize, j0: usize, b: *const f32, bias: *const f32, relu: bool,
        c: *mut f32, ldc: usize,
    ) {
        let mut masks = [0u16; V];
        let mut bias_v = [_mm512_setzero_ps(); V];
        for v in 0..V {
            let rem = n.saturating_sub(j0 + 16 * v);
            masks[v] = if rem >= 16 { 0xFFFF } else { ((1u32 << rem) - 1) as u16 };
            bias_v[v] = _mm512_maskz_loadu_ps(masks[v], bias.add(j0 + 16 * v));
        }
        let mut i = 0;
        while i < m {
            let mut base = [x; R];
            for (r, p) in base.iter_mut().enumerate() {
                *p = x.add(*rows.add((i + r).min(m - 1)));
            }
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let mut bp = b.add(j0);
            for s in 0..nseg {
                let mut ap = base;
                for p in ap.iter_mut() {
                    *p = p.add(s * seg_stride);
                }
                for _ in 0..seg {
                    let mut bv = [_mm512_setzero_ps(); V];
                    for v in 0..V {
                        bv[v] = _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v));
                    }
                    for r in 0..R {
                        let av = _mm512_set1_ps(*ap[r]);
                        ap[r] = ap[r].add(1);
                        for v in 0..V {
                            acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                        }
                    }
                    bp = bp.add(n);
                }
            }
            for (r, row) in acc.iter().enumerate().take((m - i).min(R)) {
                let cp = c.add((i + r) * ldc + j0);
                for v in 0..V {
                    let mut y = _mm512_add_ps(bias_v[v], row[v]);
                    if relu {
                        y = _mm512_max_ps(y, _mm512_setzero_ps());
                    }
                    _mm512_mask_storeu_ps(cp.add(16 * v), masks[v], y);
                }
            }
            i += R;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{PhiloxStream, Purpose};

    /// Both paths against an f64 product, on ragged shapes (row and column tails, every
    /// column-block width), strided A (transposed and not), fresh and accumulated C. Runs the
    /// AVX-512 kernel only where the CPU has it (the portable path everywhere).
    #[test]
    fn both_paths_match_a_plain_product() {
        let mut r = PhiloxStream::new(21, 0, Purpose::Init);
        let shapes = [(1, 1, 1), (7, 5, 3), (13, 33, 17), (6, 40, 64), (9, 3, 80), (25, 70, 50), (16, 1568, 16), (50, 12, 130)];
        let paths: &[bool] = if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f") { &[true, false] } else { &[false] };
        for &avx in paths {
            for &(m, k, n) in &shapes {
                for transposed_a in [false, true] {
                    for accumulate in [false, true] {
                        let a: Vec<f32> = (0..m * k).map(|_| r.next_normal() as f32).collect();
                        let ldb = n + 3;
                        let b: Vec<f32> = (0..k * ldb).map(|_| r.next_normal() as f32).collect();
                        let ldc = n + 2;
                        let c0: Vec<f32> = (0..m * ldc).map(|_| r.next_normal() as f32).collect();
                        let (rsa, csa) = if transposed_a { (1, m) } else { (k, 1) };
                        let mut c = c0.clone();
                        force_portable(!avx);
                        gemm(m, k, n, &a, rsa, csa, &b, ldb, &mut c, ldc, accumulate);
                        force_portable(false);
                        for i in 0..m {
                            for j in 0..ldc {
                                let got = c[i * ldc + j];
                                if j >= n {
                                    assert_eq!(got, c0[i * ldc + j], "wrote outside C at ({i}, {j})");
                                    continue;
                                }
                                let mut want = if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                                let mut mag = want.abs();
                                for l in 0..k {
                                    let p = a[i * rsa + l * csa] as f64 * b[l * ldb + j] as f64;
                                    want += p;
                                    mag += p.abs();
                                }
                                assert!(
                                    (got as f64 - want).abs() <= 1e-5 * mag + 1e-30,
                                    "avx512 {avx} {m}x{k}x{n} tA {transposed_a} acc {accumulate}: C[{i}][{j}] = {got}, want {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The implicit-GEMM conv product equals unfolding A and running `gemm` after a bias row,
    /// then the ReLU, bit for bit, on both paths (every column-block width, row tails, rows in
    /// any order and overlapping, as a stride-1 conv's are); and it is the right product (f64).
    #[test]
    fn gather_equals_unfold_then_gemm() {
        let mut r = PhiloxStream::new(22, 0, Purpose::Init);
        let paths: &[bool] = if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f") { &[true, false] } else { &[false] };
        for &avx in paths {
            for &(m, seg, nseg, stride, n) in &[(1, 1, 1, 1, 1), (13, 8, 3, 11, 17), (29, 64, 2, 70, 32), (7, 5, 4, 6, 64), (26, 12, 2, 13, 80), (40, 9, 1, 0, 48)] {
                let k = seg * nseg;
                let xlen = 300 + nseg * stride + seg;
                let x: Vec<f32> = (0..xlen).map(|_| r.next_normal() as f32).collect();
                let rows: Vec<usize> = (0..m).map(|_| r.below(300) as usize).collect();
                let b: Vec<f32> = (0..k * n).map(|_| r.next_normal() as f32).collect();
                let bias: Vec<f32> = (0..n).map(|_| r.next_normal() as f32).collect();
                let g = Gather { rows: &rows, seg, nseg, seg_stride: stride };
                for relu in [false, true] {
                    let ldc = n + 1;
                    let mut got = vec![7.0f32; m * ldc];
                    let mut tmp = Vec::new();
                    force_portable(!avx);
                    gemm_gather(&x, &g, &b, &bias, relu, &mut got, ldc, &mut tmp);
                    // The unfold, then the plain GEMM on the same path.
                    let a: Vec<f32> = rows.iter().flat_map(|&r0| (0..k).map(move |l| (r0, l))).map(|(r0, l)| x[r0 + (l / seg) * stride + l % seg]).collect();
                    let mut want = vec![7.0f32; m * ldc];
                    for i in 0..m {
                        want[i * ldc..][..n].copy_from_slice(&bias);
                    }
                    gemm(m, k, n, &a, k, 1, &b, n, &mut want, ldc, true);
                    force_portable(false);
                    if relu {
                        for i in 0..m {
                            want[i * ldc..][..n].iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                    }
                    assert!(got.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()), "avx512 {avx} m {m} seg {seg}x{nseg} n {n}: differs from unfold + gemm");
                    for i in 0..m {
                        assert_eq!(got[i * ldc + n], 7.0, "wrote outside C");
                        for j in 0..n {
                            let (mut s, mut mag) = (bias[j] as f64, bias[j].abs() as f64);
                            for l in 0..k {
                                let p = a[i * k + l] as f64 * b[l * n + j] as f64;
                                s += p;
                                mag += p.abs();
                            }
                            let s = if relu { s.max(0.0) } else { s };
                            assert!((got[i * ldc + j] as f64 - s).abs() <= 1e-5 * mag + 1e-30, "C[{i}][{j}] = {}, want {s}", got[i * ldc + j]);
                        }
                    }
                }
            }
        }
    }

    /// The weight-gradient form (B gathered) equals `gemm` on the unfolded B bit for bit, on both
    /// paths (segments of 16·k floats, as the nets' are, and one that is not: the portable route).
    #[test]
    fn gather_b_equals_gemm_on_the_unfold() {
        let mut r = PhiloxStream::new(23, 0, Purpose::Init);
        let paths: &[bool] = if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f") { &[true, false] } else { &[false] };
        for &avx in paths {
            for &(m, k, seg, nseg, stride) in &[(1, 1, 16, 1, 0), (13, 29, 32, 2, 40), (32, 50, 128, 2, 150), (9, 7, 48, 3, 60), (5, 11, 12, 2, 20)] {
                let n = seg * nseg;
                let xlen = 200 + nseg * stride + seg;
                let x: Vec<f32> = (0..xlen).map(|_| r.next_normal() as f32).collect();
                let rows: Vec<usize> = (0..k).map(|_| r.below(200) as usize).collect();
                let a: Vec<f32> = (0..m * k).map(|_| r.next_normal() as f32).collect();
                let g = Gather { rows: &rows, seg, nseg, seg_stride: stride };
                let bmat: Vec<f32> = rows.iter().flat_map(|&r0| (0..n).map(move |j| (r0, j))).map(|(r0, j)| x[r0 + (j / seg) * stride + j % seg]).collect();
                for (transposed_a, accumulate) in [(false, false), (true, true)] {
                    let (rsa, csa) = if transposed_a { (1, m) } else { (k, 1) };
                    let ldc = n + 3;
                    let c0: Vec<f32> = (0..m * ldc).map(|_| r.next_normal() as f32).collect();
                    let (mut got, mut want) = (c0.clone(), c0.clone());
                    force_portable(!avx);
                    gemm_gather_b(m, &a, rsa, csa, &x, &g, &mut got, ldc, accumulate, &mut Vec::new());
                    gemm(m, k, n, &a, rsa, csa, &bmat, n, &mut want, ldc, accumulate);
                    force_portable(false);
                    assert!(got.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()), "avx512 {avx} {m}x{k}x{n}: differs from gemm on the unfold");
                    let (i, j) = (m - 1, n - 1);
                    let mut s = if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                    for l in 0..k {
                        s += a[i * rsa + l * csa] as f64 * bmat[l * n + j] as f64;
                    }
                    assert!((got[i * ldc + j] as f64 - s).abs() < 1e-4, "C[{i}][{j}] = {}, want {s}", got[i * ldc + j]);
                }
            }
        }
    }
}
