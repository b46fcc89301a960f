"""What a checkpoint holds of a training run, and how the trainer saves and restores it (exact resume).

:class:`TrainingState` names every mutable piece an exact resume needs: trained weights, optimizer
and scheduler, EMA, the prompt sampler and the random generators. :func:`save_checkpoint` and
:func:`load_checkpoint` write and read them through :mod:`treegrpo.runtime.checkpoint` (the folder format);
with FSDP every process takes part in gathering the shards.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from treegrpo.data import PromptSampler
from treegrpo.optim import Ema
from treegrpo.runtime import checkpoint as ckpt
from treegrpo.runtime.fsdp import full_optimizer_state, shard_optimizer_state
from treegrpo.trainer.distributed import Processes

logger = logging.getLogger(__name__)


@dataclass
class TrainingState:
    """The run's mutable pieces a checkpoint captures."""

    denoiser: torch.nn.Module
    optimizer: Any
    """accelerate's wrapper of the torch optimizer (or the optimizer itself)."""
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: Optional[Ema]
    sampler: PromptSampler
    generators: dict[str, torch.Generator]
    sharded: bool
    anchor: Optional[Ema] = None
    """A likelihood-free objective's slow copy of the weights (DiffusionNFT's sampling policy, AWM's KL EMA)."""
    optimizer_steps: int = 0
    """Optimizer steps so far (the clock of the slow copy's decay schedule)."""

    def raw_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer inside accelerate's wrapper."""
        optimizer: torch.optim.Optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        return optimizer


@dataclass(frozen=True)
class ResumePoint:
    """Where a restored run continues: completed iterations, metrics.jsonl lines to keep, the non-finite streak."""

    iteration: int
    metrics_lines: int
    nonfinite_in_a_row: int


def save_checkpoint(run_dir: Path, state: TrainingState, processes: Processes, iteration: int, *,
                    metrics_lines: int, method: str, nonfinite_in_a_row: int, keep: int) -> None:
    """Write the checkpoint of ``iteration`` completed iterations (every process takes part).

    Weights and optimizer state are saved whole; with FSDP every process helps gather them.
    """
    main = processes.is_main
    weights: Optional[dict[str, torch.Tensor]] = None
    optimizer: Optional[dict[str, Any]] = None
    if state.sharded or main:  # gathering shards is a collective: then every process takes part
        weights = ckpt.trained_state(state.denoiser)
        optimizer = full_optimizer_state(state.raw_optimizer()) if state.sharded else state.optimizer.state_dict()
    if main:
        ckpt.begin(run_dir, iteration)
    processes.barrier()
    ckpt.save_rng(ckpt.temp_folder(run_dir, iteration), processes.rank, state.generators)
    processes.barrier()
    if main:
        assert weights is not None and optimizer is not None  # gathered above: the main process always takes part
        record = {
            "iteration": iteration,
            "sampler": state.sampler.state_dict(),
            "metrics_lines": metrics_lines,
            "world_size": processes.world,
            "method": method,
            "nonfinite_in_a_row": nonfinite_in_a_row,
            "optimizer_steps": state.optimizer_steps,
        }
        ckpt.save_main(
            ckpt.temp_folder(run_dir, iteration),
            weights=weights,
            ema=state.ema.state_dict() if state.ema is not None else None,
            anchor=state.anchor.state_dict() if state.anchor is not None else None,
            optimizer=optimizer,
            scheduler=state.scheduler.state_dict(),
            state=record,
        )
        ckpt.finish(run_dir, iteration, keep)
    processes.barrier()


def load_checkpoint(folder: Path, state: TrainingState, processes: Processes, seed: int = 0) -> ResumePoint:
    """Restore weights, optimizer, scheduler, EMA, sampler and RNG from ``folder``; where to continue.

    A checkpoint saved by another number of processes resumes too (``launch.train`` has checked that
    the trees and the global minibatch split over this run's processes): everything global is restored
    as saved; the per-process random streams are re-derived (:func:`rederive_process_streams`).
    """
    record = ckpt.read_state(folder)
    saved_world = int(record["world_size"])
    weights = ckpt.load_weights(folder, "trained")
    if weights is None:
        raise ckpt.CheckpointError(f"{folder} has no trained.safetensors; resume from a complete checkpoint")
    ckpt.load_trained_state(state.denoiser, weights)
    state.optimizer.load_state_dict(ckpt.safe_torch_load(folder / "optimizer.pt"))
    if state.sharded:
        shard_optimizer_state(state.raw_optimizer())
    state.scheduler.load_state_dict(ckpt.safe_torch_load(folder / "scheduler.pt"))
    ema = ckpt.load_weights(folder, "ema")
    if state.ema is not None and ema is not None:
        state.ema.load_state_dict(ema)
    anchor = ckpt.load_weights(folder, "anchor")
    if state.anchor is not None:
        if anchor is None:
            raise ckpt.CheckpointError(f"{folder} has no anchor.safetensors (the slow copy of the weights this "
                                       "objective keeps); resume with the settings the run was saved with")
        state.anchor.load_state_dict(anchor)
    state.optimizer_steps = int(record.get("optimizer_steps", 0))
    state.sampler.load_state_dict(record["sampler"])
    iteration = int(record["iteration"])
    if saved_world == processes.world:
        ckpt.load_rng(folder, processes.rank, state.generators)  # bit-exact: every process its own streams
    else:
        # rank 0's file holds the states every process shares (torch's global RNG, the "noise" generator)
        ckpt.load_rng(folder, 0, state.generators)
        rederive_process_streams(state.generators, seed, processes.rank, iteration)
        if processes.is_main:
            logger.warning("resuming %s saved by %d processes on %d: weights, optimizer, scheduler, EMA, sampler "
                           "and the shared noise stream restored; per-process rollout/minibatch streams re-derived "
                           "from the seed, the iteration and the rank", folder, saved_world, processes.world)
    return ResumePoint(iteration, int(record["metrics_lines"]), int(record.get("nonfinite_in_a_row", 0)))


PER_PROCESS_STREAMS = ("rollout", "minibatch")
"""The generators each process draws from on its own (the others are the same on every process)."""


def rederive_process_streams(generators: dict[str, torch.Generator], seed: int, rank: int, iteration: int) -> None:
    """Seed this process's own streams (rollout, minibatch, Python, numpy) from (seed, iteration, rank).

    Used where a checkpoint's per-process states cannot carry over (another number of processes):
    the streams are new, but deterministic, and differ between processes and iterations.
    """
    for index, name in enumerate(PER_PROCESS_STREAMS):
        if name in generators:
            generators[name].manual_seed((seed + 1_000_003 * (index + 1) * (rank + 1) + 7_919 * iteration) % 2**63)
    random.seed(seed + 104_729 * iteration + rank)
    np.random.seed((seed + 104_729 * iteration + rank) % 2**32)
