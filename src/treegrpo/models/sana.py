"""Sana 0.6B / 1.6B (``SanaPipeline``) as a policy of the tree engine.

Mirrors the pipeline's ``__call__``: ``encode_prompt`` with the pipeline's default complex human
instruction prepended to each prompt (the negative prompt gets none, as in the pipeline), Gemma-2
hidden states kept at ``[first] + last max_sequence_length - 1`` tokens with their attention mask
(handed to the transformer as ``encoder_attention_mask``), float32 latents ``[B, 32, H/32, W/32]``
from ``prepare_latents``, the transformer called at ``t * timestep_scale``, CFG
``uncond + s * (cond - uncond)`` for ``s > 1``, and the DC-AE decoding ``latents / scaling_factor``.
The pipeline's aspect-ratio binning is not reproduced: sizes are taken as configured (call the
pipeline with ``use_resolution_binning=False`` to compare).

Sampler: the engine's flow step is first order (Euler ODE / Flow-GRPO SDE) on the scheduler's sigma
grid. The released checkpoints carry ``DPMSolverMultistepScheduler`` (``prediction_type:
flow_prediction``, ``use_flow_sigmas``, ``flow_shift``): the engine samples on its flow sigma grid
but steps first order, so parity is exact against the pipeline run with a
``FlowMatchEulerDiscreteScheduler`` (as for Wan and its UniPC scheduler).

Sana-Sprint (``SanaSprintPipeline``) is not supported: it samples with SCM / TrigFlow consistency
steps (denoise to x_0, then re-noise on a trigonometric path at a few fixed angles), which is
neither the Euler ODE nor the Flow-GRPO SDE the engine's plans step.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch

from treegrpo.errors import ConfigError
from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import (
    DenoiserInputs, DiffusersBackbone, TextConditioning, checked_image_size, flow_sigma_schedule,
)

SANA_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""Self- (linear) and cross-attention projections of every block, the Sana LoRA recipes' targets."""


def default_complex_human_instruction() -> list[str]:
    """The instruction ``SanaPipeline.__call__`` prepends by default (read from its signature, not copied)."""
    from diffusers import SanaPipeline

    default: list[str] = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    return list(default)


class SanaBackbone(DiffusersBackbone):
    """Sana transformer policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "sana"
    denoiser_name = "transformer"
    default_lora_targets = SANA_LORA_TARGETS

    def _default_size(self) -> tuple[int, int]:
        """The pipeline's default 1024 x 1024."""
        return 1024, 1024

    def _image_size(self) -> tuple[int, int]:
        """Configured or default size; both sides multiples of 32 (the pipeline's check)."""
        return checked_image_size(super()._image_size(), 32, self.family)

    def _latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latents ``prepare_latents`` draws."""
        factor = self.pipe.vae_scale_factor
        channels: int = self.pipe.transformer.config.in_channels
        out_channels: int = self.pipe.transformer.config.out_channels
        if out_channels != channels:
            raise ConfigError(f"the Sana transformer has out_channels={out_channels} != in_channels={channels} (learned sigma); not supported")
        return channels, self.height // factor, self.width // factor

    def _encode(self, texts: list[str], instruction: Optional[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gemma-2 embeddings and attention mask through the pipeline's ``encode_prompt``."""
        embeds, mask, _, _ = self.pipe.encode_prompt(
            texts,
            do_classifier_free_guidance=False,
            device=self.device,
            max_sequence_length=self.cfg.max_sequence_length,
            complex_human_instruction=instruction,
        )
        return embeds, mask.bool()

    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """Prompts with the complex human instruction, the negative prompt without (the pipeline's split)."""
        texts = [str(prompt) for prompt in prompts]
        with torch.no_grad(), self._text_encoders_on_device():
            embeds, mask = self._encode(texts, default_complex_human_instruction())
            negative, negative_mask = self._encode([self.cfg.negative_prompt], None)
        return TextConditioning(embeds, negative, None, None, mask, negative_mask)

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Sigmas and timesteps of the pipeline's scheduler after ``set_timesteps(num_steps)`` (a flow sigma grid)."""
        return flow_sigma_schedule(self.pipe.scheduler, num_steps, self.device, "Sana")

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[num, C, H/f, W/f]`` float32 latents from ``pipe.prepare_latents`` (the pipeline draws them in float32)."""
        channels, _, _ = self._latent_shape()
        latents: torch.Tensor = self.pipe.prepare_latents(
            num, channels, self.height, self.width, torch.float32, self.device, generator
        )
        return latents

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity at ``t * timestep_scale``, the text masked by its attention mask."""
        scale: float = self.pipe.transformer.config.timestep_scale
        velocity: torch.Tensor = denoiser(
            inputs.latents,
            encoder_hidden_states=inputs.prompt_embeds,
            encoder_attention_mask=inputs.prompt_mask,
            timestep=inputs.timesteps * scale,
            return_dict=False,
        )[0]
        return velocity
