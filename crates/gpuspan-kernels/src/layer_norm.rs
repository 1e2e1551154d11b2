//! Layer norm (`kernels/layer_norm.cu`): per row, `y = (x − mean) / sqrt(var + eps) · γ + β`.
//!
//! `x` and `y` are `[rows, cols]` row-major bf16, `γ`, `β` are `[cols]` bf16; mean and
//! (biased) variance in f32, two passes over the row (mean first, then the squared
//! deviations). Launch: one block of `LAYER_NORM_THREADS` threads per row; each thread
//! strides over the row, partial sums are reduced with warp shuffles then across warps.
//!
//! Tolerance ([`LAYER_NORM_TOLERANCE`]): the GPU sums in a different (tree) order and uses
//! `rsqrtf` (≤ 2 ulp), so f32 results differ by ~1e-6 relative before the bf16 store,
//! which may then differ by one bf16 ulp (≤ 0.78 %).

use crate::bf16;
use crate::Tolerance;

/// Threads per block (one block per row).
pub const LAYER_NORM_THREADS: usize = 256;
/// The epsilon DiT models use, added to the variance.
pub const LAYER_NORM_EPS: f32 = 1e-6;

/// GPU-vs-reference tolerance of layer-norm outputs (bf16 values; see module docs).
pub const LAYER_NORM_TOLERANCE: Tolerance = Tolerance { abs: 2e-3, rel: 1e-2 };

/// Normalizes one f32 row without affine parameters (mean 0, variance 1 up to `eps`),
/// the way the kernel computes it: mean, then mean of squared deviations, then
/// `(x − mean) · 1/sqrt(var + eps)`.
pub fn normalize_row(x: &[f32], eps: f32) -> Vec<f32> {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    x.iter().map(|v| (v - mean) * inv).collect()
}

/// CPU model of `layer_norm_bf16`: [`normalize_row`] of each bf16 row, then `· γ + β`,
/// rounded to bf16; returns `[rows, cols]` f32 values.
pub fn layer_norm_ref(x: &[u16], gamma: &[u16], beta: &[u16], rows: usize, cols: usize, eps: f32) -> Vec<f32> {
    assert!(x.len() >= rows * cols && gamma.len() >= cols && beta.len() >= cols);
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row = bf16::to_f32_slice(&x[r * cols..][..cols]);
        for (j, v) in normalize_row(&row, eps).into_iter().enumerate() {
            out.push(bf16::round(v.mul_add(bf16::to_f32(gamma[j]), bf16::to_f32(beta[j]))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn mean_var(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn rows_come_out_with_mean_zero_and_variance_one() {
        let mut r = Rng::new(17);
        let (rows, cols) = (6, 1152);
        // Rows with different offsets and scales.
        let x: Vec<u16> = (0..rows)
            .flat_map(|i| {
                let (off, scale) = (i as f32 * 3.0 - 7.0, 0.1 + i as f32);
                (0..cols).map(|_| bf16::from_f32(off + scale * r.uniform_f32(-1.0, 1.0))).collect::<Vec<_>>()
            })
            .collect();
        let ones = vec![bf16::from_f32(1.0); cols];
        let zeros = vec![0u16; cols];
        let y = layer_norm_ref(&x, &ones, &zeros, rows, cols, LAYER_NORM_EPS);
        for row in y.chunks(cols) {
            let (m, v) = mean_var(row);
            // bf16 rounding of each output: ≤ 2^-9 relative, mean error ≪ that.
            assert!(m.abs() < 2e-3, "mean {m}");
            assert!((v - 1.0).abs() < 5e-3, "var {v}");
        }
        // Unrounded: tight.
        let (m, v) = mean_var(&normalize_row(&bf16::to_f32_slice(&x[..cols]), 0.0));
        assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4, "{m} {v}");
    }

    #[test]
    fn affine_parameters_and_degenerate_rows() {
        // Row [1, 2, 3, 4]: mean 2.5, var 1.25 → normalized ±0.4472·{3, 1}: ±1.3416, ±0.4472.
        let x = bf16::from_f32_slice(&[1.0, 2.0, 3.0, 4.0]);
        let y = normalize_row(&bf16::to_f32_slice(&x), 0.0);
        let s = 1.0 / 1.25f32.sqrt();
        let want = [-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        // γ = 2, β = 10 scales and shifts.
        let g = vec![bf16::from_f32(2.0); 4];
        let b = vec![bf16::from_f32(10.0); 4];
        let z = layer_norm_ref(&x, &g, &b, 1, 4, 0.0);
        for (zi, yi) in z.iter().zip(&y) {
            assert!((zi - (2.0 * yi + 10.0)).abs() <= 0.04, "{zi} vs {}", 2.0 * yi + 10.0);
        }
        // A constant row has zero variance: eps keeps it finite and the output is β.
        let c = vec![bf16::from_f32(3.0); 8];
        let out = layer_norm_ref(&c, &[bf16::from_f32(1.0); 8], &[bf16::from_f32(0.25); 8], 1, 8, LAYER_NORM_EPS);
        assert!(out.iter().all(|&v| v == 0.25), "{out:?}");
    }
}
