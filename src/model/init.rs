//! Parameter initialisation with the semantics of PyTorch's `nn.init.orthogonal_`:
//! view the weight as rows × cols (rows = shape[0]); draw a Gaussian matrix; if rows < cols work
//! on its transpose; take Q of its QR decomposition with R's diagonal made positive; scale by
//! the gain. Biases are zero. The random numbers are Philox streams keyed by (seed, tensor), so
//! every agent built from the same seed starts from identical parameters (GALA's consensus at t=0).

use super::{InitRule, NetSpec};
use crate::rng::{PhiloxStream, Purpose};

/// One agent's initial parameters for `spec`, a pure function of `seed`.
pub fn init_params(spec: &NetSpec, seed: u64) -> Vec<f32> {
    let layout = spec.layout();
    let mut params = vec![0f32; layout.total];
    for (index, t) in layout.tensors.iter().enumerate() {
        if let InitRule::Orthogonal { gain } = t.init {
            let rows = t.shape[0];
            let cols = t.len / rows;
            let mut rng = PhiloxStream::new(seed, index as u64, Purpose::Init);
            let q = orthogonal(rows, cols, &mut rng);
            for (p, v) in params[t.range()].iter_mut().zip(q) {
                *p = (v * gain) as f32;
            }
        }
    }
    params
}

/// A rows × cols matrix (row-major) with orthonormal rows (rows ≤ cols) or orthonormal columns.
pub fn orthogonal(rows: usize, cols: usize, rng: &mut PhiloxStream) -> Vec<f64> {
    let gaussian: Vec<f64> = (0..rows * cols).map(|_| rng.next_normal()).collect();
    // Work on a tall m × n matrix (m ≥ n), stored column by column for cheap column access.
    let transpose = rows < cols;
    let (m, n) = if transpose { (cols, rows) } else { (rows, cols) };
    let mut columns: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            (0..m)
                .map(|i| if transpose { gaussian[j * cols + i] } else { gaussian[i * cols + j] })
                .collect()
        })
        .collect();
    // Modified Gram-Schmidt, each column orthogonalised twice ("twice is enough": Giraud et al.
    // 2005), giving Q with R's diagonal positive — the sign convention orthogonal_ enforces.
    for j in 0..n {
        let (done, rest) = columns.split_at_mut(j);
        let v = &mut rest[0];
        for _pass in 0..2 {
            for q in done.iter() {
                let dot: f64 = q.iter().zip(v.iter()).map(|(a, b)| a * b).sum();
                for (vi, qi) in v.iter_mut().zip(q) {
                    *vi -= dot * qi;
                }
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(norm > 1e-12, "degenerate Gaussian draw in orthogonal init");
        v.iter_mut().for_each(|x| *x /= norm);
    }
    let mut out = vec![0f64; rows * cols];
    for (j, col) in columns.iter().enumerate() {
        for (i, &x) in col.iter().enumerate() {
            if transpose {
                out[j * cols + i] = x;
            } else {
                out[i * cols + j] = x;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetPreset;

    fn gram(a: &[f64], rows: usize, cols: usize, by_rows: bool) -> Vec<f64> {
        let k = if by_rows { rows } else { cols };
        let mut g = vec![0f64; k * k];
        for p in 0..k {
            for q in 0..k {
                g[p * k + q] = if by_rows {
                    (0..cols).map(|c| a[p * cols + c] * a[q * cols + c]).sum()
                } else {
                    (0..rows).map(|r| a[r * cols + p] * a[r * cols + q]).sum()
                };
            }
        }
        g
    }

    #[test]
    fn orthogonal_rows_or_columns() {
        for &(rows, cols) in &[(5, 12), (12, 5), (7, 7), (1, 9)] {
            let mut rng = PhiloxStream::new(3, 0, Purpose::Init);
            let a = orthogonal(rows, cols, &mut rng);
            let g = gram(&a, rows, cols, rows <= cols);
            let k = rows.min(cols);
            for p in 0..k {
                for q in 0..k {
                    let want = if p == q { 1.0 } else { 0.0 };
                    assert!((g[p * k + q] - want).abs() < 1e-12, "{rows}x{cols} gram[{p},{q}]={}", g[p * k + q]);
                }
            }
        }
    }

    #[test]
    fn gains_and_zero_biases() {
        let spec = NetSpec::new(NetPreset::Gala, 6);
        let layout = spec.layout();
        let p = init_params(&spec, 11);
        // A row of an orthogonal wide matrix has unit norm; scaled by the gain.
        let row_norm = |name: &str| {
            let t = layout.get(name).unwrap();
            let cols = t.len / t.shape[0];
            p[t.offset..t.offset + cols].iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
        };
        assert!((row_norm("actor.weight") - 0.01).abs() < 1e-6);
        assert!((row_norm("critic.weight") - 1.0).abs() < 1e-6);
        assert!((row_norm("conv1.weight") - 2f64.sqrt()).abs() < 1e-5);
        for name in ["conv1.bias", "fc.bias", "actor.bias", "critic.bias"] {
            assert!(p[layout.get(name).unwrap().range()].iter().all(|&x| x == 0.0));
        }
        assert_eq!(p, init_params(&spec, 11));
        assert_ne!(p, init_params(&spec, 12));
    }
}
