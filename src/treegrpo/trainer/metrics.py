"""Where a run's numbers go: ``metrics.jsonl``, ``eval.jsonl``, TensorBoard and the log line.

One ``metrics.jsonl`` record per iteration: step, epoch (the pass over the training prompts that the
iteration's first prompt came from, counted from 0), plan, reward_mean/std,
reward/<name>_mean/std, group_std_mean, guard_fraction, loss, policy_loss, clip_fraction,
approx_kl, ratio_mean/min/max, grad_norm, trained_edges, rollout_nfe, training_nfe, model_calls,
seconds (and rollout/reward/update seconds), lr, num_processes, the non-finite counters.
Only the main process writes; on resume, lines written after the resumed checkpoint are dropped.
TensorBoard and the other trackers of ``train.log_with`` (:mod:`~treegrpo.trainer.trackers`) get
the same numbers under grouped keys (``train/``, ``eval/``, ``time/``, ``nfe/``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from treegrpo.math.advantages import LeafAdvantages
from treegrpo.runtime.faults import fault_point
from treegrpo.runtime.fsdp import full_tensor
from treegrpo.trainer.distributed import Processes
from treegrpo.trainer.run_dir import write_atomic
from treegrpo.trainer.trackers import Trackers, tracker_scalars

logger = logging.getLogger(__name__)


def json_value(value: Any) -> Any:
    """Finite floats as is; NaN / inf as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _eval_step(line: str) -> float:
    """The step of one eval.jsonl line (a torn or malformed line counts as infinitely late)."""
    try:
        return float(json.loads(line)["step"]) if line.endswith("\n") else math.inf
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Appends iteration and evaluation records (main process only; other processes only count)."""

    def __init__(self, run_dir: Path, *, is_main: bool, iterations: int, log_every: int,
                 log_with: Sequence[str] = ("tensorboard",), config: Optional[dict[str, Any]] = None) -> None:
        self.run_dir = run_dir
        self.is_main = is_main
        self.iterations = iterations
        self.log_every = log_every
        self.log_with = list(log_with)
        self.config = config or {}
        self.lines = 0
        self.writer: Any = None
        self.trackers: Optional[Trackers] = None

    def open(self, start_iteration: int, metrics_lines: int) -> None:
        """Drop records written after the resumed checkpoint (and torn last lines); open the trackers."""
        self.lines = metrics_lines
        if not self.is_main:
            return
        file = self.run_dir / "metrics.jsonl"
        if file.exists():
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[:metrics_lines]
            write_atomic(file, "".join(line for line in lines if line.endswith("\n")))
        file = self.run_dir / "eval.jsonl"
        if file.exists():
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            write_atomic(file, "".join(line for line in lines if _eval_step(line) <= start_iteration))
        if "tensorboard" in self.log_with:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                        purge_step=start_iteration + 1 if start_iteration else None)
            if not start_iteration:
                self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=2) + "\n```", 0)
        if any(name != "tensorboard" for name in self.log_with):
            self.trackers = Trackers(self.log_with, self.run_dir)
            self.trackers.start(self.config)

    def iteration(self, record: dict[str, Any]) -> None:
        """Append one iteration's record to metrics.jsonl and TensorBoard; log a line every ``log_every``."""
        self.lines += 1
        if not self.is_main:
            return
        fault_point("metrics")
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: json_value(v) for k, v in record.items()}) + "\n")
        step = record["step"]
        scalars = tracker_scalars(record)
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        if self.trackers is not None:
            self.trackers.log(scalars, step)
        if step % self.log_every == 0 or step == self.iterations:
            logger.info(
                "step %d/%d  reward %.4f +- %.4f  loss %.3g  clip %.3f  guard %.2f  nfe %d+%d  %.1fs",
                step, self.iterations, record["reward_mean"], record["reward_std"], record.get("loss", float("nan")),
                record.get("clip_fraction", float("nan")), record["guard_fraction"], record["rollout_nfe"],
                record["training_nfe"], record["seconds"],
            )

    def evaluation(self, step: int, result: dict[str, float], grid: torch.Tensor,
                   images: Optional[torch.Tensor] = None, captions: Sequence[str] = ()) -> None:
        """Append one evaluation to eval.jsonl and the trackers (TensorBoard: the grid and the captioned grid;
        others: captioned images)."""
        if not self.is_main:
            return
        if self.writer is not None:
            self.writer.add_image("eval/samples", grid, step)
            if images is not None and captions:
                from treegrpo.trainer.pictures import captioned_grid

                captioned = np.asarray(captioned_grid(images, list(captions)).convert("RGB"))
                self.writer.add_image("eval/samples_captioned", captioned, step, dataformats="HWC")
            for key, value in result.items():
                self.writer.add_scalar(key, value, step)
        if self.trackers is not None:
            self.trackers.log(dict(result), step)
            if images is not None:
                self.trackers.log_images("eval/samples", [hwc_uint8(image) for image in images], list(captions), step)
        with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **result}) + "\n")
        logger.info("eval step %d: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in result.items()))

    def figure(self, tag: str, figure: Any, step: int, caption: str = "") -> None:
        """A matplotlib figure into the trackers (drawn to an image for those other than TensorBoard)."""
        if not self.is_main:
            return
        if self.trackers is not None:
            figure.canvas.draw()
            array = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
            self.trackers.log_images(tag, [array], [caption], step)
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=False)

    def close(self) -> None:
        """Flush and close TensorBoard and the other trackers."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.trackers is not None:
            self.trackers.finish()
            self.trackers = None


def hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """A ``[3, H, W]`` float image in [0, 1] as an ``[H, W, 3]`` uint8 array (what trackers take)."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def reduce_update_stats(stats: dict[str, float], gather: Any) -> dict[str, float]:
    """Mean of the update diagnostics over processes (the non-finite ones left out)."""
    keys = ["policy_loss", "kl", "clip_fraction", "approx_kl", "ratio_mean", "ratio_min", "ratio_max",
            "advantage_mean", "advantage_abs_mean", "grad_norm", "optimizer_steps"]
    gathered = gather(torch.tensor([[stats.get(k, float("nan")) for k in keys]], dtype=torch.float64))
    result: dict[str, float] = {}
    for i, key in enumerate(keys):
        column = gathered[:, i]
        finite = column[torch.isfinite(column)]
        if finite.numel():
            result[key] = float(finite.mean())
    return result


def iteration_record(
    *, step: int, epoch: int, plan: str, scores: torch.Tensor, components: dict[str, torch.Tensor],
    leaf: LeafAdvantages, stats: dict[str, float], rollout_nfe: int, model_calls: int, kl_beta: float, lr: float,
    prompts: int, processes: Processes,
) -> dict[str, Any]:
    """One metrics.jsonl record, global over processes: ``scores`` are every process's leaf scores (gathered),
    ``components`` and the counters this process's (gathered here), ``stats`` its update's (reduced here)."""
    mean, std = mean_std(scores)
    record: dict[str, Any] = {"step": step, "epoch": epoch, "plan": plan, "reward_mean": mean, "reward_std": std}
    for name, values in components.items():
        record[f"reward/{name}_mean"], record[f"reward/{name}_std"] = mean_std(processes.gather(values))
    record["group_std_mean"] = float(leaf.group_std.mean()) if leaf.num_groups else 0.0
    record["guard_fraction"] = leaf.guard_fraction
    reduced = reduce_update_stats(stats, processes.gather)
    record["loss"] = reduced.get("policy_loss", float("nan")) + kl_beta * reduced.get("kl", 0.0)
    record.update(reduced)
    local = [float(rollout_nfe), stats["training_nfe"], float(model_calls), stats["trained_edges"]]
    counts = processes.gather(torch.tensor([local])).sum(0)
    record.update(rollout_nfe=int(counts[0]), training_nfe=int(counts[1]), model_calls=int(counts[2]),
                  trained_edges=int(counts[3]))
    record.update(lr=lr, num_processes=processes.world, prompts=prompts)
    return record


def mean_std(values: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of the finite values (a remote reward's NaN is "not scored"); std 0 for one value."""
    values = values[torch.isfinite(values)]
    return float(values.mean()), float(values.std(unbiased=False)) if values.numel() > 1 else 0.0




def write_debug_dump(path: Path, processes: Processes, parameters: Sequence[torch.Tensor], scores: torch.Tensor,
                     groups: torch.Tensor, leaf: LeafAdvantages, all_scores: torch.Tensor, all_groups: torch.Tensor) -> None:
    """``train.debug_dump``: this process's leaf scores, group ids and the advantages computed from the
    gathered data, with a checksum of the weights (what the multi-process tests compare)."""
    leaves = int(scores.shape[0])
    offset = int(processes.gather(torch.tensor([leaves])).cumsum(0)[processes.rank]) - leaves
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "weights_checksum": torch.stack([full_tensor(p.detach()).double().sum() for p in parameters]).sum().cpu(),
            "scores": scores.cpu(), "groups": groups.cpu(),
            "leaf_advantages": leaf.advantages[offset : offset + leaves].cpu(),
            "all_scores": all_scores.cpu(), "all_groups": all_groups.cpu(),
            "group_mean": leaf.group_mean.cpu(), "group_std": leaf.group_std.cpu(),
        },
        path,
    )
