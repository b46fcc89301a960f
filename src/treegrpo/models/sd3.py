"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``) as a policy of the tree engine.

Mirrors the pipeline's ``__call__``: ``encode_prompt`` for the text, ``prepare_latents`` for x_T,
``set_timesteps`` on its ``FlowMatchEulerDiscreteScheduler`` (static shift from the config, or
``mu`` from the image sequence length when ``use_dynamic_shifting``), the transformer called with
``timestep = sigma * 1000`` (the scheduler's own timesteps), CFG with uncond rows first.
"""

from __future__ import annotations

from typing import Optional

import torch

from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import DenoiserInputs, DiffusersBackbone, diffusers_model, shift_mu

SD3_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


class SD3Backbone(DiffusersBackbone):
    """SD3/SD3.5 transformer policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "sd3"
    denoiser_name = "transformer"
    default_lora_targets = SD3_LORA_TARGETS

    def _latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latents ``prepare_latents`` draws."""
        factor = self.pipe.vae_scale_factor
        return diffusers_model(self.denoiser).config.in_channels, self.height // factor, self.width // factor

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """CLIP-L + CLIP-G (+ T5, or zeros without it) embeddings via the pipeline."""
        prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=texts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        return prompt_embeds, pooled

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Sigmas and timesteps of the pipeline's scheduler after ``set_timesteps`` (shifted as the pipeline shifts)."""
        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            kwargs["mu"] = self._dynamic_shift_mu()
        scheduler.set_timesteps(num_steps, device=self.device, **kwargs)
        return FlowSchedule(scheduler.sigmas.to(self.device), scheduler.timesteps.to(self.device))

    def _dynamic_shift_mu(self) -> float:
        """``mu`` from the image sequence length (patches), as the pipeline computes it."""
        _, height, width = self._latent_shape()
        patch = diffusers_model(self.denoiser).config.patch_size
        return shift_mu(self.pipe.scheduler.config, (height // patch) * (width // patch), 1.16)

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[num, C, H/f, W/f]`` Gaussian latents from ``pipe.prepare_latents`` (float32 copy)."""
        channels, _, _ = self._latent_shape()
        latents: torch.Tensor = self.pipe.prepare_latents(
            num, channels, self.height, self.width, self.dtype, self.device, generator
        )
        return latents.to(torch.float32)

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity at ``timestep = sigma * 1000``."""
        velocity: torch.Tensor = denoiser(
            hidden_states=inputs.latents,
            timestep=inputs.timesteps,
            encoder_hidden_states=inputs.prompt_embeds,
            pooled_projections=inputs.pooled_prompt_embeds,
            return_dict=False,
        )[0]
        return velocity
