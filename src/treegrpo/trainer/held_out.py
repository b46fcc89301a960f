"""The run's held-out evaluation: the fixed prompts and noise sampled, scored by the rewards and judges,
and drawn (sample grids, captioned grids, clips, the latest rollout's tree), then logged.

The trainer calls :meth:`HeldOutEvaluation.run` before training, every ``train.eval_every``
iterations and at the end; with FSDP every process runs the forwards (they are collectives) and
only the main process writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from treegrpo.config import TrainerConfig
from treegrpo.engine.rollout import TreeRollout
from treegrpo.models.base import Backbone
from treegrpo.rewards.video import is_video, middle_frames
from treegrpo.trainer.distributed import Processes
from treegrpo.trainer.evaluation import RewardSet, evaluate, grid_columns, image_grid, save_png, tree_figure
from treegrpo.trainer.metrics import MetricsLog
from treegrpo.trainer.pictures import captions_for, save_captioned
from treegrpo.video_io import save_video


@dataclass
class LatestRollout:
    """What the tree picture shows: this process's latest rollout, its leaf scores, prompts and edge advantages."""

    rollout: TreeRollout
    scores: torch.Tensor
    prompts: list[str]
    edge_advantages: Optional[torch.Tensor]


@dataclass
class HeldOutEvaluation:
    """Everything a held-out evaluation reads and where it writes."""

    cfg: TrainerConfig
    backbone: Backbone
    rewards: RewardSet
    judges: Optional[RewardSet]
    prompts: Sequence[str]
    run_dir: Path
    log: MetricsLog
    processes: Processes
    sharded: bool

    def run(self, step: int, *, first_or_last: bool = False, latest: Optional[LatestRollout] = None) -> Optional[dict[str, float]]:
        """Evaluate (the caller sets the weights: EMA or trained), draw and log; the eval metrics, or None
        on processes that do not evaluate. ``first_or_last`` adds the ``eval.more_steps`` check."""
        result = None
        if (self.processes.is_main or self.sharded) and self.prompts:
            result, images, scores = self._evaluate(self.cfg.sampling.steps, len(self.prompts))
            if first_or_last and self.cfg.eval.more_steps:
                result.update(self._more_steps())
        if self.processes.is_main and result is not None:
            self._draw(step, result, images, scores)
            if latest is not None:
                self.draw_tree(step, latest)
        return result

    def _evaluate(self, steps: int, samples: int) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        return evaluate(
            self.backbone, self.rewards, list(self.prompts[:samples]), steps=steps,
            guidance_scale=cfg.sampling.guidance_scale, seed=cfg.data.eval_seed, max_batch=cfg.sampling.max_batch,
            judges=self.judges,
        )

    def _more_steps(self) -> dict[str, float]:
        """Every evaluation key again as ``eval/steps<N>/...``: the same prompts and noise sampled with ``eval.more_steps`` steps."""
        cfg = self.cfg
        result, _, _ = self._evaluate(cfg.eval.more_steps, cfg.eval.more_steps_samples or len(self.prompts))
        prefix = f"eval/steps{cfg.eval.more_steps}/"
        return {prefix + key.removeprefix("eval/"): value for key, value in result.items()}

    def _draw(self, step: int, result: dict[str, float], images: torch.Tensor, scores: torch.Tensor) -> None:
        """RUN/samples/step-N.png (and -captioned.png; clips as video too), then the log's evaluation record."""
        samples = self.run_dir / "samples"
        columns = grid_columns(images.shape[0])
        frames = middle_frames(images)  # clips: their middle frames (and the grid animated below)
        grid = image_grid(frames, columns)
        save_png(grid, samples / f"step-{step:06d}.png")
        if is_video(images):
            clip = torch.stack([image_grid(images[:, f], columns) for f in range(images.shape[1])])
            save_video(clip, samples / f"step-{step:06d}")
        captions = captions_for(self.prompts, scores.tolist())
        save_captioned(frames, captions, samples / f"step-{step:06d}-captioned.png", columns)
        self.log.evaluation(step, result, grid, frames, captions)

    def draw_tree(self, step: int, latest: LatestRollout) -> None:
        """RUN/trees/step-N.png: tree 0 of the latest rollout, with its edges' advantages."""
        import matplotlib.pyplot as plt

        rollout = latest.rollout.cpu()
        prompt = latest.prompts[int(rollout.node_cond[0])] if latest.prompts else ""  # node 0 = root of tree 0
        figure: Any = tree_figure(rollout, self.backbone.decode, latest.scores.cpu(), prompt=prompt,
                                  edge_advantages=latest.edge_advantages)
        file = self.run_dir / "trees" / f"step-{step:06d}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(file, dpi=100)
        self.log.figure("tree", figure, step, caption=prompt)
        plt.close(figure)
