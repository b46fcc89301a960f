"""FLUX.1 (``FluxPipeline``) as a policy of the tree engine.

Mirrors the pipeline's ``__call__``: packed latents (2 x 2 patches, ``[B, H/2 * W/2, 4C]``) from
``prepare_latents``, sigmas ``linspace(1, 1/T, T)`` shifted with ``mu = calculate_shift(image
sequence length)``, the transformer called with ``timestep / 1000`` (the scheduler's timesteps in
the latents' dtype, divided as the pipeline divides), text and image position ids.

Guidance: FLUX.1-dev is guidance-distilled, so ``guidance_scale`` goes into its guidance embedding
and there is no true CFG unless ``model.true_cfg_scale > 1`` (then uncond + s * (cond - uncond)
with the negative prompt, in one batched forward). For a FLUX model without a guidance embedding
(FLUX.1-schnell-like), ``guidance_scale > 1`` is true CFG.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import DenoiserInputs, DiffusersBackbone, diffusers_model, shift_mu
from treegrpo.models.sd3 import SD3_LORA_TARGETS

FLUX_LORA_TARGETS: tuple[str, ...] = SD3_LORA_TARGETS + ("proj_mlp",)
"""Attention projections of the double and single blocks, plus the single blocks' MLP input."""


class FluxBackbone(DiffusersBackbone):
    """FLUX.1 transformer policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "flux"
    denoiser_name = "transformer"
    default_lora_targets = FLUX_LORA_TARGETS

    def _latent_grid(self) -> tuple[int, int]:
        """Unpacked latent (height, width), rounded to even as ``prepare_latents`` rounds."""
        factor = self.pipe.vae_scale_factor
        return 2 * (self.height // (factor * 2)), 2 * (self.width // (factor * 2))

    def _has_guidance_embedding(self) -> bool:
        return bool(diffusers_model(self.denoiser).config.guidance_embeds)

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """T5 sequence embeddings and pooled CLIP embeddings via the pipeline."""
        prompt_embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=texts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        return prompt_embeds, pooled

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Sigmas and timesteps of the pipeline's scheduler after ``set_timesteps(sigmas=..., mu=...)``."""
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        config = scheduler.config
        sigmas: Optional[np.ndarray] = np.linspace(1.0, 1 / num_steps, num_steps)
        if config.get("use_flow_sigmas", False):
            sigmas = None
        height, width = self._latent_grid()
        mu = shift_mu(config, (height // 2) * (width // 2), 1.15)
        if sigmas is None:
            scheduler.set_timesteps(num_steps, device=self.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        return FlowSchedule(scheduler.sigmas.to(self.device), scheduler.timesteps.to(self.device))

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Packed ``[num, H/2 * W/2, 4C]`` latents from ``pipe.prepare_latents`` (float32 copy)."""
        channels = diffusers_model(self.denoiser).config.in_channels // 4
        latents: torch.Tensor
        latents, _ = self.pipe.prepare_latents(
            num, channels, self.height, self.width, self.dtype, self.device, generator
        )
        return latents.to(torch.float32)

    def _free_guidance_scale(self, guidance_scale: float) -> float:
        """``model.true_cfg_scale`` with a guidance embedding, else ``guidance_scale``."""
        return self.cfg.true_cfg_scale if self._has_guidance_embedding() else guidance_scale

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity, with ids and guidance as the pipeline passes them."""
        return self._call_transformer(denoiser, inputs, guidance_scale)

    def _call_transformer(
        self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float,
        extra_tokens: Optional[torch.Tensor] = None, extra_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """One FLUX.1 call; ``extra_tokens`` (e.g. Kontext's source image) follow the noisy tokens, and only the
        noisy tokens' output is returned."""
        x = inputs.latents
        height, width = self._latent_grid()
        image_ids = self.pipe._prepare_latent_image_ids(x.shape[0], height // 2, width // 2, self.device, x.dtype)
        hidden = x
        if extra_tokens is not None and extra_ids is not None:
            image_ids = torch.cat([image_ids, extra_ids.to(x.dtype)])
            hidden = torch.cat([x, extra_tokens.to(x.dtype)], dim=1)
        text_ids = torch.zeros(inputs.prompt_embeds.shape[1], 3, device=self.device, dtype=x.dtype)
        guidance = None
        if self._has_guidance_embedding():
            guidance = torch.full((x.shape[0],), guidance_scale, device=self.device, dtype=torch.float32)
        output: torch.Tensor = denoiser(
            hidden_states=hidden,
            timestep=inputs.timesteps.to(x.dtype) / 1000,
            guidance=guidance,
            pooled_projections=inputs.pooled_prompt_embeds,
            encoder_hidden_states=inputs.prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        return output[:, : x.shape[1]]

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unpack, then undo the latent normalisation (``/ scaling_factor + shift_factor``)."""
        unpacked = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        config = self.pipe.vae.config
        vae_latents: torch.Tensor = unpacked / config.scaling_factor + config.shift_factor
        return vae_latents
