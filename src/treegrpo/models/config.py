"""Model section of the configuration: which pipeline to load and how to train it.

Plain dataclasses that OmegaConf accepts as structured configs (primitives, ``Optional``, lists,
nested dataclasses). String choices are validated by :func:`validate_model_config`, which
:func:`treegrpo.models.loading.load_backbone` calls before loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from treegrpo.errors import ConfigError
from treegrpo.models.acceleration import STORAGE_DTYPES
from treegrpo.runtime.placement import resolve_dtype

LORA_INIT_WEIGHTS: tuple[str, ...] = ("gaussian", "default")
WAN_EXPERTS: tuple[str, ...] = ("auto", "high", "low", "both")
"""``model.expert`` choices (Wan 2.2's high-noise / low-noise denoisers)."""


@dataclass
class LoraConfig:
    """LoRA adapter on the denoiser (peft, through diffusers' ``add_adapter``)."""

    rank: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: Optional[list[str]] = None
    """Module-name suffixes to adapt; ``None`` = the family's default (attention projections)."""
    init_weights: str = "gaussian"
    """``"gaussian"`` (diffusers' training scripts) or ``"default"`` (peft's Kaiming A); B is zero."""


@dataclass
class ModelConfig:
    """A diffusers pipeline (SD3/3.5, FLUX.1, SD1.x/2.x, Qwen-Image, FLUX.2 [klein], Z-Image, Wan) seen as a trainable policy."""

    path: str = ""
    """Local pipeline folder or hub id (``stabilityai/stable-diffusion-3.5-medium``)."""
    family: Optional[str] = None
    """``"sd3"``, ``"flux"``, ``"sd"``, ``"qwenimage"``, ``"flux2"``, ``"zimage"`` or ``"wan"``; read from ``model_index.json`` when ``None``."""
    revision: Optional[str] = None
    variant: Optional[str] = None
    """Weight variant to load, e.g. ``"fp16"``."""
    dtype: str = "bf16"
    """Weights and compute dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (LoRA weights stay fp32)."""
    device: str = "auto"
    """``"auto"`` (CUDA when available, else CPU) or any torch device string."""
    local_files_only: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    full_finetune: bool = False
    """Train every denoiser weight instead of a LoRA adapter (``lora`` is then ignored)."""
    trainable_fp32: bool = True
    """Keep trained weights in float32 (master weights; compute follows the trainer's autocast).

    LoRA weights are small; for ``full_finetune`` this doubles the denoiser's memory against bf16
    but keeps small updates from rounding away. False trains in ``model.dtype``.
    """
    gradient_checkpointing: bool = False
    storage_dtype: Optional[str] = None
    """Store the denoiser's frozen weights in float8 (``"fp8_e4m3"`` or ``"fp8_e5m2"``), cast to
    ``model.dtype`` layer by layer for compute (diffusers' layerwise casting): half the weight memory
    of bf16. LoRA only (a full fine-tune trains every weight); ``None`` = weights in ``model.dtype``."""
    cudnn_attention: bool = False
    """Let torch pick cuDNN's attention kernel on CUDA. Off: its backward crashed (illegal memory access)
    training FLUX.1-dev at 512 px on an H200 (torch 2.11, CUDA 13), where flash and memory-efficient
    attention ran; on SD3.5-medium cuDNN was about 5 % faster than flash (benchmarks/RESULTS.md)."""
    compile: bool = False
    """``torch.compile`` the denoiser's repeated blocks (regional compilation) for rollout and training."""
    height: Optional[int] = None
    """Image height in pixels; ``None`` = the pipeline's default size."""
    width: Optional[int] = None
    negative_prompt: str = ""
    """Unconditional prompt for classifier-free guidance."""
    max_sequence_length: int = 256
    """Text tokens per prompt (SD3/FLUX T5; Qwen-Image, FLUX.2, Z-Image: the Qwen encoder's); ignored by SD."""
    true_cfg_scale: float = 1.0
    """FLUX / Qwen-Image with a guidance embedding (FLUX.1-dev): real CFG scale on top of it; 1 = off."""
    offload_text_encoders: bool = True
    """Move text encoders to the CPU after encoding (off the accelerator between rollouts)."""
    decode_batch_size: int = 8
    """Images (clips) per VAE decode call."""
    num_frames: Optional[int] = None
    """Video families: frames per clip, 1 + a multiple of the VAE's temporal factor; ``None`` = the pipeline's
    default (Wan 81, LTX-2 121)."""
    expert: str = "auto"
    """Wan 2.2: the denoiser(s) trained, ``high`` / ``low`` / ``both``; ``auto`` = those whose steps the tree's window reaches."""
    guidance_scale_2: Optional[float] = None
    """Wan 2.2: CFG scale of the low-noise expert's steps; ``None`` = the guidance scale of the others."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``model.dtype``."""
    return resolve_dtype(name, "model.dtype")


def validate_model_config(cfg: ModelConfig) -> None:
    """A loadable model section: a path, and :func:`check_model_config`'s choices and ranges."""
    if not cfg.path:
        raise ConfigError("model.path is empty; set it to a diffusers pipeline folder or hub id")
    check_model_config(cfg)


def check_model_config(cfg: ModelConfig) -> None:
    """Check string choices and ranges (the path is checked when loading); one-line ConfigError."""
    from treegrpo.models.registry import FAMILIES  # the registry imports the adapters, which import this module

    if cfg.family is not None and cfg.family not in FAMILIES:
        raise ConfigError(
            f"model.family {cfg.family!r} is not supported; use one of {', '.join(FAMILIES)} "
            "or leave it unset to read it from model_index.json"
        )
    torch_dtype(cfg.dtype)
    if cfg.lora.init_weights not in LORA_INIT_WEIGHTS:
        raise ConfigError(
            f"model.lora.init_weights {cfg.lora.init_weights!r} is not supported; use 'gaussian' or 'default'"
        )
    if not cfg.full_finetune and cfg.lora.rank < 1:
        raise ConfigError(f"model.lora.rank must be >= 1, got {cfg.lora.rank}")
    for name in ("height", "width"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"model.{name} must be a positive number of pixels, got {value}")
    if cfg.expert not in WAN_EXPERTS:
        raise ConfigError(f"model.expert {cfg.expert!r} is not supported; use one of {', '.join(WAN_EXPERTS)}")
    if cfg.storage_dtype is not None:
        if cfg.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"model.storage_dtype {cfg.storage_dtype!r} is not supported; use one of {', '.join(STORAGE_DTYPES)} "
                "or leave it unset"
            )
        if cfg.full_finetune:
            raise ConfigError(
                "model.storage_dtype stores the frozen weights in float8, but model.full_finetune=true trains every "
                "weight; train a LoRA (model.full_finetune=false) or unset model.storage_dtype"
            )
    if cfg.decode_batch_size < 1:
        raise ConfigError(f"model.decode_batch_size must be >= 1, got {cfg.decode_batch_size}")
