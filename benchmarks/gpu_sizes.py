"""Benchmark sizes for ``gpu_iteration.py``: each ``--size`` as architecture configs and input shapes.

SD3.5-medium / large at their published configs (the shared ``MODEL-CONFIGS.md``), the other families from
``gpu_families.py``, and tiny twins on the same code paths for the CPU tests. The reward model is a
CLIP ViT-H/14-sized vision tower everywhere (random weights: the cost of a step does not depend on the values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from benchmarks.gpu_families import (
    DC_AE_F32C32, FLUX1_TRANSFORMER, FLUX1_VAE, FLUX2_DEV_TRANSFORMER, FLUX2_KLEIN_4B_TRANSFORMER, FLUX2_VAE,
    HUNYUANVIDEO15_480P_T2V_TRANSFORMER, HUNYUANVIDEO15_VAE, LTX2_19B_TRANSFORMER, LTX2_VAE, QWENIMAGE_TRANSFORMER,
    QWENIMAGE_VAE, SANA_600M_TRANSFORMER, SANA_1600M_TRANSFORMER, TINY, WAN21_1_3B_TRANSFORMER, WAN21_I2V_14B_TRANSFORMER,
    WAN22_TI2V_5B_TRANSFORMER, WAN22_VAE, WAN_14B_TRANSFORMER, WAN_VAE, ZIMAGE_TRANSFORMER,
)


@dataclass
class SizeSpec:
    """Architecture configs and shapes of one benchmark size."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    reward: dict[str, Any]  # transformers CLIPVisionConfig keyword arguments
    resolution: int
    text_tokens: int
    text_dim: int
    pooled_dim: int
    """0: the family has no pooled text embedding."""
    family: str = "sd3"
    num_frames: Optional[int] = None
    """Video families: frames per clip (the reward scores 4 evenly spaced frames of each)."""


SD35_MEDIUM_TRANSFORMER: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD35_LARGE_TRANSFORMER: dict[str, Any] = {**SD35_MEDIUM_TRANSFORMER, "num_layers": 38, "num_attention_heads": 38,
                                          "caption_projection_dim": 2432, "pos_embed_max_size": 192, "dual_attention_layers": ()}
"""stabilityai/stable-diffusion-3.5-large: 38 blocks of 38 heads of 64 (about 8B), no dual attention."""
SD3_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16, norm_num_groups=32,
    sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
)
CLIP_VIT_H14: dict[str, Any] = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
    patch_size=14, projection_dim=1024, hidden_act="gelu",
)

SIZES: dict[str, SizeSpec] = {
    "sd35m": SizeSpec(SD35_MEDIUM_TRANSFORMER, SD3_VAE, CLIP_VIT_H14, resolution=512, text_tokens=333,
                      text_dim=4096, pooled_dim=2048),
    "sd35l": SizeSpec(SD35_LARGE_TRANSFORMER, SD3_VAE, CLIP_VIT_H14, resolution=512, text_tokens=333,
                      text_dim=4096, pooled_dim=2048),
    "tiny": SizeSpec(
        transformer=dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                         caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=16,
                         dual_attention_layers=(0,), qk_norm="rms_norm"),
        vae=dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
                 latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=1.5305,
                 shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        reward=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=32, patch_size=8, projection_dim=16),
        resolution=32, text_tokens=8, text_dim=32, pooled_dim=64,
    ),
    # Qwen-Image: Qwen2.5-VL-7B text width, ~64 prompt tokens after the template's system prefix.
    "qwenimage": SizeSpec(QWENIMAGE_TRANSFORMER, QWENIMAGE_VAE, CLIP_VIT_H14, resolution=512, text_tokens=64,
                          text_dim=3584, pooled_dim=0, family="qwenimage"),
    # FLUX.2 [klein] 4B: prompts padded to the pipeline's 512 tokens, three Qwen3-4B layers stacked.
    "flux2_klein4b": SizeSpec(FLUX2_KLEIN_4B_TRANSFORMER, FLUX2_VAE, CLIP_VIT_H14, resolution=512, text_tokens=512,
                              text_dim=7680, pooled_dim=0, family="flux2"),
    # FLUX.2 [dev]: prompts padded to the pipeline's 512 tokens, three Mistral-Small-3 layers stacked (3 x 5120);
    # guidance-distilled: one row per forward, the scale into the guidance embedding.
    "flux2_dev": SizeSpec(FLUX2_DEV_TRANSFORMER, FLUX2_VAE, CLIP_VIT_H14, resolution=512, text_tokens=512,
                          text_dim=15360, pooled_dim=0, family="flux2_dev"),
    # Z-Image: Qwen3-4B text width, ~64 real tokens (the padding is dropped before the transformer).
    "zimage": SizeSpec(ZIMAGE_TRANSFORMER, FLUX1_VAE, CLIP_VIT_H14, resolution=512, text_tokens=64, text_dim=2560,
                       pooled_dim=0, family="zimage"),
}
# FLUX.1-Kontext-dev: T5-XXL width padded to 512 tokens, pooled CLIP-L 768; the source image (encoded once per
# prompt by the VAE) doubles the image tokens of every forward.
SIZES["flux_kontext"] = SizeSpec(FLUX1_TRANSFORMER, FLUX1_VAE, CLIP_VIT_H14, resolution=512, text_tokens=512,
                                 text_dim=4096, pooled_dim=768, family="flux_kontext")
# FLUX.1-dev: the same transformer without source images (guidance-distilled: one row per forward, no CFG).
SIZES["flux_dev"] = SizeSpec(FLUX1_TRANSFORMER, FLUX1_VAE, CLIP_VIT_H14, resolution=512, text_tokens=512,
                             text_dim=4096, pooled_dim=768, family="flux")
SIZES["flux_dev_tiny"] = SizeSpec(TINY["flux_kontext"]["transformer"], TINY["flux_kontext"]["vae"], SIZES["tiny"].reward,
                                  resolution=32, text_tokens=8, text_dim=32, pooled_dim=16, family="flux")
SIZES["flux_kontext_tiny"] = SizeSpec(TINY["flux_kontext"]["transformer"], TINY["flux_kontext"]["vae"], SIZES["tiny"].reward,
                                      resolution=32, text_tokens=8, text_dim=32, pooled_dim=16, family="flux_kontext")
# Qwen-Image-Edit: Qwen-Image's transformer; the source image is encoded once per prompt twice: by Qwen2.5-VL into the
# prompt (a 512 x 512 source is resized by the processor to 504 x 504: 18 x 18 = 324 vision tokens, plus about 28
# tokens of instruction and template after the dropped system prefix) and by the VAE into 32 x 32 = 1024 source
# tokens after the 1024 noisy ones in every forward. The negative prompt (also encoded with the image) is as long.
SIZES["qwenimage_edit"] = SizeSpec(QWENIMAGE_TRANSFORMER, QWENIMAGE_VAE, CLIP_VIT_H14, resolution=512, text_tokens=352,
                                   text_dim=3584, pooled_dim=0, family="qwenimage_edit")
# Wan: UMT5-XXL width, prompts zero-padded to the pipeline's 512 tokens; 480 x 480, 33 frames (9 latent frames).
SIZES["wan21_1.3b"] = SizeSpec(WAN21_1_3B_TRANSFORMER, WAN_VAE, CLIP_VIT_H14, resolution=480, text_tokens=512,
                               text_dim=4096, pooled_dim=0, family="wan", num_frames=33)
# Wan2.2-T2V-A14B: two 14B experts (about 28 GB each in bf16; --train lora).
SIZES["wan22_a14b"] = SizeSpec(WAN_14B_TRANSFORMER, WAN_VAE, CLIP_VIT_H14, resolution=480, text_tokens=512,
                               text_dim=4096, pooled_dim=0, family="wan22", num_frames=33)
SIZES["wan_tiny"] = SizeSpec(TINY["wan"]["transformer"], TINY["wan"]["vae"], SIZES["tiny"].reward, resolution=32,
                             text_tokens=8, text_dim=32, pooled_dim=0, family="wan", num_frames=5)
# Sana: Gemma-2-2B width, prompts padded to the pipeline's 300 tokens (masked); 1024 x 1024 = 32 x 32 latent tokens.
SIZES["sana_1600m"] = SizeSpec(SANA_1600M_TRANSFORMER, DC_AE_F32C32, CLIP_VIT_H14, resolution=1024, text_tokens=300,
                               text_dim=2304, pooled_dim=0, family="sana")
SIZES["sana_600m"] = SizeSpec(SANA_600M_TRANSFORMER, DC_AE_F32C32, CLIP_VIT_H14, resolution=1024, text_tokens=300,
                              text_dim=2304, pooled_dim=0, family="sana")
# LTX-2 (GPU only: about 38 GB of bf16 weights, --train lora): Gemma-3-12B width 3840, prompts padded to 1024 tokens as the
# pipeline pads them (masked); 512 x 512, 33 frames = 5 x 16 x 16 = 1280 video tokens plus 34 audio tokens (33 / 24 s).
SIZES["ltx2_19b"] = SizeSpec(LTX2_19B_TRANSFORMER, LTX2_VAE, CLIP_VIT_H14, resolution=512, text_tokens=1024,
                             text_dim=3840, pooled_dim=0, family="ltx2", num_frames=33)
SIZES["ltx2_tiny"] = SizeSpec(TINY["ltx2"]["transformer"], TINY["ltx2"]["vae"], SIZES["tiny"].reward, resolution=32,
                              text_tokens=8, text_dim=16, pooled_dim=0, family="ltx2", num_frames=5)
SIZES["wan21_i2v_14b"] = SizeSpec(WAN21_I2V_14B_TRANSFORMER, WAN_VAE, CLIP_VIT_H14, resolution=480, text_tokens=512,
                                  text_dim=4096, pooled_dim=0, family="wan_i2v", num_frames=33)
SIZES["wan22_ti2v_5b"] = SizeSpec(WAN22_TI2V_5B_TRANSFORMER, WAN22_VAE, CLIP_VIT_H14, resolution=480, text_tokens=512,
                                  text_dim=4096, pooled_dim=0, family="wan_i2v", num_frames=33)
for _name, _tiny, _px in (("wan_i2v_tiny", TINY["wan_i2v"], 32), ("wan22_ti2v_tiny", TINY["wan_ti2v"], 64)):
    SIZES[_name] = SizeSpec(**_tiny, reward=SIZES["tiny"].reward, resolution=_px, text_tokens=512, text_dim=32, pooled_dim=0,
                            family="wan_i2v", num_frames=5)
# HunyuanVideo 1.5 (8.3B): Qwen2.5-VL-7B width, ~128 prompt tokens after the cropped system template (the pipeline pads
# to 1000, masked; the adapter drops the columns no row uses, the all-padding ByT5 glyph stream of prompts quoting no
# text and the 729 masked text-to-video image tokens); 480 x 480, 33 frames = 9 latent frames of 30 x 30 tokens (the
# VAE compresses 16x; 8100 video tokens).
SIZES["hunyuanvideo15_480p"] = SizeSpec(HUNYUANVIDEO15_480P_T2V_TRANSFORMER, HUNYUANVIDEO15_VAE, CLIP_VIT_H14, resolution=480,
                                        text_tokens=128, text_dim=3584, pooled_dim=0, family="hunyuanvideo15",
                                        num_frames=33)
SIZES["hunyuanvideo15_tiny"] = SizeSpec(TINY["hunyuanvideo15"]["transformer"], TINY["hunyuanvideo15"]["vae"],
                                        SIZES["tiny"].reward, resolution=32, text_tokens=8, text_dim=16, pooled_dim=0,
                                        family="hunyuanvideo15", num_frames=5)
for _family, _tiny_resolution in (("qwenimage", 32), ("flux2", 32), ("flux2_dev", 32), ("zimage", 32), ("qwenimage_edit", 32), ("sana", 32)):
    _tiny = TINY[_family]["transformer"]
    _text_dim = _tiny.get("joint_attention_dim", _tiny.get("cap_feat_dim", _tiny.get("caption_channels")))
    SIZES[f"{_family}_tiny"] = SizeSpec(TINY[_family]["transformer"], TINY[_family]["vae"], SIZES["tiny"].reward,
                                        resolution=_tiny_resolution, text_tokens=8, text_dim=_text_dim, pooled_dim=0,
                                        family=_family)
