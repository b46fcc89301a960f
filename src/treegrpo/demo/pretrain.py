"""Pretrain the demo's tiny text-to-image StableDiffusion3Pipeline from scratch on the shapes task.

    python -m treegrpo.demo.pretrain --out DIR [--minutes M] [--threads 1] [--seed 0]

Phase 1 trains a one-level AutoencoderKL (latents 4 x 32 x 32) on shapes images and sets its
shift/scaling factors from latent statistics. Phase 2 trains an SD3Transformer2DModel (patch 4)
jointly with two tiny character-level CLIP text encoders by rectified flow: logit-normal t,
10% caption dropout (so classifier-free guidance works), AdamW, linear warm-up then cosine decay,
and an exponential moving average of the trained weights, which is what gets saved. There is no
T5: reload with ``StableDiffusion3Pipeline.from_pretrained(DIR, text_encoder_3=None,
tokenizer_3=None)`` and call the pipeline with ``max_sequence_length=1``.

With ``--minutes`` the number of transformer steps is fixed after 20 timed steps so that the
whole run fits the budget; the step count is written to the model card and ``--steps N``
reproduces the run exactly (single-threaded runs are deterministic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from treegrpo.demo import shapes
from treegrpo.demo.evaluate import evaluate_pipeline
from treegrpo.demo.reward import ShapesReward

TEXT_LENGTH = 56
"""Tokenizer length: the longest caption (50 characters) plus start and end tokens, rounded up."""
MAX_SEQUENCE_LENGTH = 1
"""The pipeline's T5 sequence length: T5 is absent and contributes this many zero tokens."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run."""

    seed: int = 0
    minutes: float = 38.0
    steps: int | None = None
    vae_steps: int = 500
    vae_batch: int = 32
    vae_lr: float = 2e-3
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    eval_every_s: float = 300.0
    eval_prompts: int = 64
    final_eval_prompts: int = 256
    guidance_scale: float = 2.0
    sample_steps: int = 16


def byte_characters() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level tokenizers map bytes to, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tokenizer(max_length: int = TEXT_LENGTH) -> CLIPTokenizer:
    """A character-level CLIP tokenizer with an in-memory vocabulary; the end token has the highest id."""
    chars = byte_characters()
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
    """A one-level AutoencoderKL: 32x32 RGB <-> 4x32x32 latents, no quant convs (136K params)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(32,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_transformer() -> SD3Transformer2DModel:
    """A small SD3 transformer (4 layers, 4 heads x 32, patch 4: 64 image tokens; 2.3M params)."""
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=4,
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
    """Train the autoencoder on shapes images: MSE + 1e-4 KL, Adam, cosine decay."""
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.vae_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    for step in range(cfg.vae_steps):
        images, _ = shapes.generate(cfg.vae_batch, seed=_data_seed(cfg.seed, step, phase=1))
        x = images * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
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
    latents = vae.encode(images * 2 - 1).latent_dist.mode()
    shift, scale = float(latents.mean()), float(1.0 / latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


@torch.no_grad()
def reconstruction_reward(vae: AutoencoderKL, n: int = 256) -> dict[str, float]:
    """Reward of the autoencoder's reconstructions of n held-out images (a ceiling for the pipeline)."""
    images, captions = shapes.generate(n, seed=12345, split="heldout")
    recon = vae.decode(vae.encode(images * 2 - 1).latent_dist.mode()).sample
    return ShapesReward().component_means(((recon + 1) / 2).clamp(0, 1), captions)


def _data_seed(seed: int, step: int, phase: int) -> int:
    """Seed of one training batch: disjoint streams per run seed and phase."""
    return (seed * 1_000_003 + phase) * 10_000_019 + step


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> normalised latents, as the pipeline's decoder expects them."""
    latents = vae.encode(images * 2 - 1).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def flow_loss(pipe: StableDiffusion3Pipeline, latents: torch.Tensor, captions: list[str], gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss: predict noise - x0 at x_t = (1 - t) x0 + t noise, t ~ logit-normal."""
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=captions,
        prompt_2=captions,
        prompt_3=captions,
        device=torch.device("cpu"),
        do_classifier_free_guidance=False,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    b = latents.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=gen))
    noise = torch.randn(latents.shape, generator=gen)
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


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


class Ema:
    """Exponential moving average of some modules' parameters (with the usual warm-up of the decay)."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        """Start the average at the modules' current parameters."""
        self.modules = modules
        self.decay = decay
        self.shadow = [[p.detach().clone() for p in m.parameters()] for m in modules]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current parameters."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for module, shadow in zip(self.modules, self.shadow):
            for s, p in zip(shadow, module.parameters()):
                s.lerp_(p.detach(), 1 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged parameters into the modules."""
        backup = [[p.detach().clone() for p in m.parameters()] for m in self.modules]
        self.copy_to_modules()
        try:
            yield
        finally:
            with torch.no_grad():
                for module, saved in zip(self.modules, backup):
                    for p, b in zip(module.parameters(), saved):
                        p.copy_(b)

    @torch.no_grad()
    def copy_to_modules(self) -> None:
        """Load the averaged parameters into the modules for good."""
        for module, shadow in zip(self.modules, self.shadow):
            for p, s in zip(module.parameters(), shadow):
                p.copy_(s)


def _eval_line(pipe: StableDiffusion3Pipeline, cfg: PretrainConfig, n: int) -> dict[str, float]:
    """Held-out reward of the current pipeline (n prompts, seed 0)."""
    return evaluate_pipeline(
        pipe,
        shapes.heldout_prompts(n, seed=0),
        seed=0,
        num_inference_steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )


def train_denoiser(pipe: StableDiffusion3Pipeline, cfg: PretrainConfig, deadline: float) -> tuple[int, Ema]:
    """Train transformer and text encoders jointly until ``cfg.steps`` or the deadline; return (steps, EMA)."""
    modules: list[torch.nn.Module] = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    for m in modules:
        m.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = Ema(modules, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    total = cfg.steps
    start = time.time()
    last_eval = start
    step = 0
    while total is None or step < total:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.warmup, total or 10**9)
        images, captions = shapes.generate(cfg.batch, seed=_data_seed(cfg.seed, step, phase=3))
        keep = torch.rand(cfg.batch, generator=gen) >= cfg.caption_dropout
        captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
        loss = flow_loss(pipe, encode_images(pipe.vae, images), captions, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        step += 1
        if total is None and step == 20:
            per_step = (time.time() - start) / step
            total = max(cfg.warmup + 1, int((deadline - time.time()) / per_step) + step)
            _log(f"{per_step:.3f} s/step: training {total} steps")
        if step % 50 == 0 or step == total:
            _log(f"step {step}/{total} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} elapsed {time.time() - start:.0f}s")
        if cfg.eval_every_s > 0 and time.time() - last_eval >= cfg.eval_every_s and step != total:
            with ema.applied():
                _set_train(modules, False)
                result = _eval_line(pipe, cfg, cfg.eval_prompts)
                _set_train(modules, True)
            _log(f"eval step {step} (EMA, {cfg.eval_prompts} held-out prompts): {_fmt(result)}")
            last_eval = time.time()
    _set_train(modules, False)
    return step, ema


def _set_train(modules: list[torch.nn.Module], mode: bool) -> None:
    """Switch modules between train and eval mode."""
    for m in modules:
        m.train(mode)


def _fmt(result: dict[str, float]) -> str:
    """One-line rendering of an evaluation."""
    return " ".join(f"{k} {v:.3f}" for k, v in result.items())


def write_model_card(out: Path, cfg: PretrainConfig, info: dict[str, object]) -> None:
    """README.md (human) and pretrain.json (machine) describing how the base was made."""
    (out / "pretrain.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2) + "\n")
    result = info["heldout"]
    assert isinstance(result, dict)
    lines = [
        "# treegrpo demo base: a tiny StableDiffusion3Pipeline for the shapes task",
        "",
        "Trained from scratch on procedurally drawn 32x32 shapes (treegrpo.demo.shapes, training",
        "captions only) by `treegrpo.demo.pretrain`. Not a general-purpose model.",
        "",
        f"- command: `{info['command']}`",
        f"- seed {cfg.seed}, threads {info['threads']}, budget {cfg.minutes} min, wall {info['wall_minutes']:.1f} min",
        f"- autoencoder steps {cfg.vae_steps}, transformer steps {info['steps']} (batch {cfg.batch}); "
        f"reproduce with `--steps {info['steps']}`",
        f"- saved weights: exponential moving average (decay {cfg.ema_decay}) of transformer and text encoders",
        f"- held-out reward (ShapesReward, {cfg.final_eval_prompts} held-out prompts, seed 0, "
        f"{cfg.sample_steps} steps, CFG {cfg.guidance_scale}): {_fmt(result)}",
        "",
        "Load and sample (there is no T5; keep max_sequence_length=1, as in training):",
        "",
        "```python",
        "from diffusers import StableDiffusion3Pipeline",
        "pipe = StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)",
        'image = pipe("two red circles", num_inference_steps=16, guidance_scale=2.0,',
        "             height=32, width=32, max_sequence_length=1).images[0]",
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def pretrain(out: Path, cfg: PretrainConfig, threads: int, command: str) -> dict[str, object]:
    """Run both phases, save the EMA pipeline and its model card into ``out``; return the card's facts."""
    torch.set_num_threads(threads)
    start = time.time()
    deadline = start + cfg.minutes * 60
    pipe = build_pipeline(cfg.seed)
    train_vae(pipe.vae, cfg)
    shift, scale = set_latent_statistics(pipe.vae, cfg.seed)
    _log(f"autoencoder reconstructions, held-out captions: {_fmt(reconstruction_reward(pipe.vae))}")
    _log(f"latent shift {shift:.4f} scaling {scale:.4f}; autoencoder done at {time.time() - start:.0f}s")
    steps, ema = train_denoiser(pipe, cfg, deadline)
    ema.copy_to_modules()
    wall = (time.time() - start) / 60
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    reloaded = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    result = _eval_line(reloaded, cfg, cfg.final_eval_prompts)
    _log(f"final (reloaded, {cfg.final_eval_prompts} held-out prompts): {_fmt(result)}")
    info: dict[str, object] = {
        "command": command,
        "threads": threads,
        "steps": steps,
        "wall_minutes": wall,
        "latent_shift": shift,
        "latent_scaling": scale,
        "heldout": result,
    }
    write_model_card(out, cfg, info)
    return info


def parse_args(argv: list[str] | None = None) -> tuple[Path, PretrainConfig, int]:
    """Command line -> (output folder, config, threads)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to save the pipeline into")
    p.add_argument("--minutes", type=float, default=PretrainConfig.minutes, help="wall budget for training")
    p.add_argument("--steps", type=int, default=None, help="transformer steps (overrides --minutes)")
    p.add_argument("--vae-steps", type=int, default=PretrainConfig.vae_steps)
    p.add_argument("--batch", type=int, default=PretrainConfig.batch)
    p.add_argument("--lr", type=float, default=PretrainConfig.lr)
    p.add_argument("--eval-every", type=float, default=PretrainConfig.eval_every_s, help="seconds; 0 disables")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = PretrainConfig(
        seed=a.seed,
        minutes=a.minutes,
        steps=a.steps,
        vae_steps=a.vae_steps,
        batch=a.batch,
        lr=a.lr,
        eval_every_s=a.eval_every,
    )
    return a.out, cfg, a.threads


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m treegrpo.demo.pretrain``."""
    out, cfg, threads = parse_args(argv)
    command = "python -m treegrpo.demo.pretrain " + shlex.join(sys.argv[1:] if argv is None else argv)
    pretrain(out, cfg, threads, command)


if __name__ == "__main__":
    main()
