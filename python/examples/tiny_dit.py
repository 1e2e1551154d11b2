"""Tiny diffusers pipelines with random weights, for the auto-instrumentation tests
(issue 12): nothing is downloaded, everything runs on the CPU in seconds. The worker has no
gpuspan code at all; ``gpuspan run -- python tiny_dit.py wan`` instruments it.

Families:
- ``wan``: ``WanPipeline`` (2-layer ``WanTransformer3DModel``: joint space-time self attention
  ``attn1``, cross attention ``attn2``; tiny ``AutoencoderKLWan``;
  ``FlowMatchEulerDiscreteScheduler``);
- ``latte``: ``LattePipeline`` (``LatteTransformer3DModel``: spatial blocks and separate
  temporal blocks; ``AutoencoderKL``; ``DDIMScheduler``);
- ``pixart``: ``PixArtAlphaPipeline`` (image DiT ``PixArtTransformer2DModel``).

Prompt embeddings are passed directly (no text encoder, no tokenizer), except with
``--text-encoder`` (``wan`` only): a 1-layer ``UMT5EncoderModel`` with random weights and a
word-level tokenizer built in memory encode the prompt inside the request, before the first
step (the negative prompt's embeddings are still passed: one encoder call). Guidance is on
(``guidance_scale`` 5: the denoiser runs on a batch of two, or twice for Wan). Prints
``steps N`` and ``checksum <sha256 of the output frames>``, which must not change under
gpuspan.
"""

import argparse
import hashlib

import numpy as np
import torch


def _vae2d():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def _text_encoder():
    """A tiny ``UMT5EncoderModel`` (random weights, ``d_model`` 32 = Wan's ``text_dim``) and a
    word-level tokenizer made in memory: nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "cat", "on", "the", "moon"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = UMT5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    return tokenizer, UMT5EncoderModel(config).eval()


def build(family: str, text_encoder: bool = False):
    """The pipeline and its extra call arguments."""
    torch.manual_seed(0)
    if text_encoder and family != "wan":
        raise SystemExit("--text-encoder: wan only")
    if family == "wan":
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )
        tokenizer, encoder = _text_encoder() if text_encoder else (None, None)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=transformer)
        return pipe, dict(height=16, width=16, num_frames=5)
    common = dict(
        sample_size=8, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32, in_channels=4,
        cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    from diffusers import DDIMScheduler

    if family == "latte":
        from diffusers import LattePipeline, LatteTransformer3DModel

        transformer = LatteTransformer3DModel(num_layers=1, video_length=4, **common)
        pipe = LattePipeline(tokenizer=None, text_encoder=None, vae=_vae2d(), transformer=transformer, scheduler=DDIMScheduler())
        return pipe, dict(video_length=4, height=8, width=8, mask_feature=False, clean_caption=False)
    if family == "pixart":
        from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

        transformer = PixArtTransformer2DModel(num_layers=2, **common)
        pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=_vae2d(), transformer=transformer, scheduler=DDIMScheduler())
        mask = torch.ones(1, 8)
        return pipe, dict(height=8, width=8, use_resolution_binning=False, clean_caption=False,
                          prompt_attention_mask=mask, negative_prompt_attention_mask=mask)
    raise SystemExit(f"unknown family {family!r}: wan, latte or pixart")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=["wan", "latte", "pixart"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--text-encoder", action="store_true", help="encode a text prompt in the request (wan)")
    args = ap.parse_args()
    pipe, extra = build(args.family, args.text_encoder)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, 8, 32, generator=g)
    negative = torch.randn(1, 8, 32, generator=g)
    digest = hashlib.sha256()
    if args.text_encoder:  # the prompt's embeddings come from the text encoder (8 tokens)
        extra.update(prompt="a cat on the moon", max_sequence_length=8)
        prompt = None
    for r in range(args.requests):
        out = pipe(
            negative_prompt=None, prompt_embeds=prompt, negative_prompt_embeds=negative,
            num_inference_steps=args.steps, guidance_scale=5.0,
            generator=torch.Generator().manual_seed(1 + r), output_type="np", **extra,
        )
        frames = np.asarray(out.frames if hasattr(out, "frames") else out.images)
        digest.update(frames.tobytes())
    print(f"steps {args.steps}")
    print(f"checksum {digest.hexdigest()}")


if __name__ == "__main__":
    main()
