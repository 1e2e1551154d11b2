//! 3-D convolution of the VAE decoder (`kernels/conv3d.cu`, `vae_conv3d_k3_bf16`):
//! kernel 3×3×3, stride 1, zero padding 1 ("same" size), bias, no activation.
//!
//! `x` is `[cin, depth, height, width]` bf16 (one sample; frames are the depth axis), `w`
//! `[cout, cin, 3, 3, 3]` bf16, `bias` `[cout]` bf16, `y` `[cout, depth, height, width]` bf16:
//! `y[o, z, r, c] = bias[o] + Σ_{i, dz, dr, dc} w[o, i, dz, dr, dc] · x[i, z+dz−1, r+dr−1,
//! c+dc−1]` (out-of-range `x` = 0), summed in f32 over `i`, then `dz`, `dr`, `dc`. Launch:
//! one thread per output, block `CONV3D_THREADS` over `height × width` positions, grid
//! `(ceil(height · width / CONV3D_THREADS), depth, cout)`.
//!
//! Tolerance ([`CONV3D_TOLERANCE`]): same summation order on both sides, so only
//! contraction differences (~cin · 27 f32 ulps) and one bf16 ulp after the store.

use crate::bf16;
use crate::Tolerance;

/// Kernel edge (3×3×3).
pub const CONV3D_K: usize = 3;
/// Threads per block.
pub const CONV3D_THREADS: usize = 128;

/// GPU-vs-reference tolerance of conv3d outputs (bf16 values; see module docs).
pub const CONV3D_TOLERANCE: Tolerance = Tolerance { abs: 2e-3, rel: 1e-2 };

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dShape {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Frames (depth axis).
    pub depth: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Conv3dShape {
    /// Elements of `x`.
    pub fn x_elems(&self) -> usize {
        self.cin * self.depth * self.height * self.width
    }
    /// Elements of `w`.
    pub fn w_elems(&self) -> usize {
        self.cout * self.cin * CONV3D_K * CONV3D_K * CONV3D_K
    }
    /// Elements of `y`.
    pub fn y_elems(&self) -> usize {
        self.cout * self.depth * self.height * self.width
    }
    /// Floating-point operations (2 · 27 · cin per output).
    pub fn flops(&self) -> f64 {
        2.0 * 27.0 * self.cin as f64 * self.y_elems() as f64
    }
}

/// CPU model of `vae_conv3d_k3_bf16`: the direct loop above, rounded to bf16; returns `y`
/// as f32 values. Panics if a slice is shorter than the shape says.
pub fn conv3d_ref(s: Conv3dShape, x: &[u16], w: &[u16], bias: &[u16]) -> Vec<f32> {
    assert!(x.len() >= s.x_elems() && w.len() >= s.w_elems() && bias.len() >= s.cout);
    let (d, h, wd) = (s.depth as isize, s.height as isize, s.width as isize);
    let mut y = Vec::with_capacity(s.y_elems());
    for (o, &b) in bias.iter().enumerate().take(s.cout) {
        for z in 0..d {
            for r in 0..h {
                for c in 0..wd {
                    let mut acc = 0.0f32;
                    for i in 0..s.cin {
                        for dz in 0..3isize {
                            for dr in 0..3isize {
                                for dc in 0..3isize {
                                    let (zz, rr, cc) = (z + dz - 1, r + dr - 1, c + dc - 1);
                                    if zz < 0 || zz >= d || rr < 0 || rr >= h || cc < 0 || cc >= wd {
                                        continue;
                                    }
                                    let xi = ((i as isize * d + zz) * h + rr) * wd + cc;
                                    let wi = (((o * s.cin + i) * 3 + dz as usize) * 3 + dr as usize) * 3 + dc as usize;
                                    acc = bf16::to_f32(w[wi]).mul_add(bf16::to_f32(x[xi as usize]), acc);
                                }
                            }
                        }
                    }
                    y.push(bf16::round(acc + bf16::to_f32(b)));
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn all_ones_counts_the_neighbours_inside_the_volume() {
        // 1 channel, 3×3×3 input of ones, kernel of ones, bias 0: each output counts the
        // in-range neighbours: corner 2·2·2 = 8, edge 2·2·3 = 12, face 2·3·3 = 18, centre 27.
        let s = Conv3dShape { cin: 1, cout: 1, depth: 3, height: 3, width: 3 };
        let one = bf16::from_f32(1.0);
        let y = conv3d_ref(s, &[one; 27], &[one; 27], &[0]);
        let at = |z: usize, r: usize, c: usize| y[(z * 3 + r) * 3 + c];
        assert_eq!(at(0, 0, 0), 8.0);
        assert_eq!(at(2, 2, 2), 8.0);
        assert_eq!(at(0, 0, 1), 12.0);
        assert_eq!(at(1, 2, 0), 12.0);
        assert_eq!(at(0, 1, 1), 18.0);
        assert_eq!(at(1, 1, 2), 18.0);
        assert_eq!(at(1, 1, 1), 27.0);
        assert_eq!(y.iter().sum::<f32>(), 8.0 * 8.0 + 12.0 * 12.0 + 18.0 * 6.0 + 27.0);
    }

    #[test]
    fn a_centred_delta_kernel_copies_channels_and_bias_adds() {
        // w[o, i] = δ(o, i) at the kernel centre: y = x + bias.
        let s = Conv3dShape { cin: 2, cout: 2, depth: 2, height: 3, width: 4 };
        let mut r = Rng::new(4);
        let x = r.bf16_vec(s.x_elems(), -1.0, 1.0);
        let mut w = vec![0u16; s.w_elems()];
        for o in 0..2 {
            w[((o * 2 + o) * 3 + 1) * 9 + 3 + 1] = bf16::from_f32(1.0);
        }
        let bias = bf16::from_f32_slice(&[0.0, 0.5]);
        let y = conv3d_ref(s, &x, &w, &bias);
        let per = s.depth * s.height * s.width;
        for (i, (&yv, &xv)) in y.iter().zip(&x).enumerate() {
            let want = bf16::round(bf16::to_f32(xv) + if i >= per { 0.5 } else { 0.0 });
            assert_eq!(yv, want, "element {i}");
        }
    }

    #[test]
    fn direct_loop_matches_im2col_times_matrix() {
        // Independent formulation: gather 27·cin patches (im2col), multiply by the weight
        // matrix in f64.
        let s = Conv3dShape { cin: 3, cout: 4, depth: 3, height: 5, width: 6 };
        let mut r = Rng::new(8);
        let x = r.bf16_vec(s.x_elems(), -1.0, 1.0);
        let w = r.bf16_vec(s.w_elems(), -0.5, 0.5);
        let bias = r.bf16_vec(s.cout, -0.1, 0.1);
        let y = conv3d_ref(s, &x, &w, &bias);
        let f = |b: u16| bf16::to_f32(b) as f64;
        let (d, h, wd) = (s.depth, s.height, s.width);
        let kk = s.cin * 27;
        let mut cols = vec![0.0f64; kk * d * h * wd];
        for z in 0..d {
            for rr in 0..h {
                for c in 0..wd {
                    let p = (z * h + rr) * wd + c;
                    for i in 0..s.cin {
                        for t in 0..27 {
                            let (dz, dr, dc) = (t / 9, (t / 3) % 3, t % 3);
                            let (zz, r2, c2) = (z + dz, rr + dr, c + dc); // +1 offset
                            if (1..=d).contains(&zz) && (1..=h).contains(&r2) && (1..=wd).contains(&c2) {
                                cols[(i * 27 + t) * d * h * wd + p] = f(x[((i * d + zz - 1) * h + r2 - 1) * wd + c2 - 1]);
                            }
                        }
                    }
                }
            }
        }
        for o in 0..s.cout {
            for p in 0..d * h * wd {
                let want: f64 = (0..kk).map(|q| f(w[o * kk + q]) * cols[q * d * h * wd + p]).sum::<f64>() + f(bias[o]);
                let got = y[o * d * h * wd + p] as f64;
                assert!((got - want).abs() <= want.abs() * 2f64.powi(-8) + 1e-5, "o={o} p={p}: {got} vs {want}");
            }
        }
        assert_eq!(s.flops(), 2.0 * 27.0 * 3.0 * (4 * 3 * 5 * 6) as f64);
    }
}
