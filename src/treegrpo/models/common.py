"""What the SD3, FLUX and SD adapters share: freezing, LoRA / full fine-tuning, CFG, export.

:class:`DiffusersBackbone` wraps a loaded diffusers pipeline. Family subclasses supply the
prompt encoder, the schedule, the initial noise, the denoiser call and the latent -> VAE mapping;
this class turns them into the :class:`~treegrpo.models.base.Backbone` interface.

Precision: frozen parts (text encoders, VAE, the base weights under LoRA) are in ``model.dtype``.
Trained weights are float32 when ``model.trainable_fp32`` (the default): LoRA weights, or with
``full_finetune`` the whole denoiser, which then computes in float32 unless the trainer runs it
under autocast (accelerate's ``mixed_precision``). ``model_fn`` casts its inputs to the dtype of
the denoiser's weights and always returns float32.

Memory: with ``full_finetune`` and ``with_reference=True`` a frozen deep copy of the denoiser is
kept as the reference policy (one more denoiser in ``model.dtype``: about 5 GB for SD3.5-medium,
24 GB for FLUX.1 in bf16). LoRA needs no copy: the reference is the model with adapters disabled.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from treegrpo.models.base import ModelFn
from treegrpo.models.config import ModelConfig, torch_dtype
from treegrpo.sampling import Stepper

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"
TEXT_ENCODER_NAMES: tuple[str, ...] = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass
class TextConditioning:
    """Prompt embeddings (one row per prompt) and the unconditional embedding (one row).

    ``pooled_*`` are the pooled CLIP embeddings of SD3 and FLUX (``None`` for SD).
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: Optional[torch.Tensor] = None
    negative_pooled_prompt_embeds: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def to(self, device: torch.device | str) -> "TextConditioning":
        """A copy with every tensor on ``device``."""
        moved = {f.name: _to(getattr(self, f.name), device) for f in fields(self)}
        return TextConditioning(**moved)

    def select(self, rows: torch.Tensor | Sequence[int]) -> "TextConditioning":
        """The conditioning of the prompts at ``rows`` (the unconditional row is kept)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_embeds.device)
        pooled = None if self.pooled_prompt_embeds is None else self.pooled_prompt_embeds[index]
        return TextConditioning(
            self.prompt_embeds[index], self.negative_prompt_embeds, pooled, self.negative_pooled_prompt_embeds
        )


def _to(value: Optional[torch.Tensor], device: torch.device | str) -> Optional[torch.Tensor]:
    return None if value is None else value.to(device)


@dataclass
class DenoiserInputs:
    """One batched denoiser call: latents, per-row timesteps and text conditioning."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: Optional[torch.Tensor]


class DiffusersBackbone:
    """Base of the diffusers adapters; see the module docstring. Subclasses set the class fields."""

    family: str = ""
    denoiser_name: str = ""
    """Pipeline attribute of the trained module: ``"transformer"`` or ``"unet"``."""
    default_lora_targets: tuple[str, ...] = ()

    def __init__(
        self,
        pipe: Any,
        cfg: ModelConfig,
        device: torch.device,
        *,
        with_reference: bool = False,
        trainable: bool = True,
    ) -> None:
        self.pipe = pipe
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = torch_dtype(cfg.dtype)
        self.denoiser: torch.nn.Module = getattr(pipe, self.denoiser_name)
        self.height, self.width = self._image_size()
        self._timesteps: Optional[torch.Tensor] = None
        self._reference_denoiser: Optional[torch.nn.Module] = None
        self._use_reference = False
        self.trainable = trainable
        self._denoiser_dtype = self.dtype
        """Dtype of the trained denoiser's (non-LoRA) weights, which its inputs are cast to."""

        self._freeze_all()
        self._place_modules()
        if trainable and cfg.full_finetune:
            self._setup_full_finetune(with_reference)
        elif trainable:
            self._setup_lora()
        if trainable and cfg.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self._trainable_names = {name for name, p in self.denoiser.named_parameters() if p.requires_grad}
        """Names, not Parameter objects: FSDP replaces the objects when it shards the denoiser."""

    # ------------------------------------------------------------------ family hooks

    def _default_size(self) -> tuple[int, int]:
        """The pipeline's default (height, width): ``default_sample_size * vae_scale_factor`` (SD3, FLUX)."""
        size = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return size, size

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(prompt_embeds, pooled or None) from the pipeline's own ``encode_prompt``."""
        raise NotImplementedError

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """One denoiser call, exactly as the pipeline makes it."""
        raise NotImplementedError

    def _cfg_scale(self, guidance_scale: float) -> float:
        """Scale of classifier-free guidance (uncond + s * (cond - uncond)); <= 1 means none."""
        return guidance_scale

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Engine latents -> latents the VAE decodes (unpacking and scaling/shift)."""
        raise NotImplementedError

    def stepper(self, num_steps: int, noise_level: float) -> Stepper:
        """The model's own schedule for ``num_steps`` with SDE strength ``noise_level``."""
        raise NotImplementedError

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``num`` initial latents, drawn exactly as the pipeline's ``prepare_latents`` draws them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ set-up

    def _image_size(self) -> tuple[int, int]:
        """Configured (height, width), else the pipeline's default."""
        default_height, default_width = self._default_size()
        return self.cfg.height or default_height, self.cfg.width or default_width

    def _text_encoders(self) -> list[torch.nn.Module]:
        """The pipeline's text encoders that are present."""
        modules = [getattr(self.pipe, name, None) for name in TEXT_ENCODER_NAMES]
        return [m for m in modules if m is not None]

    def _freeze_all(self) -> None:
        """Text encoders, VAE and denoiser frozen and in eval mode (training unfreezes what it trains)."""
        for module in [*self._text_encoders(), self.pipe.vae, self.denoiser]:
            module.requires_grad_(False)
            module.eval()

    def _offloads(self) -> bool:
        """Whether text encoders live on the CPU between encodings."""
        return self.cfg.offload_text_encoders and self.device.type != "cpu"

    def _place_modules(self) -> None:
        """Denoiser and VAE on the device; text encoders there too unless offloaded."""
        self.denoiser.to(self.device)
        self.pipe.vae.to(self.device)
        encoder_device = torch.device("cpu") if self._offloads() else self.device
        for encoder in self._text_encoders():
            encoder.to(encoder_device)
        self.pipe.set_progress_bar_config(disable=True)

    def _setup_lora(self) -> None:
        """Add a peft LoRA adapter to the denoiser; only its (fp32) weights are trainable."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig as PeftLoraConfig

        lora = self.cfg.lora
        targets = list(lora.target_modules) if lora.target_modules else list(self.default_lora_targets)
        peft_config = PeftLoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            init_lora_weights="gaussian" if lora.init_weights == "gaussian" else True,
            target_modules=targets,
        )
        try:
            self.denoiser.add_adapter(peft_config, adapter_name=ADAPTER_NAME)
        except ValueError as error:
            raise ValueError(
                f"model.lora.target_modules {targets} match no layer of the {self.family} {self.denoiser_name} "
                f"({error}); leave it unset for the family default"
            ) from error
        if self.cfg.trainable_fp32:
            cast_training_params(self.denoiser, dtype=torch.float32)

    def _setup_full_finetune(self, with_reference: bool) -> None:
        """Every denoiser weight trainable; a frozen copy is kept only when a reference is needed."""
        if with_reference:
            self._reference_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        self.denoiser.requires_grad_(True)
        if self.cfg.trainable_fp32:
            self.denoiser.to(torch.float32)
            self._denoiser_dtype = torch.float32

    # ------------------------------------------------------------------ Backbone interface

    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """Embed ``prompts`` and the negative prompt once (frozen encoders, no grad)."""
        texts = list(prompts)
        with torch.no_grad(), self._text_encoders_on_device():
            prompt_embeds, pooled = self._encode_texts(texts)
            negative_embeds, negative_pooled = self._encode_texts([self.cfg.negative_prompt])
        return TextConditioning(prompt_embeds, negative_embeds, pooled, negative_pooled)

    def model_fn(self, conditioning: TextConditioning, guidance_scale: float) -> ModelFn:
        """Bind conditioning and CFG into ``(latents, step_index, cond_index) -> output`` (float32).

        Timesteps come from the schedule of the latest :meth:`stepper` call. With CFG the
        unconditional and conditional rows go through one batched forward.
        """
        cond = conditioning.to(self.device)
        cfg_scale = self._cfg_scale(guidance_scale)

        def model_fn(latents: torch.Tensor, step_index: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
            denoiser, dtype = self._active_denoiser()
            inputs = self._inputs(cond, latents, step_index, cond_index, dtype, with_uncond=cfg_scale > 1)
            output = self._forward(denoiser, inputs, guidance_scale).to(torch.float32)
            if cfg_scale <= 1:
                return output
            uncond, text = output.chunk(2)
            return uncond + cfg_scale * (text - uncond)

        return model_fn

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode final latents to float32 images ``[B, 3, H, W]`` in [0, 1]."""
        images = []
        for start in range(0, latents.shape[0], self.cfg.decode_batch_size):
            chunk = latents[start : start + self.cfg.decode_batch_size].to(self.device, self.dtype)
            decoded = self.pipe.vae.decode(self._to_vae_latents(chunk), return_dict=False)[0]
            images.append((decoded.to(torch.float32) / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """LoRA weights, or every denoiser weight with ``full_finetune``."""
        return [p for name, p in self.denoiser.named_parameters() if name in self._trainable_names]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside, ``model_fn`` computes the frozen reference policy (adapters off, or the copy).

        A backbone loaded with ``trainable=False`` is its own reference.
        """
        if not self.trainable:
            yield
            return
        if self.cfg.full_finetune:
            if self._reference_denoiser is None:
                raise RuntimeError(
                    "no reference copy of the fully fine-tuned denoiser was made; "
                    "load the backbone with with_reference=True (needed for a KL term)"
                )
            self._use_reference = True
            try:
                yield
            finally:
                self._use_reference = False
            return
        self.denoiser.disable_adapters()
        try:
            yield
        finally:
            self.denoiser.enable_adapters()
            for parameter in self.trainable_parameters():
                parameter.requires_grad_(True)

    def save_trained(self, folder: Path | str, weights: Optional[dict[str, torch.Tensor]] = None) -> None:
        """LoRA in diffusers format (``pipe.load_lora_weights(folder)``), or the denoiser (safetensors).

        ``weights`` are the trained weights gathered whole (the denoiser's whole state dict with
        ``full_finetune``), for a denoiser whose own weights are FSDP shards.
        """
        if not self.trainable:
            raise RuntimeError("this backbone was loaded with trainable=False and holds nothing trained to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.cfg.full_finetune:
            target = folder / self.denoiser_name
            if weights is None:
                self.denoiser.save_pretrained(target, safe_serialization=True)
                return
            from huggingface_hub import save_torch_state_dict

            self.denoiser.save_config(target)
            save_torch_state_dict(weights, target, filename_pattern="diffusion_pytorch_model{suffix}.safetensors")
            return
        type(self.pipe).save_lora_weights(
            folder,
            safe_serialization=True,
            **{
                f"{self.denoiser_name}_lora_layers": self._lora_state_dict(weights),
                f"{self.denoiser_name}_lora_adapter_metadata": self.denoiser.peft_config[ADAPTER_NAME].to_dict(),
            },
        )

    # ------------------------------------------------------------------ helpers

    def _lora_state_dict(self, weights: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """The adapter's weights (the module's own, or ``weights``) in the layout the family's LoRA loader expects."""
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.denoiser, state_dict=weights, adapter_name=ADAPTER_NAME)

    def _active_denoiser(self) -> tuple[torch.nn.Module, torch.dtype]:
        """The trained denoiser, or its frozen copy inside :meth:`reference`, and its weights' dtype."""
        if self._use_reference and self._reference_denoiser is not None:
            return self._reference_denoiser, self.dtype
        return self.denoiser, self._denoiser_dtype

    def _record_timesteps(self, timesteps: torch.Tensor) -> None:
        """Remember the timestep table ``model_fn`` looks steps up in."""
        self._timesteps = timesteps.detach().to(self.device)

    def _timesteps_at(self, step_index: torch.Tensor) -> torch.Tensor:
        """Per-row timesteps of the latest schedule."""
        if self._timesteps is None:
            raise RuntimeError("model_fn needs a schedule; call backbone.stepper(num_steps, noise_level) first")
        return self._timesteps[step_index.to(self.device).long()]

    def _inputs(
        self,
        cond: TextConditioning,
        latents: torch.Tensor,
        step_index: torch.Tensor,
        cond_index: torch.Tensor,
        dtype: torch.dtype,
        *,
        with_uncond: bool,
    ) -> DenoiserInputs:
        """Denoiser inputs (in ``dtype``) for the rows; with CFG the unconditional rows come first."""
        x = latents.to(self.device, dtype)
        timesteps = self._timesteps_at(step_index)
        rows = cond_index.to(self.device).long()
        embeds = cond.prompt_embeds[rows].to(dtype)
        pooled = None if cond.pooled_prompt_embeds is None else cond.pooled_prompt_embeds[rows].to(dtype)
        if with_uncond:
            n = x.shape[0]
            x = torch.cat([x, x])
            timesteps = torch.cat([timesteps, timesteps])
            negative = cond.negative_prompt_embeds.to(dtype).expand(n, *embeds.shape[1:])
            embeds = torch.cat([negative, embeds])
            if pooled is not None and cond.negative_pooled_prompt_embeds is not None:
                negative_pooled = cond.negative_pooled_prompt_embeds.to(dtype).expand(n, *pooled.shape[1:])
                pooled = torch.cat([negative_pooled, pooled])
        return DenoiserInputs(x, timesteps, embeds, pooled)

    @contextlib.contextmanager
    def _text_encoders_on_device(self) -> Iterator[None]:
        """Text encoders on the device while encoding; back to the CPU afterwards when offloading."""
        encoders = self._text_encoders()
        for encoder in encoders:
            encoder.to(self.device)
        try:
            yield
        finally:
            if self._offloads():
                for encoder in encoders:
                    encoder.to("cpu")
