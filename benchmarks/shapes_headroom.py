"""How much reward the shapes task leaves to RL: per prompt, the mean of k samples against the best of them.

    python -m benchmarks.shapes_headroom --prompts 64 --k 8 [--lora RUN/final] [--out FILE.json]
    python -m benchmarks.shapes_headroom --sampler tree --tree-k 2 --window 3 --start 0 [--noise 0.7]

The shipped base (plus an optional trained LoRA) samples each held-out prompt ``k`` times with
independent noise (8 steps, no CFG). For every reward component: the mean, the mean over prompts of
the best of the k samples, and the spread within a prompt; ``style`` is the preference reward
``shapes_style`` (white background), scored beside the components. A best-of-k far above the mean says the
reward separates good from bad samples, so a stalled run is the learner's limit, not the reward's.

``--sampler tree`` instead grows one tree per prompt through the engine, as TreeGRPO's rollout does
(one root noise, k-way SDE branching in the window at ``--start``, ODE elsewhere): its k^window
leaves are the samples, and their spread is what a tree's advantages compare.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from benchmarks.common import markdown_table

from treegrpo.demo import BASE_DIR, shapes
from treegrpo.demo.evaluate import sample_images
from treegrpo.demo.reward import ShapesReward
from treegrpo.demo.style import ShapesStyleReward


def headroom(pipe: Any, prompts: Sequence[str], k: int, seed: int) -> dict[str, dict[str, float]]:
    """Per component: mean, best of ``k`` (averaged over prompts) and within-prompt std of ``k`` samples each."""
    repeated = [p for p in prompts for _ in range(k)]
    images = sample_images(pipe, repeated, seed=seed, num_inference_steps=8, guidance_scale=1.0)
    return summarize_components(images, repeated, len(prompts), k)


def base_backbone(lora: Optional[Path]) -> Any:
    """The shipped base as an engine backbone for sampling only, with ``lora`` loaded when given."""
    from treegrpo.models.config import ModelConfig
    from treegrpo.models.loading import load_backbone

    model = ModelConfig(path=str(BASE_DIR), dtype="fp32", device="cpu", max_sequence_length=1)
    backbone = load_backbone(model, device="cpu", trainable=False)
    if lora is not None:
        backbone.pipe.load_lora_weights(str(lora))
    return backbone


def tree_headroom(backbone: Any, prompts: Sequence[str], k: int, window: int, start: int, noise: float,
                  seed: int) -> dict[str, dict[str, float]]:
    """As :func:`headroom`, with the leaves of one engine-grown tree per prompt as the samples."""
    from treegrpo.engine.rollout import rollout_trees
    from treegrpo.math.plans import tree_plan

    steps = 8
    schedule = backbone.schedule(steps)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rollout = rollout_trees(
            backbone.model_fn(backbone.encode_prompts(list(prompts)), 1.0, schedule),
            schedule.stepper(noise, "sde"), tree_plan(steps, k, window, start),
            backbone.initial_noise(len(prompts), generator), torch.arange(len(prompts)), max_batch=256, generator=generator,
        )
        images = backbone.decode(rollout.leaf_latents)
    order = torch.argsort(rollout.leaf_cond, stable=True)  # leaves grouped by prompt
    leaf_prompts = [prompts[int(i)] for i in rollout.leaf_cond[order]]
    return summarize_components(images[order], leaf_prompts, len(prompts), k**window)


def summarize_components(images: torch.Tensor, texts: Sequence[str], rows: int, k: int) -> dict[str, dict[str, float]]:
    """Shapes reward components (and their total) of ``rows`` prompts x ``k`` samples (prompt-major), each summarized."""
    reward = ShapesReward()
    components = reward.components(images, texts)
    scores = {**components, "total": reward.combine(components), "style": ShapesStyleReward()(images, texts)}
    grids = {name: values.float().view(rows, k) for name, values in scores.items()}
    return {name: summarize(grid) for name, grid in grids.items() if not torch.isnan(grid).all()}  # e.g. no position on counts


def summarize(grid: torch.Tensor) -> dict[str, float]:
    """Scores ``[prompts, k]`` (NaN where a prompt has no such component) -> mean, best of k, within-prompt std."""
    best = grid.nan_to_num(float("-inf")).max(1).values
    best[best == float("-inf")] = float("nan")  # prompts without the component stay out of the mean
    return {"mean": float(grid.nanmean()), f"best_of_{grid.shape[1]}": float(best.nanmean()),
            "within_prompt_std": float(grid.std(1).nanmean())}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Sample, score, print one table per prompt group and write JSON."""
    from diffusers import StableDiffusion3Pipeline

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="distinct held-out prompts per group")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--groups", nargs="+", default=list(shapes.PROMPT_GROUPS), choices=shapes.PROMPT_GROUPS)
    parser.add_argument("--lora", type=Path, default=None, help="a trained LoRA folder (RUN/final) to load onto the base")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sampler", choices=("independent", "tree"), default="independent",
                        help="independent noise per sample, or the leaves of one tree per prompt")
    parser.add_argument("--tree-k", type=int, default=2, help="tree: children per branching step")
    parser.add_argument("--window", type=int, default=3, help="tree: branching steps")
    parser.add_argument("--start", type=int, default=0, help="tree: the window's first step")
    parser.add_argument("--noise", type=float, default=0.7, help="tree: SDE noise level in the window")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tree = args.sampler == "tree"
    backbone = base_backbone(args.lora) if tree else None
    pipe = None if tree else StableDiffusion3Pipeline.from_pretrained(BASE_DIR, text_encoder_3=None, tokenizer_3=None)
    if pipe is not None:
        if args.lora is not None:
            pipe.load_lora_weights(str(args.lora))
        pipe.set_progress_bar_config(disable=True)
    k = args.tree_k**args.window if tree else args.k
    payload: dict[str, Any] = {"k": k, "lora": None if args.lora is None else str(args.lora), "groups": {},
                               "sampler": args.sampler}
    if tree:
        payload.update(tree_k=args.tree_k, window=args.window, start=args.start, noise=args.noise)
    for group in args.groups:
        distinct = list(dict.fromkeys(shapes.heldout_prompts(8 * args.prompts, seed=21, groups=(group,))))[: args.prompts]
        result = (tree_headroom(backbone, distinct, args.tree_k, args.window, args.start, args.noise, args.seed)
                  if tree else headroom(pipe, distinct, args.k, args.seed))
        payload["groups"][group] = {"prompts": len(distinct), **result}
        rows = [[name, f"{v['mean']:.3f}", f"{v[f'best_of_{k}']:.3f}", f"{v['within_prompt_std']:.3f}"]
                for name, v in result.items()]
        print(f"\n{group}: {len(distinct)} prompts x {k} {'leaves' if tree else 'samples'}")
        print(markdown_table(["component", "mean", f"best of {k}", "within-prompt std"], rows))
    if args.out is not None:
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
