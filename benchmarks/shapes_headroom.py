"""How much reward the shapes task leaves to RL: per prompt, the mean of k samples against the best of them.

    python benchmarks/shapes_headroom.py --prompts 64 --k 8 [--lora RUN/final] [--out FILE.json]

The shipped base (plus an optional trained LoRA) samples each held-out prompt ``k`` times with
independent noise (8 steps, no CFG). For every reward component: the mean, the mean over prompts of
the best of the k samples, and the spread within a prompt. A best-of-k far above the mean says the
reward separates good from bad samples, so a stalled run is the learner's limit, not the reward's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

from treegrpo.demo import BASE_DIR, shapes  # noqa: E402
from treegrpo.demo.evaluate import sample_images  # noqa: E402
from treegrpo.demo.reward import ShapesReward  # noqa: E402


def headroom(pipe: Any, prompts: Sequence[str], k: int, seed: int) -> dict[str, dict[str, float]]:
    """Per component: mean, best of ``k`` (averaged over prompts) and within-prompt std of ``k`` samples each."""
    reward = ShapesReward()
    repeated = [p for p in prompts for _ in range(k)]
    images = sample_images(pipe, repeated, seed=seed, num_inference_steps=8, guidance_scale=1.0)
    components = reward.components(images, repeated)
    scores = {**components, "total": reward.combine(components)}
    grids = {name: values.float().view(len(prompts), k) for name, values in scores.items()}
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = StableDiffusion3Pipeline.from_pretrained(BASE_DIR, text_encoder_3=None, tokenizer_3=None)
    if args.lora is not None:
        pipe.load_lora_weights(str(args.lora))
    pipe.set_progress_bar_config(disable=True)
    payload: dict[str, Any] = {"k": args.k, "lora": None if args.lora is None else str(args.lora), "groups": {}}
    for group in args.groups:
        distinct = list(dict.fromkeys(shapes.heldout_prompts(8 * args.prompts, seed=21, groups=(group,))))[: args.prompts]
        result = headroom(pipe, distinct, args.k, args.seed)
        payload["groups"][group] = {"prompts": len(distinct), **result}
        rows = [[name, f"{v['mean']:.3f}", f"{v[f'best_of_{args.k}']:.3f}", f"{v['within_prompt_std']:.3f}"]
                for name, v in result.items()]
        print(f"\n{group}: {len(distinct)} prompts x {args.k} samples")
        print(markdown_table(["component", "mean", f"best of {args.k}", "within-prompt std"], rows))
    if args.out is not None:
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
