"""FLUX.1-Kontext (``FluxKontextPipeline``) as a policy of the tree engine: FLUX.1 plus a source image.

A prompt is an :class:`~treegrpo.data.EditPrompt` (instruction + source image). The source image
is resized to the model's ``height x width``, preprocessed and VAE-encoded (the latent mode, as
the pipeline's ``_encode_vae_image``) once per prompt, packed like the latents and kept in the
conditioning row, so every node of a prompt's tree shares it. Each denoiser call concatenates
the source tokens after the noisy ones (position ids with first axis 1) and keeps only the
generated part of the output, as the pipeline's loop does.

Schedule, noise and guidance are FLUX.1's (:mod:`treegrpo.models.flux`): Kontext-dev is
guidance-distilled (``guidance_scale`` goes into its guidance embedding, 2.5 by default), true
CFG only with ``model.true_cfg_scale > 1``. The pipeline resizes to a preferred Kontext
resolution unless ``_auto_resize=False``; the engine always edits at ``height x width``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from treegrpo.models.common import DenoiserInputs, TextConditioning, diffusers_model
from treegrpo.models.flux import FluxBackbone
from treegrpo.prompts import source_images_or_error


class FluxKontextBackbone(FluxBackbone):
    """FLUX.1-Kontext transformer policy; see the module docstring."""

    family = "flux_kontext"

    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """Text embeddings (FLUX.1's) plus each prompt's packed source latents and their position ids."""
        images = source_images_or_error(prompts, self.family)
        conditioning = super().encode_prompts(prompts)
        conditioning.source_latents, conditioning.source_ids = self._encode_sources(images)
        return conditioning

    @torch.no_grad()
    def _encode_sources(self, images: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed source latents ``[N, L_src, 4C]`` (float32) and ids ``[L_src, 3]`` as ``prepare_latents`` makes them."""
        pipe = self.pipe
        resized = pipe.image_processor.resize(images, self.height, self.width)
        pixels = pipe.image_processor.preprocess(resized, self.height, self.width).to(self.device, self.dtype)
        latents = torch.cat([pipe._encode_vae_image(pixels[i : i + 1], generator=None) for i in range(len(images))])
        batch, channels, height, width = latents.shape
        packed = pipe._pack_latents(latents, batch, channels, height, width)
        ids = pipe._prepare_latent_image_ids(1, height // 2, width // 2, self.device, self.dtype)
        ids[..., 0] = 1
        return packed.to(torch.float32), ids

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Packed ``[num, H/2 * W/2, 4C]`` latents from Kontext's ``prepare_latents`` (no image; float32 copy).

        The pipeline encodes the source image first, in the VAE's latent mode, which draws nothing
        from ``generator``, so the noise is the same as the pipeline's.
        """
        channels = diffusers_model(self.denoiser).config.in_channels // 4
        latents: torch.Tensor
        latents, _, _, _ = self.pipe.prepare_latents(
            None, num, channels, self.height, self.width, self.dtype, self.device, generator
        )
        return latents.to(torch.float32)

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """FLUX.1's call on ``[noisy tokens, source tokens]`` with ids concatenated; the noisy tokens' output."""
        if inputs.source_latents is None or inputs.source_ids is None:
            raise ValueError("FLUX.1-Kontext conditioning has no source latents; build it with encode_prompts")
        return self._call_transformer(denoiser, inputs, guidance_scale, inputs.source_latents, inputs.source_ids)
