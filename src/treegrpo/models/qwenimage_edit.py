"""Qwen-Image-Edit (``QwenImageEditPipeline``) as a policy of the tree engine: Qwen-Image plus a source image.

A prompt is an :class:`~treegrpo.data.EditPrompt` (instruction + source image). Once per prompt,
:meth:`QwenImageEditBackbone.encode_prompts` resizes the source image, and

- encodes the instruction with Qwen2.5-VL *seeing the image* (the pipeline's edit template, its
  ``<|image_pad|>`` tokens expanded by the processor, the system prefix dropped), and the negative
  prompt the same way with the same image, so the unconditional row is per prompt too
  (``TextConditioning.negative_per_prompt``);
- VAE-encodes it (latent mode, per-channel normalised, as ``_encode_vae_image``) and packs it in
  2 x 2 patches like the latents (``TextConditioning.source_latents``).

Every node of the prompt's tree shares that conditioning row through ``cond_index``. Each
transformer call concatenates the source tokens after the noisy ones, with a second
``img_shapes`` entry for the source grid, and keeps only the noisy tokens' output, as the
pipeline's loop does. Schedule, noise, decoding and guidance are Qwen-Image's
(:mod:`treegrpo.models.qwenimage`): ``guidance_scale > 1`` is the true CFG with the per-token
norm rescale (``model.negative_prompt``; the released model has no guidance embedding).

Source size: the pipeline resizes the source to ``calculate_dimensions(max_area, its aspect
ratio)`` (rounded to multiples of 32), with ``max_area = 1024 * 1024`` in diffusers and
``max_area = resolution ** 2`` in Flow-GRPO's Qwen-Image-Edit training. The engine uses
``max_area = height * width`` and the *output's* aspect ratio for every prompt, so the sources of
a batch have one token count (for ``height, width`` multiples of 32 the source is simply resized
to ``height x width``). This equals the pipeline whenever the source has the output's aspect
ratio and ``max_area = height * width``; other sources are stretched, as in FLUX.1-Kontext's
adapter.

Published settings: Flow-GRPO trains Qwen-Image-Edit at 512 x 512, 10 steps, true CFG 4.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from treegrpo.errors import ConfigError
from treegrpo.models.common import DenoiserInputs, TextConditioning, diffusers_model
from treegrpo.models.qwenimage import QwenImageBackbone
from treegrpo.prompts import source_images_or_error


class QwenImageEditBackbone(QwenImageBackbone):
    """Qwen-Image-Edit transformer policy; see the module docstring."""

    family = "qwenimage_edit"

    def _image_size(self) -> tuple[int, int]:
        """Qwen-Image's size check, and a source size the pipeline's rounding (to multiples of 32) keeps non-zero."""
        height, width = super()._image_size()
        if height * width < 32 * 32:
            raise ConfigError(
                f"model.height x model.width must cover at least 32 x 32 pixels for {self.family} "
                f"(got {height} x {width}): the source image is resized to that area in multiples of 32"
            )
        return height, width

    def _source_size(self) -> tuple[int, int]:
        """(height, width) of the resized source image: the pipeline's ``calculate_dimensions`` at the output's area and ratio."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

        # the ignore: diffusers leaves calculate_dimensions unannotated
        width, height, _ = calculate_dimensions(self.height * self.width, self.width / self.height)  # type: ignore[no-untyped-call]
        return int(height), int(width)

    def _source_shape(self) -> tuple[int, int, int]:
        """The source tokens' ``img_shapes`` entry: (1, packed rows, packed columns)."""
        height, width = self._source_size()
        factor = self.pipe.vae_scale_factor * 2
        return 1, height // factor, width // factor

    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """VL embeddings of each instruction and of the negative prompt with the prompt's source image, and its packed latents."""
        resized = self._resized_sources(source_images_or_error(prompts, self.family))
        texts = [str(prompt) for prompt in prompts]
        with torch.no_grad(), self._text_encoders_on_device():
            embeds, mask = self._encode_with_images(texts, resized)
            negative, negative_mask = self._encode_with_images([self.cfg.negative_prompt] * len(texts), resized)
        source_latents, _ = self._encode_sources(resized)
        return TextConditioning(
            embeds, negative, None, None, mask, negative_mask, source_latents=source_latents, negative_per_prompt=True
        )

    def _resized_sources(self, images: list[Any]) -> list[Any]:
        """The PIL source images resized to :meth:`_source_size` as the pipeline resizes them (both encoders see these)."""
        height, width = self._source_size()
        resized: list[Any] = self.pipe.image_processor.resize(images, height, width)
        return resized

    def _encode_with_images(self, texts: list[str], images: list[Any]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The pipeline's ``encode_prompt`` with the (resized) source images: embeddings and padding mask (``None`` when unpadded)."""
        embeds, mask = self.pipe.encode_prompt(
            prompt=texts, image=images, device=self.device, num_images_per_prompt=1,
            max_sequence_length=self.cfg.max_sequence_length,
        )
        return embeds, None if mask is None else mask.bool()

    @torch.no_grad()
    def _encode_sources(self, images: list[Any]) -> tuple[torch.Tensor, None]:
        """Packed source latents ``[N, L_src, 4C]`` (float32), one image at a time, as ``prepare_latents`` packs them.

        (No position ids: the source grid is the second ``img_shapes`` entry; the pair mirrors FLUX.1-Kontext's.)
        """
        pipe = self.pipe
        height, width = self._source_size()
        resized = self._resized_sources(images)
        pixels = pipe.image_processor.preprocess(resized, height, width).unsqueeze(2).to(self.device, self.dtype)
        packed = []
        for i in range(len(images)):
            latents = pipe._encode_vae_image(pixels[i : i + 1], generator=None)
            _, channels, _, latent_height, latent_width = latents.shape
            packed.append(pipe._pack_latents(latents, 1, channels, latent_height, latent_width))
        return torch.cat(packed).to(torch.float32), None

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Packed ``[num, H/2 * W/2, 4C]`` latents from the edit pipeline's ``prepare_latents`` (no image; float32 copy).

        The pipeline encodes the source image first, in the VAE's latent mode, which draws nothing
        from ``generator``, so the noise is the same as the pipeline's.
        """
        channels = diffusers_model(self.denoiser).config.in_channels // 4
        latents: torch.Tensor
        latents, _ = self.pipe.prepare_latents(None, num, channels, self.height, self.width, self.dtype, self.device, generator)
        return latents.to(torch.float32)

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """Qwen-Image's call on ``[noisy tokens, source tokens]`` with both grids in ``img_shapes``; the noisy tokens' output."""
        if inputs.source_latents is None:
            raise ValueError("Qwen-Image-Edit conditioning has no source latents; build it with encode_prompts")
        return self._call_transformer(denoiser, inputs, guidance_scale, inputs.source_latents, self._source_shape())
