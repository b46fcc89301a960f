"""A tiny random-weight FLUX.2 [dev] pipeline (``Flux2Pipeline``), built offline like :mod:`treegrpo.testing.tiny_models`.

FLUX.2 [dev] encodes the prompt with Mistral-Small-3 (``Mistral3ForConditionalGeneration``) through
the chat template (its system message, then the prompt), padded to ``max_sequence_length``, and
stacks the hidden states of layers 10, 20 and 30 along the features. The tiny encoder has 30
text layers of width 8 (so the transformer's text width is 3 x 8) and a one-layer Pixtral vision
tower that the text path never calls.

The released checkpoint's ``tokenizer`` folder holds a ``PixtralProcessor``; transformers builds that
processor only with torchvision, which this environment lacks, so the tiny pipeline saves the
tokenizer alone. For text prompts the processor's ``apply_chat_template`` is the tokenizer's, so
the prompt embeddings go through the same code. The tokenizer is byte-level (no merges: one token
per character) with Mistral's special tokens and a Mistral-style template that reads the
``[{"type": "text", "text": ...}]`` content lists the pipeline builds.

The transformer, VAE and scheduler are those of the tiny FLUX.2 [klein] pipeline, with the guidance
embedding of the guidance-distilled [dev] model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from treegrpo.testing.tiny_models import _byte_characters

MISTRAL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
    "[IMG_BREAK]", "[IMG_END]",
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)
"""System prompt, user turns and assistant turns as Mistral-Small-3's template writes them (text parts only)."""

TEXT_LAYERS = 30
"""The pipeline stacks hidden states 10, 20 and 30 (of the released encoder's 40 layers)."""
TEXT_WIDTH = 8


def tiny_mistral_tokenizer():  # -> Qwen2Tokenizer (a byte-level BPE)
    """Byte-level (no merges) tokenizer with Mistral's special tokens and a Mistral-style chat template."""
    from transformers import Qwen2Tokenizer

    vocab = {character: index for index, character in enumerate(_byte_characters())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(MISTRAL_SPECIAL_TOKENS)})
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def tiny_mistral3(tokenizer, seed: int):  # -> Mistral3ForConditionalGeneration
    """Mistral-Small-3's architecture in miniature: 30 Mistral text layers of width 8 and a one-layer Pixtral tower."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config=dict(
            model_type="mistral", vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=TEXT_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=TEXT_WIDTH // 2,
            max_position_embeddings=1024, sliding_window=None, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            model_type="pixtral", hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
            head_dim=4, patch_size=4, image_size=64, num_channels=3,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
    )
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(config).eval()


def build_tiny_flux2_dev(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny Flux2Pipeline (Mistral-3 text encoder, guidance embedding, FLUX.2's batch-norm VAE) to ``path``."""
    from diffusers import Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel

    from treegrpo.testing.tiny_models import build_tiny_flux2

    path = Path(path)
    klein = Flux2KleinPipeline.from_pretrained(build_tiny_flux2(path.with_name(path.name + "-klein"), seed))
    config = dict(klein.transformer.config)
    config.update(joint_attention_dim=3 * TEXT_WIDTH, guidance_embeds=True)
    torch.manual_seed(seed + 4)
    transformer = Flux2Transformer2DModel.from_config(config).eval()
    tokenizer = tiny_mistral_tokenizer()
    pipe = Flux2Pipeline(
        scheduler=klein.scheduler, vae=klein.vae, text_encoder=tiny_mistral3(tokenizer, seed + 5), tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
    return path
