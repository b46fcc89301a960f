"""Held-out reward of a shapes pipeline, sampled with the pipeline's own call (seeded).

    python -m treegrpo.demo.evaluate [--model DIR] [--n 256] [--seeds 0 1 2] [--steps 16] [--cfg 2.0]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import torch
from diffusers import StableDiffusion3Pipeline

from treegrpo.demo import BASE_DIR, shapes
from treegrpo.demo.reward import ShapesReward



def load_base(path: Path | str = BASE_DIR) -> StableDiffusion3Pipeline:
    """Load a demo pipeline (no T5) from a folder, offline."""
    return StableDiffusion3Pipeline.from_pretrained(str(path), text_encoder_3=None, tokenizer_3=None)


@torch.no_grad()
def sample_images(
    pipe: StableDiffusion3Pipeline,
    prompts: Sequence[str],
    seed: int,
    num_inference_steps: int = 16,
    guidance_scale: float = 2.0,
    batch_size: int = 64,
    max_sequence_length: int = 1,
) -> torch.Tensor:
    """Images [N, 3, 32, 32] in [0, 1] for the prompts; batch i uses generator seed ``seed * 100003 + i``."""
    out = []
    for i in range(0, len(prompts), batch_size):
        gen = torch.Generator().manual_seed(seed * 100_003 + i // batch_size)
        result = pipe(
            prompt=list(prompts[i : i + batch_size]),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=32,
            width=32,
            max_sequence_length=max_sequence_length,
            generator=gen,
            output_type="pt",
        )
        out.append(result.images.float().cpu())
    return torch.cat(out)


def evaluate_pipeline(
    pipe: StableDiffusion3Pipeline,
    prompts: Sequence[str],
    seed: int = 0,
    num_inference_steps: int = 16,
    guidance_scale: float = 2.0,
    max_sequence_length: int = 1,
    reward: ShapesReward | None = None,
) -> dict[str, float]:
    """Mean reward and its components (NaN-aware) of the pipeline's samples for the prompts."""
    was_disabled = getattr(pipe, "_progress_bar_config", {}).get("disable", False)
    pipe.set_progress_bar_config(disable=True)
    images = sample_images(pipe, prompts, seed, num_inference_steps, guidance_scale, max_sequence_length=max_sequence_length)
    pipe.set_progress_bar_config(disable=was_disabled)
    return (reward or ShapesReward()).component_means(images, prompts)


PROMPT_GROUPS = shapes.PROMPT_GROUPS
"""Held-out prompt groups reported separately (:data:`treegrpo.demo.shapes.PROMPT_GROUPS`)."""


def prompt_group(prompt: str) -> str:
    """Which of :data:`PROMPT_GROUPS` a shapes caption belongs to."""
    return shapes.caption_group(shapes.parse_caption(prompt))


def component_means_by_group(
    images: torch.Tensor, prompts: Sequence[str], reward: ShapesReward | None = None
) -> dict[str, dict[str, float]]:
    """Reward components of each prompt group and of all prompts ("all"), with the count "n" of each."""
    reward = reward or ShapesReward()
    groups = [prompt_group(p) for p in prompts]
    out: dict[str, dict[str, float]] = {"all": {**reward.component_means(images, prompts), "n": float(len(prompts))}}
    for group in PROMPT_GROUPS:
        rows = [i for i, g in enumerate(groups) if g == group]
        if rows:
            picked = [prompts[i] for i in rows]
            out[group] = {**reward.component_means(images[rows], picked), "n": float(len(rows))}
    return out


def evaluate_seeds(
    pipe: StableDiffusion3Pipeline,
    n: int,
    seeds: Sequence[int],
    num_inference_steps: int = 16,
    guidance_scale: float = 2.0,
    prompt_seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Held-out evaluation over several sampling seeds: per seed, and mean / std (over seeds) per key."""
    prompts = shapes.heldout_prompts(n, seed=prompt_seed)
    runs = {str(s): evaluate_pipeline(pipe, prompts, s, num_inference_steps, guidance_scale) for s in seeds}
    keys = next(iter(runs.values())).keys()
    summary: dict[str, dict[str, float]] = dict(runs)
    summary["mean"] = {k: sum(r[k] for r in runs.values()) / len(runs) for k in keys}
    summary["std"] = {k: _std([r[k] for r in runs.values()]) for k in keys}
    return summary


def _std(values: list[float]) -> float:
    """Population standard deviation."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m treegrpo.demo.evaluate``: prints a JSON summary."""
    p = argparse.ArgumentParser(description="held-out reward of a shapes pipeline")
    p.add_argument("--model", type=Path, default=BASE_DIR)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    summary = evaluate_seeds(load_base(a.model), a.n, a.seeds, a.steps, a.cfg)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
