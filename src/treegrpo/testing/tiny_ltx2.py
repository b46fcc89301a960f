"""A tiny random-weight LTX-2 pipeline (``LTX2Pipeline``), built offline like :mod:`treegrpo.testing.tiny_models`.

Every component of the released layout, at toy width: Gemma-3 (``Gemma3ForConditionalGeneration``, one text
layer of width 16 and a one-layer SigLIP tower that text-only prompts never reach) over the character-level
Gemma tokenizer of :mod:`treegrpo.testing.tiny_sana`; the LTX-2.0 text connectors (one layer per stream, no
learnable registers); a one-block audio-video transformer (video 4 latent channels, audio 2 x 2 mel bins);
a video VAE that downsamples 8x in space (pixel patches of 4, one down block) and 2x in time (5 frames are 3
latent frames) with non-trivial per-channel latent statistics; the audio VAE and a small vocoder. The scheduler
is LTX-2's ``FlowMatchEulerDiscreteScheduler`` (dynamic shifting, terminal shift 0.1), so ``mu`` and the
stretched sigmas the pipeline computes from the video token count are exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_WIDTH = 16


def _gemma3(vocab_size: int, pad: int, eos: int, bos: int):  # -> Gemma3ForConditionalGeneration
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=256, sliding_window=64,
        pad_token_id=pad, eos_token_id=eos, bos_token_id=bos,
    )
    vision = SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                image_size=8, patch_size=4)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    return Gemma3ForConditionalGeneration(config).eval()


def build_tiny_ltx2(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny LTX2Pipeline (Gemma-3, connectors, audio-video transformer, both VAEs, vocoder) to ``path``."""
    from diffusers import (
        AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler, LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    from treegrpo.testing.tiny_sana import tiny_gemma_tokenizer

    path = Path(path)
    tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _gemma3(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    torch.manual_seed(seed + 1)
    connectors = LTX2TextConnectors(
        caption_channels=TEXT_WIDTH, text_proj_in_factor=2,  # the embedding output and one layer's
        video_connector_num_attention_heads=2, video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32, rope_double_precision=False, rope_type="split",
    ).eval()
    torch.manual_seed(seed + 2)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=1, caption_channels=TEXT_WIDTH, rope_double_precision=False,
        rope_type="split",
    ).eval()
    torch.manual_seed(seed + 3)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatiotemporal",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=4, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()
    with torch.no_grad():  # non-trivial statistics, so that denormalising before decoding is checked
        vae.latents_mean.copy_(torch.linspace(-0.3, 0.3, 4))
        vae.latents_std.copy_(torch.linspace(0.5, 1.5, 4))
    torch.manual_seed(seed + 4)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()
    torch.manual_seed(seed + 5)
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=8, out_channels=2, upsample_kernel_sizes=[4], upsample_factors=[2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3]], output_sampling_rate=16000,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(  # LTX-2's published scheduler settings
        base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift=1.0,
        shift_terminal=0.1, use_dynamic_shifting=True, time_shift_type="exponential",
    )
    pipe = LTX2Pipeline(
        scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer,
        connectors=connectors, transformer=transformer, vocoder=vocoder,
    )
    pipe.save_pretrained(path)
    return path
