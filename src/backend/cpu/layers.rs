//! CPU reference layers: convolution (im2col + GEMM) and fully connected, forward and backward,
//! generic over the float type. These are the spec the CUDA kernels are tested against.
//!
//! Shapes (row-major, PyTorch layouts):
//!   conv:   x [N, Cin, H, W], w [Cout, Cin, K, K], b [Cout], y [N, Cout, Ho, Wo]
//!   linear: x [N, In], w [Out, In], b [Out], y [N, Out]
//! `relu = true` means y = max(0, x·w + b) and the backward masks by y > 0.
//!
//! Accumulation contract: backward *writes* dw, db and dx (it never adds to what is there), and
//! overwrites `dy` with the pre-activation gradient. Every sum over the batch runs in a fixed
//! order over fixed-size sample chunks, so results do not depend on the number of threads.

use super::real::Real;
use crate::model::ConvShape;
use rayon::prelude::*;

/// Samples per partial sum in the conv weight gradient (fixed, so sums are thread-count invariant).
const CONV_SAMPLE_CHUNK: usize = 4;
/// Output rows per task in the linear layers.
const LINEAR_ROW_CHUNK: usize = 16;

/// Unfold one sample's input into patches: cols[(c·K + ky)·K + kx][oy·Wo + ox] = x[c][oy·s+ky][ox·s+kx].
pub fn im2col<T: Real>(s: &ConvShape, x: &[T], cols: &mut [T]) {
    let (k, st, hw, ohw) = (s.kernel, s.stride, s.in_hw, s.out_hw);
    let p = s.out_pixels();
    debug_assert_eq!(x.len(), s.in_len());
    debug_assert_eq!(cols.len(), s.patch_len() * p);
    for c in 0..s.in_channels {
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * p..][..p];
                for oy in 0..ohw {
                    let src = &x[(c * hw + oy * st + ky) * hw + kx..];
                    for ox in 0..ohw {
                        row[oy * ohw + ox] = src[ox * st];
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: dx[c][y][x] = Σ over the patches that read (c, y, x) of dcols.
pub fn col2im<T: Real>(s: &ConvShape, dcols: &[T], dx: &mut [T]) {
    let (k, st, hw, ohw) = (s.kernel, s.stride, s.in_hw, s.out_hw);
    let p = s.out_pixels();
    dx.iter_mut().for_each(|v| *v = T::ZERO);
    for c in 0..s.in_channels {
        for ky in 0..k {
            for kx in 0..k {
                let row = &dcols[((c * k + ky) * k + kx) * p..][..p];
                for oy in 0..ohw {
                    let dst = &mut dx[(c * hw + oy * st + ky) * hw + kx..];
                    for ox in 0..ohw {
                        dst[ox * st] += row[oy * ohw + ox];
                    }
                }
            }
        }
    }
}

fn relu_inplace<T: Real>(y: &mut [T]) {
    y.iter_mut().for_each(|v| {
        if !(*v > T::ZERO) {
            *v = T::ZERO
        }
    });
}

/// dy ← dy ⊙ [y > 0]
fn relu_backward_inplace<T: Real>(y: &[T], dy: &mut [T]) {
    for (g, &v) in dy.iter_mut().zip(y) {
        if !(v > T::ZERO) {
            *g = T::ZERO;
        }
    }
}

pub fn conv2d_forward<T: Real>(s: &ConvShape, x: &[T], w: &[T], b: &[T], y: &mut [T], relu: bool) {
    let n = x.len() / s.in_len();
    assert_eq!(x.len(), n * s.in_len(), "conv2d_forward: x is not a whole batch");
    assert_eq!(y.len(), n * s.out_len(), "conv2d_forward: y size");
    assert_eq!(w.len(), s.out_channels * s.patch_len(), "conv2d_forward: w size");
    assert_eq!(b.len(), s.out_channels, "conv2d_forward: b size");
    let (kk, p) = (s.patch_len(), s.out_pixels());
    y.par_chunks_mut(s.out_len()).zip(x.par_chunks(s.in_len())).for_each_init(
        || vec![T::ZERO; kk * p],
        |cols, (ys, xs)| {
            im2col(s, xs, cols);
            for (o, row) in ys.chunks_mut(p).enumerate() {
                row.iter_mut().for_each(|v| *v = b[o]);
            }
            // y[Cout, P] += w[Cout, K] · cols[K, P]
            T::gemm(s.out_channels, kk, p, T::ONE, w, kk as isize, 1, cols, p as isize, 1, T::ONE, ys, p as isize, 1);
            if relu {
                relu_inplace(ys);
            }
        },
    );
}

/// Gradients of a conv layer. `dy` (gradient w.r.t. the layer's output y) is overwritten with the
/// pre-activation gradient. `dx = None` skips the input gradient (conv1 reads data).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Real>(
    s: &ConvShape, x: &[T], w: &[T], y: &[T], dy: &mut [T], relu: bool,
    dw: &mut [T], db: &mut [T], dx: Option<&mut [T]>,
) {
    let n = x.len() / s.in_len();
    assert_eq!(x.len(), n * s.in_len(), "conv2d_backward: x is not a whole batch");
    assert_eq!(y.len(), n * s.out_len(), "conv2d_backward: y size");
    assert_eq!(dy.len(), y.len(), "conv2d_backward: dy size");
    assert_eq!(dw.len(), w.len(), "conv2d_backward: dw size");
    assert_eq!(db.len(), s.out_channels, "conv2d_backward: db size");
    let (kk, p, cout) = (s.patch_len(), s.out_pixels(), s.out_channels);
    if relu {
        dy.par_chunks_mut(s.out_len()).zip(y.par_chunks(s.out_len())).for_each(|(g, v)| relu_backward_inplace(v, g));
    }
    let dy: &[T] = dy;
    // Weight and bias gradients: one partial per fixed chunk of samples, summed in chunk order.
    let partials: Vec<(Vec<T>, Vec<T>)> = x
        .par_chunks(CONV_SAMPLE_CHUNK * s.in_len())
        .zip(dy.par_chunks(CONV_SAMPLE_CHUNK * s.out_len()))
        .map(|(xc, gc)| {
            let mut pw = vec![T::ZERO; dw.len()];
            let mut pb = vec![T::ZERO; cout];
            let mut cols = vec![T::ZERO; kk * p];
            for (xs, gs) in xc.chunks(s.in_len()).zip(gc.chunks(s.out_len())) {
                im2col(s, xs, &mut cols);
                // pw[Cout, K] += g[Cout, P] · cols[K, P]ᵀ
                T::gemm(cout, p, kk, T::ONE, gs, p as isize, 1, &cols, 1, p as isize, T::ONE, &mut pw, kk as isize, 1);
                for (o, row) in gs.chunks(p).enumerate() {
                    pb[o] += row.iter().copied().sum::<T>();
                }
            }
            (pw, pb)
        })
        .collect();
    dw.iter_mut().for_each(|v| *v = T::ZERO);
    db.iter_mut().for_each(|v| *v = T::ZERO);
    for (pw, pb) in &partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += *b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += *b);
    }
    if let Some(dx) = dx {
        assert_eq!(dx.len(), x.len(), "conv2d_backward: dx size");
        dx.par_chunks_mut(s.in_len()).zip(dy.par_chunks(s.out_len())).for_each_init(
            || vec![T::ZERO; kk * p],
            |dcols, (dxs, gs)| {
                // dcols[K, P] = w[Cout, K]ᵀ · g[Cout, P]
                T::gemm(kk, cout, p, T::ONE, w, 1, kk as isize, gs, p as isize, 1, T::ZERO, dcols, p as isize, 1);
                col2im(s, dcols, dxs);
            },
        );
    }
}

pub fn linear_forward<T: Real>(x: &[T], w: &[T], b: &[T], y: &mut [T], relu: bool) {
    let (out_f, in_f) = (b.len(), w.len() / b.len().max(1));
    assert_eq!(w.len(), out_f * in_f, "linear_forward: w size");
    let n = x.len() / in_f.max(1);
    assert_eq!(x.len(), n * in_f, "linear_forward: x size");
    assert_eq!(y.len(), n * out_f, "linear_forward: y size");
    y.par_chunks_mut(LINEAR_ROW_CHUNK * out_f).zip(x.par_chunks(LINEAR_ROW_CHUNK * in_f)).for_each(|(yc, xc)| {
        let rows = xc.len() / in_f;
        for row in yc.chunks_mut(out_f) {
            row.copy_from_slice(b);
        }
        // y[N, Out] += x[N, In] · w[Out, In]ᵀ
        T::gemm(rows, in_f, out_f, T::ONE, xc, in_f as isize, 1, w, 1, in_f as isize, T::ONE, yc, out_f as isize, 1);
        if relu {
            relu_inplace(yc);
        }
    });
}

/// Gradients of a linear layer; `dy` is overwritten with the pre-activation gradient.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Real>(
    x: &[T], w: &[T], y: &[T], dy: &mut [T], relu: bool,
    dw: &mut [T], db: &mut [T], dx: Option<&mut [T]>,
) {
    let out_f = db.len();
    let in_f = w.len() / out_f;
    let n = x.len() / in_f;
    assert_eq!(x.len(), n * in_f, "linear_backward: x size");
    assert_eq!(y.len(), n * out_f, "linear_backward: y size");
    assert_eq!(dy.len(), y.len(), "linear_backward: dy size");
    assert_eq!(dw.len(), w.len(), "linear_backward: dw size");
    if relu {
        relu_backward_inplace(y, dy);
    }
    let dy: &[T] = dy;
    // dw[Out, In] = dyᵀ[Out, N] · x[N, In]: each task owns whole output rows, so every element's
    // sum over the batch is one sequential GEMM reduction.
    dw.par_chunks_mut(LINEAR_ROW_CHUNK * in_f).enumerate().for_each(|(chunk, dwc)| {
        let o0 = chunk * LINEAR_ROW_CHUNK;
        let rows = dwc.len() / in_f;
        T::gemm(rows, n, in_f, T::ONE, &dy[o0..], 1, out_f as isize, x, in_f as isize, 1, T::ZERO, dwc, in_f as isize, 1);
    });
    for (o, v) in db.iter_mut().enumerate() {
        *v = (0..n).map(|i| dy[i * out_f + o]).sum();
    }
    if let Some(dx) = dx {
        assert_eq!(dx.len(), x.len(), "linear_backward: dx size");
        // dx[N, In] = dy[N, Out] · w[Out, In]
        dx.par_chunks_mut(LINEAR_ROW_CHUNK * in_f).zip(dy.par_chunks(LINEAR_ROW_CHUNK * out_f)).for_each(|(dxc, gc)| {
            let rows = gc.len() / out_f;
            T::gemm(rows, out_f, in_f, T::ONE, gc, out_f as isize, 1, w, in_f as isize, 1, T::ZERO, dxc, in_f as isize, 1);
        });
    }
}
