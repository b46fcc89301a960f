"""Held-out evaluation and the pictures a run draws: engine sampling, image grids, tree figures.

``sample_images`` is the one way images are sampled through the engine (evaluation, ``treegrpo
sample``, ``treegrpo eval``); evaluation uses the ODE with fixed seeded noise, so curves of one
run and of different runs are comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from treegrpo.engine.rollout import TreeRollout, rollout_trees
from treegrpo.math.plans import flat_plan, ode_plan
from treegrpo.models.base import Backbone
from treegrpo.rewards.multi import MultiReward
from treegrpo.rewards.video import middle_frames


@dataclass
class RewardSet:
    """The configured rewards (a :class:`~treegrpo.rewards.multi.MultiReward`): score ``sum_j w_j R_j``."""

    multi: MultiReward

    @property
    def abstaining(self) -> frozenset[str]:
        """Rewards whose NaN means "not scored" (see :attr:`MultiReward.abstaining`)."""
        return self.multi.abstaining

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted score [B], each component [B]) as float32 CPU tensors."""
        components = self.multi.components(images, list(prompts))
        return self.multi.combine(components), components


@torch.no_grad()
def sample_images(
    backbone: Backbone, prompts: Sequence[str], *, steps: int, guidance_scale: float, seed: int, max_batch: int,
    noise_level: float = 0.0,
) -> torch.Tensor:
    """One image per prompt through the engine: ODE (``noise_level`` 0) or SDE, from seeded noise."""
    schedule = backbone.schedule(steps)
    noise = backbone.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    plan = ode_plan(steps) if noise_level == 0 else flat_plan(steps, trained_steps=[])
    model_fn = backbone.model_fn(backbone.encode_prompts(list(prompts)), guidance_scale, schedule)
    rollout = rollout_trees(
        model_fn, schedule.stepper(noise_level), plan, noise, torch.arange(len(prompts), device=noise.device),
        max_batch=max_batch, generator=torch.Generator(device=noise.device).manual_seed(seed + 1),
    )
    return backbone.decode(rollout.leaf_latents)


@torch.no_grad()
def evaluation_noise_seed(eval_seed: int, chunk: int = 0) -> int:
    """The seed of the held-out evaluation's noise (its ``chunk``-th batch for ``treegrpo eval``): the
    trainer's evaluation and ``treegrpo eval`` draw the same noise for the same first prompts."""
    return eval_seed + 7919 + chunk


def evaluate(
    backbone: Backbone, rewards: RewardSet, prompts: Sequence[str], *, steps: int, guidance_scale: float,
    seed: int, max_batch: int, judges: Optional[RewardSet] = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """ODE samples (fixed seeded noise) of ``prompts`` scored by every reward and judge: (means, images, scores).

    ``scores`` is each image's weighted training reward (the captions of the evaluation pictures).

    Keys: ``eval/<reward>`` and ``eval/<reward>_se`` (each reward's mean and its standard error over
    the samples), ``eval/score`` and ``eval/score_se`` (the weighted training reward) and, with judges,
    ``eval/judge/<name>``, ``eval/judge/<name>_se``, ``eval/judge_score`` and ``eval/judge_score_se``.
    """
    images = sample_images(backbone, prompts, steps=steps, guidance_scale=guidance_scale, seed=evaluation_noise_seed(seed),
                           max_batch=max_batch)
    total, components = rewards(images, list(prompts))
    result = with_standard_errors("eval/", components)
    result["eval/score"], result["eval/score_se"] = mean_and_standard_error(total)
    if not bool(torch.isfinite(total).all()):
        result["eval/unscored"] = float((~torch.isfinite(total)).sum())
    if judges is not None:
        judged, judge_components = judges(images, list(prompts))
        result.update(with_standard_errors("eval/judge/", judge_components))
        result["eval/judge_score"], result["eval/judge_score_se"] = mean_and_standard_error(judged)
    return result, images, total


def with_standard_errors(prefix: str, components: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{prefix}<name>`` (the mean) and ``{prefix}<name>_se`` (its standard error) of each component."""
    result: dict[str, float] = {}
    for name, values in components.items():
        result[prefix + name], result[f"{prefix}{name}_se"] = mean_and_standard_error(values)
    return result


def mean_and_standard_error(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error ``std / sqrt(n)`` (sample std; 0 for one value) over the finite values (a
    remote judge's NaN is "not scored": counted as ``eval/unscored``, not averaged)."""
    values = values[torch.isfinite(values)]
    n = values.numel()
    spread = float(values.double().std(unbiased=True)) if n > 1 else 0.0
    return float(values.double().mean()), spread / math.sqrt(n) if n > 1 else 0.0


def grid_columns(count: int) -> int:
    """Columns of a square-ish grid of ``count`` images (the evaluation grids' layout)."""
    return max(1, math.ceil(math.sqrt(count)))


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """``[N, 3, H, W]`` -> one ``[3, rows * H, columns * W]`` grid (2-pixel gaps); :func:`grid_cells` inverts it."""
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    grid = torch.ones(c, rows * (h + 2), columns * (w + 2))
    for i in range(n):
        r, k = divmod(i, columns)
        grid[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, k * (w + 2) + 1 : k * (w + 2) + 1 + w] = images[i].cpu()
    return grid


def grid_cells(file: Path, count: int, total: int) -> torch.Tensor:
    """The first ``count`` of the ``total`` square images of an evaluation grid PNG: ``[count, 3, S, S]``."""
    from PIL import Image

    array = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255
    columns = grid_columns(total)
    size = array.shape[1] // columns - 2
    cells = []
    for i in range(count):
        row, column = divmod(i, columns)
        top, left = row * (size + 2) + 1, column * (size + 2) + 1
        cells.append(array[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2)


def save_png(image: torch.Tensor, file: Path) -> None:
    """Save a ``[3, H, W]`` float image in [0, 1] as PNG."""
    from PIL import Image

    file.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(file)


def tree_nodes(rollout: TreeRollout, tree: int) -> tuple[list[int], dict[int, torch.Tensor]]:
    """Node ids of one tree and the latents of each (roots and trained children)."""
    structure = rollout.structure
    nodes = torch.nonzero(structure.node_tree == tree).squeeze(1).tolist()
    latents = {tree: rollout.root_latents[tree]}
    for edge, child in enumerate(structure.edge_child.tolist()):
        if structure.node_tree[child] == tree:
            latents[child] = rollout.child_latents[edge]
    return nodes, latents


def tree_figure(rollout: TreeRollout, decode: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor, tree: int = 0,
                prompt: str = "", edge_advantages: Optional[torch.Tensor] = None) -> Any:
    """A matplotlib figure of one tree: its prompt, decoded node images by depth, each trained edge's
    advantage (when given, indexed like ``rollout.structure.edge_child``), final leaf images and rewards below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structure = rollout.structure
    nodes, latents = tree_nodes(rollout, tree)
    images = dict(zip(nodes, middle_frames(decode(torch.stack([latents[n] for n in nodes])))))  # clips: middle frame
    leaves = torch.nonzero(structure.leaf_tree == tree).squeeze(1).tolist()
    finals = middle_frames(decode(rollout.leaf_latents[leaves]))
    parent = structure.node_parent.tolist()
    depth = structure.node_depth.tolist()
    children: dict[int, list[int]] = {n: [] for n in nodes}
    for n in nodes:
        if parent[n] >= 0:
            children[parent[n]].append(n)
    x: dict[int, float] = {}
    order = [int(structure.leaf_node[i]) for i in leaves]
    for i, n in enumerate(order):
        x[n] = float(i)
    for n in sorted(nodes, key=lambda m: -depth[m]):
        if n not in x:
            x[n] = float(np.mean([x[c] for c in children[n]])) if children[n] else 0.0
    max_depth = max(depth[n] for n in nodes)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(order)), 1.4 * (max_depth + 2)))
    size = 0.42
    edge_of = {child: edge for edge, child in enumerate(structure.edge_child.tolist())}
    for n in nodes:
        if parent[n] >= 0:
            ax.plot([x[parent[n]], x[n]], [-depth[parent[n]], -depth[n]], color="0.6", lw=0.8, zorder=0)
            if edge_advantages is not None and n in edge_of:
                value = float(edge_advantages[edge_of[n]])
                ax.text((x[parent[n]] + x[n]) / 2, -(depth[parent[n]] + depth[n]) / 2, f"{value:+.2f}", fontsize=6,
                        ha="center", va="center", color="tab:green" if value >= 0 else "tab:red",
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8), zorder=2)
    for n in nodes:
        ax.imshow(images[n].permute(1, 2, 0).clamp(0, 1).numpy(), extent=(x[n] - size, x[n] + size, -depth[n] - size, -depth[n] + size))
    for i, n in enumerate(order):
        y = -(max_depth + 1.3)
        ax.plot([x[n], x[n]], [-depth[n], y], color="0.8", lw=0.6, ls="--", zorder=0)
        ax.imshow(finals[i].permute(1, 2, 0).clamp(0, 1).numpy(), extent=(x[n] - size, x[n] + size, y - size, y + size))
        ax.text(x[n], y - size - 0.12, f"{float(scores[leaves[i]]):.3f}", ha="center", va="top", fontsize=7)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(-(max_depth + 2.1), 0.6)
    ax.axis("off")
    about = "edge labels: advantage; " if edge_advantages is not None else ""
    ax.set_title(f"{prompt!r}\ntree {tree}: nodes by depth (rows), {about}final images and rewards (bottom)", fontsize=8)
    fig.tight_layout()
    return fig
