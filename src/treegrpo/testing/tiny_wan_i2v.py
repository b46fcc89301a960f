"""Tiny random-weight Wan image-to-video pipelines, built offline like :mod:`treegrpo.testing.tiny_models`.

Two layouts of diffusers' ``WanImageToVideoPipeline`` (UMT5 text encoder, Euler scheduler, shift 3):

- ``variant="wan21"``: Wan 2.1 I2V. A CLIP vision encoder (2 layers, hidden 8, 8 x 8 input in
  4 x 4 patches: 5 tokens), the 2.1 VAE (16 channels, 4x temporal / 8x spatial) and a transformer
  taking 36 channels (16 noisy + 4 mask + 16 source) with ``image_dim`` and the separate image
  key / value projections (``added_kv_proj_dim``) of the released model. That attention takes the
  last 512 context tokens as text, so this layout is run at ``max_sequence_length=512``.
- ``variant="a14b"``: Wan 2.2 I2V-A14B. The 2.1 VAE and 36-channel input, no image encoder, two
  transformers switched at ``boundary_ratio`` 0.7 (with shift 3 and 3 steps: steps 0-1 high-noise, 2 low-noise).
- ``variant="ti2v"``: Wan 2.2 TI2V-5B. The 2.2 VAE (residual, 2 x 2 patchified pixels, 16x spatial,
  ``z_dim`` 8 here), no image encoder, ``expand_timesteps=True`` (the first latent frame is the
  source image's, at timestep 0).
"""

from __future__ import annotations

from pathlib import Path

import torch

VARIANTS: tuple[str, ...] = ("wan21", "a14b", "ti2v")
TI2V_Z_DIM = 8


def _transformer(seed: int, in_channels: int, out_channels: int, image_dim: int | None):  # -> WanTransformer3DModel
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=out_channels, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_dim,
        added_kv_proj_dim=None if image_dim is None else 24,
    ).eval()


def build_tiny_wan_i2v(path: str | Path, seed: int = 0, variant: str = "wan21") -> Path:
    """Save a tiny ``WanImageToVideoPipeline`` of ``variant`` (``"wan21"``, ``"a14b"`` or ``"ti2v"``) to ``path``."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from treegrpo.testing.tiny_models import tiny_t5_config, tiny_t5_tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    path = Path(path)
    torch.manual_seed(seed + 1)
    if variant != "ti2v":
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        ).eval()
    else:
        vae = AutoencoderKLWan(
            base_dim=4, decoder_base_dim=4, z_dim=TI2V_Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
            patch_size=2, scale_factor_spatial=16, latents_mean=[0.1 * i for i in range(TI2V_Z_DIM)],
            latents_std=[1.0 + 0.1 * i for i in range(TI2V_Z_DIM)],
        ).eval()
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(**tiny_t5_config(tokenizer))).eval()
    image_encoder = image_processor = transformer_2 = None
    if variant == "wan21":
        torch.manual_seed(seed + 3)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2, image_size=8,
            intermediate_size=16, patch_size=4,
        )).eval()
        image_processor = CLIPImageProcessor(crop_size=8, size=8)
        transformer = _transformer(seed, 16 + 4 + 16, 16, image_dim=8)
    elif variant == "a14b":
        transformer, transformer_2 = (_transformer(seed + offset, 16 + 4 + 16, 16, image_dim=None) for offset in (0, 5))
    else:
        transformer = _transformer(seed, TI2V_Z_DIM, TI2V_Z_DIM, image_dim=None)
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        image_processor=image_processor, image_encoder=image_encoder, transformer=transformer, transformer_2=transformer_2,
        boundary_ratio=0.7 if variant == "a14b" else None, expand_timesteps=variant == "ti2v",
    )
    pipe.save_pretrained(path)
    return path
