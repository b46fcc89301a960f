"""Qwen-Image (``QwenImagePipeline``) as a policy of the tree engine.

Mirrors the pipeline's ``__call__``: Qwen2.5-VL text embeddings with a padding mask (the chat
template's system prefix dropped), packed latents (2 x 2 patches, ``[B, H/16 * W/16, 64]`` at the
released 8x VAE) drawn as ``[B, 1, C, H/8, W/8]``, ``img_shapes`` for the RoPE, sigmas
``linspace(1, 1/T, T)`` with ``mu = calculate_shift(image sequence length)`` (the published
scheduler shifts exponentially, ``shift_terminal=0.02``), the transformer called with
``timestep / 1000``.

Guidance: Qwen-Image has no guidance embedding; ``guidance_scale > 1`` is the pipeline's true
CFG (``true_cfg_scale``) with ``model.negative_prompt``: ``uncond + s * (cond - uncond)``
rescaled per token to the conditional output's norm, in one batched forward (the negative
prompt's embeddings zero-padded and masked to the prompts' length). For a checkpoint with a
guidance embedding, ``guidance_scale`` goes into it and ``model.true_cfg_scale`` is the true CFG.

Published sampling defaults: the pipeline's 50 steps at ``true_cfg_scale=4.0``, 1024 x 1024 by default;
Flow-GRPO trains at 512 x 512 with 10 steps, true CFG 4 and noise level 1.2.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import DenoiserInputs, DiffusersBackbone, checked_image_size, diffusers_model, shift_mu
from treegrpo.models.sd3 import SD3_LORA_TARGETS

QWENIMAGE_LORA_TARGETS: tuple[str, ...] = SD3_LORA_TARGETS
"""Image and text attention projections of the dual-stream blocks (same names as SD3's)."""


class QwenImageBackbone(DiffusersBackbone):
    """Qwen-Image transformer policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "qwenimage"
    denoiser_name = "transformer"
    default_lora_targets = QWENIMAGE_LORA_TARGETS

    def _image_size(self) -> tuple[int, int]:
        """Configured or default size; both sides multiples of twice the VAE factor (2 x 2 latent patches)."""
        return checked_image_size(super()._image_size(), self.pipe.vae_scale_factor * 2, self.family)

    def _latent_grid(self) -> tuple[int, int]:
        """Unpacked latent (height, width), rounded to even as ``prepare_latents`` rounds."""
        factor = self.pipe.vae_scale_factor
        return 2 * (self.height // (factor * 2)), 2 * (self.width // (factor * 2))

    def _has_guidance_embedding(self) -> bool:
        return bool(diffusers_model(self.denoiser).config.guidance_embeds)

    def _encode_texts_with_mask(
        self, texts: list[str]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Qwen2.5-VL embeddings and their padding mask (``None`` when nothing is padded) via the pipeline."""
        embeds, mask = self.pipe.encode_prompt(
            prompt=texts, device=self.device, num_images_per_prompt=1, max_sequence_length=self.cfg.max_sequence_length
        )
        return embeds, None, None if mask is None else mask.bool()

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Sigmas and timesteps of the pipeline's scheduler after ``set_timesteps(sigmas=..., mu=...)``."""
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        config = scheduler.config
        height, width = self._latent_grid()
        mu = shift_mu(config, (height // 2) * (width // 2), 1.15)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device=self.device, mu=mu)
        return FlowSchedule(scheduler.sigmas.to(self.device), scheduler.timesteps.to(self.device))

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Packed ``[num, H/2 * W/2, 4C]`` latents from ``pipe.prepare_latents`` (float32 copy)."""
        channels = diffusers_model(self.denoiser).config.in_channels // 4
        latents: torch.Tensor = self.pipe.prepare_latents(
            num, channels, self.height, self.width, self.dtype, self.device, generator
        )
        return latents.to(torch.float32)

    def _free_guidance_scale(self, guidance_scale: float) -> float:
        """``guidance_scale`` is the true CFG scale, unless a guidance embedding takes it (then ``model.true_cfg_scale``)."""
        return self.cfg.true_cfg_scale if self._has_guidance_embedding() else guidance_scale

    def _combine_guidance(self, uncond: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
        """True CFG rescaled per token to the norm of the conditional output, as the pipeline does."""
        combined = uncond + scale * (text - uncond)
        norms = torch.norm(text, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True)
        rescaled: torch.Tensor = combined * norms
        return rescaled

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity with ``img_shapes`` and the text mask as the pipeline passes them."""
        return self._call_transformer(denoiser, inputs, guidance_scale)

    def _call_transformer(
        self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float,
        extra_tokens: Optional[torch.Tensor] = None, extra_shapes: Sequence[tuple[int, int, int]] = (),
    ) -> torch.Tensor:
        """One Qwen-Image call; ``extra_tokens`` (Qwen-Image-Edit's packed source images, ``extra_shapes`` their
        ``img_shapes`` entries, one per image) follow the noisy tokens, and only the noisy tokens' output is returned."""
        x = inputs.latents
        height, width = self._latent_grid()
        shapes = [(1, height // 2, width // 2)]
        hidden = x
        if extra_tokens is not None:
            hidden = torch.cat([x, extra_tokens.to(x.dtype)], dim=1)
            shapes.extend(extra_shapes)
        mask = inputs.prompt_mask
        guidance = None
        if self._has_guidance_embedding():
            guidance = torch.full((x.shape[0],), guidance_scale, device=self.device, dtype=torch.float32)
        output: torch.Tensor = denoiser(
            hidden_states=hidden,
            timestep=inputs.timesteps.to(x.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states_mask=None if mask is None or bool(mask.all()) else mask,
            encoder_hidden_states=inputs.prompt_embeds,
            img_shapes=[shapes] * x.shape[0],
            return_dict=False,
        )[0]
        return output[:, : x.shape[1]]

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unpack to ``[B, C, 1, H, W]`` and undo the per-channel normalisation (``* std + mean``)."""
        unpacked = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        config = self.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(unpacked.device, unpacked.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(unpacked.device, unpacked.dtype)
        vae_latents: torch.Tensor = unpacked / inverse_std + mean
        return vae_latents

    def _vae_decode(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """The video VAE's single frame: ``[B, 3, H, W]``."""
        frames: torch.Tensor = self.pipe.vae.decode(vae_latents, return_dict=False)[0]
        return frames[:, :, 0]
