"""A tiny random-weight Sana pipeline, built offline like :mod:`treegrpo.testing.tiny_models`.

Gemma-2 (one layer, hidden 16) over a character-level ``GemmaTokenizer`` (no merges, so every
character of the complex human instruction is a token: about 900 of them), a two-stage DC-AE
(downsampling 2x, 32 latent channels, a 32 x 64 image is 16 x 32 latents) and a one-block Sana
transformer. The scheduler is ``FlowMatchEulerDiscreteScheduler`` (shift 3, Sana 1.6B's
``flow_shift``), the one the engine's Euler ODE reproduces; see :mod:`treegrpo.models.sana`.
"""

from __future__ import annotations

from pathlib import Path

import torch

GEMMA_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")


def tiny_gemma_tokenizer():  # -> GemmaTokenizer
    """Character-level Gemma tokenizer: the special tokens, then the printable ASCII characters and Gemma's space."""
    from transformers import GemmaTokenizer

    pieces = [*GEMMA_SPECIAL_TOKENS, "\u2581", "\n", *[chr(code) for code in range(33, 127)]]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    return GemmaTokenizer(vocab=vocab, merges=[])


def build_tiny_sana(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny SanaPipeline (Gemma-2 text encoder, DC-AE, Sana transformer, flow Euler scheduler) to ``path``."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    path = Path(path)
    tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        mlp_ratio=2.5, sample_size=16, patch_size=1,
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=8,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 32), decoder_block_out_channels=(8, 32),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        decoder_norm_types=("batch_norm", "rms_norm"), decoder_act_fns=("relu", "silu"), scaling_factor=0.41407,
    ).eval()
    torch.manual_seed(seed + 2)
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=2048,
        sliding_window=4096, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    text_encoder = Gemma2Model(config).eval()
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.save_pretrained(path)
    return path
