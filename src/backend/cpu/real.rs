//! The float type the CPU reference is generic over: f32 for training, f64 for gradient checks
//! (finite differences in f64 resolve errors far below f32's rounding, so the checks are tight).

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;

    /// C ← α·A·B + β·C for row/column strides given in elements (matrixmultiply's contract):
    /// A is m×k, B is k×n, C is m×n.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize, k: usize, n: usize,
        alpha: Self, a: &[Self], rsa: isize, csa: isize,
        b: &[Self], rsb: isize, csb: isize,
        beta: Self, c: &mut [Self], rsc: isize, csc: isize,
    );
}

/// Bounds check for a strided matrix view: the furthest element must lie inside the slice.
fn check_view(len: usize, rows: usize, cols: usize, rs: isize, cs: isize, what: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(rs >= 0 && cs >= 0, "gemm: negative strides unsupported ({what})");
    let last = (rows - 1) as isize * rs + (cols - 1) as isize * cs;
    assert!((last as usize) < len, "gemm: {what} view {rows}x{cols} (rs {rs}, cs {cs}) exceeds slice of {len}");
}

macro_rules! impl_real {
    ($t:ty, $gemm:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn gemm(
                m: usize, k: usize, n: usize,
                alpha: Self, a: &[Self], rsa: isize, csa: isize,
                b: &[Self], rsb: isize, csb: isize,
                beta: Self, c: &mut [Self], rsc: isize, csc: isize,
            ) {
                check_view(a.len(), m, k, rsa, csa, "A");
                check_view(b.len(), k, n, rsb, csb, "B");
                check_view(c.len(), m, n, rsc, csc, "C");
                if m == 0 || n == 0 {
                    return;
                }
                // SAFETY: the three views were checked to lie inside their slices above, and C
                // is borrowed mutably so it cannot alias A or B.
                unsafe {
                    $gemm(m, k, n, alpha, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), rsc, csc);
                }
            }
        }
    };
}

impl_real!(f32, matrixmultiply::sgemm);
impl_real!(f64, matrixmultiply::dgemm);
