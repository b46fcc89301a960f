"""A tiny random-weight HunyuanVideo-1.5 pipeline, built offline like :mod:`treegrpo.testing.tiny_models`.

Text: a one-layer Qwen2.5-VL *text* model (``Qwen2_5_VLTextModel``, hidden 16) over the byte-level
Qwen tokenizer of :func:`~treegrpo.testing.tiny_models.tiny_qwen_tokenizer` (the pipeline wraps each
prompt in its chat template with a system message and crops the first 108 tokens), and a one-layer
T5 encoder (d_model 8) over an in-memory ``ByT5Tokenizer`` for the quoted glyph text. The VAE
compresses 8x in space and 4x in time with 4 latent channels (the released one: 16x, 4x, 32), so a
5-frame 32 x 48 clip is ``[4, 2, 4, 6]`` latents. The transformer is one double-stream block of two
heads of 8 (``in_channels`` 2 x 4 + 1: latents, the zero image-condition latents and their mask).
The scheduler is ``FlowMatchEulerDiscreteScheduler`` (shift 5, the 480p checkpoints'), the guider
``ClassifierFreeGuidance`` (scale 6), as the released 480p text-to-video pipeline has them.
"""

from __future__ import annotations

from pathlib import Path

import torch

LATENT_CHANNELS = 4


def build_tiny_hunyuanvideo15(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny HunyuanVideo15Pipeline (Qwen2.5-VL text, ByT5 glyph encoder, 3-D VAE, CFG guider) to ``path``."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    from treegrpo.testing.tiny_models import tiny_qwen_tokenizer

    path = Path(path)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer_2 = ByT5Tokenizer(extra_ids=0)
    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=2, attention_head_dim=8,
        num_layers=1, num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8,
        rope_axes_dim=(4, 2, 2), target_size=64, task_type="t2v",
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8, 8), layers_per_block=1, spatial_compression_ratio=8,
        temporal_compression_ratio=4, scaling_factor=0.9,
    ).eval()
    torch.manual_seed(seed + 2)
    text_config = Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048,
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, rope_theta=1000000.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
    )
    text_encoder = Qwen2_5_VLTextModel(text_config).eval()
    torch.manual_seed(seed + 3)
    t5_config = T5Config(
        vocab_size=len(tokenizer_2), d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id,
        decoder_start_token_id=tokenizer_2.pad_token_id,
    )
    text_encoder_2 = T5EncoderModel(t5_config).eval()
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.save_pretrained(path)
    return path
