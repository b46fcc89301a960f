"""FLUX.2 [klein] (``Flux2KleinPipeline``) and FLUX.2 [dev] (``Flux2Pipeline``) as policies of the tree engine.

Mirrors the pipelines' ``__call__``: the text encoder's hidden states of three layers stacked along
the features (padded to ``model.max_sequence_length`` tokens, no mask; [klein]: Qwen3 layers 9,
18 and 27; [dev]: Mistral-Small-3 layers 10, 20 and 30 of the prompt under the pipeline's system
message, both through the pipeline's own ``encode_prompt``), latents drawn already
patchified (``[B, 4C, H/16, W/16]``) and packed to ``[B, H/16 * W/16, 4C]``, 4-D position ids for
text (``(0, 0, 0, l)``) and image (``(0, h, w, 0)``), sigmas ``linspace(1, 1/T, T)`` with the
pipeline's empirical ``mu`` (a function of image tokens and ``T``), the transformer called with
``timestep / 1000``. The two pipelines share all of this (their schedule, noise, ids and latent
layout are the same code); they differ only in guidance, so one adapter serves both and branches
on the pipeline it wrapped (:meth:`Flux2Backbone._embeds_guidance`).

Guidance of [dev]: the model is guidance-distilled. ``Flux2Pipeline`` passes ``guidance_scale`` to
the transformer's guidance embedding (a ``[B]`` float32 tensor, one row per image) and has no
true CFG and no negative prompt, so the engine does the same: one row per forward at any
``guidance_scale``. Published sampling defaults: 50 steps, guidance 4.0, 1024 x 1024.

Guidance of [klein]: no guidance embedding (``guidance=None``). The undistilled "base" checkpoints use true CFG with the empty prompt as negative
(``guidance_scale > 1``: uncond + s * (cond - uncond), one batched forward); step-distilled ones
(``is_distilled`` in the pipeline config) ignore ``guidance_scale`` as the pipeline does. The
pipeline hard-codes the negative prompt ""; ``model.negative_prompt`` should stay "" for parity.

Published sampling defaults: FLUX.2 [klein] 4B/9B (distilled) 4 steps, guidance 1.0; the
"base" 4B/9B 50 steps with guidance 4.0; 1024 x 1024 by default (``default_sample_size`` 128).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch

from treegrpo.errors import ConfigError
from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import DenoiserInputs, DiffusersBackbone, checked_image_size, diffusers_model
from treegrpo.models.config import ModelConfig
from treegrpo.models.sd3 import SD3_LORA_TARGETS

logger = logging.getLogger(__name__)

FLUX2_LORA_TARGETS: tuple[str, ...] = SD3_LORA_TARGETS + ("attn.to_qkv_mlp_proj",)
"""Attention projections of the double-stream blocks plus the single-stream blocks' fused QKV/MLP input."""


GUIDANCE_EMBEDDING_PIPELINES: tuple[str, ...] = ("Flux2Pipeline",)
"""FLUX.2 pipelines that feed ``guidance_scale`` to the transformer's guidance embedding instead of true CFG."""


class Flux2Backbone(DiffusersBackbone):
    """FLUX.2 [klein] / [dev] transformer policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "flux2"
    denoiser_name = "transformer"
    default_lora_targets = FLUX2_LORA_TARGETS

    def __init__(self, pipe: Any, cfg: ModelConfig, device: torch.device, **options: Any) -> None:
        if type(pipe).__name__ in GUIDANCE_EMBEDDING_PIPELINES and cfg.true_cfg_scale != 1:
            raise ConfigError(
                f"model.true_cfg_scale is {cfg.true_cfg_scale} but {type(pipe).__name__} (FLUX.2 [dev]) has no true CFG: "
                "sampling.guidance_scale goes into its guidance embedding; leave model.true_cfg_scale at 1"
            )
        super().__init__(pipe, cfg, device, **options)

    def _image_size(self) -> tuple[int, int]:
        """Configured or default size; both sides multiples of twice the VAE factor (2 x 2 latent patches)."""
        return checked_image_size(super()._image_size(), self.pipe.vae_scale_factor * 2, self.family)

    def _token_grid(self) -> tuple[int, int]:
        """(height, width) in tokens of the patchified latents ``prepare_latents`` draws."""
        factor = self.pipe.vae_scale_factor
        return self.height // (factor * 2), self.width // (factor * 2)

    def _embeds_guidance(self) -> bool:
        """[dev] (``Flux2Pipeline``): ``guidance_scale`` goes into the guidance embedding; [klein]: true CFG or none."""
        return type(self.pipe).__name__ in GUIDANCE_EMBEDDING_PIPELINES

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Stacked text-encoder hidden states via the pipeline's ``encode_prompt`` (no pooled embedding)."""
        embeds, _ = self.pipe.encode_prompt(
            prompt=texts, device=self.device, num_images_per_prompt=1, max_sequence_length=self.cfg.max_sequence_length
        )
        return embeds, None

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Sigmas and timesteps of the pipeline's scheduler after ``set_timesteps(sigmas=..., mu=...)`` (the same
        grid and empirical ``mu`` in both pipelines)."""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        scheduler = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        height, width = self._token_grid()
        mu = compute_empirical_mu(image_seq_len=height * width, num_steps=num_steps)
        if scheduler.config.get("use_flow_sigmas", False):
            scheduler.set_timesteps(num_steps, device=self.device, mu=mu)
        else:
            sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        return FlowSchedule(scheduler.sigmas.to(self.device), scheduler.timesteps.to(self.device))

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Packed ``[num, H/2 * W/2, 4C]`` latents from ``pipe.prepare_latents`` (float32 copy)."""
        channels = diffusers_model(self.denoiser).config.in_channels // 4
        latents: torch.Tensor
        latents, _ = self.pipe.prepare_latents(num, channels, self.height, self.width, self.dtype, self.device, generator)
        return latents.to(torch.float32)

    def _free_guidance_scale(self, guidance_scale: float) -> float:
        """[klein]: ``guidance_scale`` for undistilled checkpoints, 1 (no CFG) for step-distilled ones, as the
        pipeline; [dev]: 1 (the scale goes into the guidance embedding, see :meth:`_forward`)."""
        if self._embeds_guidance():
            return 1.0
        if self.pipe.config.get("is_distilled", False):
            if guidance_scale > 1:
                logger.warning("guidance_scale %s is ignored: this FLUX.2 checkpoint is step-distilled", guidance_scale)
            return 1.0
        return guidance_scale

    def _image_ids(self, batch: int) -> torch.Tensor:
        """``[batch, H * W, 4]`` image position ids, as ``prepare_latents`` makes them."""
        height, width = self._token_grid()
        grid = torch.zeros(1, 1, height, width, device=self.device)
        ids: torch.Tensor = self.pipe._prepare_latent_ids(grid).expand(batch, -1, -1).to(self.device)
        return ids

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity with text and image position ids (and [dev]'s guidance) as the pipeline passes them."""
        x = inputs.latents
        text_ids = self.pipe._prepare_text_ids(inputs.prompt_embeds).to(self.device)
        guidance = None
        if self._embeds_guidance():
            guidance = torch.full((x.shape[0],), guidance_scale, device=self.device, dtype=torch.float32)
        velocity: torch.Tensor = denoiser(
            hidden_states=x,
            timestep=inputs.timesteps.to(x.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states=inputs.prompt_embeds,
            txt_ids=text_ids,
            img_ids=self._image_ids(x.shape[0]),
            return_dict=False,
        )[0][:, : x.shape[1]]
        return velocity

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unpack to the token grid, undo the VAE's batch-norm normalisation, then unpatchify."""
        height, width = self._token_grid()
        grid = latents.reshape(latents.shape[0], height, width, latents.shape[2]).permute(0, 3, 1, 2)
        bn = self.pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.pipe.vae.config.batch_norm_eps).to(grid.device, grid.dtype)
        vae_latents: torch.Tensor = self.pipe._unpatchify_latents(grid * std + mean)
        return vae_latents
