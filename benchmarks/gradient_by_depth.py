"""TreeGRPO's policy gradient split by tree depth on the shapes task: its size, and whether rollouts agree on it.

    python -m benchmarks.gradient_by_depth [--rollouts 6] [--k 2] [--window 3] [--start 0] [--prompts 16] [--out FILE.json]

The demo's run (shipped base, fresh LoRA, the demo's settings) grows ``--rollouts`` independent
iterations' trees at a fixed window without changing the weights (``train.lr=0``). For each
rollout and each depth of the window, the gradient of the clipped objective over that depth's
edges alone (the objective the trainer minimises, restricted by an edge mask) is taken w.r.t. the
LoRA weights. Reported per depth: the gradient's norm, and the mean cosine between the gradients
of different rollouts. A direction that rollouts agree on (cosine well above 0) is signal a
learning rate can follow; a cosine near 0 says each rollout's gradient at that depth is mostly noise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from benchmarks.common import markdown_table


def depth_gradients(trainer: Any, iteration: int) -> dict[int, tuple[torch.Tensor, int]]:
    """One rollout's gradient per window depth: depth -> (flattened LoRA gradient, trained edges)."""
    from treegrpo.engine.minibatches import make_minibatches, minibatch_loss

    result = trainer.run_iteration(iteration)  # lr 0: rollout, rewards, advantages; weights unchanged
    rollout, advantages = result.rollout, result.edge_advantages.to(trainer.processes.device)
    conditioning = trainer.backbone.encode_prompts(result.prompts)
    model_fn = trainer.backbone.model_fn(conditioning, trainer.cfg.sampling.guidance_scale, trainer.schedule,
                                         denoiser=trainer.wrapped)
    parameters = [p for p in trainer.parameters if p.requires_grad]
    depths = rollout.structure.edge_depth
    gradients: dict[int, tuple[torch.Tensor, int]] = {}
    trainer.backbone.denoiser.train()
    for depth in sorted(set(depths.tolist())):
        mask = (depths == depth) & (advantages != 0)
        if not bool(mask.any()):
            continue
        (batch,) = make_minibatches(rollout, mask, parents_per_batch=rollout.num_parents)
        loss = minibatch_loss(model_fn, trainer.stepper, rollout, batch, advantages, trainer.cfg.loss).loss
        grads = torch.autograd.grad(loss, parameters)
        gradients[depth] = (torch.cat([g.reshape(-1) for g in grads]).detach().double(), int(mask.sum()))
    trainer.backbone.denoiser.eval()
    return gradients


def mean_pairwise_cosine(vectors: Sequence[torch.Tensor]) -> float:
    """Mean cosine over every pair of distinct vectors (nan for fewer than two)."""
    cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(vectors, 2)]
    return sum(cosines) / len(cosines) if cosines else float("nan")


def jackknife_se(vectors: Sequence[torch.Tensor]) -> float:
    """Jackknife standard error of :func:`mean_pairwise_cosine` over rollouts (leave one rollout out;
    the pairs share rollouts, so their spread alone would understate it). nan for fewer than three."""
    n = len(vectors)
    if n < 3:
        return float("nan")
    leave_one_out = [mean_pairwise_cosine([v for j, v in enumerate(vectors) if j != i]) for i in range(n)]
    mean = sum(leave_one_out) / n
    return ((n - 1) / n * sum((c - mean) ** 2 for c in leave_one_out)) ** 0.5


def summarize(per_rollout: Sequence[dict[int, tuple[torch.Tensor, int]]]) -> list[dict[str, float]]:
    """Per depth: mean gradient norm, edges per rollout, mean pairwise cosine between rollouts and its
    jackknife standard error."""
    rows = []
    for depth in sorted(set().union(*[g.keys() for g in per_rollout])):
        vectors = [g[depth][0] for g in per_rollout if depth in g]
        rows.append({
            "depth": depth, "rollouts": len(vectors),
            "edges_per_rollout": sum(g[depth][1] for g in per_rollout if depth in g) / len(vectors),
            "grad_norm": float(torch.stack([v.norm() for v in vectors]).mean()),
            "cosine_between_rollouts": mean_pairwise_cosine(vectors),
            "cosine_se": jackknife_se(vectors),
            "norm_of_mean_over_mean_norm": float(torch.stack(vectors).mean(0).norm() / torch.stack([v.norm() for v in vectors]).mean()),
        })
    return rows


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Grow the rollouts, take the per-depth gradients, print the table, write JSON."""
    from treegrpo.config import resolve_config
    from treegrpo.demo.run import DEMO_CONFIG
    from treegrpo.trainer import Trainer

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=6)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--start", type=int, default=0, help="the window's first step (fixed for every rollout)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts (trees) per rollout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], dest="settings", metavar="SECTION.KEY=VALUE",
                        help="more trainer settings, e.g. loss.ratio_norm=true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.rollouts < 2:
        parser.error("--rollouts must be >= 2 (the cosine compares rollouts)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="treegrpo-grad-") as folder:
        overrides = [f"output_dir={folder}", f"seed={args.seed}", "train.lr=0", f"tree.k={args.k}",
                     f"tree.window={args.window}", "tree.window_placement=fixed", f"tree.window_start={args.start}",
                     f"data.prompts_per_iteration={args.prompts}", "data.num_eval_prompts=1", *args.settings]
        cfg = resolve_config(DEMO_CONFIG, overrides, source="gradient_by_depth", method="treegrpo")
        trainer = Trainer(cfg, run_dir=Path(folder))
        per_rollout = [depth_gradients(trainer, i) for i in range(args.rollouts)]
    rows = summarize(per_rollout)
    print(markdown_table(
        ["depth (1: edges out of the root)", "trained edges / rollout", "gradient norm", "cosine between rollouts (+- s.e.)",
         "|mean| / mean |g|"],
        [[str(r["depth"]), f"{r['edges_per_rollout']:.0f}", f"{r['grad_norm']:.3g}",
          f"{r['cosine_between_rollouts']:.3f} +- {r['cosine_se']:.3f}",
          f"{r['norm_of_mean_over_mean_norm']:.3f}"] for r in rows]))
    payload = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "depths": rows}
    if args.out is not None:
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
