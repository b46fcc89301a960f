"""HunyuanVideo 1.5 text-to-video (``HunyuanVideo15Pipeline``) as a policy of the tree engine.

Mirrors the pipeline's ``__call__``: two text streams from ``encode_prompt``, Qwen2.5-VL hidden
states (the prompt in the pipeline's chat template with its system message, padded to 1000 tokens
after the cropped template prefix, with their attention mask) and ByT5 embeddings of the prompt's
quoted glyph text (256 tokens, masked; zeros with an all-false mask when the prompt quotes nothing),
both held by :class:`HunyuanConditioning`; latents ``[B, 32, F, H/16, W/16]`` (``F = (frames - 1) / 4
+ 1``) drawn by ``prepare_latents`` in the model dtype; the transformer called on the latents
concatenated with the text-to-video zero condition latents and mask (``2C + 1`` channels), at the
raw timestep; the scheduler's sigmas from ``set_timesteps(sigmas=linspace(1,
0, T + 1)[:-1])`` (``FlowMatchEulerDiscreteScheduler``, shift 5 at 480p), which the engine's Euler ODE
reproduces; decoding ``latents / scaling_factor`` to clips ``[B, F, 3, H, W]`` in [0, 1].
``model.max_sequence_length`` is not used (the pipeline's own lengths are).

Padding: the pipeline hands the transformer 1000 Qwen columns, 256 ByT5 columns and 729 zero image
tokens (text-to-video masks them all), so at 480p most text tokens are padding. The transformer masks
padding as attention keys in every block and pools the Qwen stream over its mask, so padding reaches
no video token: the adapter drops the columns no row of a call uses (the image tokens always, the
glyph stream when no prompt quotes text). The result is the pipeline's up to float rounding (the
parity tests compare against the unshortened pipeline).

Guidance: the pipeline's ``guider`` (``ClassifierFreeGuidance``) combines ``uncond + s * (cond -
uncond)``; here ``s`` is the engine's ``sampling.guidance_scale`` (one batched forward of both rows),
not the guider's own scale. A guider the engine would not reproduce (``guidance_rescale``,
``use_original_formulation``, a ``start`` / ``stop`` step range, a guider class other than
``ClassifierFreeGuidance``) is a ConfigError.

LoRA: diffusers 0.42 gives ``HunyuanVideo15Pipeline`` no ``load_lora_weights``. ``save_trained`` writes the
transformer-only LoRA file diffusers' pipelines write (``transformer.``-prefixed keys in
``pytorch_lora_weights.safetensors``), which ``pipe.transformer.load_lora_adapter(folder)`` loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from treegrpo.errors import ConfigError
from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import (
    ADAPTER_NAME, DenoiserInputs, DiffusersBackbone, TextConditioning, checked_image_size, checked_num_frames, diffusers_model,
)

HUNYUANVIDEO15_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out",
)
"""The attention projections of every double-stream block, video and text streams (the token refiner's too)."""

DEFAULT_FRAMES = 121
"""The pipeline's default ``num_frames``."""


@dataclass
class HunyuanConditioning(TextConditioning):
    """:class:`TextConditioning` (the Qwen2.5-VL stream, masked) plus the ByT5 glyph stream, one row per prompt."""

    glyph_embeds: Optional[torch.Tensor] = None
    """``[N, 256, D2]`` ByT5 embeddings of each prompt's quoted text."""
    glyph_mask: Optional[torch.Tensor] = None
    negative_glyph_embeds: Optional[torch.Tensor] = None
    """``[1, 256, D2]``: the negative prompt's."""
    negative_glyph_mask: Optional[torch.Tensor] = None

    def to(self, device: torch.device | str) -> "HunyuanConditioning":
        """A copy with every tensor on ``device``."""
        moved = {f.name: _to(getattr(self, f.name), device) for f in fields(self)}
        return HunyuanConditioning(**moved)

    def select(self, rows: torch.Tensor | Sequence[int]) -> "HunyuanConditioning":
        """The conditioning of the prompts at ``rows`` (the negative rows are kept)."""
        base = super().select(rows)
        index = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_embeds.device)
        glyph = None if self.glyph_embeds is None else self.glyph_embeds[index]
        mask = None if self.glyph_mask is None else self.glyph_mask[index]
        values = {f.name: getattr(base, f.name) for f in fields(TextConditioning)}
        return HunyuanConditioning(**values, glyph_embeds=glyph, glyph_mask=mask,
                                   negative_glyph_embeds=self.negative_glyph_embeds,
                                   negative_glyph_mask=self.negative_glyph_mask)


def _to(value: Any, device: torch.device | str) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


@dataclass
class HunyuanInputs(DenoiserInputs):
    """:class:`DenoiserInputs` plus the rows' ByT5 glyph embeddings and mask."""

    glyph_embeds: Optional[torch.Tensor] = None
    glyph_mask: Optional[torch.Tensor] = None


class HunyuanVideo15Backbone(DiffusersBackbone):
    """HunyuanVideo-1.5 transformer policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "hunyuanvideo15"
    denoiser_name = "transformer"
    default_lora_targets = HUNYUANVIDEO15_LORA_TARGETS

    def __init__(self, pipe: Any, cfg: Any, device: torch.device, **kwargs: Any) -> None:
        _check_guider(getattr(pipe, "guider", None))
        super().__init__(pipe, cfg, device, **kwargs)

    # ------------------------------------------------------------------ family hooks

    def _default_size(self) -> tuple[int, int]:
        """The pipeline's default: the 16:9 bucket of the transformer's ``target_size`` (480 x 848 at 480p)."""
        width_ratio, height_ratio = self.pipe.default_aspect_ratio
        height, width = self.pipe.video_processor.calculate_default_height_width(
            height_ratio, width_ratio, self.pipe.target_size
        )
        return int(height), int(width)

    def _image_size(self) -> tuple[int, int]:
        """Configured or default size; both sides multiples of the VAE factor (16) times the patch size."""
        multiple = self.pipe.vae_scale_factor_spatial * self.pipe.transformer.config.patch_size
        return checked_image_size(super()._image_size(), multiple, self.family)

    @property
    def num_frames(self) -> int:
        """Frames per clip (``model.num_frames``, default 121); ``frames - 1`` a multiple of the temporal factor."""
        frames = self.cfg.num_frames or DEFAULT_FRAMES
        return checked_num_frames(frames, self.pipe.vae_scale_factor_temporal, self.family, "33, 53 or 121")

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, ...]:
        """(Qwen embeds, mask, ByT5 embeds, mask) through the pipeline's ``encode_prompt``; masks as bool."""
        embeds, mask, glyph, glyph_mask = self.pipe.encode_prompt(
            texts, device=self.device, dtype=self.dtype, batch_size=len(texts)
        )
        return embeds, mask.bool(), glyph, glyph_mask.bool()

    def encode_prompts(self, prompts: Sequence[str]) -> HunyuanConditioning:
        """Both text streams of the prompts and of the negative prompt, encoded once (no grad)."""
        texts = [str(prompt) for prompt in prompts]
        with torch.no_grad(), self._text_encoders_on_device():
            embeds, mask, glyph, glyph_mask = self._encode(texts)
            negative, negative_mask, negative_glyph, negative_glyph_mask = self._encode([self.cfg.negative_prompt])
        return HunyuanConditioning(
            embeds, negative, None, None, mask, negative_mask, glyph_embeds=glyph, glyph_mask=glyph_mask,
            negative_glyph_embeds=negative_glyph, negative_glyph_mask=negative_glyph_mask,
        )

    def schedule(self, num_steps: int) -> FlowSchedule:
        """The pipeline's grid: ``set_timesteps(sigmas=linspace(1, 0, T + 1)[:-1])`` on a copy of its scheduler (shifted)."""
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        if scheduler.config.get("use_dynamic_shifting", False):
            raise ConfigError("the HunyuanVideo-1.5 pipeline's scheduler has use_dynamic_shifting=true, which its "
                              "pipeline cannot call (no mu); use the released FlowMatchEulerDiscreteScheduler config")
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1], device=self.device)
        return FlowSchedule(scheduler.sigmas.to(self.device, torch.float32), scheduler.timesteps.to(self.device))

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[num, C, F, H/16, W/16]`` latents from ``pipe.prepare_latents`` in the model dtype (float32 copy)."""
        latents: torch.Tensor = self.pipe.prepare_latents(
            num, self.pipe.num_channels_latents, self.height, self.width, self.num_frames, self.dtype, self.device,
            generator,
        )
        return latents.to(torch.float32)

    def _inputs(
        self, cond: TextConditioning, latents: torch.Tensor, timesteps: torch.Tensor, cond_index: torch.Tensor,
        dtype: torch.dtype, *, with_uncond: bool,
    ) -> HunyuanInputs:
        """The base inputs plus the rows' glyph stream (negative rows first with CFG); none given: no glyph text."""
        inputs = super()._inputs(cond, latents, timesteps, cond_index, dtype, with_uncond=with_uncond)
        values = {f.name: getattr(inputs, f.name) for f in fields(DenoiserInputs)}
        glyph = getattr(cond, "glyph_embeds", None)
        if glyph is None:  # a plain TextConditioning (the GPU benchmark's random embeddings): no quoted text
            return HunyuanInputs(**values)
        rows = cond_index.to(self.device).long()
        embeds, mask = glyph[rows], cond.glyph_mask[rows]  # type: ignore[attr-defined]
        if with_uncond:
            n = int(rows.shape[0])
            negative = cond.negative_glyph_embeds  # type: ignore[attr-defined]
            negative_mask = cond.negative_glyph_mask  # type: ignore[attr-defined]
            embeds = torch.cat([negative.expand(n, *negative.shape[1:]), embeds])
            mask = torch.cat([negative_mask.expand(n, *negative_mask.shape[1:]), mask])
        return HunyuanInputs(**values, glyph_embeds=embeds.to(dtype), glyph_mask=mask)

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity on ``[latents, zero condition latents, zero mask]``, text padding dropped.

        The transformer masks padding as attention keys everywhere (and pools the Qwen stream over its
        mask), so padding reaches no video token: text columns no row uses are dropped, and so are the
        glyph stream when no prompt quotes text and the 729 image tokens, which text-to-video zeroes and masks.
        """
        x = inputs.latents
        n, channels, frames, height, width = x.shape
        condition = x.new_zeros(n, channels + 1, frames, height, width)
        mask = inputs.prompt_mask
        if mask is None:
            mask = torch.ones(inputs.prompt_embeds.shape[:2], dtype=torch.bool, device=x.device)
        embeds, mask = _used_columns(inputs.prompt_embeds, mask, at_least=1)
        glyph = getattr(inputs, "glyph_embeds", None)
        glyph_mask = getattr(inputs, "glyph_mask", None)
        if glyph is None or glyph_mask is None:
            glyph = x.new_zeros(n, 0, self.pipe.transformer.config.text_embed_2_dim)
            glyph_mask = torch.zeros(n, 0, dtype=torch.bool, device=x.device)
        glyph, glyph_mask = _used_columns(glyph, glyph_mask)
        velocity: torch.Tensor = denoiser(
            hidden_states=torch.cat([x, condition], dim=1),
            image_embeds=x.new_zeros(n, 0, self.pipe.vision_states_dim),
            timestep=inputs.timesteps.to(x.dtype),
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            encoder_hidden_states_2=glyph,
            encoder_attention_mask_2=glyph_mask,
            return_dict=False,
        )[0]
        return velocity

    def _vae_decode(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """Clips in [-1, 1] as ``[B, F, 3, H, W]``, one clip per VAE call: the diffusers 0.42 VAE's causal attention
        mask does not broadcast over a batch of more than one clip."""
        clips = [self.pipe.vae.decode(vae_latents[i : i + 1], return_dict=False)[0] for i in range(vae_latents.shape[0])]
        return torch.cat(clips).transpose(1, 2)

    # ------------------------------------------------------------------ export

    def save_trained(self, folder: Path | str, weights: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Full fine-tune: as the base class. LoRA: the transformer-only diffusers LoRA file (see the module docstring)."""
        if self.cfg.full_finetune or not self.trainable:
            super().save_trained(folder, weights)
            return
        from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        layers: dict[str, torch.nn.Module | torch.Tensor] = dict(self._lora_state_dict(weights))
        # HunyuanVideo 1.0's loader mixin: its save_lora_weights writes the generic transformer-only layout
        HunyuanVideoLoraLoaderMixin.save_lora_weights(
            folder, safe_serialization=True, transformer_lora_layers=layers,
            transformer_lora_adapter_metadata=diffusers_model(self.denoiser).peft_config[ADAPTER_NAME].to_dict(),
        )


def _used_columns(embeds: torch.Tensor, mask: torch.Tensor, at_least: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``embeds`` and ``mask`` up to the last column some row attends to (at least ``at_least`` columns)."""
    used = mask.any(dim=0).nonzero()
    end = max(int(used.max()) + 1 if used.numel() else 0, at_least)
    return embeds[:, :end], mask[:, :end]


def _check_guider(guider: Any) -> None:
    """A ConfigError for a guider whose combination the engine's ``uncond + s * (cond - uncond)`` would not reproduce."""
    if guider is None:
        return
    from diffusers import ClassifierFreeGuidance

    if type(guider) is not ClassifierFreeGuidance:
        raise ConfigError(f"the HunyuanVideo-1.5 pipeline's guider is {type(guider).__name__}; only ClassifierFreeGuidance "
                          "is reproduced (set pipe.guider = ClassifierFreeGuidance() in the saved pipeline)")
    settings = {"guidance_rescale": (getattr(guider, "guidance_rescale"), 0.0),
                "use_original_formulation": (getattr(guider, "use_original_formulation"), False),
                "start": (getattr(guider, "_start"), 0.0), "stop": (getattr(guider, "_stop"), 1.0)}
    unsupported = [name for name, (value, plain) in settings.items() if value != plain]
    if unsupported:
        raise ConfigError(f"the HunyuanVideo-1.5 pipeline's guider sets {', '.join(unsupported)}, which the engine's CFG "
                          "does not reproduce; save the pipeline with a default ClassifierFreeGuidance")
