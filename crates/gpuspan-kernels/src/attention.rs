//! Attention (`kernels/attention.cu`): `O = softmax(scale · Q Kᵀ) V` per (batch, head).
//!
//! Layout (all row-major, contiguous): `Q` is `[batch_heads, q_len, HEAD_DIM]`, `K` and `V`
//! are `[batch_heads, kv_len, HEAD_DIM]`, bf16 bit patterns; `O` is `[batch_heads, q_len,
//! HEAD_DIM]` bf16. One kernel shape serves the three DiT attentions; only the sizes change
//! ([`AttnShape::spatial`], [`AttnShape::temporal`], [`AttnShape::cross`]).
//!
//! Two implementations, same result:
//! - fused, `flash_attn_fwd_d64`: grid `(ceil(q_len / FLASH_BLOCK_M), batch_heads)`, block
//!   `FLASH_BLOCK_M` threads, one query row per thread, keys streamed through shared memory
//!   in tiles of [`FLASH_BLOCK_N`], softmax computed online (running max and sum, the
//!   accumulator rescaled when the max grows) in f32. [`flash_attention_ref`] is that
//!   algorithm on the CPU.
//! - unfused, for short key sequences (cross attention to text tokens): `sdpa_qk_scores_d64`
//!   writes f32 scores `S = scale · Q Kᵀ` (`[batch_heads, q_len, kv_len]`), `softmax_rows_f32`
//!   normalizes each row of `S` in place, `sdpa_pv_d64` writes `O = S V`. References:
//!   [`qk_scores_ref`], [`softmax_rows_ref`], [`pv_ref`].
//!
//! Tolerance ([`ATTENTION_TOLERANCE`]): the GPU and CPU sum in the same order, but `expf`
//! and the CPU `exp` may differ by an f32 ulp and `fma` contraction differs, so the f32
//! results differ by ~1e-6 relative; the bf16 store can then land one bf16 ulp apart (at
//! most 2⁻⁷ = 0.78 % relative). Outputs are convex combinations of `V` rows, so
//! `|O| ≤ max |V|`.

use crate::bf16;
use crate::Tolerance;

/// Head dimension the kernels are compiled for (`HEAD_DIM` in `kernels/attention.cu`).
pub const HEAD_DIM: usize = 64;
/// Query rows per CUDA block of `flash_attn_fwd_d64` (= threads per block).
pub const FLASH_BLOCK_M: usize = 64;
/// Keys per shared-memory tile of `flash_attn_fwd_d64`.
pub const FLASH_BLOCK_N: usize = 64;
/// Block edge of `sdpa_qk_scores_d64` (a `QK_TILE × QK_TILE` block of threads, one score
/// each).
pub const QK_TILE: usize = 16;
/// Threads per block of `softmax_rows_f32` (one block per row).
pub const SOFTMAX_THREADS: usize = 256;
/// Query rows per block of `sdpa_pv_d64` (block is `HEAD_DIM × PV_ROWS` threads).
pub const PV_ROWS: usize = 4;

/// GPU-vs-reference tolerance of every attention output (bf16 values; see module docs).
pub const ATTENTION_TOLERANCE: Tolerance = Tolerance { abs: 1e-3, rel: 1e-2 };
/// GPU-vs-reference tolerance of the f32 scores and probabilities of the unfused path
/// (f32 ulps only; no bf16 rounding).
pub const SCORES_TOLERANCE: Tolerance = Tolerance { abs: 1e-5, rel: 1e-4 };

/// Sizes of one attention call (head dimension fixed at [`HEAD_DIM`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Independent (batch × head) problems.
    pub batch_heads: usize,
    /// Query rows per problem.
    pub q_len: usize,
    /// Key / value rows per problem.
    pub kv_len: usize,
}

impl AttnShape {
    /// Spatial self-attention of a video latent: every frame attends within itself
    /// (`batch_heads = frames × heads`, `q_len = kv_len = tokens_per_frame`).
    pub fn spatial(frames: usize, tokens_per_frame: usize, heads: usize) -> AttnShape {
        AttnShape { batch_heads: frames * heads, q_len: tokens_per_frame, kv_len: tokens_per_frame }
    }

    /// Temporal self-attention: every spatial position attends across frames
    /// (`batch_heads = tokens_per_frame × heads`, `q_len = kv_len = frames`).
    pub fn temporal(frames: usize, tokens_per_frame: usize, heads: usize) -> AttnShape {
        AttnShape { batch_heads: tokens_per_frame * heads, q_len: frames, kv_len: frames }
    }

    /// Cross-attention from all video tokens to the text tokens
    /// (`batch_heads = heads`, `q_len = frames × tokens_per_frame`, `kv_len = text_tokens`).
    pub fn cross(frames: usize, tokens_per_frame: usize, text_tokens: usize, heads: usize) -> AttnShape {
        AttnShape { batch_heads: heads, q_len: frames * tokens_per_frame, kv_len: text_tokens }
    }

    /// Elements of `Q` (and of `O`).
    pub fn q_elems(&self) -> usize {
        self.batch_heads * self.q_len * HEAD_DIM
    }

    /// Elements of `K` (and of `V`).
    pub fn kv_elems(&self) -> usize {
        self.batch_heads * self.kv_len * HEAD_DIM
    }

    /// Elements of the unfused path's score matrix `S`.
    pub fn score_elems(&self) -> usize {
        self.batch_heads * self.q_len * self.kv_len
    }

    /// Floating-point operations of one call (2 · 2 · bh · q · kv · d: the two matrix
    /// products; softmax not counted).
    pub fn flops(&self) -> f64 {
        4.0 * (self.batch_heads * self.q_len * self.kv_len * HEAD_DIM) as f64
    }
}

/// The usual softmax scale `1 / sqrt(HEAD_DIM)` = 0.125.
pub fn default_scale() -> f32 {
    1.0 / (HEAD_DIM as f32).sqrt()
}

fn dot_bf16(a: &[u16], b: &[u16]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |acc, (&x, &y)| bf16::to_f32(x).mul_add(bf16::to_f32(y), acc))
}

/// CPU model of `flash_attn_fwd_d64`: per query row, keys in order, online softmax in f32
/// (`m` running max, `l` running sum of `exp(s − m)`, accumulator rescaled by `exp(m_old −
/// m_new)` when the max grows), output `acc / l` rounded to bf16. Returns `O` as f32 values
/// (each exactly a bf16), layout `[batch_heads, q_len, HEAD_DIM]`.
///
/// Panics if a slice is shorter than the shape says.
pub fn flash_attention_ref(shape: AttnShape, q: &[u16], k: &[u16], v: &[u16], scale: f32) -> Vec<f32> {
    assert!(q.len() >= shape.q_elems() && k.len() >= shape.kv_elems() && v.len() >= shape.kv_elems());
    let d = HEAD_DIM;
    let mut out = vec![0.0f32; shape.q_elems()];
    for b in 0..shape.batch_heads {
        for i in 0..shape.q_len {
            let qrow = &q[(b * shape.q_len + i) * d..][..d];
            let mut m = f32::NEG_INFINITY;
            let mut l = 0.0f32;
            let mut acc = [0.0f32; HEAD_DIM];
            for j in 0..shape.kv_len {
                let krow = &k[(b * shape.kv_len + j) * d..][..d];
                let vrow = &v[(b * shape.kv_len + j) * d..][..d];
                let s = dot_bf16(qrow, krow) * scale;
                if s > m {
                    let corr = (m - s).exp();
                    l *= corr;
                    acc.iter_mut().for_each(|a| *a *= corr);
                    m = s;
                }
                let p = (s - m).exp();
                l += p;
                for (a, &vv) in acc.iter_mut().zip(vrow) {
                    *a = p.mul_add(bf16::to_f32(vv), *a);
                }
            }
            let o = &mut out[(b * shape.q_len + i) * d..][..d];
            let inv = 1.0 / l;
            for (o, a) in o.iter_mut().zip(acc) {
                *o = bf16::round(a * inv);
            }
        }
    }
    out
}

/// CPU model of `sdpa_qk_scores_d64`: `S[b, i, j] = scale · Σ_d Q[b, i, d] K[b, j, d]` in
/// f32 (dimension order), layout `[batch_heads, q_len, kv_len]`.
pub fn qk_scores_ref(shape: AttnShape, q: &[u16], k: &[u16], scale: f32) -> Vec<f32> {
    let d = HEAD_DIM;
    let mut s = Vec::with_capacity(shape.score_elems());
    for b in 0..shape.batch_heads {
        for i in 0..shape.q_len {
            let qrow = &q[(b * shape.q_len + i) * d..][..d];
            for j in 0..shape.kv_len {
                let krow = &k[(b * shape.kv_len + j) * d..][..d];
                s.push(dot_bf16(qrow, krow) * scale);
            }
        }
    }
    s
}

/// CPU model of `softmax_rows_f32`: each row of `cols` values becomes `exp(x − max) /
/// Σ exp(x − max)` in place (f32). `scores.len()` must be a multiple of `cols`.
pub fn softmax_rows_ref(scores: &mut [f32], cols: usize) {
    assert!(cols > 0 && scores.len().is_multiple_of(cols));
    for row in scores.chunks_mut(cols) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// CPU model of `sdpa_pv_d64`: `O[b, i, :] = Σ_j P[b, i, j] V[b, j, :]` (keys in order,
/// f32), rounded to bf16; `p` is `[batch_heads, q_len, kv_len]` f32.
pub fn pv_ref(shape: AttnShape, p: &[f32], v: &[u16]) -> Vec<f32> {
    let d = HEAD_DIM;
    let mut out = vec![0.0f32; shape.q_elems()];
    for b in 0..shape.batch_heads {
        for i in 0..shape.q_len {
            let prow = &p[(b * shape.q_len + i) * shape.kv_len..][..shape.kv_len];
            let o = &mut out[(b * shape.q_len + i) * d..][..d];
            let mut acc = [0.0f32; HEAD_DIM];
            for (j, &pj) in prow.iter().enumerate() {
                let vrow = &v[(b * shape.kv_len + j) * d..][..d];
                for (a, &vv) in acc.iter_mut().zip(vrow) {
                    *a = pj.mul_add(bf16::to_f32(vv), *a);
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = bf16::round(a);
            }
        }
    }
    out
}

/// Textbook attention in f64, no tiling and no online softmax: for each query row, all
/// scores, their maximum, the normalized exponentials, then the weighted sum of `V` rows.
/// O(batch_heads · q_len · kv_len · HEAD_DIM). Used to test the references above; not
/// rounded to bf16.
pub fn attention_naive_f64(shape: AttnShape, q: &[u16], k: &[u16], v: &[u16], scale: f64) -> Vec<f64> {
    let d = HEAD_DIM;
    let f = |x: u16| bf16::to_f32(x) as f64;
    let mut out = vec![0.0f64; shape.q_elems()];
    for b in 0..shape.batch_heads {
        for i in 0..shape.q_len {
            let scores: Vec<f64> = (0..shape.kv_len)
                .map(|j| {
                    (0..d).map(|t| f(q[(b * shape.q_len + i) * d + t]) * f(k[(b * shape.kv_len + j) * d + t])).sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for t in 0..d {
                out[(b * shape.q_len + i) * d + t] =
                    (0..shape.kv_len).map(|j| e[j] / z * f(v[(b * shape.kv_len + j) * d + t])).sum();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn inputs(shape: AttnShape, seed: u64, range: f32) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
        let mut r = Rng::new(seed);
        (
            r.bf16_vec(shape.q_elems(), -range, range),
            r.bf16_vec(shape.kv_elems(), -range, range),
            r.bf16_vec(shape.kv_elems(), -1.0, 1.0),
        )
    }

    /// Every reference element within half a bf16 ulp (+ f32 noise) of the f64 formula.
    fn assert_close_to_naive(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(err <= w.abs() * 2f64.powi(-8) + 1e-5, "element {i}: {g} vs {w}");
        }
    }

    #[test]
    fn flash_reference_matches_textbook_attention() {
        // kv_len 150: two full 64-key tiles and a partial one; q_len not a multiple of 64.
        // range 3: scores up to |s| ≈ 64·9·0.125/… large enough that the running max grows
        // many times along a row (exercises the rescale).
        for (shape, range) in [
            (AttnShape { batch_heads: 2, q_len: 5, kv_len: 150 }, 3.0),
            (AttnShape { batch_heads: 3, q_len: 7, kv_len: 1 }, 1.0),
            (AttnShape::temporal(8, 2, 2), 1.0),
        ] {
            let (q, k, v) = inputs(shape, 42, range);
            let got = flash_attention_ref(shape, &q, &k, &v, default_scale());
            let want = attention_naive_f64(shape, &q, &k, &v, default_scale() as f64);
            assert_close_to_naive(&got, &want);
        }
    }

    #[test]
    fn unfused_path_matches_textbook_attention() {
        let shape = AttnShape::cross(2, 6, 11, 3);
        let (q, k, v) = inputs(shape, 9, 2.0);
        let mut s = qk_scores_ref(shape, &q, &k, default_scale());
        softmax_rows_ref(&mut s, shape.kv_len);
        let got = pv_ref(shape, &s, &v);
        let want = attention_naive_f64(shape, &q, &k, &v, default_scale() as f64);
        assert_close_to_naive(&got, &want);
    }

    #[test]
    fn softmax_rows_sum_to_one_are_positive_and_shift_invariant() {
        let mut r = Rng::new(3);
        let cols = 37;
        let raw: Vec<f32> = (0..cols * 20).map(|_| r.uniform_f32(-30.0, 30.0)).collect();
        let mut a = raw.clone();
        softmax_rows_ref(&mut a, cols);
        for row in a.chunks(cols) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "row sum {sum}");
            assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)));
        }
        // Adding a constant to a row does not change its softmax (the max is subtracted).
        let mut b: Vec<f32> = raw.iter().map(|x| x + 1000.0).collect();
        softmax_rows_ref(&mut b, cols);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        // A dominant entry takes all the mass; equal entries share it equally.
        let mut c = vec![0.0, 100.0, 0.0, 0.0];
        softmax_rows_ref(&mut c, 4);
        assert!((c[1] - 1.0).abs() < 1e-6 && c[0] < 1e-40);
        let mut e = vec![5.0; 8];
        softmax_rows_ref(&mut e, 8);
        assert!(e.iter().all(|&p| (p - 0.125).abs() < 1e-7));
    }

    #[test]
    fn attention_of_identical_keys_averages_values() {
        // All keys equal → uniform weights → each output is the mean of the V rows.
        let shape = AttnShape { batch_heads: 1, q_len: 3, kv_len: 4 };
        let mut r = Rng::new(5);
        let q = r.bf16_vec(shape.q_elems(), -1.0, 1.0);
        let krow = r.bf16_vec(HEAD_DIM, -1.0, 1.0);
        let k: Vec<u16> = (0..shape.kv_len).flat_map(|_| krow.clone()).collect();
        // V rows 1, 2, 3, 4 (constant rows): mean 2.5.
        let v: Vec<u16> = (1..=4).flat_map(|j| vec![bf16::from_f32(j as f32); HEAD_DIM]).collect();
        let o = flash_attention_ref(shape, &q, &k, &v, default_scale());
        assert!(o.iter().all(|&x| x == 2.5), "{:?}", &o[..4]);
    }

    #[test]
    fn dit_shapes() {
        // 8 frames of 16×16 patches, 16 heads, 120 text tokens.
        let s = AttnShape::spatial(8, 256, 16);
        assert_eq!((s.batch_heads, s.q_len, s.kv_len), (128, 256, 256));
        let t = AttnShape::temporal(8, 256, 16);
        assert_eq!((t.batch_heads, t.q_len, t.kv_len), (4096, 8, 8));
        let c = AttnShape::cross(8, 256, 120, 16);
        assert_eq!((c.batch_heads, c.q_len, c.kv_len), (16, 2048, 120));
        // Same token count, all three: Q has frames·tokens·hidden elements.
        assert_eq!(s.q_elems(), t.q_elems());
        assert_eq!(s.q_elems(), c.q_elems());
        assert_eq!(s.flops(), 4.0 * 128.0 * 256.0 * 256.0 * 64.0);
        assert_eq!(default_scale(), 0.125);
    }
}
