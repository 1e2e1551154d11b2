//! The mini DiT video model `dit_worker` runs on a real GPU: sizes and the per-block stage
//! order, so the worker, its ground truth and the docs agree.
//!
//! One request = `steps` denoising steps × `blocks` transformer blocks, then one VAE decode.
//! A block is, in order (each a stage scope of DESIGN.md):
//! 1. `norm` — layer norm of the tokens;
//! 2. `attention.spatial` — QKV projection GEMM, fused attention within each frame, output
//!    projection GEMM;
//! 3. `attention.temporal` — the same across frames (short sequences: `frames` keys);
//! 4. `norm`;
//! 5. `attention.cross` — Q projection, unfused attention (scores, softmax, PV) to the
//!    `text_tokens` text embeddings, output projection;
//! 6. `norm`;
//! 7. `ffn` — GEMM + GELU, GEMM.
//!
//! The VAE decode (`vae.decode`) is `vae_layers` 3×3×3 convolutions over the latent video
//! (`latent_channels → vae_channels → … → 3`). The workload is for timing: tensors are
//! reused between stages without the reshapes a real model does (the kernels are checked
//! one by one against their references by `dit_worker --check`, not end to end).

use crate::attention::{AttnShape, HEAD_DIM};
use crate::conv3d::Conv3dShape;
use crate::ffn::FfnShape;

/// Sizes of the mini DiT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DitConfig {
    /// Latent frames.
    pub frames: usize,
    /// Tokens per frame (patches of the latent: `(latent_height / 2) · (latent_width / 2)`).
    pub tokens_per_frame: usize,
    /// Attention heads (model width = heads · [`HEAD_DIM`]).
    pub heads: usize,
    /// Text tokens of the cross attention.
    pub text_tokens: usize,
    /// FFN inner width as a multiple of the model width.
    pub ffn_mult: usize,
    /// Transformer blocks per step.
    pub blocks: usize,
    /// Denoising steps per request.
    pub steps: usize,
    /// Latent channels entering the VAE decoder.
    pub latent_channels: usize,
    /// Width of the VAE decoder's inner convolutions.
    pub vae_channels: usize,
    /// Latent rows (and columns: square).
    pub latent_size: usize,
    /// Convolutions of the VAE decode (≥ 2: in, `vae_layers − 2` inner, out to RGB).
    pub vae_layers: usize,
}

impl Default for DitConfig {
    /// 8 frames of a 32×32 latent (16×16 = 256 tokens each), 16 heads (width 1024), 120 text
    /// tokens, FFN ×4, 4 blocks, 10 steps, VAE 4 → 128 → 128 → 3 channels.
    fn default() -> Self {
        DitConfig {
            frames: 8,
            tokens_per_frame: 256,
            heads: 16,
            text_tokens: 120,
            ffn_mult: 4,
            blocks: 4,
            steps: 10,
            latent_channels: 4,
            vae_channels: 128,
            latent_size: 32,
            vae_layers: 3,
        }
    }
}

impl DitConfig {
    /// Model width (`heads · HEAD_DIM`).
    pub fn hidden(&self) -> usize {
        self.heads * HEAD_DIM
    }
    /// Tokens of one sample (`frames · tokens_per_frame`).
    pub fn tokens(&self) -> usize {
        self.frames * self.tokens_per_frame
    }
    /// Shape of the spatial attention.
    pub fn spatial(&self) -> AttnShape {
        AttnShape::spatial(self.frames, self.tokens_per_frame, self.heads)
    }
    /// Shape of the temporal attention.
    pub fn temporal(&self) -> AttnShape {
        AttnShape::temporal(self.frames, self.tokens_per_frame, self.heads)
    }
    /// Shape of the cross attention.
    pub fn cross(&self) -> AttnShape {
        AttnShape::cross(self.frames, self.tokens_per_frame, self.text_tokens, self.heads)
    }
    /// Shape of the FFN.
    pub fn ffn(&self) -> FfnShape {
        FfnShape { tokens: self.tokens(), hidden: self.hidden(), ffn_hidden: self.ffn_mult * self.hidden() }
    }
    /// The VAE decode's convolutions, in order.
    pub fn vae_convs(&self) -> Vec<Conv3dShape> {
        let layers = self.vae_layers.max(2);
        (0..layers)
            .map(|l| Conv3dShape {
                cin: if l == 0 { self.latent_channels } else { self.vae_channels },
                cout: if l + 1 == layers { 3 } else { self.vae_channels },
                depth: self.frames,
                height: self.latent_size,
                width: self.latent_size,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shapes_are_consistent() {
        let c = DitConfig::default();
        assert_eq!(c.hidden(), 1024);
        assert_eq!(c.tokens(), 2048);
        // Patches of 2×2 latent pixels.
        assert_eq!(c.tokens_per_frame, (c.latent_size / 2) * (c.latent_size / 2));
        // Every attention sees all tokens × width.
        for a in [c.spatial(), c.temporal(), c.cross()] {
            assert_eq!(a.q_elems(), c.tokens() * c.hidden());
        }
        assert_eq!(c.ffn().ffn_hidden, 4096);
        let v = c.vae_convs();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].cin, v[0].cout, v[2].cin, v[2].cout), (4, 128, 128, 3));
        assert!(v.windows(2).all(|w| w[0].cout == w[1].cin));
    }
}
