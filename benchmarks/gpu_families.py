"""Published architectures of Qwen-Image(-Edit), FLUX.2 [klein] 4B and [dev], Z-Image, FLUX.1-Kontext, Sana, Wan 2.1 / 2.2 and HunyuanVideo 1.5 for ``gpu_iteration.py``.

Random weights of the real sizes: the cost of a step does not depend on the values. Each entry
builds the family's diffusers pipeline without text encoders (prompt embeddings are random, of the
real width) and names the library adapter that wraps it. The configs are those of the released
``transformer/config.json`` and ``vae/config.json`` files (diffusers' constructor defaults for
Qwen-Image and Z-Image match them; FLUX.2 [klein] 4B: 5 double + 20 single blocks, 24 heads of
128, text width 3 x 2560 from Qwen3-4B); latent statistics are left at their defaults, which do
not change the timing. Tiny variants with the same code path run the CPU test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

QWENIMAGE_TRANSFORMER: dict[str, Any] = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)
"""Qwen/Qwen-Image: about 20B parameters (LoRA only on one 141 GB GPU: full fine-tuning's fp32 Adam state does not fit)."""
QWENIMAGE_VAE: dict[str, Any] = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
)
FLUX2_KLEIN_4B_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000, guidance_embeds=False,
)
"""black-forest-labs/FLUX.2-klein-(base-)4B: about 4B parameters."""
FLUX2_DEV_TRANSFORMER: dict[str, Any] = {**FLUX2_KLEIN_4B_TRANSFORMER, "num_layers": 8, "num_single_layers": 48,
                                          "num_attention_heads": 48, "joint_attention_dim": 15360, "guidance_embeds": True}
"""black-forest-labs/FLUX.2-dev: 8 double + 48 single blocks, 48 heads of 128, text width 3 x 5120 (Mistral-Small-3
layers 10, 20, 30), guidance embedding (diffusers' Flux2Transformer2DModel defaults; its conversion script's
``flux2-dev`` config): about 32B parameters (LoRA only: the bf16 weights alone are about 64 GB)."""
FLUX2_VAE: dict[str, Any] = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=32)
"""FLUX.2's VAE: 32 latent channels, 8x; the rest are diffusers' defaults for AutoencoderKLFlux2."""
ZIMAGE_TRANSFORMER: dict[str, Any] = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2, n_heads=30,
    n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
    axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
)
"""Tongyi-MAI/Z-Image(-Turbo): about 6B parameters; the VAE is FLUX.1's."""
FLUX1_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16, norm_num_groups=32,
    sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)
FLUX1_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
"""black-forest-labs/FLUX.1-Kontext-dev (as FLUX.1-dev): about 12B parameters, guidance-distilled."""

WAN21_1_3B_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
    freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=1024,
)
"""Wan-AI/Wan2.1-T2V-1.3B-Diffusers: about 1.4B parameters (UMT5-XXL text width 4096)."""
WAN_14B_TRANSFORMER: dict[str, Any] = {**WAN21_1_3B_TRANSFORMER, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
"""Wan2.1-T2V-14B, and each of Wan2.2-T2V-A14B's two experts: about 14B parameters."""
WAN_VAE: dict[str, Any] = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
"""Wan 2.1's VAE (also Wan2.2-A14B's): 4x temporal, 8x spatial, 16 channels."""
WAN21_I2V_14B_TRANSFORMER: dict[str, Any] = {**WAN_14B_TRANSFORMER, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}
"""Wan-AI/Wan2.1-I2V-14B-480P-Diffusers: the 14B blocks on 16 noisy + 4 mask + 16 source channels, CLIP ViT-H/14 image
tokens through their own key / value projections (about 14B parameters)."""
WAN_IMAGE_ENCODER: dict[str, Any] = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
    patch_size=14, projection_dim=1024, hidden_act="gelu",
)
"""Wan 2.1 I2V's image encoder (open-clip ViT-H/14 as a transformers CLIPVisionModel: 257 tokens of 1280)."""
WAN22_TI2V_5B_TRANSFORMER: dict[str, Any] = {**WAN21_1_3B_TRANSFORMER, "num_attention_heads": 24, "ffn_dim": 14336,
                                             "in_channels": 48, "out_channels": 48}
"""Wan-AI/Wan2.2-TI2V-5B-Diffusers: 30 blocks of 24 heads of 128 on the 2.2 VAE's 48 channels (about 5B parameters)."""
WAN22_VAE: dict[str, Any] = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
)
"""Wan 2.2's VAE (TI2V-5B): 4x temporal, 16x spatial (2 x 2 pixel patches), 48 channels; the per-channel
normalisation is left at 0 / 1 (the published 48 means and stds do not change the cost)."""

SANA_1600M_TRANSFORMER: dict[str, Any] = dict(
    in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
    num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240, caption_channels=2304,
    mlp_ratio=2.5, sample_size=32, patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6,
)
"""Efficient-Large-Model/Sana_1600M_1024px_diffusers: width 2240, 20 blocks (about 1.6B; Gemma-2-2B text width 2304)."""
SANA_600M_TRANSFORMER: dict[str, Any] = {**SANA_1600M_TRANSFORMER, "num_attention_heads": 36, "num_layers": 28,
                                         "num_cross_attention_heads": 16, "cross_attention_head_dim": 72,
                                         "cross_attention_dim": 1152}
"""Sana_600M_1024px: width 1152, 28 blocks, 16 cross-attention heads (the Sana repository's SanaMS_600M_P1_D28)."""
DC_AE_F32C32: dict[str, Any] = dict(
    in_channels=3, latent_channels=32, attention_head_dim=32,
    encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3, decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024], decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    encoder_layers_per_block=[2, 2, 2, 3, 3, 3], decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]], decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types=["batch_norm"] * 3 + ["rms_norm"] * 3,
    decoder_act_fns=["relu"] * 3 + ["silu"] * 3, scaling_factor=0.41407,
)
"""mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers: 32x downsampling, 32 channels (512 x 512 = 16 x 16 latent tokens)."""

LTX2_19B_TRANSFORMER: dict[str, Any] = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=128,
    cross_attention_dim=4096, vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20, base_height=2048, base_width=2048,
    audio_in_channels=128, audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1, audio_num_attention_heads=32,
    audio_attention_head_dim=64, audio_cross_attention_dim=2048, audio_scale_factor=4, audio_pos_embed_max_pos=20,
    audio_sampling_rate=16000, audio_hop_length=160, num_layers=48, activation_fn="gelu-approximate",
    qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=3840,
    attention_bias=True, attention_out_bias=True, rope_theta=10000.0, rope_double_precision=True, causal_offset=1,
    timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000, rope_type="split",
)
"""Lightricks/LTX-2 (19B: a 14B video stream of 32 x 128 heads and a 5B audio stream of 32 x 64 heads, 48 blocks,
Gemma-3-12B caption width 3840), as diffusers' ``scripts/convert_ltx2_to_diffusers.py`` writes it for LTX-2.0."""
LTX2_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(256, 512, 1024, 2048),
    down_block_types=("LTX2VideoDownBlock3D",) * 4, decoder_block_out_channels=(256, 512, 1024),
    layers_per_block=(4, 6, 6, 2, 2), decoder_layers_per_block=(5, 5, 5, 5), spatio_temporal_scaling=(True,) * 4,
    decoder_spatio_temporal_scaling=(True,) * 3, decoder_inject_noise=(False,) * 4,
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"), upsample_residual=(True,) * 3,
    upsample_factor=(2, 2, 2), timestep_conditioning=False, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6,
    encoder_causal=True, decoder_causal=False, encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="reflect",
    spatial_compression_ratio=32, temporal_compression_ratio=8,
)
"""LTX-2's video VAE: 32x spatial, 8x temporal, 128 channels (512 x 512 x 33 frames = 5 x 16 x 16 latent tokens)."""
LTX2_AUDIO_VAE: dict[str, Any] = dict(
    base_channels=128, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=None, in_channels=2,
    resolution=256, latent_channels=8, norm_type="pixel", causality_axis="height", dropout=0.0,
    mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=64, double_z=True,
)
"""LTX-2's audio VAE (only its shapes are used: 8 channels x 16 latent mel bins = 128 per audio token, 25 tokens a second)."""

HUNYUANVIDEO15_480P_T2V_TRANSFORMER: dict[str, Any] = dict(
    in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54, num_refiner_layers=2,
    mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=3584, text_embed_2_dim=1472,
    image_embed_dim=1152, rope_theta=256.0, rope_axes_dim=(16, 56, 56), use_meanflow=False, target_size=640, task_type="t2v",
)
"""hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v (diffusers' conversion script's ``480p_t2v`` config):
54 double-stream blocks of 16 heads of 128, about 8.3B parameters; Qwen2.5-VL-7B width 3584, ByT5 (Glyph-SDXL) 1472."""
HUNYUANVIDEO15_VAE: dict[str, Any] = dict(
    latent_channels=32, block_out_channels=(128, 256, 512, 1024, 1024), layers_per_block=2, spatial_compression_ratio=16,
    temporal_compression_ratio=4, scaling_factor=1.03682,
)
"""HunyuanVideo 1.5's VAE (the conversion script builds diffusers' defaults): 16x spatial, 4x temporal, 32 channels."""

TINY: dict[str, dict[str, dict[str, Any]]] = {
    "qwenimage": dict(
        transformer=dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=8,
                         num_attention_heads=2, joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(4, 2, 2)),
        vae=dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
    ),
    "flux2": dict(
        transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                         num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
                         axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False),
        vae=dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 use_quant_conv=False, use_post_quant_conv=False),
    ),
    "flux2_dev": dict(
        transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                         num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256,
                         axes_dims_rope=(2, 2, 2, 2), guidance_embeds=True),
        vae=dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 use_quant_conv=False, use_post_quant_conv=False),
    ),
    "zimage": dict(
        transformer=dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
                         n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32,
                         rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32]),
        vae=dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
                 latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
    ),
    "flux_kontext": dict(
        transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                         axes_dims_rope=(2, 2, 4)),
        vae=dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
                 latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
    ),
    "wan": dict(
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                         out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                         qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
    ),
}

TINY["sana"] = dict(
    transformer=dict(in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                     num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
                     sample_size=16, patch_size=1),
    vae=dict(in_channels=3, latent_channels=32, attention_head_dim=8, encoder_block_types=["ResBlock", "EfficientViTBlock"],
             decoder_block_types=["ResBlock", "EfficientViTBlock"], encoder_block_out_channels=[8, 32],
             decoder_block_out_channels=[8, 32], encoder_layers_per_block=[1, 1], decoder_layers_per_block=[1, 1],
             encoder_qkv_multiscales=[[], [5]], decoder_qkv_multiscales=[[], [5]], decoder_norm_types=["batch_norm", "rms_norm"],
             decoder_act_fns=["relu", "silu"], scaling_factor=0.41407),
)
TINY["ltx2"] = dict(
    transformer=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                     audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
                     audio_cross_attention_dim=8, num_layers=1, caption_channels=16, rope_double_precision=False,
                     rope_type="split"),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
             layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
             decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False),
             downsample_type=("spatiotemporal",), upsample_residual=(False,), upsample_factor=(1,),
             timestep_conditioning=False, patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False),
)
TINY["hunyuanvideo15"] = dict(
    transformer=dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                     num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8,
                     rope_axes_dim=(4, 2, 2), target_size=64, task_type="t2v"),
    vae=dict(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, spatial_compression_ratio=8,
             temporal_compression_ratio=4, scaling_factor=0.9),
)
TINY["qwenimage_edit"] = TINY["qwenimage"]
TINY["wan_i2v"] = dict(transformer={**TINY["wan"]["transformer"], "in_channels": 36, "image_dim": 8, "added_kv_proj_dim": 24},
                       vae=TINY["wan"]["vae"])
TINY["wan_ti2v"] = dict(
    transformer={**TINY["wan"]["transformer"], "in_channels": 8, "out_channels": 8},
    vae=dict(base_dim=4, decoder_base_dim=4, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
             temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
             scale_factor_spatial=16, latents_mean=[0.0] * 8, latents_std=[1.0] * 8),
)
"""Qwen-Image-Edit has Qwen-Image's transformer and VAE (the released edit model: same architecture, other weights)."""


@dataclass(frozen=True)
class FamilyBuild:
    """How to build one family's text-encoder-free pipeline and which adapter wraps it."""

    adapter: str
    """``module:Class`` of the library adapter."""
    build: Callable[[dict[str, Any], dict[str, Any]], Any]
    """(transformer config, VAE config) -> pipeline of random weights (created on the current default device)."""


def _qwenimage(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
        time_shift_type="exponential", use_dynamic_shifting=True,
    )
    return QwenImagePipeline(scheduler=scheduler, vae=AutoencoderKLQwenImage(**vae), text_encoder=None, tokenizer=None,
                             transformer=QwenImageTransformer2DModel(**transformer))


def _qwenimage_edit(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    """Qwen-Image-Edit: Qwen-Image's transformer, VAE and scheduler in the edit pipeline (no VL encoder, no processor)."""
    from diffusers import QwenImageEditPipeline

    qwenimage = _qwenimage(transformer, vae)
    return QwenImageEditPipeline(scheduler=qwenimage.scheduler, vae=qwenimage.vae, text_encoder=None, tokenizer=None,
                                 processor=None, transformer=qwenimage.transformer)


def _flux2(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        time_shift_type="exponential", use_dynamic_shifting=True,
    )
    return Flux2KleinPipeline(scheduler=scheduler, vae=AutoencoderKLFlux2(**vae), text_encoder=None, tokenizer=None,
                              transformer=Flux2Transformer2DModel(**transformer))


def _flux2_dev(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    """FLUX.2 [dev]'s Flux2Pipeline with the [klein] scheduler config (FLUX.2-dev's own was not read here; the
    pipeline passes its sigmas and ``mu``, so only ``time_shift_type`` matters, and the step's cost not at all)."""
    from diffusers import Flux2Pipeline

    klein = _flux2(transformer, vae)
    return Flux2Pipeline(scheduler=klein.scheduler, vae=klein.vae, text_encoder=None, tokenizer=None,
                         transformer=klein.transformer)


def _zimage(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    model = ZImageTransformer2DModel(**transformer)
    with torch.no_grad():  # torch.empty in the constructor
        model.x_pad_token.fill_(1.0)
        model.cap_pad_token.fill_(1.0)
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=AutoencoderKL(**vae),
                          text_encoder=None, tokenizer=None, transformer=model)


def _flux(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's published scheduler config
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        use_dynamic_shifting=True,
    )
    return FluxPipeline(scheduler=scheduler, vae=AutoencoderKL(**vae), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=FluxTransformer2DModel(**transformer))


def _flux_kontext(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-Kontext-dev's published scheduler config
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        use_dynamic_shifting=True,
    )
    return FluxKontextPipeline(scheduler=scheduler, vae=AutoencoderKL(**vae), text_encoder=None, tokenizer=None,
                               text_encoder_2=None, tokenizer_2=None, transformer=FluxTransformer2DModel(**transformer))


def _sana(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    """Sana with the released scheduler: DPM-Solver++ on flow sigmas, flow shift 3 (sampled by the engine's Euler steps)."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return SanaPipeline(tokenizer=None, text_encoder=None, vae=AutoencoderDC(**vae), scheduler=scheduler,
                        transformer=SanaTransformer2DModel(**transformer))


def _wan(transformer: dict[str, Any], vae: dict[str, Any], two_experts: bool = False) -> Any:
    """Wan 2.1 (one transformer) or Wan2.2-A14B (two, boundary 0.875, flow shift 12) with the released UniPC scheduler."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0 if two_experts else 3.0,
    )
    return WanPipeline(
        tokenizer=None, text_encoder=None, vae=AutoencoderKLWan(**vae), scheduler=scheduler,
        transformer=WanTransformer3DModel(**transformer),
        transformer_2=WanTransformer3DModel(**transformer) if two_experts else None,
        boundary_ratio=0.875 if two_experts else None,
    )


def _ltx2(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    """LTX-2 with LTX-2's scheduler settings (dynamic shift 0.95 to 2.05, terminal 0.1); no text encoder, connectors or
    vocoder. The audio VAE is the released one at full size and the tiny one with the tiny transformer (its shapes set the
    audio tokens); random conditioning has no audio text embeddings, so the adapter gives the audio stream the video ones."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler, LTX2Pipeline
    from diffusers import LTX2VideoTransformer3DModel

    audio_in = transformer.get("audio_in_channels", 128)
    audio = LTX2_AUDIO_VAE if audio_in == 128 else {**LTX2_AUDIO_VAE, "base_channels": 4, "ch_mult": (1,), "num_res_blocks": 1,
                                                     "latent_channels": 2, "mel_bins": 8}
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift=1.0, shift_terminal=0.1,
        use_dynamic_shifting=True, time_shift_type="exponential",
    )
    return LTX2Pipeline(
        scheduler=scheduler, vae=AutoencoderKLLTX2Video(**vae), audio_vae=AutoencoderKLLTX2Audio(**audio), text_encoder=None,
        tokenizer=None, connectors=None, transformer=LTX2VideoTransformer3DModel(**transformer), vocoder=None,
    )


def _wan22(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    return _wan(transformer, vae, two_experts=True)


def _wan_i2v(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    """Wan image-to-video: 2.1 I2V with a CLIP ViT-H/14 image encoder (UniPC, flow shift 3), or TI2V-5B's
    first-frame layout when the transformer takes the VAE's channels (flow shift 5)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    ti2v = transformer["in_channels"] == vae["z_dim"]
    image_encoder = image_processor = None
    width = transformer.get("image_dim")
    if width is not None:
        config = WAN_IMAGE_ENCODER if width == WAN_IMAGE_ENCODER["hidden_size"] else dict(
            hidden_size=width, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=8,
            patch_size=4, projection_dim=width)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**config))
        image_processor = CLIPImageProcessor(crop_size=config["image_size"], size=config["image_size"])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0 if ti2v else 3.0)
    return WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=AutoencoderKLWan(**vae), scheduler=scheduler, image_encoder=image_encoder,
        image_processor=image_processor, transformer=WanTransformer3DModel(**transformer), expand_timesteps=ti2v,
    )


def _hunyuanvideo15(transformer: dict[str, Any], vae: dict[str, Any]) -> Any:
    """HunyuanVideo 1.5 (480p text-to-video) with its released scheduler (flow Euler, shift 5) and CFG guider (scale 6)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )

    return HunyuanVideo15Pipeline(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=HunyuanVideo15Transformer3DModel(**transformer), vae=AutoencoderKLHunyuanVideo15(**vae),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )


FAMILY_BUILDS: dict[str, FamilyBuild] = {
    "wan": FamilyBuild("treegrpo.models.wan:WanBackbone", _wan),
    "wan22": FamilyBuild("treegrpo.models.wan:WanBackbone", _wan22),
    "wan_i2v": FamilyBuild("treegrpo.models.wan_i2v:WanI2VBackbone", _wan_i2v),
    "qwenimage": FamilyBuild("treegrpo.models.qwenimage:QwenImageBackbone", _qwenimage),
    "flux2": FamilyBuild("treegrpo.models.flux2:Flux2Backbone", _flux2),
    "flux2_dev": FamilyBuild("treegrpo.models.flux2:Flux2Backbone", _flux2_dev),
    "zimage": FamilyBuild("treegrpo.models.zimage:ZImageBackbone", _zimage),
    "flux": FamilyBuild("treegrpo.models.flux:FluxBackbone", _flux),
    "flux_kontext": FamilyBuild("treegrpo.models.flux_kontext:FluxKontextBackbone", _flux_kontext),
    "qwenimage_edit": FamilyBuild("treegrpo.models.qwenimage_edit:QwenImageEditBackbone", _qwenimage_edit),
    "sana": FamilyBuild("treegrpo.models.sana:SanaBackbone", _sana),
    "ltx2": FamilyBuild("treegrpo.models.ltx2:LTX2Backbone", _ltx2),
    "hunyuanvideo15": FamilyBuild("treegrpo.models.hunyuanvideo15:HunyuanVideo15Backbone", _hunyuanvideo15),
}
