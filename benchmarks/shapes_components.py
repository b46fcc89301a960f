"""Where a trained LoRA's held-out gain comes from: the demo's evaluation split by prompt group and reward component.

    python -m benchmarks.shapes_components base RUN/final [RUN2/final ...] [--prompts 1024] [--out FILE.json]

Each model (``base``, or a LoRA folder loaded onto the shipped base) samples the demo's held-out
prompts with the demo's fixed evaluation noise (8 steps, no CFG: the same images as the run's own
``eval/score``), and the shapes reward is reported per prompt group (one object, count, relation)
and per component (colour, count, shape, position, clean).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from benchmarks.common import markdown_table
from benchmarks.shapes_headroom import base_backbone

from treegrpo.config import BuiltinPrompts, DataConfig
from treegrpo.data import load_prompt_sets
from treegrpo.demo import shapes
from treegrpo.demo.reward import ShapesReward


def components_by_group(model: str, prompts: Sequence[str], eval_seed: int = 0) -> dict[str, Any]:
    """``model`` (``"base"`` or a LoRA folder) on ``prompts``: overall reward, and per group its mean components."""
    from treegrpo.trainer.evaluation import evaluate

    backbone = base_backbone(None if model == "base" else Path(model))
    reward = ShapesReward()
    result, images, _ = evaluate(backbone, lambda im, texts: (reward(im, texts), {}), prompts, steps=8,
                                 guidance_scale=1.0, seed=eval_seed, max_batch=256)
    components = reward.components(images, prompts)
    total = reward.combine(components)
    groups = [shapes.caption_group(shapes.parse_caption(p)) for p in prompts]
    row: dict[str, Any] = {"all": float(total.mean()), "eval_score": result["eval/score"]}
    for group in shapes.PROMPT_GROUPS:
        index = torch.tensor([i for i, g in enumerate(groups) if g == group], dtype=torch.long)
        if len(index):
            row[group] = {"prompts": len(index), "total": float(total[index].mean()),
                          **{name: float(values[index].float().nanmean()) for name, values in components.items()
                             if not torch.isnan(values[index].float()).all()}}
    return row


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Score each model, print one table, write JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("models", nargs="+", help="'base' or LoRA folders (RUN/final)")
    parser.add_argument("--prompts", type=int, default=1024, help="the demo's held-out prompts (data.num_eval_prompts)")
    parser.add_argument("--eval-seed", type=int, default=0, help="data.eval_seed of the runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = DataConfig(builtin=BuiltinPrompts.shapes, num_eval_prompts=args.prompts, eval_seed=args.eval_seed)
    prompts = load_prompt_sets(data, seed=0).eval  # the held-out prompts of every demo run with this eval seed
    results = {model: components_by_group(model, prompts, args.eval_seed) for model in args.models}
    names = ["colour", "count", "shape", "position", "clean"]
    rows = []
    for model, row in results.items():
        for group in shapes.PROMPT_GROUPS:
            if group in row:
                g = row[group]
                rows.append([model, group, str(g["prompts"]), f"{g['total']:.3f}",
                             *[f"{g[n]:.3f}" if n in g else "" for n in names]])
        rows.append([model, "all", str(len(prompts)), f"{row['all']:.3f}", *[""] * len(names)])
    print(markdown_table(["model", "prompts", "n", "reward", *names], rows))
    payload = {"prompts": len(prompts), "eval_seed": args.eval_seed, "models": results}
    if args.out is not None:
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
