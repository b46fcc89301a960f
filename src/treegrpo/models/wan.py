"""Wan 2.1 / 2.2 text-to-video (``WanPipeline``) as a policy of the tree engine.

Mirrors the pipeline's ``__call__``: video latents ``[B, C, F, H/8, W/8]`` (``F = (frames - 1) / 4
+ 1`` at the released 4x temporal VAE) from ``prepare_latents`` in float32, UMT5 embeddings zero-padded
to ``max_sequence_length`` (no mask: the transformer attends to the padding as the pipeline's does),
the scheduler's own sigmas and timesteps after ``set_timesteps(T)``, the transformer called with the
raw timestep, CFG ``uncond + s * (cond - uncond)`` (one batched forward here, two in the pipeline).
Decoding returns clips ``[B, F, 3, H, W]`` in [0, 1] (``models.base``'s video convention).

Sampler: the engine's flow step is first order (Euler ODE / Flow-GRPO SDE) on the scheduler's sigma
grid. A pipeline carrying ``FlowMatchEulerDiscreteScheduler`` is reproduced exactly; the released
checkpoints carry ``UniPCMultistepScheduler`` (``use_flow_sigmas``, ``flow_shift``), whose sigma grid
is used as is while its multistep corrector is not (as DanceGRPO and Flow-GRPO sample Wan).

Wan 2.2 (A14B): ``transformer`` denoises the high-noise steps (``t >= boundary_ratio * 1000``),
``transformer_2`` the rest, with ``model.guidance_scale_2`` (default: the same scale). ``model.expert``
says which one is trained: ``high``, ``low``, ``both`` (:class:`TwoExperts`), or ``auto`` (the
experts whose steps the tree's window can reach; both when nothing says which steps are trained).
A window reaching steps of an expert that is not trained is a ConfigError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from treegrpo.errors import ConfigError
from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.common import (
    ADAPTER_NAME, DenoiserInputs, DiffusersBackbone, DiffusersModel, checked_image_size, checked_num_frames, diffusers_model,
    flow_sigma_schedule,
)
from treegrpo.models.config import WAN_EXPERTS

WAN_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""Self- and cross-attention projections of every block (the ``attn1``/``attn2`` layers)."""

EXPERTS: tuple[str, ...] = WAN_EXPERTS
DEFAULT_FRAMES = 81
"""The pipeline's default ``num_frames``."""


class TwoExperts(torch.nn.Module):
    """Wan 2.2's two denoisers trained together; ``forward(..., expert="high"|"low")`` calls one of them."""

    def __init__(self, high: DiffusersModel, low: DiffusersModel) -> None:
        super().__init__()
        self.high = high
        self.low = low

    def forward(self, *args: Any, expert: str, **kwargs: Any) -> Any:
        """The chosen expert's output."""
        return (self.high if expert == "high" else self.low)(*args, **kwargs)

    def add_adapter(self, config: Any, adapter_name: str) -> None:
        """One LoRA adapter of the same shape on each expert."""
        self.high.add_adapter(config, adapter_name=adapter_name)
        self.low.add_adapter(config, adapter_name=adapter_name)

    def disable_adapters(self) -> None:
        self.high.disable_adapters()
        self.low.disable_adapters()

    def enable_adapters(self) -> None:
        self.high.enable_adapters()
        self.low.enable_adapters()

    def enable_gradient_checkpointing(self) -> None:
        self.high.enable_gradient_checkpointing()
        self.low.enable_gradient_checkpointing()


class ExpertCall(torch.nn.Module):
    """One expert of a :class:`TwoExperts` (or of its DDP / reference wrapper) as a plain denoiser."""

    def __init__(self, module: torch.nn.Module, expert: str) -> None:
        super().__init__()
        self.module = module
        self.expert = expert

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, expert=self.expert, **kwargs)


def resolve_expert(requested: str, two_experts: bool, high_steps: set[int], trained: Optional[set[int]]) -> str:
    """The expert(s) to train: ``"high"`` (also Wan 2.1's only transformer), ``"low"`` or ``"both"``.

    ``high_steps``: the steps the high-noise expert denoises; ``trained``: the steps any iteration
    may train (``None``: unknown). One-line ConfigError for a choice the pipeline or window contradicts.
    """
    if requested not in EXPERTS:
        raise ConfigError(f"model.expert {requested!r} is not one of {', '.join(EXPERTS)}")
    if not two_experts:
        if requested in ("low", "both"):
            raise ConfigError(
                f"model.expert={requested} needs a two-expert Wan 2.2 pipeline (transformer_2 and boundary_ratio); "
                "this one has one transformer: use model.expert=auto"
            )
        return "high"
    if trained is None:
        return "both" if requested == "auto" else requested
    high, low = sorted(trained & high_steps), sorted(trained - high_steps)
    if requested == "auto":
        return "both" if high and low else ("high" if high else "low")
    if requested == "high" and low:
        raise ConfigError(
            f"the tree trains steps {low}, which Wan 2.2's low-noise expert denoises, but model.expert=high; "
            f"keep the window inside steps {sorted(high_steps)} or set model.expert=both (or auto)"
        )
    if requested == "low" and high:
        raise ConfigError(
            f"the tree trains steps {high}, which Wan 2.2's high-noise expert denoises, but model.expert=low; "
            f"keep the window off steps {sorted(high_steps)} or set model.expert=both (or auto)"
        )
    return requested


class WanBackbone(DiffusersBackbone):
    """Wan transformer policy (one expert or both); see :class:`~treegrpo.models.common.DiffusersBackbone`."""

    family = "wan"
    denoiser_name = "transformer"
    default_lora_targets = WAN_LORA_TARGETS

    # ------------------------------------------------------------------ experts

    def _two_experts(self) -> bool:
        return getattr(self.pipe, "transformer_2", None) is not None and self.pipe.config.boundary_ratio is not None

    def _high_steps(self, num_steps: int) -> set[int]:
        """Steps whose timestep is at or above the boundary (the pipeline's high-noise test)."""
        timesteps = self.schedule(num_steps).timesteps
        if not self._two_experts():
            return set(range(num_steps))
        boundary = self.pipe.config.boundary_ratio * self.pipe.scheduler.config.num_train_timesteps
        return {i for i, t in enumerate(timesteps.tolist()) if t >= boundary}

    def _trained_denoiser(self) -> torch.nn.Module:
        """The expert(s) ``model.expert`` names, checked against the steps the tree trains."""
        if getattr(self.pipe, "transformer", None) is None:
            raise ConfigError("this WanPipeline has no `transformer`; a low-noise-only pipeline is not supported")
        window = self.training_window
        high_steps = self._high_steps(window.num_steps) if window is not None else set()
        trained = set(window.steps) if window is not None else None
        self.expert = resolve_expert(self.cfg.expert, self._two_experts(), high_steps, trained)
        if self.expert == "both":
            return TwoExperts(self.pipe.transformer, self.pipe.transformer_2)
        expert: torch.nn.Module = self.pipe.transformer_2 if self.expert == "low" else self.pipe.transformer
        return expert

    def _frozen_modules(self) -> list[torch.nn.Module]:
        """The untrained expert of Wan 2.2, if any (frozen and placed with the rest)."""
        if not self._two_experts() or self.expert == "both":
            return []
        return [self.pipe.transformer if self.expert == "low" else self.pipe.transformer_2]

    def _experts(self, module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(high-noise, low-noise) modules to call when ``module`` stands for the trained denoiser."""
        if self.expert == "both":
            return ExpertCall(module, "high"), ExpertCall(module, "low")
        if self.expert == "low":
            return self.pipe.transformer, module
        return module, self.pipe.transformer_2

    # ------------------------------------------------------------------ family hooks

    def _default_size(self) -> tuple[int, int]:
        """The pipeline's defaults: 480 x 832."""
        return 480, 832

    def _image_size(self) -> tuple[int, int]:
        """Configured or default size; both sides multiples of the VAE factor times the 2 x 2 patch."""
        multiple = self.pipe.vae_scale_factor_spatial * self.pipe.transformer.config.patch_size[1]
        return checked_image_size(super()._image_size(), multiple, self.family)

    @property
    def num_frames(self) -> int:
        """Frames per clip (``model.num_frames``, default 81); ``frames - 1`` a multiple of the temporal factor."""
        frames = self.cfg.num_frames or DEFAULT_FRAMES
        return checked_num_frames(frames, self.pipe.vae_scale_factor_temporal, "wan", "33 or 81")

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """UMT5 embeddings zero-padded to ``max_sequence_length`` via the pipeline (no pooled embedding)."""
        embeds, _ = self.pipe.encode_prompt(
            prompt=texts, do_classifier_free_guidance=False, max_sequence_length=self.cfg.max_sequence_length,
            device=self.device,
        )
        return embeds, None

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Sigmas and timesteps of the pipeline's scheduler after ``set_timesteps(num_steps)``."""
        return flow_sigma_schedule(self.pipe.scheduler, num_steps, self.device, "Wan")

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[num, C, F, H/8, W/8]`` float32 latents from ``pipe.prepare_latents``."""
        channels = self.pipe.transformer.config.in_channels
        latents: torch.Tensor = self.pipe.prepare_latents(
            num, channels, self.height, self.width, self.num_frames, torch.float32, self.device, generator
        )
        return latents

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity; Wan 2.2 TI2V's per-token timesteps when ``expand_timesteps``."""
        x = inputs.latents
        timestep = inputs.timesteps
        if self.pipe.config.get("expand_timesteps", False):
            _, _, frames, height, width = x.shape
            timestep = timestep[:, None].expand(-1, frames * ((height + 1) // 2) * ((width + 1) // 2))
        velocity: torch.Tensor = denoiser(
            hidden_states=x, timestep=timestep, encoder_hidden_states=inputs.prompt_embeds, return_dict=False
        )[0]
        return velocity

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Undo the per-channel normalisation (``* std + mean``), as the pipeline does before decoding."""
        config = self.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(latents.device, latents.dtype)
        return latents * std + mean

    def _vae_decode(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """Clips in [-1, 1] as ``[B, F, 3, H, W]`` (the VAE gives ``[B, 3, F, H, W]``)."""
        clips: torch.Tensor = self.pipe.vae.decode(vae_latents, return_dict=False)[0]
        return clips.transpose(1, 2)

    # ------------------------------------------------------------------ Backbone interface

    def model_fn(self, conditioning: Any, guidance_scale: float, schedule: Any, *, denoiser: Optional[Any] = None) -> Any:
        """As the base class; with two experts each row goes to the expert of its step (``guidance_scale_2`` below the boundary)."""
        if not self._two_experts():
            return super().model_fn(conditioning, guidance_scale, schedule, denoiser=denoiser)
        high_module, low_module = self._experts(self.denoiser if denoiser is None else denoiser)
        guidance_2 = guidance_scale if self.cfg.guidance_scale_2 is None else self.cfg.guidance_scale_2
        high_fn = super().model_fn(conditioning, guidance_scale, schedule, denoiser=high_module)
        low_fn = super().model_fn(conditioning, guidance_2, schedule, denoiser=low_module)
        boundary = self.pipe.config.boundary_ratio * self.pipe.scheduler.config.num_train_timesteps
        is_high = schedule.timesteps.to(self.device) >= boundary

        def model_fn(latents: torch.Tensor, step_index: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
            high = is_high[step_index.to(self.device).long()].to(latents.device)
            if bool(high.all()):
                return high_fn(latents, step_index, cond_index)
            if not bool(high.any()):
                return low_fn(latents, step_index, cond_index)
            rows = [high.nonzero().squeeze(1), (~high).nonzero().squeeze(1)]
            outputs = [fn(latents[r], step_index[r.to(step_index.device)], cond_index[r.to(cond_index.device)])
                       for fn, r in zip((high_fn, low_fn), rows)]
            order = torch.cat(rows).argsort().to(outputs[0].device)
            return torch.cat(outputs)[order]

        return model_fn

    def save_trained(self, folder: Path | str, weights: Optional[dict[str, torch.Tensor]] = None) -> None:
        """One expert: as the base class (the low-noise expert's LoRA loads with ``load_into_transformer_2=True``,
        its full weights go to ``transformer_2/``). Both: the high-noise expert in ``folder``, the low-noise one
        in ``folder/transformer_2`` (LoRA) or ``folder/transformer_2`` next to ``folder/transformer`` (full).
        """
        folder = Path(folder)
        if self.expert != "both":
            if self.expert == "low" and self.cfg.full_finetune:
                self._save_full(diffusers_model(self.denoiser), folder / "transformer_2", weights)
                return
            super().save_trained(folder, weights)
            return
        if not self.trainable:
            raise RuntimeError("this backbone was loaded with trainable=False and holds nothing trained to save")
        for name, sub, target in (("high", self.pipe.transformer, "transformer"), ("low", self.pipe.transformer_2, "transformer_2")):
            part = None if weights is None else {k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(f"{name}.")}
            if self.cfg.full_finetune:
                self._save_full(sub, folder / target, part)
                continue
            from peft.utils import get_peft_model_state_dict

            type(self.pipe).save_lora_weights(
                folder if name == "high" else folder / "transformer_2",
                safe_serialization=True,
                transformer_lora_layers=get_peft_model_state_dict(sub, state_dict=part, adapter_name=ADAPTER_NAME),
                transformer_lora_adapter_metadata=sub.peft_config[ADAPTER_NAME].to_dict(),
            )

    @staticmethod
    def _save_full(module: DiffusersModel, target: Path, weights: Optional[dict[str, torch.Tensor]]) -> None:
        """A transformer's full weights (its own, or gathered ``weights``) as a diffusers model folder."""
        if weights is None:
            module.save_pretrained(target, safe_serialization=True)
            return
        from huggingface_hub import save_torch_state_dict

        module.save_config(target)
        save_torch_state_dict(weights, target, filename_pattern="diffusion_pytorch_model{suffix}.safetensors")

