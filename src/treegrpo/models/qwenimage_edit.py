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

Qwen-Image-Edit-2509 / 2511 (``QwenImageEditPlusPipeline``, one more pipeline of this family): a
prompt carries one or more source images (``EditPrompt.image`` a list: a .jsonl record's
``images``). The adapter branches on the pipeline it wrapped (:meth:`QwenImageEditBackbone._several_images`)
in three places, as that pipeline's ``__call__`` differs:

- the instruction (and the negative prompt) is encoded prompt by prompt, as the pipeline's
  batch of one, with its images labelled ``Picture 1: ... Picture k:`` in the template; Qwen2.5-VL
  sees each image resized to ``CONDITION_IMAGE_SIZE`` (384 x 384) in area at *its own* aspect
  ratio, exactly as the pipeline, and the prompts' embeddings are zero-padded and masked to one batch;
- each image is VAE-encoded at the output's area and aspect ratio (the single-image rule above;
  the pipeline uses a 1024 x 1024 area at the image's ratio), and the prompt's images' tokens follow
  one another, one ``img_shapes`` entry each;
- prompts with different numbers of images share the conditioning: the source tokens are
  zero-padded to the most images, with one more channel marking the real tokens, and a forward
  groups its rows by image count (one transformer call per count present).

Published settings (Flow-Factory ``examples/grpo/lora/qwen_image_edit_plus``): 384 x 384, 10 steps,
true CFG 4, noise level 1.0, LoRA rank 64.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import torch

from treegrpo.errors import ConfigError
from treegrpo.models.common import DenoiserInputs, TextConditioning, concat_padded, diffusers_model
from treegrpo.models.qwenimage import QwenImageBackbone
from treegrpo.prompts import source_image_lists_or_error, source_images_or_error

SEVERAL_IMAGE_PIPELINES: tuple[str, ...] = ("QwenImageEditPlusPipeline",)
"""Pipelines of this family that take several source images per prompt (Qwen-Image-Edit-2509 / 2511)."""


class QwenImageEditBackbone(QwenImageBackbone):
    """Qwen-Image-Edit (-2509 / -2511) transformer policy; see the module docstring."""

    family = "qwenimage_edit"

    def _several_images(self) -> bool:
        """``QwenImageEditPlusPipeline``: one or more source images per prompt; ``QwenImageEditPipeline``: one."""
        return type(self.pipe).__name__ in SEVERAL_IMAGE_PIPELINES

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
        """VL embeddings of each instruction and of the negative prompt with the prompt's source image(s), and their packed latents."""
        if self._several_images():
            return self._encode_prompts_with_several_images(prompts)
        resized = self._resized_sources(source_images_or_error(prompts, self.family))
        texts = [str(prompt) for prompt in prompts]
        with torch.no_grad(), self._text_encoders_on_device():
            embeds, mask = self._encode_with_images(texts, resized)
            negative, negative_mask = self._encode_with_images([self.cfg.negative_prompt] * len(texts), resized)
        source_latents, _ = self._encode_sources(resized)
        return TextConditioning(
            embeds, negative, None, None, mask, negative_mask, source_latents=source_latents, negative_per_prompt=True
        )

    def _encode_prompts_with_several_images(self, prompts: Sequence[str]) -> TextConditioning:
        """``QwenImageEditPlusPipeline``: each prompt (and the negative prompt) encoded with its own images, as a batch
        of one; the source tokens in the padded, marked layout :meth:`_marked_sources` describes."""
        sources = source_image_lists_or_error(prompts, self.family)
        texts, negatives = [], []
        with torch.no_grad(), self._text_encoders_on_device():
            for prompt, images in zip(prompts, sources):
                conditions = [self._condition_image(image) for image in images]
                texts.append(self._encode_with_images([str(prompt)], conditions))
                negatives.append(self._encode_with_images([self.cfg.negative_prompt], conditions))
        embeds, mask = concat_padded(texts)
        negative, negative_mask = concat_padded(negatives)
        return TextConditioning(
            embeds, negative, None, None, mask, negative_mask, source_latents=self._marked_sources(sources),
            negative_per_prompt=True,
        )

    def _condition_image(self, image: Any) -> Any:
        """What Qwen2.5-VL sees of one source image: the pipeline's resize to ``CONDITION_IMAGE_SIZE`` at the image's ratio."""
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

        # the ignore: diffusers leaves calculate_dimensions unannotated
        width, height = plus.calculate_dimensions(plus.CONDITION_IMAGE_SIZE, image.size[0] / image.size[1])  # type: ignore[no-untyped-call]
        return self.pipe.image_processor.resize(image, int(height), int(width))

    def _marked_sources(self, sources: list[list[Any]]) -> torch.Tensor:
        """``[N, K * L, 4C + 1]``: each prompt's images' packed latents one after another (``L`` tokens each), zero-padded
        to the most images ``K``; the last channel is 1 on real tokens, 0 on padding (read by :meth:`_forward`)."""
        rows = [self._encode_sources(images)[0].flatten(0, 1) for images in sources]
        marked = rows[0].new_zeros(len(rows), max(len(row) for row in rows), rows[0].shape[1] + 1)
        for index, row in enumerate(rows):
            marked[index, : len(row), :-1] = row
            marked[index, : len(row), -1] = 1
        return marked

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
        if self._several_images():
            return self._forward_by_image_count(denoiser, inputs, guidance_scale, inputs.source_latents)
        return self._call_transformer(denoiser, inputs, guidance_scale, inputs.source_latents, [self._source_shape()])

    def _forward_by_image_count(
        self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float, marked: torch.Tensor
    ) -> torch.Tensor:
        """Rows grouped by their number of source images (the marked tokens of :meth:`_marked_sources`), one call per group."""
        per_image = math.prod(self._source_shape())
        counts = torch.div(marked[..., -1].sum(dim=1).round().long(), per_image, rounding_mode="floor")
        outputs, order = [], []
        for count in sorted(set(counts.tolist())):
            rows = torch.nonzero(counts == count).squeeze(1)
            group = dataclasses.replace(
                inputs, latents=inputs.latents[rows], timesteps=inputs.timesteps[rows],
                prompt_embeds=inputs.prompt_embeds[rows],
                prompt_mask=None if inputs.prompt_mask is None else inputs.prompt_mask[rows], source_latents=None,
            )
            tokens = marked[rows, : count * per_image, :-1]
            outputs.append(self._call_transformer(denoiser, group, guidance_scale, tokens, [self._source_shape()] * count))
            order.append(rows)
        if len(outputs) == 1:
            return outputs[0]
        return torch.cat(outputs)[torch.argsort(torch.cat(order))]
