"""Wan image-to-video (``WanImageToVideoPipeline``) as a policy of the tree engine: Wan plus a source image.

A prompt is an :class:`~treegrpo.prompts.EditPrompt` (the text, carrying the source image as
``.image``). :meth:`WanI2VBackbone.encode_prompts` encodes each prompt's image once, as the
pipeline's ``__call__`` does before its loop, into the conditioning row, so every node of the
prompt's tree shares it through ``cond_index``. Text, schedule, noise, CFG, Wan 2.2's two experts
and decoding are text-to-video Wan's (:mod:`treegrpo.models.wan`). Two layouts, chosen by the
pipeline's ``expand_timesteps``:

- Wan 2.1 I2V (and Wan 2.2 A14B I2V, two experts, no image encoder): the image resized to
  ``height x width`` followed by ``num_frames - 1`` black frames is VAE-encoded (latent mode,
  per-channel normalised) and preceded by the 4-channel first-frame mask (``prepare_latents``);
  ``TextConditioning.source_latents`` holds that ``[N, 4 + C, F', H/8, W/8]`` condition and every
  transformer call takes ``cat([latents, condition])`` on channels. Wan 2.1's transformer also
  takes the CLIP image embedding (the vision tower's second-to-last hidden states of the image as
  given, ``encode_image``), ``TextConditioning.source_embeds``, the same for both CFG rows. Its
  attention takes the last 512 context tokens as text, so ``model.max_sequence_length`` must be 512.
- Wan 2.2 TI2V-5B (``expand_timesteps``; published as a ``WanPipeline``, loaded with
  ``model.family: wan_i2v``): the image alone is VAE-encoded to one latent frame; each call
  replaces the first latent frame by it and gives its tokens timestep 0, and the pipeline puts it
  in place of the first frame of its final latents. The engine's first frame instead follows the
  velocity whose clean prediction is the source latents, ``(x - source) / sigma``, which reaches
  the source exactly at sigma = 0 on ODE steps and is the same for every policy, so it adds
  nothing to an importance ratio. The other frames are the pipeline's; an SDE last step leaves its
  noise on the first frame too (the other steps' noise is pulled back to the source).

Parity target: the pipeline's final latents and decoded clip for the same source image (tests).
Not supported: the pipeline's ``last_image`` (first-last-frame Wan 2.1 FLF2V).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from treegrpo.errors import ConfigError
from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import DenoiserInputs, TextConditioning
from treegrpo.models.wan import WanBackbone
from treegrpo.prompts import source_image

WAN21_TEXT_TOKENS = 512
"""Wan 2.1 I2V's attention splits the context as (image tokens, the last 512 text tokens)."""


class WanI2VBackbone(WanBackbone):
    """Wan image-to-video transformer policy; see the module docstring."""

    family = "wan_i2v"

    # ------------------------------------------------------------------ layout

    def _first_frame_conditioned(self) -> bool:
        """Wan 2.2 TI2V-5B's layout: the source image is the first latent frame (``expand_timesteps``)."""
        return bool(self.pipe.config.get("expand_timesteps", False))

    def _trained_denoiser(self) -> torch.nn.Module:
        """Wan's expert choice, after checking that the pipeline is an image-to-video one this family runs."""
        denoiser = super()._trained_denoiser()
        self._check_layout()
        return denoiser

    def _check_layout(self) -> None:
        """One-line ConfigErrors for a text-to-video transformer, a missing image encoder, a wrong text length."""
        config = self.pipe.transformer.config
        z_dim = self.pipe.vae.config.z_dim
        expected = z_dim if self._first_frame_conditioned() else 2 * z_dim + self.pipe.vae_scale_factor_temporal
        if config.in_channels != expected:
            raise ConfigError(
                f"this Wan transformer takes {config.in_channels} input channels, not the {expected} of an "
                f"image-to-video one ({'first-frame' if self._first_frame_conditioned() else 'latents + mask + source'}); "
                "a text-to-video checkpoint trains with model.family=wan"
            )
        if config.image_dim is not None and getattr(self.pipe, "image_encoder", None) is None:
            raise ConfigError(
                "this Wan 2.1 I2V transformer takes CLIP image embeddings but the pipeline has no image_encoder; "
                "load the whole Wan2.1-I2V pipeline folder (image_encoder and image_processor included)"
            )
        if config.added_kv_proj_dim is not None and self.cfg.max_sequence_length != WAN21_TEXT_TOKENS:
            raise ConfigError(
                f"model.max_sequence_length is {self.cfg.max_sequence_length} but Wan 2.1 I2V's attention takes the "
                f"last {WAN21_TEXT_TOKENS} context tokens as text; set model.max_sequence_length={WAN21_TEXT_TOKENS}"
            )

    def _text_encoders(self) -> list[torch.nn.Module]:
        """UMT5 and, for Wan 2.1, the CLIP image encoder (frozen, placed and offloaded like a text encoder)."""
        image_encoder = getattr(self.pipe, "image_encoder", None)
        return [*super()._text_encoders(), *([image_encoder] if image_encoder is not None else [])]

    # ------------------------------------------------------------------ conditioning

    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """Wan's text embeddings plus each prompt's source condition (and CLIP embedding for Wan 2.1)."""
        images = [source_image(prompt) for prompt in prompts]
        if any(image is None for image in images):
            raise ConfigError(
                f"{self.family} animates images: every prompt needs a source image; "
                "use a .jsonl with 'prompt' and 'image' fields"
            )
        conditioning = super().encode_prompts(prompts)
        conditioning.source_latents = self._encode_sources(images)
        conditioning.source_embeds = self._encode_image_embeds(images)
        return conditioning

    def _encode_image_embeds(self, images: list[Any]) -> Optional[torch.Tensor]:
        """Wan 2.1's CLIP embedding of each image as given (``encode_image``), float32; ``None`` for the others."""
        if self.pipe.transformer.config.image_dim is None:
            return None
        with torch.no_grad(), self._text_encoders_on_device():
            embeds = [self.pipe.encode_image(image, self.device) for image in images]
        return torch.cat(embeds).to(torch.float32)

    def _latent_shape(self, num: int) -> tuple[int, int, int, int, int]:
        """``(num, C, F', H', W')`` of the pipeline's latents."""
        pipe = self.pipe
        frames = (self.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        spatial = pipe.vae_scale_factor_spatial
        return num, pipe.vae.config.z_dim, frames, self.height // spatial, self.width // spatial

    @torch.no_grad()
    def _encode_sources(self, images: list[Any]) -> torch.Tensor:
        """Each image's condition (float32) from the pipeline's own preprocessing and ``prepare_latents``.

        ``prepare_latents`` gets a placeholder for the latents, so it draws no noise.
        """
        pipe = self.pipe
        rows = []
        for image in images:
            pixels = pipe.video_processor.preprocess(image, height=self.height, width=self.width)
            placeholder = torch.zeros(self._latent_shape(1), device=self.device)
            outputs = pipe.prepare_latents(
                pixels.to(self.device, torch.float32), 1, pipe.vae.config.z_dim, self.height, self.width,
                self.num_frames, torch.float32, self.device, None, placeholder,
            )
            rows.append(outputs[1])
        return torch.cat(rows).to(torch.float32)

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[num, C, F', H', W']`` float32 latents drawn as ``prepare_latents`` draws them (encoding the image draws nothing)."""
        from diffusers.utils.torch_utils import randn_tensor

        latents: torch.Tensor = randn_tensor(
            self._latent_shape(num), generator=generator, device=self.device, dtype=torch.float32
        )
        return latents

    # ------------------------------------------------------------------ denoiser

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity on the latents with the source condition, as the pipeline's loop calls it."""
        if inputs.source_latents is None:
            raise ValueError("Wan image-to-video conditioning has no source latents; build it with encode_prompts")
        x, source, timestep = inputs.latents, inputs.source_latents, inputs.timesteps
        if self._first_frame_conditioned():
            mask = torch.ones_like(x[:1, :1])
            mask[:, :, 0] = 0
            model_input = (1 - mask) * source + mask * x
            _, patch_h, patch_w = self.pipe.transformer.config.patch_size
            per_token = mask[0, 0, :, ::patch_h, ::patch_w].flatten().to(torch.float32)
            timestep = per_token[None, :] * timestep.to(torch.float32)[:, None]
        else:
            model_input = torch.cat([x, source], dim=1)
        velocity: torch.Tensor = denoiser(
            hidden_states=model_input, timestep=timestep, encoder_hidden_states=inputs.prompt_embeds,
            encoder_hidden_states_image=inputs.source_embeds, return_dict=False,
        )[0]
        return velocity

    def model_fn(self, conditioning: Any, guidance_scale: float, schedule: Any, *, denoiser: Optional[Any] = None) -> Any:
        """Wan's model function; for TI2V the first latent frame's velocity points at the source latents."""
        model_fn = super().model_fn(conditioning, guidance_scale, schedule, denoiser=denoiser)
        if not self._first_frame_conditioned():
            return model_fn
        if conditioning.source_latents is None or not isinstance(schedule, FlowSchedule):
            raise ValueError("Wan TI2V needs encode_prompts' source latents and a flow schedule")
        source = conditioning.source_latents.to(self.device, torch.float32)
        sigmas = schedule.sigmas.to(self.device, torch.float32)

        def pinned(latents: torch.Tensor, step_index: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
            velocity: torch.Tensor = model_fn(latents, step_index, cond_index)
            sigma = sigmas[step_index.to(self.device).long()].view(-1, 1, 1, 1, 1)
            first = (latents[:, :, :1].to(velocity) - source[cond_index.to(self.device).long()]) / sigma
            return torch.cat([first, velocity[:, :, 1:]], dim=2)

        return pinned
