"""Z-Image (``ZImagePipeline``) as a policy of the tree engine.

Mirrors the pipeline's ``__call__``: Qwen3 hidden states (second to last layer) of the chat-
templated prompt, one variable-length tensor per prompt (kept here zero-padded with a mask and
handed back to the transformer as the list it takes), latents ``[B, C, H/8, W/8]``, sigmas
``torch.linspace(1, 1/T, T)`` with ``mu = calculate_shift(image tokens)`` (used only by a scheduler
with dynamic shifting; the released one has a static shift 3), the transformer called on a list
of ``[C, 1, H, W]`` latents at ``(1000 - timestep) / 1000`` and its output negated.

Guidance: ``guidance_scale > 0`` is CFG in the pipeline's form ``cond + s * (cond - uncond)``
with ``model.negative_prompt`` (one batched forward); 0 means none. The pipeline's optional
``cfg_normalization`` and ``cfg_truncation`` are not reproduced (both off by default).

Published sampling defaults: Z-Image-Turbo 8 steps (9 sigmas in the model card) at guidance 0;
Z-Image (base) 50 steps at guidance 4 (the pipeline's default is 5); 1024 x 1024.
"""

from __future__ import annotations

from typing import Optional

import torch

from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import DenoiserInputs, DiffusersBackbone, checked_image_size, concat_padded, shift_mu

ZIMAGE_LORA_TARGETS: tuple[str, ...] = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
"""Attention projections of the single-stream blocks (and of the noise/context refiners)."""


class ZImageBackbone(DiffusersBackbone):
    """Z-Image transformer policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "zimage"
    denoiser_name = "transformer"
    default_lora_targets = ZIMAGE_LORA_TARGETS

    def _default_size(self) -> tuple[int, int]:
        """The pipeline's default 1024 x 1024."""
        return 1024, 1024

    def _image_size(self) -> tuple[int, int]:
        """Configured or default size; both sides multiples of twice the VAE factor (2 x 2 latent patches)."""
        return checked_image_size(super()._image_size(), self.pipe.vae_scale_factor * 2, self.family)

    def _latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latents ``prepare_latents`` draws (height/width rounded to even)."""
        factor = self.pipe.vae_scale_factor
        height, width = 2 * (self.height // (factor * 2)), 2 * (self.width // (factor * 2))
        channels: int = self.pipe.transformer.in_channels  # the denoiser, read as the pipeline reads it
        return channels, height, width

    def _encode_texts_with_mask(
        self, texts: list[str]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The pipeline's per-prompt embeddings, zero-padded to the longest, and their mask."""
        embeds = self.pipe._encode_prompt(
            prompt=list(texts), device=self.device, max_sequence_length=self.cfg.max_sequence_length
        )
        return self._pad(embeds)

    @staticmethod
    def _pad(embeds: list[torch.Tensor]) -> tuple[torch.Tensor, None, torch.Tensor]:
        """``[N, L_max, D]`` embeddings and their ``[N, L_max]`` mask from a list of ``[L_i, D]``."""
        padded, mask = concat_padded([(e.unsqueeze(0), None) for e in embeds])
        if mask is None:
            mask = torch.ones(padded.shape[:2], dtype=torch.bool, device=padded.device)
        return padded, None, mask

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Sigmas and timesteps of the pipeline's scheduler after ``set_timesteps(sigmas=..., mu=...)``."""
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        config = scheduler.config
        _, height, width = self._latent_shape()
        mu = shift_mu(config, (height // 2) * (width // 2), 1.15)
        scheduler.set_timesteps(sigmas=get_default_z_image_sigmas(num_steps), device=self.device, mu=mu)
        return FlowSchedule(scheduler.sigmas.to(self.device), scheduler.timesteps.to(self.device))

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[num, C, H/8, W/8]`` float32 latents from ``pipe.prepare_latents`` (the pipeline draws them in float32)."""
        channels, _, _ = self._latent_shape()
        latents: torch.Tensor = self.pipe.prepare_latents(
            num, channels, self.height, self.width, torch.float32, self.device, generator
        )
        return latents

    def _uses_free_guidance(self, scale: float) -> bool:
        """The pipeline guides whenever ``guidance_scale > 0``."""
        return scale > 0

    def _combine_guidance(self, uncond: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
        """``cond + s * (cond - uncond)``, the pipeline's form (the outputs are already negated)."""
        return text + scale * (text - uncond)

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The negated transformer output on per-sample lists, at ``(1000 - t) / 1000``."""
        x = inputs.latents
        embeds = inputs.prompt_embeds
        mask = inputs.prompt_mask
        captions = list(embeds) if mask is None else [row[keep] for row, keep in zip(embeds, mask.bool())]
        outputs = denoiser(
            list(x.unsqueeze(2).unbind(dim=0)),
            (1000 - inputs.timesteps) / 1000,
            captions,
            return_dict=False,
        )[0]
        return -torch.stack(outputs, dim=0).squeeze(2)

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Undo the latent normalisation: ``latents / scaling_factor + shift_factor``."""
        config = self.pipe.vae.config
        vae_latents: torch.Tensor = latents / config.scaling_factor + config.shift_factor
        return vae_latents
