"""ImageReward-v1.0 on transformers' BLIP classes, loading the official ``ImageReward.pt`` by key mapping.

The model (THUDM/ImageReward, ``ImageReward.score``): a BLIP ViT-L/16 (224 px) encodes the image;
a BERT-base text encoder with cross-attention to every image token reads the prompt
(``bert-base-uncased`` tokens, padded to 35); the ``[CLS]`` feature goes through a 5-layer MLP;
the reward is ``(mlp - 0.16717362830052426) / 1.0333394966054072``.

``ImageReward.pt`` keys: ``blip.visual_encoder.*`` (timm-style ViT: ``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``),
``blip.text_encoder.*`` (BLIP's BERT, the same names transformers' ``BlipTextModel`` uses),
``mlp.layers.*``; plus ``blip.vision_proj`` / ``blip.text_proj`` (contrastive heads the score does
not use) and the ``position_ids`` buffer, which are ignored by name.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Sequence

import torch
from torch import nn

from treegrpo.rewards.base import BatchedReward, clip_preprocess
from treegrpo.rewards.clip_scorers import PreferenceMLP
from treegrpo.rewards.weights import (
    build_uninitialised,
    from_pretrained,
    load_exactly,
    load_state_dict,
    resolve_file,
    strip_prefix,
)

logger = logging.getLogger(__name__)

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILENAME = "ImageReward.pt"
BERT_TOKENIZER = "bert-base-uncased"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072

_VISION = "blip.visual_encoder."
_TEXT = "blip.text_encoder."
_MLP = "mlp."
_IGNORED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.")
_IGNORED_KEYS = {_TEXT + "embeddings.position_ids"}

_VIT_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VIT_BLOCK = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",  # same (3, heads, head_dim) packing in both
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


def _map_vit_key(key: str) -> str:
    """A BLIP ViT key (without prefix) -> its ``BlipVisionModel`` name; ``KeyError`` if unknown."""
    if key in _VIT_TOP:
        return _VIT_TOP[key]
    match = _VIT_BLOCK_KEY.match(key)
    if match is None or match.group(2) not in _VIT_BLOCK:
        raise KeyError(key)
    return f"encoder.layers.{match.group(1)}.{_VIT_BLOCK[match.group(2)]}.{match.group(3)}"


def split_imagereward_state(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """ImageReward.pt -> (BlipVisionModel state, BlipTextModel state, MLP state, ignored keys).

    Every key is either mapped or ignored by name; an unknown key is an error.
    """
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    mlp: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES):
            ignored.append(key)
        elif key.startswith(_VISION):
            try:
                vision[_map_vit_key(key[len(_VISION) :])] = value
            except KeyError:
                unknown.append(key)
        elif key.startswith(_TEXT):
            text[key[len(_TEXT) :]] = value  # BLIP's med.py and BlipTextModel share names
        elif key.startswith(_MLP):
            mlp[key[len(_MLP) :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown ImageReward keys {unknown[:5]} ({len(unknown)}): not an ImageReward checkpoint?")
    return vision, text, mlp, ignored


def _num_layers(state: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def blip_vision_config(vision: dict[str, torch.Tensor], *, head_width: int = 64) -> Any:
    """``BlipVisionConfig`` sized from mapped ViT weights (ViT-L/16: 1024 wide, 24 blocks, 16 heads)."""
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(vision["embeddings.position_embedding"].shape[1] - 1)
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_num_layers(vision, r"^encoder\.layers\.(\d+)\."),
        num_attention_heads=width // head_width,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # timm ViT's LayerNorm(eps=1e-6)
    )


def blip_text_config(text: dict[str, torch.Tensor], *, head_width: int = 64, pad_token_id: int = 0) -> Any:
    """``BlipTextConfig`` sized from BLIP BERT weights (BERT-base: 768 wide, 12 layers, 12 heads)."""
    from transformers import BlipTextConfig

    vocab, width = text["embeddings.word_embeddings.weight"].shape
    return BlipTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        encoder_hidden_size=text["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=text["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_num_layers(text, r"^encoder\.layer\.(\d+)\."),
        num_attention_heads=width // head_width,
        max_position_embeddings=text["embeddings.position_embeddings.weight"].shape[0],
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        is_decoder=True,  # builds the cross-attention layers; forward runs bidirectionally
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        pad_token_id=pad_token_id,
    )


def load_imagereward_modules(
    state: dict[str, torch.Tensor], *, head_width: int = 64, what: str = "ImageReward checkpoint"
) -> tuple[nn.Module, nn.Module, PreferenceMLP]:
    """Build (BlipVisionModel, BlipTextModel, MLP) holding exactly the checkpoint's weights."""
    from transformers import BlipTextModel, BlipVisionModel

    vision_sd, text_sd, mlp_sd, _ = split_imagereward_state(strip_prefix(state, "module."))
    vision = build_uninitialised(BlipVisionModel, blip_vision_config(vision_sd, head_width=head_width))
    load_exactly(vision, vision_sd, what=f"{what} (vision)")
    text_config = blip_text_config(text_sd, head_width=head_width)
    text = build_uninitialised(BlipTextModel, text_config, add_pooling_layer=False)
    load_exactly(text, text_sd, what=f"{what} (text)")
    mlp = PreferenceMLP.from_state_dict(mlp_sd, what=f"{what} (mlp)")
    return vision.eval(), text.eval(), mlp


def load_blip_tokenizer(location: str, *, local_files_only: bool) -> Any:
    """``bert-base-uncased`` plus BLIP's two added tokens (``[DEC]`` as bos, ``[ENC]``)."""
    from transformers import BertTokenizer

    tokenizer = from_pretrained(
        BertTokenizer.from_pretrained,
        location,
        what="ImageReward BERT tokenizer",
        get_it=f"https://huggingface.co/{BERT_TOKENIZER}",
        local_files_only=local_files_only,
    )
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer


class ImageRewardReward(BatchedReward):
    """ImageReward-v1.0 (roughly -2..2, 0 = average human-rated image)."""

    name = "imagereward"

    def __init__(
        self,
        *,
        checkpoint: str = IMAGEREWARD_REPO,
        filename: str = IMAGEREWARD_FILENAME,
        tokenizer: str = BERT_TOKENIZER,
        max_length: int = 35,
        head_width: int = 64,
        local_files_only: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        path = resolve_file(
            checkpoint, filename, what="ImageReward checkpoint",
            get_it=f"https://huggingface.co/{IMAGEREWARD_REPO}", local_files_only=local_files_only,
        )
        self.tokenizer = load_blip_tokenizer(tokenizer, local_files_only=local_files_only)
        vision, text, mlp = load_imagereward_modules(
            load_state_dict(path), head_width=head_width, what=f"ImageReward checkpoint {path}"
        )
        self.vision = vision.to(device=self.device, dtype=self.dtype).requires_grad_(False)
        self.text = text.to(device=self.device, dtype=self.dtype).requires_grad_(False)
        self.mlp = mlp.to(device=self.device).requires_grad_(False)  # float32, as ImageReward's .float()
        self.max_length = int(max_length)
        size = self.vision.config.image_size
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size)

    def features(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The ``[CLS]`` output of the cross-attending text encoder, float32 [b, hidden]."""
        pixels = clip_preprocess(
            images.to(self.device), self.image_size, crop_rounding="torchvision", pil_resample=True
        ).to(self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.text(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        return out.last_hidden_state[:, 0, :].float()

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        rewards = self.mlp(self.features(images, prompts)).squeeze(1)
        return (rewards - REWARD_MEAN) / REWARD_STD
