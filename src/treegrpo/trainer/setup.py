"""What is checked and built before the first iteration: the checks that run before the run folder is
touched, and the parts the trainer is made of (model, rewards, optimizer, generators)."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from treegrpo.config import TrainConfig, TrainerConfig, reward_weights
from treegrpo.data import load_prompt_sets
from treegrpo.engine.methods import steps_ever_trained
from treegrpo.errors import ConfigError
from treegrpo.models.base import Backbone
from treegrpo.models.common import TrainingWindow
from treegrpo.models.loading import chosen_family, read_model_index, resolve_model_path
from treegrpo.models.registry import adapter_class
from treegrpo.runtime import checkpoint as ckpt
from treegrpo.runtime.fsdp import shard_denoiser
from treegrpo.trainer.evaluation import RewardSet
from treegrpo.trainer.run_dir import holds_run, trained_nothing
from treegrpo.trainer.trackers import check_tracker_logins, check_trackers_installed

logger = logging.getLogger(__name__)


def build_rewards(spec: Any, device: torch.device | str) -> RewardSet:
    """Instantiate every configured reward (on ``device`` unless its options name one)."""
    from treegrpo.rewards.multi import MultiReward

    parsed = reward_weights(spec)
    weights = {name: weight for name, (weight, _) in parsed.items()}
    options = {name: {"device": str(device), **opts} for name, (_, opts) in parsed.items()}
    return RewardSet(MultiReward.from_names(weights, options))


def check_model_folder(cfg: TrainerConfig) -> None:
    """``model.path`` is a supported pipeline whose sampler has what the config asks of it (nothing loaded)."""
    model = replace(cfg.model, path=resolve_model_path(cfg.model.path))
    family = chosen_family(model, read_model_index(model))
    adapter = adapter_class(family)
    if cfg.sampling.sde_type not in adapter.sde_types:
        raise ConfigError(
            f"sampling.sde_type {cfg.sampling.sde_type!r} does not exist for {family} models; "
            f"use one of {', '.join(adapter.sde_types)}"
        )
    if cfg.loss.step_reweight and not adapter.flow_matching:
        raise ConfigError(f"loss.step_reweight weights flow-matching steps by their sigma; {family} models use DDIM: set it false")
    if cfg.loss.objective.likelihood_free and not adapter.flow_matching:
        raise ConfigError(f"loss.objective={cfg.loss.objective.value} re-noises samples along a flow-matching path; "
                          f"{family} models are DDIM-sampled diffusion models: use a GRPO preset (ddpo) for them")


def build_judges(cfg: TrainerConfig, device: torch.device | str) -> Optional[RewardSet]:
    """The held-out judges of ``eval.rewards`` (None when unset)."""
    return None if cfg.eval.rewards is None else build_rewards(cfg.eval.rewards, device)


def preflight(cfg: TrainerConfig, device: torch.device | str) -> tuple[RewardSet, Optional[RewardSet]]:
    """Every user input that can be checked before the run folder is touched: prompts, model, rewards.

    Prompts and the model folder are checked without loading a model; the rewards and judges are
    built here (missing weights fail now, before the diffusion model loads) and handed to the trainer.
    """
    prompts = load_prompt_sets(cfg.data, cfg.seed)
    check_model_folder(cfg)
    check_trackers_installed(cfg.train.log_with)
    check_tracker_logins(cfg.train.log_with)
    rewards, judges = build_rewards(cfg.reward, device), build_judges(cfg, device)
    held_out = [str(p) for p in prompts.eval]
    rewards.multi.check_prompts([str(p) for p in prompts.train], "training")
    for scorer in (rewards, judges):
        if scorer is not None:
            scorer.multi.check_prompts(held_out, "held-out")
    return rewards, judges


def check_processes(cfg: TrainerConfig, world: int) -> None:
    """Trees and the global minibatch (``train.parents_per_batch`` or ``edges_per_batch``) must split evenly over ``world`` processes."""
    roots = cfg.data.prompts_per_iteration * cfg.tree.trees
    if roots % world:
        raise ConfigError(
            f"{roots} trees per iteration (data.prompts_per_iteration x tree.trees) do not split over "
            f"{world} processes; make it a multiple of {world}"
        )
    parents, edges = cfg.train.minibatch_sizes()
    key, size = ("train.parents_per_batch", parents) if parents is not None else ("train.edges_per_batch", edges)
    if size is not None and size % world:
        raise ConfigError(
            f"{key}={size} is the minibatch over all processes and does not split over {world} processes; "
            f"make it a multiple of {world}"
        )


def find_resume_checkpoint(run_dir: Path, explicit: bool) -> Optional[Path]:
    """The newest complete checkpoint of ``run_dir``; with an explicit RUN, its absence is an error."""
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None and explicit:
        if holds_run(run_dir) and trained_nothing(run_dir):
            raise ckpt.CheckpointError(
                f"{run_dir} has no checkpoint because no iteration finished there; nothing is lost by starting again: "
                "run the command that started it (it restarts such a folder), or add --overwrite"
            )
        raise ckpt.CheckpointError(
            f"{run_dir} has no complete checkpoint to resume; start it anew with --overwrite or check the path"
        )
    return latest


def seed_everything(seed: int, rank: int) -> None:
    """Seed the global RNGs: torch the same on every process (same model init), Python and numpy per process."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed)


def make_optimizer(parameters: list[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable weights (none is a one-line error)."""
    if not parameters:
        raise ConfigError("the model has no trainable weights; set model.lora.rank >= 1 or model.full_finetune=true")
    return torch.optim.AdamW(parameters, lr=train.lr, betas=(train.betas[0], train.betas[1]), eps=train.adam_eps,
                             weight_decay=train.weight_decay, fused=fused_adamw(parameters, train.fsdp) or None)


def fused_adamw(parameters: list[torch.nn.Parameter], fsdp: bool) -> bool:
    """torch's fused AdamW kernel when every weight is on CUDA and not FSDP-sharded (it halved the step on an H200)."""
    return not fsdp and all(p.is_cuda for p in parameters)


def make_generators(seed: int, rank: int, device: torch.device) -> dict[str, torch.Generator]:
    """The run's generators: initial noise (the same on every process), rollout and minibatch order (per process)."""
    return {
        "noise": torch.Generator().manual_seed(seed),
        "rollout": torch.Generator(device=device).manual_seed(seed + 1_000_003 * (rank + 1)),
        "minibatch": torch.Generator().manual_seed(seed + 2_000_003 * (rank + 1)),
    }


def check_launch(accelerator: Any, cfg: TrainerConfig) -> None:
    """The launch fits the config: trees and minibatch split over the processes; FSDP comes from
    ``train.fsdp``, not accelerate's plugin. (``launch.train`` checks the processes before the run folder
    is touched; this repeats it for a ``Trainer`` built directly.)"""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            "accelerate's FSDP plugin is not used by treegrpo; launch with a multi-process config "
            "(e.g. --config_file configs/accelerate/8gpu_ddp.yaml) and set train.fsdp=true to shard the model "
            "(configs/accelerate/README.md)"
        )
    check_processes(cfg, accelerator.num_processes)


def load_configured_backbone(cfg: TrainerConfig, device: torch.device) -> Backbone:
    """The configured model on ``device`` (with its frozen reference when a full fine-tune has a KL term)."""
    from treegrpo.models.loading import load_backbone

    model = replace(cfg.model, path=resolve_model_path(cfg.model.path))
    with_reference = cfg.loss.kl_beta > 0 and model.full_finetune
    steps = cfg.sampling.steps  # Wan 2.2 loads (and checks) the expert(s) these steps need
    window = TrainingWindow(steps, steps_ever_trained(cfg.tree, steps))
    return load_backbone(model, device=device, with_reference=with_reference, training_window=window)


def shard_if_asked(backbone: Backbone, cfg: TrainerConfig, world: int) -> bool:
    """With ``train.fsdp`` and several processes, shard the denoiser (FSDP2); whether it was sharded."""
    if not cfg.train.fsdp:
        return False
    if world == 1:
        logger.warning("train.fsdp=true with one process: nothing to shard, training unsharded")
        return False
    units = shard_denoiser(backbone.denoiser, cfg.train.mixed_precision)
    logger.info("FSDP: denoiser sharded over %d processes in %d units", world, units)
    return True
