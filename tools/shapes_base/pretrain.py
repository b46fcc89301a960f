"""Pretrain the demo's tiny text-to-image StableDiffusion3Pipeline from scratch on the shapes task.

    python -m tools.shapes_base.pretrain --out DIR [--steps N | --minutes M] [--threads 1] [--seed 0] [--resume]
    python -m tools.shapes_base.pretrain --out DIR2 --init-from DIR --steps N --seed 1 --lr 5e-4

Phase 1 trains a two-level AutoencoderKL (32x32 RGB <-> 4x16x16 latents: its decoder draws the
edges) on shapes images and sets its shift/scaling factors from latent statistics. Phase 2 trains
an SD3Transformer2DModel (patch 2: 64 image tokens) jointly with two tiny character-level CLIP text
encoders by rectified flow: logit-normal t, 10% caption dropout (so classifier-free guidance
works), AdamW, linear warm-up then cosine decay, and an exponential moving average of the trained
weights, which is what gets saved. There is no T5: reload with
``StableDiffusion3Pipeline.from_pretrained(DIR, text_encoder_3=None, tokenizer_3=None)`` and call
the pipeline with ``max_sequence_length=1``.

The run writes a resume point into ``DIR/resume/`` every few minutes (safetensors + JSON);
``--resume`` continues from it and gives the same weights as an uninterrupted single-threaded run.
With ``--minutes`` the number of transformer steps is fixed after 20 timed steps so that the
whole run fits the budget; the step count is kept in the resume point and the model card, and
``--steps N`` reproduces the run. ``--init-from DIR`` continues phase 2 from a saved base (its
autoencoder, text encoders and transformer; a fresh optimizer, schedule and EMA), so a base can be
trained further across sessions; the model card records the chain of commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from treegrpo.demo import shapes
from tools.shapes_base.base_card import format_groups, format_result, write_model_card
from treegrpo.demo.evaluate import component_means_by_group, sample_images
from treegrpo.demo.reward import ShapesReward
from treegrpo.optim import Ema, LrSchedule, lr_factor
from treegrpo.rewards.text_clean import bytes_to_unicode

TEXT_LENGTH = 56
"""Tokenizer length: the longest caption (50 characters) plus start and end tokens, rounded up."""
MAX_SEQUENCE_LENGTH = 1
"""The pipeline's T5 sequence length: T5 is absent and contributes this many zero tokens."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run."""

    seed: int = 0
    minutes: float = 120.0
    steps: int | None = None
    vae_steps: int = 900
    vae_batch: int = 64
    vae_lr: float = 2e-3
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    eval_every_s: float = 900.0
    eval_prompts: int = 128
    final_eval_prompts: int = 1024
    guidance_scale: float = 4.5
    sample_steps: int = 8
    checkpoint_every_s: float = 300.0


def build_tokenizer(max_length: int = TEXT_LENGTH) -> CLIPTokenizer:
    """A character-level CLIP tokenizer with an in-memory vocabulary; the end token has the highest id."""
    chars = list(bytes_to_unicode().values())  # in byte order
    pieces = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    """A tiny CLIP text encoder (hidden 64, 2 layers, 2 heads, projection 32)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config)


def build_vae() -> AutoencoderKL:
    """A two-level AutoencoderKL: 32x32 RGB <-> 4x16x16 latents, no quant convs (625K params)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_transformer() -> SD3Transformer2DModel:
    """A small SD3 transformer on 16x16 latents (4 layers, 4 heads x 32, patch 2: 64 image tokens)."""
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=128,
        caption_projection_dim=128,
        pooled_projection_dim=64,
        pos_embed_max_size=8,
    )


def build_pipeline(seed: int) -> StableDiffusion3Pipeline:
    """A freshly initialised (seeded) tiny StableDiffusion3Pipeline without T5."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    tokenizer_2 = build_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=build_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        vae=build_vae(),
        text_encoder=build_text_encoder(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=build_text_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _log(message: str) -> None:
    """Progress line of the pretraining script."""
    print(message, flush=True)


def train_vae(vae: AutoencoderKL, cfg: PretrainConfig) -> None:
    """Train the autoencoder on shapes images: MSE + 1e-4 KL, AdamW, cosine decay."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.vae_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    for step in range(cfg.vae_steps):
        images, _ = shapes.generate(cfg.vae_batch, seed=_data_seed(cfg.seed, step, phase=1))
        x = images.to(vae.device) * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(vae.device)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 1e-4 * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            _log(f"vae step {step} loss {loss.item():.5f} elapsed {time.time() - start:.0f}s")
    vae.eval()
    vae.requires_grad_(False)


@torch.no_grad()
def set_latent_statistics(vae: AutoencoderKL, seed: int, n: int = 1024) -> tuple[float, float]:
    """Set the VAE's shift and scaling factors so that latents have mean 0 and std 1."""
    images, _ = shapes.generate(n, seed=_data_seed(seed, 0, phase=2))
    latents = vae.encode(images.to(vae.device) * 2 - 1).latent_dist.mode()
    shift, scale = float(latents.mean()), float(1.0 / latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


@torch.no_grad()
def reconstruction_reward(vae: AutoencoderKL, n: int = 256) -> dict[str, float]:
    """Reward of the autoencoder's reconstructions of n held-out images (a ceiling for the pipeline)."""
    images, captions = shapes.generate(n, seed=12345, split="heldout")
    recon = vae.decode(vae.encode(images.to(vae.device) * 2 - 1).latent_dist.mode()).sample.cpu()
    return ShapesReward().component_means(((recon + 1) / 2).clamp(0, 1), captions)


def _data_seed(seed: int, step: int, phase: int) -> int:
    """Seed of one training batch: disjoint streams per run seed and phase."""
    return (seed * 1_000_003 + phase) * 10_000_019 + step


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> normalised latents, as the pipeline's decoder expects them."""
    latents = vae.encode(images.to(vae.device) * 2 - 1).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def flow_loss(pipe: StableDiffusion3Pipeline, latents: torch.Tensor, captions: list[str], gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss: predict noise - x0 at x_t = (1 - t) x0 + t noise, t ~ logit-normal."""
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=captions,
        prompt_2=captions,
        prompt_3=captions,
        device=latents.device,
        do_classifier_free_guidance=False,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    b = latents.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=gen)).to(latents.device)  # drawn on the CPU: the same stream on every device
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    t4 = t.view(b, 1, 1, 1)
    noisy = (1 - t4) * latents + t4 * noise
    pred = pipe.transformer(
        hidden_states=noisy,
        timestep=t * 1000,
        encoder_hidden_states=prompt_embeds,
        pooled_projections=pooled,
        return_dict=False,
    )[0]
    return F.mse_loss(pred, noise - latents)


def _eval_line(
    pipe: StableDiffusion3Pipeline, cfg: PretrainConfig, n: int, steps: int | None = None, guidance: float | None = None
) -> dict[str, dict[str, float]]:
    """Held-out reward components of the current pipeline by prompt group (n prompts, seed 0)."""
    prompts = shapes.heldout_prompts(n, seed=0)
    pipe.set_progress_bar_config(disable=True)
    images = sample_images(
        pipe,
        prompts,
        seed=0,
        num_inference_steps=steps or cfg.sample_steps,
        guidance_scale=cfg.guidance_scale if guidance is None else guidance,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    return component_means_by_group(images, prompts)


def _trained_modules(pipe: StableDiffusion3Pipeline) -> dict[str, torch.nn.Module]:
    """The modules phase 2 trains, by the pipeline's component names."""
    return {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}


@dataclass
class DenoiserState:
    """Everything phase 2 carries from one step to the next (what a resume point holds)."""

    step: int
    total: int | None
    optimizer: torch.optim.AdamW
    ema: Ema
    generator: torch.Generator
    elapsed_s: float


def save_resume_point(out: Path, pipe: StableDiffusion3Pipeline, state: DenoiserState, info: dict[str, Any]) -> None:
    """Write ``out/resume/`` atomically: weights, EMA, optimizer moments and RNG state (safetensors) + JSON."""
    tensors: dict[str, torch.Tensor] = {f"vae.{k}": v for k, v in pipe.vae.state_dict().items()}
    for name, module in _trained_modules(pipe).items():
        tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    tensors.update({f"ema.{name}": t for name, t in state.ema.state_dict().items()})
    opt_state = state.optimizer.state_dict()
    for index, slots in opt_state["state"].items():
        tensors.update({f"opt.{index}.{k}": torch.as_tensor(v) for k, v in slots.items()})
    tensors["generator"] = state.generator.get_state()
    meta = {
        **info,
        "step": state.step,
        "total": state.total,
        "elapsed_s": state.elapsed_s,
        "ema_updates": state.ema.updates,
        "param_groups": opt_state["param_groups"],
    }
    tmp = out / "resume.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    final = out / "resume"
    if final.exists():
        old = out / "resume.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def load_resume_point(out: Path, pipe: StableDiffusion3Pipeline, cfg: PretrainConfig) -> tuple[DenoiserState, dict[str, Any]]:
    """Restore a pipeline and phase-2 state from ``out/resume/`` (see :func:`save_resume_point`)."""
    tensors = load_file(str(out / "resume" / "state.safetensors"))
    meta = json.loads((out / "resume" / "state.json").read_text())
    pipe.vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")})
    pipe.vae.register_to_config(shift_factor=meta["latent_shift"], scaling_factor=meta["latent_scaling"])
    pipe.vae.eval().requires_grad_(False)
    for name, module in _trained_modules(pipe).items():
        prefix = name + "."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state = _new_denoiser_state(pipe, cfg)
    state.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state.ema.updates = meta["ema_updates"]
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, slot = key.split(".", 2)
            slots.setdefault(int(index), {})[slot] = value
    state.optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    state.generator.set_state(tensors["generator"])
    state.step, state.total, state.elapsed_s = meta["step"], meta["total"], meta["elapsed_s"]
    return state, meta


def _new_denoiser_state(pipe: StableDiffusion3Pipeline, cfg: PretrainConfig) -> DenoiserState:
    """Fresh optimizer, EMA (with decay warm-up) and noise generator for phase 2."""
    named = {f"{m}.{k}": p for m, module in _trained_modules(pipe).items() for k, p in module.named_parameters()}
    return DenoiserState(
        step=0,
        total=cfg.steps,
        optimizer=torch.optim.AdamW(list(named.values()), lr=cfg.lr, weight_decay=cfg.weight_decay),
        ema=Ema(named, cfg.ema_decay, warmup=True),
        generator=torch.Generator().manual_seed(cfg.seed + 1),
        elapsed_s=0.0,
    )


def train_denoiser(
    pipe: StableDiffusion3Pipeline, cfg: PretrainConfig, state: DenoiserState, deadline: float, out: Path, info: dict[str, Any]
) -> None:
    """Train transformer and text encoders jointly until ``state.total`` steps (fixed from the deadline if unset)."""
    modules = list(_trained_modules(pipe).values())
    params = [p for m in modules for p in m.parameters()]
    _set_train(modules, True)
    opt, gen = state.optimizer, state.generator
    session_start = time.time()
    session_step0 = state.step
    elapsed0 = state.elapsed_s
    last_eval = last_save = session_start
    while state.total is None or state.step < state.total:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(LrSchedule.cosine, cfg.warmup, state.total or 10**9, state.step)
        images, captions = shapes.generate(cfg.batch, seed=_data_seed(cfg.seed, state.step, phase=3))
        keep = torch.rand(cfg.batch, generator=gen) >= cfg.caption_dropout
        captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
        loss = flow_loss(pipe, encode_images(pipe.vae, images), captions, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state.ema.update()
        state.step += 1
        now = time.time()
        state.elapsed_s = elapsed0 + now - session_start
        if state.total is None and state.step - session_step0 == 20:
            per_step = (now - session_start) / 20
            state.total = max(cfg.warmup + 1, int((deadline - now) / per_step) + state.step)
            _log(f"{per_step:.3f} s/step: training {state.total} steps")
        if state.step % 50 == 0 or state.step == state.total:
            _log(
                f"step {state.step}/{state.total} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"elapsed {state.elapsed_s:.0f}s"
            )
        if cfg.eval_every_s > 0 and now - last_eval >= cfg.eval_every_s and state.step != state.total:
            with state.ema.applied():
                _set_train(modules, False)
                result = _eval_line(pipe, cfg, cfg.eval_prompts)
                _set_train(modules, True)
            _log(f"eval step {state.step} (EMA, {cfg.eval_prompts} held-out prompts): {format_groups(result)}")
            last_eval = time.time()
        if cfg.checkpoint_every_s > 0 and now - last_save >= cfg.checkpoint_every_s and state.total is not None:
            save_resume_point(out, pipe, state, info)
            last_save = time.time()
    _set_train(modules, False)


def _set_train(modules: list[torch.nn.Module], mode: bool) -> None:
    """Switch modules between train and eval mode."""
    for m in modules:
        m.train(mode)


def _folder_mb(folder: Path) -> float:
    """Size of the saved pipeline's files in MB (the resume point excluded)."""
    files = [f for f in folder.rglob("*") if f.is_file() and "resume" not in f.relative_to(folder).parts[0]]
    return sum(f.stat().st_size for f in files) / 1e6


def load_saved_base(source: Path, pipe: StableDiffusion3Pipeline) -> dict[str, Any]:
    """Copy a saved base's weights and latent factors into ``pipe``; returns the base's ``pretrain.json``."""
    saved = StableDiffusion3Pipeline.from_pretrained(source, text_encoder_3=None, tokenizer_3=None)
    pipe.vae.load_state_dict(saved.vae.state_dict())
    pipe.vae.register_to_config(shift_factor=saved.vae.config.shift_factor, scaling_factor=saved.vae.config.scaling_factor)
    pipe.vae.eval().requires_grad_(False)
    for name, module in _trained_modules(pipe).items():
        module.load_state_dict(getattr(saved, name).state_dict())
    info: dict[str, Any] = json.loads((source / "pretrain.json").read_text())
    return info


def pretrain(
    out: Path, cfg: PretrainConfig, threads: int, command: str, resume: bool = False, init_from: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run both phases (or continue from ``out/resume``, or phase 2 from a saved base), save the EMA pipeline and card.

    ``device`` runs the model there (data and noise are still drawn on the CPU, so the recipe is the same).
    """
    torch.set_num_threads(threads)
    start = time.time()
    deadline = start + cfg.minutes * 60
    pipe = build_pipeline(cfg.seed).to(device)
    if init_from is not None and not resume:
        source = load_saved_base(init_from, pipe)
        _log(f"continuing from {init_from} ({source['steps']} transformer steps)")
        info = {"config": asdict(cfg), "command": source["command"] + " && " + command, "threads": threads,
                "latent_shift": source["latent_shift"], "latent_scaling": source["latent_scaling"],
                "vae_seconds": source["vae_seconds"], "reconstruction": source["reconstruction"],
                "previous_steps": source.get("previous_steps", 0) + source["steps"],
                "previous_minutes": source["wall_minutes"] - source["vae_seconds"] / 60,
                "devices": source.get("devices", ["cpu"])}
        state = _new_denoiser_state(pipe, cfg)
        out.mkdir(parents=True, exist_ok=True)
    elif resume:
        state, info = load_resume_point(out, pipe, cfg)
        info["command"] = info["command"] + " && " + command
        _log(f"resumed at step {state.step}/{state.total}, {state.elapsed_s / 60:.1f} min trained so far")
    else:
        train_vae(pipe.vae, cfg)
        shift, scale = set_latent_statistics(pipe.vae, cfg.seed)
        recon = reconstruction_reward(pipe.vae)
        _log(f"autoencoder reconstructions, held-out captions: {format_result(recon)}")
        _log(f"latent shift {shift:.4f} scaling {scale:.4f}; autoencoder done at {time.time() - start:.0f}s")
        info = {"config": asdict(cfg), "command": command, "threads": threads, "latent_shift": shift,
                "latent_scaling": scale, "vae_seconds": time.time() - start, "reconstruction": recon}
        state = _new_denoiser_state(pipe, cfg)
        out.mkdir(parents=True, exist_ok=True)
    info["devices"] = sorted(set(info.get("devices", [])) | {device_name(torch.device(device))})
    train_denoiser(pipe, cfg, state, deadline, out, info)
    state.ema.copy_to_weights()
    pipe.save_pretrained(out, safe_serialization=True)
    info.update(steps=state.step, wall_minutes=info.get("previous_minutes", 0.0) + (info["vae_seconds"] + state.elapsed_s) / 60)
    (out / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")  # what describe_base reads
    shutil.rmtree(out / "resume", ignore_errors=True)
    return describe_base(out, cfg, device)


def device_name(device: torch.device) -> str:
    """``cpu`` or the accelerator's name, for the model card."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def describe_base(out: Path, cfg: PretrainConfig, device: str = "cpu") -> dict[str, Any]:
    """Evaluate a saved base (held-out components by prompt group at 1x and 2x steps, a CFG sweep) and write its card.

    Reads and extends ``out/pretrain.json``; also ``python -m tools.shapes_base.pretrain --out DIR --describe``.
    """
    info: dict[str, Any] = json.loads((out / "pretrain.json").read_text())
    info["size_mb"] = _folder_mb(out)
    reloaded = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None).to(device)
    steps, guidance = cfg.sample_steps, cfg.guidance_scale
    evaluations = [
        (f"{cfg.final_eval_prompts} prompts, {steps} steps, CFG {guidance:g}", "heldout"),
        (f"{cfg.final_eval_prompts} prompts, {2 * steps} steps, CFG {guidance:g}", "heldout_2x_steps"),
    ]
    info["heldout"] = _eval_line(reloaded, cfg, cfg.final_eval_prompts)
    info["heldout_2x_steps"] = _eval_line(reloaded, cfg, cfg.final_eval_prompts, steps=2 * steps)
    for sweep in (1.0, 2.0, 3.0, 4.5, 7.0):
        if sweep != guidance:
            key = f"heldout_cfg{sweep:g}"
            info[key] = _eval_line(reloaded, cfg, cfg.eval_prompts, guidance=sweep)
            evaluations.append((f"{cfg.eval_prompts} prompts, {steps} steps, CFG {sweep:g}", key))
    info["evaluation_settings"] = {"sample_steps": steps, "guidance_scale": guidance}
    info["evaluations"] = evaluations
    for title, key in evaluations:
        _log(f"final (reloaded, {title}): {format_groups(info[key])}")
    write_model_card(out, cfg, info)
    return info


@dataclass(frozen=True)
class Invocation:
    """What the command line asks for: where, what recipe, how to run it, and which mode."""

    out: Path
    cfg: PretrainConfig
    threads: int
    device: str
    mode: str
    """"train", "resume" or "describe"."""
    init_from: Path | None


def parse_args(argv: list[str] | None = None) -> Invocation:
    """Command line -> the invocation (bad options exit 2 with a message before anything is written)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to save the pipeline into")
    p.add_argument("--minutes", type=float, default=PretrainConfig.minutes, help="wall budget for training")
    p.add_argument("--steps", type=int, default=None, help="transformer steps (overrides --minutes)")
    p.add_argument("--vae-steps", type=int, default=PretrainConfig.vae_steps)
    p.add_argument("--batch", type=int, default=PretrainConfig.batch)
    p.add_argument("--lr", type=float, default=PretrainConfig.lr)
    p.add_argument("--eval-every", type=float, default=PretrainConfig.eval_every_s, help="seconds; 0 disables")
    p.add_argument("--eval-prompts", type=int, default=PretrainConfig.eval_prompts)
    p.add_argument("--final-eval-prompts", type=int, default=PretrainConfig.final_eval_prompts)
    p.add_argument("--checkpoint-every", type=float, default=PretrainConfig.checkpoint_every_s, help="seconds; 0 disables")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda); data is drawn on the CPU either way")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume (same settings)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="continue phase 2 from the base saved in this folder (skips the autoencoder phase)")
    p.add_argument("--describe", action="store_true",
                   help="only evaluate the base saved in OUT (with --sample-steps, --guidance) and rewrite its card")
    p.add_argument("--sample-steps", type=int, default=PretrainConfig.sample_steps, help="steps of the evaluations")
    p.add_argument("--guidance", type=float, default=PretrainConfig.guidance_scale, help="CFG scale of the evaluations")
    a = p.parse_args(argv)
    cfg = PretrainConfig(
        seed=a.seed,
        minutes=a.minutes,
        steps=a.steps,
        vae_steps=a.vae_steps,
        batch=a.batch,
        lr=a.lr,
        eval_every_s=a.eval_every,
        eval_prompts=a.eval_prompts,
        final_eval_prompts=a.final_eval_prompts,
        checkpoint_every_s=a.checkpoint_every,
        sample_steps=a.sample_steps,
        guidance_scale=a.guidance,
    )
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device}: no CUDA device is visible here; use --device cpu")
    if a.describe:
        if not (a.out / "pretrain.json").is_file():
            p.error(f"--describe: {a.out / 'pretrain.json'} does not exist; pretrain into --out first")
        return Invocation(a.out, cfg, a.threads, a.device, "describe", None)
    resume_point = a.out / "resume" / "state.json"
    if a.resume and not resume_point.exists():
        p.error(f"--resume: {resume_point} does not exist; start without --resume")
    if not a.resume and resume_point.exists():
        p.error(f"{a.out} holds an unfinished run; add --resume to continue it, or choose another --out")
    if a.init_from is not None and not (a.init_from / "pretrain.json").is_file():
        p.error(f"--init-from: {a.init_from / 'pretrain.json'} does not exist; name a folder this script saved")
    if a.resume:
        saved = json.loads(resume_point.read_text())["config"]
        if saved != {**asdict(cfg), "steps": saved["steps"], "minutes": saved["minutes"]}:
            p.error("--resume with different settings than the saved run; repeat the original options")
        cfg = replace(cfg, steps=saved["steps"], minutes=saved["minutes"])
    return Invocation(a.out, cfg, a.threads, a.device, "resume" if a.resume else "train", a.init_from)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m tools.shapes_base.pretrain``."""
    run = parse_args(argv)
    torch.set_num_threads(run.threads)
    if run.mode == "describe":
        describe_base(run.out, run.cfg, run.device)
        return
    command = "python -m tools.shapes_base.pretrain " + shlex.join(sys.argv[1:] if argv is None else argv)
    pretrain(run.out, run.cfg, run.threads, command, resume=run.mode == "resume", init_from=run.init_from,
             device=run.device)


if __name__ == "__main__":
    main()
