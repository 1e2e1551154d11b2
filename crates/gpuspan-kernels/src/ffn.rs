//! FFN (`kernels/ffn.cu`): `Y = GELU(X W₁ + b₁) W₂ + b₂`, bf16 in, f32 accumulate, bf16 out.
//!
//! Both products use one tiled GEMM, `C[m, n] = epilogue(Σ_k A[m, k] B[k, n] + bias[n])`,
//! A `[m, k]`, B `[k, n]`, C `[m, n]`, all row-major bf16, bias `[n]` bf16. Two entry points:
//! `gemm_bf16_bias` (epilogue: none) and `gemm_bf16_bias_gelu` (epilogue: tanh-GELU, as
//! DiT / PixArt's `GELU(approximate="tanh")`). Launch: block `GEMM_THREADS` threads, grid
//! `(ceil(n / GEMM_TILE_N), ceil(m / GEMM_TILE_M))`; each thread computes a 4×4 patch of a
//! `GEMM_TILE_M × GEMM_TILE_N` tile, stepping through `k` in slices of `GEMM_TILE_K`.
//! The worker also uses these GEMMs for the attention projections (QKV, output).
//!
//! Tolerance ([`GEMM_TOLERANCE`]): the kernel sums `k` in increasing order like
//! [`gemm_ref`], so f32 results differ only by contraction / `tanhf` ulps; after the bf16
//! store the values can be one bf16 ulp apart (≤ 0.78 % relative); cancellation near zero
//! is covered by the absolute part (k · 2⁻²⁴ · Σ|a b| ≈ 1e-4 for k = 4608, |a|, |b| ≤ 1).

use crate::bf16;
use crate::Tolerance;

/// Output rows per GEMM block tile.
pub const GEMM_TILE_M: usize = 64;
/// Output columns per GEMM block tile.
pub const GEMM_TILE_N: usize = 64;
/// Depth of one shared-memory slice of the reduction dimension.
pub const GEMM_TILE_K: usize = 16;
/// Threads per GEMM block (16 × 16, each a 4×4 output patch).
pub const GEMM_THREADS: usize = 256;

/// GPU-vs-reference tolerance of GEMM / FFN outputs (bf16 values; see module docs).
pub const GEMM_TOLERANCE: Tolerance = Tolerance { abs: 2e-3, rel: 1e-2 };

/// `sqrt(2 / π)`, the tanh-GELU constant.
pub const GELU_TANH_C: f32 = 0.797_884_6;

/// What the GEMM does to each `Σ + bias` before the bf16 store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// Nothing (`gemm_bf16_bias`).
    Bias,
    /// [`gelu_tanh`] (`gemm_bf16_bias_gelu`).
    BiasGelu,
}

/// tanh-approximated GELU: `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_TANH_C * (x + 0.044715 * x * x * x)).tanh())
}

/// Exact GELU `x Φ(x) = 0.5 x (1 + erf(x / sqrt 2))` in f64 (Abramowitz–Stegun 7.1.26 erf,
/// |error| ≤ 1.5e-7), to test [`gelu_tanh`] against.
pub fn gelu_erf_f64(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf_abs = 1.0 - poly * (-z * z).exp();
    let erf = if z < 0.0 { -erf_abs } else { erf_abs };
    0.5 * x * (1.0 + erf)
}

/// Sizes of one FFN: `tokens × hidden → tokens × ffn_hidden → tokens × hidden`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FfnShape {
    /// Rows of X (frames × tokens per frame).
    pub tokens: usize,
    /// Model width.
    pub hidden: usize,
    /// Inner width (4 × hidden in DiT).
    pub ffn_hidden: usize,
}

impl FfnShape {
    /// Floating-point operations of the two GEMMs (2 · 2 · tokens · hidden · ffn_hidden).
    pub fn flops(&self) -> f64 {
        4.0 * (self.tokens * self.hidden * self.ffn_hidden) as f64
    }
}

/// CPU model of the GEMM kernels: `C = epilogue(A B + bias)` with `k` summed in order in
/// f32, rounded to bf16; returned as f32 values, `[m, n]` row-major.
///
/// Panics if a slice is shorter than the sizes say.
pub fn gemm_ref(a: &[u16], b: &[u16], bias: &[u16], m: usize, n: usize, k: usize, epi: Epilogue) -> Vec<f32> {
    assert!(a.len() >= m * k && b.len() >= k * n && bias.len() >= n);
    let bf: Vec<f32> = bf16::to_f32_slice(&b[..k * n]);
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        let arow = &a[i * k..][..k];
        let crow = &mut c[i * n..][..n];
        for (kk, &av) in arow.iter().enumerate() {
            let av = bf16::to_f32(av);
            let brow = &bf[kk * n..][..n];
            for (cv, &bv) in crow.iter_mut().zip(brow) {
                *cv = av.mul_add(bv, *cv);
            }
        }
        for (j, cv) in crow.iter_mut().enumerate() {
            let x = *cv + bf16::to_f32(bias[j]);
            *cv = bf16::round(match epi {
                Epilogue::Bias => x,
                Epilogue::BiasGelu => gelu_tanh(x),
            });
        }
    }
    c
}

/// CPU model of the whole FFN as the worker runs it: `H = gemm(X, W₁, b₁, GELU)` stored as
/// bf16, then `Y = gemm(H, W₂, b₂)`. `x` `[tokens, hidden]`, `w1` `[hidden, ffn_hidden]`,
/// `w2` `[ffn_hidden, hidden]`; returns `Y` `[tokens, hidden]`.
pub fn ffn_ref(shape: FfnShape, x: &[u16], w1: &[u16], b1: &[u16], w2: &[u16], b2: &[u16]) -> Vec<f32> {
    let h = gemm_ref(x, w1, b1, shape.tokens, shape.ffn_hidden, shape.hidden, Epilogue::BiasGelu);
    let h_bits = bf16::from_f32_slice(&h);
    gemm_ref(&h_bits, w2, b2, shape.tokens, shape.hidden, shape.ffn_hidden, Epilogue::Bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn gelu_at_known_points() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        // Hand-computed: tanh(0.7978846 · 1.044715) = tanh(0.8335624) = 0.6823837,
        // 0.5 · 1.6823837 = 0.8411919. Exact GELU(1) = Φ(1) = 0.8413447.
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu_erf_f64(1.0) - 0.841_344_7).abs() < 2e-7);
        // GELU(-1) = -1 + GELU(1) (x Φ(x) with Φ(-x) = 1 − Φ(x)).
        assert!((gelu_tanh(-1.0) - (0.841_192 - 1.0)).abs() < 1e-6);
        // Large |x|: identity on the right, zero on the left.
        assert_eq!(gelu_tanh(10.0), 10.0);
        assert!(gelu_tanh(-10.0).abs() < 1e-6);
        // The tanh form stays within 5e-4 of the exact GELU everywhere on [-6, 6].
        for i in -600..=600 {
            let x = i as f64 / 100.0;
            let err = (gelu_tanh(x as f32) as f64 - gelu_erf_f64(x)).abs();
            assert!(err < 5e-4, "x={x}: err {err}");
        }
    }

    #[test]
    fn gemm_small_hand_computed_case() {
        // A = [[1, 2, 3], [4, 5, 6]], B = [[1, 0], [0, 1], [1, -1]], bias = [0.5, -0.5]:
        // A B = [[4, -1], [10, -1]]; + bias = [[4.5, -1.5], [10.5, -1.5]].
        let a = bf16::from_f32_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = bf16::from_f32_slice(&[1.0, 0.0, 0.0, 1.0, 1.0, -1.0]);
        let bias = bf16::from_f32_slice(&[0.5, -0.5]);
        assert_eq!(gemm_ref(&a, &b, &bias, 2, 2, 3, Epilogue::Bias), vec![4.5, -1.5, 10.5, -1.5]);
        let g = gemm_ref(&a, &b, &bias, 2, 2, 3, Epilogue::BiasGelu);
        let want: Vec<f32> = [4.5f32, -1.5, 10.5, -1.5].iter().map(|&x| bf16::round(gelu_tanh(x))).collect();
        assert_eq!(g, want);
        // GELU(10.5) = 10.5, GELU(-1.5) ≈ -0.1004 (exact: -1.5 Φ(-1.5) = -0.10020).
        assert_eq!(g[2], 10.5);
        assert!((g[1] + 0.1002).abs() < 2e-3);
    }

    #[test]
    fn gemm_with_identity_returns_the_input_and_matches_an_f64_product() {
        let mut r = Rng::new(11);
        let (m, k) = (5, 70);
        let a = r.bf16_vec(m * k, -1.0, 1.0);
        let eye: Vec<u16> = (0..k * k).map(|i| bf16::from_f32(if i / k == i % k { 1.0 } else { 0.0 })).collect();
        let zero = vec![0u16; k];
        assert_eq!(gemm_ref(&a, &eye, &zero, m, k, k, Epilogue::Bias), bf16::to_f32_slice(&a));

        let n = 33;
        let b = r.bf16_vec(k * n, -1.0, 1.0);
        let bias = r.bf16_vec(n, -1.0, 1.0);
        let c = gemm_ref(&a, &b, &bias, m, n, k, Epilogue::Bias);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|t| bf16::to_f32(a[i * k + t]) as f64 * bf16::to_f32(b[t * n + j]) as f64)
                    .sum::<f64>()
                    + bf16::to_f32(bias[j]) as f64;
                let got = c[i * n + j] as f64;
                assert!((got - exact).abs() <= exact.abs() * 2f64.powi(-8) + 1e-5, "({i},{j}): {got} vs {exact}");
            }
        }
    }

    #[test]
    fn ffn_chains_two_gemms() {
        let s = FfnShape { tokens: 3, hidden: 4, ffn_hidden: 8 };
        let mut r = Rng::new(2);
        let x = r.bf16_vec(12, -1.0, 1.0);
        let w1 = r.bf16_vec(32, -1.0, 1.0);
        let b1 = r.bf16_vec(8, -0.1, 0.1);
        let w2 = r.bf16_vec(32, -1.0, 1.0);
        let b2 = r.bf16_vec(4, -0.1, 0.1);
        let y = ffn_ref(s, &x, &w1, &b1, &w2, &b2);
        // Independent f64 evaluation with bf16 rounding of the hidden activation.
        for t in 0..3 {
            let h: Vec<f64> = (0..8)
                .map(|j| {
                    let pre: f64 = (0..4).map(|i| bf16::to_f32(x[t * 4 + i]) as f64 * bf16::to_f32(w1[i * 8 + j]) as f64).sum::<f64>()
                        + bf16::to_f32(b1[j]) as f64;
                    bf16::round(gelu_erf_f64(pre) as f32) as f64
                })
                .collect();
            for o in 0..4 {
                let want: f64 = (0..8).map(|j| h[j] * bf16::to_f32(w2[j * 4 + o]) as f64).sum::<f64>() + bf16::to_f32(b2[o]) as f64;
                let got = y[t * 4 + o] as f64;
                // bf16 rounding of h (8 terms) + tanh-vs-erf GELU + output rounding.
                assert!((got - want).abs() < 0.03 + want.abs() * 0.01, "({t},{o}): {got} vs {want}");
            }
        }
        assert_eq!(s.flops(), 4.0 * 96.0);
    }
}
