"""CLIP-family rewards, on transformers alone: CLIPScore, PickScore, LAION aesthetic, HPS v2.1.

Each scores exactly as its authors' code does (see each class); only the image preparation moved
into torch (``treegrpo.rewards.base.clip_preprocess``, which documents the small difference to PIL).

* ``clipscore``: ``scale * cos(image, text)`` of a CLIP model (raw cosine by default; torchmetrics
  uses ``scale=100``, Hessel et al.'s CLIPScore ``scale=2.5`` with ``clamp_negative=True``).
* ``pickscore``: ``logit_scale.exp() * cos`` of PickScore_v1 (a transformers CLIPModel), as its README.
* ``aesthetic``: LAION's improved aesthetic MLP on the L2-normalised CLIP ViT-L/14 image embedding,
  as ddpo-pytorch's ``AestheticScorer``.
* ``hpsv2``: HPS v2.1, an open_clip ViT-H-14 checkpoint whose keys are mapped onto a transformers
  ``CLIPModel`` (:func:`openclip_to_transformers`); score = ``cos(image, text)`` as in ``hpsv2.score``.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Sequence

import torch
from torch import nn

from treegrpo.rewards.base import (
    BatchedReward,
    CropRounding,
    clip_preprocess,
    normalize,
    quantize_uint8,
    resize_longest_side_and_pad,
)
from treegrpo.rewards.text_clean import OpenClipTokenizer
from treegrpo.rewards.weights import (
    build_uninitialised,
    from_pretrained,
    load_exactly,
    load_pretrained_model,
    load_state_dict,
    resolve_file,
    strip_prefix,
)

logger = logging.getLogger(__name__)

HPS_REPO = "xswu/HPSv2"
HPS_FILENAME = "HPS_v2.1_compressed.pt"
OPEN_CLIP_H14_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
AESTHETIC_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_SOURCE = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor (or ddpo-pytorch's assets folder)"
)


# ----------------------------------------------------------------------------- shared CLIP pieces


def clip_image_embeds(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected, L2-normalised image embeddings (CLS token after ``post_layernorm``)."""
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output
    embeds = model.visual_projection(pooled)
    return embeds / embeds.norm(dim=-1, keepdim=True)


def clip_text_embeds(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Projected, L2-normalised text embeddings (end-of-text token after ``final_layer_norm``)."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    embeds = model.text_projection(pooled)
    return embeds / embeds.norm(dim=-1, keepdim=True)


def load_clip_tokenizer(location: str, *, local_files_only: bool) -> Any:
    """A CLIP BPE tokenizer from a folder or hub id (the same BPE as open_clip's tokenizer)."""
    from transformers import CLIPTokenizer

    return from_pretrained(
        CLIPTokenizer.from_pretrained,
        location,
        what="CLIP tokenizer",
        get_it=f"https://huggingface.co/{OPEN_CLIP_H14_TOKENIZER}",
        local_files_only=local_files_only,
    )


def _image_size(model: nn.Module) -> int:
    size = model.config.vision_config.image_size if hasattr(model.config, "vision_config") else model.config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


class _ClipPairReward(BatchedReward):
    """Shared body of CLIP image-text scorers: preprocess, tokenize, cosine, then ``transform``."""

    crop_rounding: CropRounding = "floor"
    pil_resample: bool = True
    antialias: bool = True

    def __init__(self, model: nn.Module, tokenizer: Any, *, pad_to_max: bool, **options: Any) -> None:
        super().__init__(**options)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.pad_to_max = pad_to_max
        self.image_size = _image_size(self.model)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """CLIP BPE ids (start, text, end), truncated to the model's context length."""
        batch = self.tokenizer(
            list(prompts),
            padding="max_length" if self.pad_to_max else True,
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Model-ready pixels: the CLIP recipe (8-bit, resize short side, centre crop, normalise)."""
        return clip_preprocess(
            images.to(self.device),
            self.image_size,
            crop_rounding=self.crop_rounding,
            pil_resample=self.pil_resample,
            antialias=self.antialias,
        )

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own prompt."""
        pixels = self.preprocess(images).to(self.dtype)
        tokens = self.tokenize(prompts)
        if self.pad_to_max:
            tokens.pop("attention_mask", None)  # open_clip feeds no padding mask (causal mask only)
        image_embeds = clip_image_embeds(self.model, pixels)
        text_embeds = clip_text_embeds(self.model, tokens["input_ids"], tokens.get("attention_mask"))
        return (image_embeds.float() * text_embeds.float()).sum(dim=-1)


# ----------------------------------------------------------------------------- CLIPScore


class ClipScoreReward(_ClipPairReward):
    """``scale * cos(image, text)`` of a transformers CLIP model (default ViT-L/14, raw cosine)."""

    name = "clipscore"

    def __init__(
        self,
        *,
        model: str = "openai/clip-vit-large-patch14",
        tokenizer: str | None = None,
        scale: float = 1.0,
        clamp_negative: bool = False,
        local_files_only: bool = False,
        **options: Any,
    ) -> None:
        from transformers import CLIPModel

        clip = load_pretrained_model(
            CLIPModel,
            model,
            what="clipscore CLIP model",
            get_it=f"https://huggingface.co/{model}",
            local_files_only=local_files_only,
        )
        tok = load_clip_tokenizer(tokenizer or model, local_files_only=local_files_only)
        super().__init__(clip, tok, pad_to_max=False, **options)
        self.scale = float(scale)
        self.clamp_negative = bool(clamp_negative)

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cos = self.cosine(images, prompts)
        if self.clamp_negative:
            cos = cos.clamp(min=0.0)
        return self.scale * cos


# ----------------------------------------------------------------------------- PickScore


class PickScoreReward(_ClipPairReward):
    """PickScore_v1: ``logit_scale.exp() * cos(image, text)`` (about 20-23 for typical images)."""

    name = "pickscore"

    def __init__(
        self,
        *,
        model: str = "yuvalkirstain/PickScore_v1",
        processor: str = OPEN_CLIP_H14_TOKENIZER,
        local_files_only: bool = False,
        **options: Any,
    ) -> None:
        from transformers import CLIPModel

        clip = load_pretrained_model(
            CLIPModel,
            model,
            what="PickScore model",
            get_it="https://huggingface.co/yuvalkirstain/PickScore_v1",
            local_files_only=local_files_only,
        )
        tok = load_clip_tokenizer(processor, local_files_only=local_files_only)
        super().__init__(clip, tok, pad_to_max=False, **options)

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.model.logit_scale.exp().float() * self.cosine(images, prompts)


# ----------------------------------------------------------------------------- aesthetic MLP


class PreferenceMLP(nn.Module):
    """Five linear layers with dropouts and no activations (keys ``layers.0/2/4/6/7``).

    The layout of LAION's improved aesthetic predictor and of ImageReward's head; widths come
    from the checkpoint (768-1024-128-64-16-1 in both).
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        if len(widths) != 6:
            raise ValueError(f"PreferenceMLP needs 6 widths (in, 4 hidden, out), got {list(widths)}")
        w = list(widths)
        self.layers = nn.Sequential(
            nn.Linear(w[0], w[1]),
            nn.Dropout(0.2),
            nn.Linear(w[1], w[2]),
            nn.Dropout(0.2),
            nn.Linear(w[2], w[3]),
            nn.Dropout(0.1),
            nn.Linear(w[3], w[4]),
            nn.Linear(w[4], w[5]),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], *, what: str) -> "PreferenceMLP":
        """Build with widths read from ``layers.{0,2,4,6,7}.weight`` and load every key."""
        names = [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]
        if not all(n in state for n in names):
            raise ValueError(f"{what}: expected keys {names}, got {sorted(state)[:6]}...")
        widths = [state[names[0]].shape[1]] + [state[n].shape[0] for n in names]
        mlp = cls(widths)
        load_exactly(mlp, state, what=what)
        return mlp.eval()


class AestheticReward(BatchedReward):
    """LAION aesthetic score (about 1-10): MLP on the normalised CLIP ViT-L/14 image embedding."""

    name = "aesthetic"

    def __init__(
        self,
        *,
        clip_model: str = "openai/clip-vit-large-patch14",
        head: str = AESTHETIC_FILENAME,
        local_files_only: bool = False,
        **options: Any,
    ) -> None:
        from transformers import CLIPModel

        super().__init__(**options)
        path = resolve_file(
            head, AESTHETIC_FILENAME, what="aesthetic MLP head", get_it=AESTHETIC_SOURCE,
            local_files_only=local_files_only,
        )
        clip = load_pretrained_model(
            CLIPModel,  # the whole model, as ddpo-pytorch loads it; only the vision side runs
            clip_model,
            what="aesthetic CLIP model",
            get_it=f"https://huggingface.co/{clip_model}",
            local_files_only=local_files_only,
        )
        mlp = PreferenceMLP.from_state_dict(load_state_dict(path), what=f"aesthetic head {path}")
        self.clip = clip.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.mlp = mlp.to(device=self.device, dtype=self.dtype).requires_grad_(False)
        self.image_size = _image_size(self.clip)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image embeddings, preprocessed as CLIPProcessor does."""
        pixels = clip_preprocess(
            images.to(self.device), self.image_size, crop_rounding="floor", pil_resample=True
        ).to(self.dtype)
        return clip_image_embeds(self.clip, pixels)

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.mlp(self.embed(images)).squeeze(1)


# ----------------------------------------------------------------------------- HPS v2.1


_OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPEN_CLIP_TOP = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_OPEN_CLIP_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_OPEN_CLIP_IGNORED = {"attn_mask", "visual.attn_mask"}  # causal-mask buffers, rebuilt by the model
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def _map_open_clip_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """One open_clip tensor -> the transformers CLIPModel tensor(s) it becomes (empty: ignored)."""
    if key in _OPEN_CLIP_IGNORED:
        return {}
    if key in _OPEN_CLIP_TOP:
        return {_OPEN_CLIP_TOP[key]: value}
    if key in _OPEN_CLIP_TRANSPOSED:
        return {_OPEN_CLIP_TRANSPOSED[key]: value.t().contiguous()}
    match = _RESBLOCK.match(key)
    if match is None:
        raise KeyError(key)
    tower = "vision_model" if match.group(1) else "text_model"
    prefix = f"{tower}.encoder.layers.{match.group(2)}."
    rest = match.group(3)
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        q, k, v = value.chunk(3, dim=0)  # nn.MultiheadAttention packs q, k, v along dim 0
        return {f"{prefix}self_attn.{n}_proj.{kind}": t.contiguous() for n, t in zip("qkv", (q, k, v))}
    module, _, param = rest.rpartition(".")
    if module not in _OPEN_CLIP_BLOCK:
        raise KeyError(key)
    return {f"{prefix}{_OPEN_CLIP_BLOCK[module]}.{param}": value}


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(2)) for k in state if (m := _RESBLOCK.match(k)) and bool(m.group(1)) == (prefix == "visual.")}
    return max(indices) + 1 if indices else 0


def openclip_config(
    state: dict[str, torch.Tensor],
    *,
    vision_head_width: int = 80,
    text_head_width: int = 64,
    hidden_act: str = "gelu",
    bos_token_id: int = 49406,
    eos_token_id: int = 49407,
    pad_token_id: int = 0,
) -> Any:
    """A transformers ``CLIPConfig`` with every size read from an open_clip state dict.

    Head counts are not stored in the weights: width / head width (ViT-H-14: 1280/80 and 1024/64).
    """
    from transformers import CLIPConfig

    v_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    t_width = state["token_embedding.weight"].shape[1]
    if v_width % vision_head_width or t_width % text_head_width:
        raise ValueError(
            f"head widths {vision_head_width}/{text_head_width} do not divide widths {v_width}/{t_width}: "
            "set vision_head_width / text_head_width"
        )
    vision = dict(
        hidden_size=v_width,
        intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(state, "visual."),
        num_attention_heads=v_width // vision_head_width,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act=hidden_act,
    )
    text = dict(
        vocab_size=state["token_embedding.weight"].shape[0],
        hidden_size=t_width,
        intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(state, ""),
        num_attention_heads=t_width // text_head_width,
        max_position_embeddings=state["positional_embedding"].shape[0],
        hidden_act=hidden_act,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["visual.proj"].shape[1])


def openclip_to_transformers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename/split/transpose open_clip keys for transformers ``CLIPModel``; returns (new state, ignored keys).

    ``attn.in_proj_*`` is split into q/k/v, the ``[width, embed]`` projections are transposed into
    ``Linear`` weights. An unknown key is an error, so no weight is silently dropped.
    """
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        try:
            out = _map_open_clip_key(key, value)
        except KeyError:
            unknown.append(key)
            continue
        if not out:
            ignored.append(key)
        mapped.update(out)
    if unknown:
        raise ValueError(f"unknown open_clip keys {unknown[:5]} ({len(unknown)}): not an open_clip CLIP checkpoint?")
    return mapped, ignored


def load_openclip_as_clip_model(
    state: dict[str, torch.Tensor], *, what: str, **config_options: Any
) -> nn.Module:
    """A transformers ``CLIPModel`` holding exactly the weights of an open_clip state dict."""
    from transformers import CLIPModel

    state = strip_prefix(state, "module.")
    config = openclip_config(state, **config_options)
    mapped, _ = openclip_to_transformers(state)
    model = build_uninitialised(CLIPModel, config)
    load_exactly(model, mapped, what=what)
    return model.eval()


class HPSv2Reward(_ClipPairReward):
    """HPS v2.1: cosine of open_clip ViT-H-14 image and text embeddings (about 0.2-0.4).

    Preprocessing follows hpsv2's ``preprocess_val`` (built with ``light_augmentation=True``): the
    PIL image becomes a tensor, the long side is resized to 224 (bicubic on the tensor) and the
    short side zero-padded (open_clip's ``ResizeMaxSize``), then OpenAI mean/std. torchvision >= 0.17
    antialiases that resize, older versions did not: ``antialias=False`` reproduces those scores.
    Prompts are tokenized as hpsv2's open_clip tokenizer does, cleaned once and padded with id 0
    (:class:`treegrpo.rewards.text_clean.OpenClipTokenizer` on the CLIP tokenizer's vocab and merges).
    """

    name = "hpsv2"
    crop_rounding: CropRounding = "torchvision"
    pil_resample = False

    def __init__(
        self,
        *,
        checkpoint: str = HPS_REPO,
        filename: str = HPS_FILENAME,
        tokenizer: str = OPEN_CLIP_H14_TOKENIZER,
        vision_head_width: int = 80,
        text_head_width: int = 64,
        antialias: bool = True,
        local_files_only: bool = False,
        **options: Any,
    ) -> None:
        self.antialias = bool(antialias)
        path = resolve_file(
            checkpoint, filename, what="HPS v2.1 checkpoint", get_it=f"https://huggingface.co/{HPS_REPO}",
            local_files_only=local_files_only,
        )
        tok = load_clip_tokenizer(tokenizer, local_files_only=local_files_only)
        model = load_openclip_as_clip_model(
            load_state_dict(path, key="state_dict"),
            what=f"HPS checkpoint {path}",
            vision_head_width=vision_head_width,
            text_head_width=text_head_width,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
        )
        super().__init__(model, tok, pad_to_max=True, **options)
        self.open_clip_tokenizer = OpenClipTokenizer.from_transformers(tok)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """hpsv2's ``preprocess_val``: 8-bit, long side -> 224, zero pad, normalise."""
        x = quantize_uint8(images.to(self.device).float())
        return normalize(resize_longest_side_and_pad(x, self.image_size, antialias=self.antialias))

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """open_clip's ``tokenize``: text cleaned once, start + BPE + end, truncated, padded with 0."""
        return {"input_ids": self.open_clip_tokenizer(prompts, self.context_length).to(self.device)}

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.cosine(images, prompts)
