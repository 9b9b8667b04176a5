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
}
