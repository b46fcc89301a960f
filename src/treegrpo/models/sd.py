"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``) as a policy of the tree engine.

The engine samples with DDIM (``noise_level`` is eta; eta > 0 gives the stochastic step with a
log-probability, as DDPO uses). The pipeline's scheduler is replaced by a ``DDIMScheduler`` built
from its config, so ``pipe(...)`` and the engine follow the same schedule. x0 clipping and
thresholding are switched off there, because the engine's DDIM step does neither.
Epsilon- and v-prediction models are supported (``prediction_type`` from the scheduler config).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from treegrpo.math.sampling import DDIMSchedule, SdeType
from treegrpo.models.common import DenoiserInputs, DiffusersBackbone, diffusers_model
from treegrpo.models.config import ModelConfig

SD_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
SUPPORTED_PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def ddim_scheduler_for(pipe: Any) -> Any:
    """A ``DDIMScheduler`` from the pipeline's scheduler config, without x0 clipping/thresholding."""
    from diffusers import DDIMScheduler

    # the ignore: diffusers leaves ConfigMixin.from_config unannotated
    return DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False)  # type: ignore[no-untyped-call]


class SDBackbone(DiffusersBackbone):
    """SD1.x/2.x UNet policy; see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "sd"
    denoiser_name = "unet"
    default_lora_targets = SD_LORA_TARGETS
    sde_types = (SdeType.sde,)
    flow_matching = False
    pipeline_load_kwargs = {"safety_checker": None, "requires_safety_checker": False}

    def __init__(
        self, pipe: Any, cfg: ModelConfig, device: torch.device, *, with_reference: bool = False, trainable: bool = True,
        **options: Any,
    ) -> None:
        if pipe.unet.config.get("time_cond_proj_dim", None) is not None:
            raise ValueError(
                "this UNet takes a guidance-scale embedding (LCM-style); use a plain SD1.x/2.x checkpoint"
            )
        pipe.scheduler = ddim_scheduler_for(pipe)
        prediction_type = pipe.scheduler.config.prediction_type
        if prediction_type not in SUPPORTED_PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type {prediction_type!r} is not supported; "
                f"use a model with one of {', '.join(SUPPORTED_PREDICTION_TYPES)}"
            )
        super().__init__(pipe, cfg, device, with_reference=with_reference, trainable=trainable, **options)

    def _default_size(self) -> tuple[int, int]:
        """``unet.config.sample_size * vae_scale_factor``, as the pipeline defaults."""
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return size, size

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """CLIP text embeddings via the pipeline (no pooled embedding)."""
        prompt_embeds, _ = self.pipe.encode_prompt(
            texts, self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return prompt_embeds, None

    def schedule(self, num_steps: int) -> DDIMSchedule:
        """DDIM over the scheduler's inference timesteps (the stepper's ``noise_level`` is eta)."""
        scheduler = ddim_scheduler_for(self.pipe)
        scheduler.set_timesteps(num_steps, device=self.device)
        return DDIMSchedule(
            alphas_cumprod=scheduler.alphas_cumprod.to(self.device),
            timesteps=scheduler.timesteps.to(self.device),
            final_alpha_cumprod=float(scheduler.final_alpha_cumprod),
            prediction_type=scheduler.config.prediction_type,
        )

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[num, 4, H/8, W/8]`` latents from ``pipe.prepare_latents`` (times init_noise_sigma)."""
        channels = diffusers_model(self.denoiser).config.in_channels
        latents: torch.Tensor = self.pipe.prepare_latents(
            num, channels, self.height, self.width, self.dtype, self.device, generator
        )
        return latents.to(torch.float32)

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The UNet's prediction at the integer timesteps."""
        prediction: torch.Tensor = denoiser(
            inputs.latents, inputs.timesteps, encoder_hidden_states=inputs.prompt_embeds, return_dict=False
        )[0]
        return prediction

    def _lora_state_dict(self, weights: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """UNet adapter weights converted to the diffusers layout (as diffusers' SD LoRA script does)."""
        from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

        adapter = super()._lora_state_dict(weights)
        # the ignore: diffusers leaves convert_state_dict_to_diffusers unannotated
        state: dict[str, torch.Tensor] = convert_state_dict_to_diffusers(adapter)  # type: ignore[no-untyped-call]
        return state
