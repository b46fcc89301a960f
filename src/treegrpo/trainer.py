"""One trainer for every model and method, single- or multi-process (accelerate).

Each iteration: draw prompts (every process draws the same ones; trees are sharded over
processes), plan the steps (``plan_for_epoch``), draw initial noise, grow the trees
(``rollout_trees``), decode and score the leaves, gather scores and the tree structure from
every process so that group statistics see whole prompt groups, compute edge advantages
(``compute_advantages`` / ``select_edges``) and update the policy (``update_policy``) with an
accelerate-backed :class:`AccelerateLearner`; then EMA, metrics, evaluation and checkpoints.

Run directory contract (``RUN`` = ``output_dir``)::

    RUN/config.yaml                 the resolved config
    RUN/metrics.jsonl               one JSON object per iteration: step, epoch, plan, reward_mean/std,
                                    reward/<name>_mean/std, group_std_mean, guard_fraction, loss,
                                    policy_loss, clip_fraction, approx_kl, ratio_mean/min/max,
                                    grad_norm, trained_edges, rollout_nfe, training_nfe, model_calls,
                                    seconds (and rollout/reward/update seconds), lr, num_processes
    RUN/eval.jsonl                  one JSON object per evaluation: step, eval/<name>, eval/score
    RUN/tensorboard/                the same scalars, sample grids, tree pictures
    RUN/samples/step-NNNNNN.png     evaluation grids (step 0 = before training)
    RUN/trees/step-NNNNNN.png       one tree of the latest rollout: the decoded image at every node
    RUN/checkpoints/step-NNNNNN/    see treegrpo.checkpoint (exact resume)
    RUN/final/                      the trained weights via backbone.save_trained (EMA when on)

An output folder holding another run's files is refused unless resuming or overwriting; every
input (prompts, model folder, reward weights) is checked before the folder is touched.

Reliability: SIGTERM and SIGINT finish the current iteration, save a checkpoint and raise
:class:`TrainingInterrupted` (the CLI exits 128 + signal number); a second signal quits at once.
A non-finite reward, rollout log-prob, ratio, loss or gradient skips the update it would poison
(``nonfinite_skips`` / ``nonfinite`` in metrics.jsonl); ``train.max_nonfinite_in_a_row`` bad
iterations in a row stop the run with :class:`~treegrpo.guards.NonFiniteError`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from treegrpo import checkpoint as ckpt
from treegrpo.config import ConfigError, TrainerConfig, reward_weights, to_yaml
from treegrpo.data import PromptSampler, PromptSets, load_prompt_sets
from treegrpo.engine import UpdateConfig, compute_advantages, select_edges, update_policy
from treegrpo.faults import fault_point
from treegrpo.guards import NonFiniteGuard, log_prob_findings, reward_findings, stats_findings
from treegrpo.methods import plan_for_epoch
from treegrpo.models.base import Backbone, ModelFn
from treegrpo.rollout import TreeRollout, rollout_trees
from treegrpo.schedule import ODE, Plan, describe
from treegrpo.sharding import clip_grad_norm, full_optimizer_state, full_state_dict, full_tensor, shard_denoiser, shard_optimizer_state

logger = logging.getLogger(__name__)

RUN_FILES: tuple[str, ...] = (
    "config.yaml", "metrics.jsonl", "eval.jsonl", "tensorboard", "samples", "trees", "checkpoints", "final", "debug",
)
"""What a run writes into its folder (and what ``--overwrite`` removes)."""

BUILTIN_MODELS: dict[str, str] = {"builtin:shapes": "base"}
"""``model.path`` aliases of pipelines shipped inside the package (``treegrpo/demo/<folder>``)."""


# ----------------------------------------------------------------------------- run folder


class RunDirError(ConfigError):
    """The output folder cannot be used as asked; the message names the fix."""


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds files of a run."""
    return folder.is_dir() and any((folder / name).exists() for name in RUN_FILES)


def prepare_run_dir(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder; refuse another run's files unless resuming or overwriting."""
    if holds_run(folder) and not resume:
        if not overwrite:
            raise RunDirError(
                f"{folder} already holds a run; pass --resume {folder} to continue it, --overwrite to replace it, "
                "or choose another --output-dir"
            )
        for name in RUN_FILES:
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def resolve_model_path(path: str) -> str:
    """``builtin:shapes`` -> the demo base shipped in the package; anything else unchanged."""
    if path not in BUILTIN_MODELS:
        return path
    from importlib.resources import files

    folder = Path(str(files("treegrpo.demo"))) / BUILTIN_MODELS[path]
    if not (folder / "model_index.json").is_file():
        raise ConfigError(
            f"model.path {path} needs the shipped demo base at {folder}, which is missing; "
            "reinstall treegrpo or set model.path to a pipeline folder"
        )
    return str(folder)


# ----------------------------------------------------------------------------- rewards


@dataclass
class RewardSet:
    """The configured rewards (a :class:`~treegrpo.rewards.multi.MultiReward`): score ``sum_j w_j R_j``."""

    multi: Any

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted score [B], each component [B]) as float32 CPU tensors."""
        components = self.multi.components(images, list(prompts))
        return self.multi.combine(components), components


def build_rewards(spec: Any, device: torch.device | str) -> RewardSet:
    """Instantiate every configured reward (on ``device`` unless its options name one)."""
    from treegrpo.rewards.multi import MultiReward

    parsed = reward_weights(spec)
    weights = {name: weight for name, (weight, _) in parsed.items()}
    options = {name: {"device": str(device), **opts} for name, (_, opts) in parsed.items()}
    return RewardSet(MultiReward.from_names(weights, options))


# ----------------------------------------------------------------------------- optimisation


class AccelerateLearner:
    """The engine's Learner through accelerate: backward (scaled / synced), clip, AdamW step.

    A non-finite loss or gradient norm skips that optimizer step on every process (the decision
    is shared, so DDP replicas stay equal) and is recorded in ``findings`` / ``skipped``.
    """

    def __init__(self, accelerator: Any, optimizer: Any, parameters: list[torch.nn.Parameter], max_grad_norm: float,
                 sharded: bool = False):
        self.accelerator = accelerator
        self.optimizer = optimizer
        self.parameters = parameters
        self.max_grad_norm = max_grad_norm
        self.sharded = sharded
        self.findings: list[str] = []
        self.skipped = 0
        self._minibatch = 0
        self._bad_loss = False

    def reset(self) -> None:
        """Forget the previous iteration's findings."""
        self.findings, self.skipped, self._minibatch, self._bad_loss = [], 0, 0, False

    def backward(self, loss: torch.Tensor) -> None:
        """Backward through the (possibly DDP-wrapped) denoiser; DDP all-reduces here (even for a bad loss)."""
        self._minibatch += 1
        if not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = True
            self.findings.append(f"loss: {float(loss.detach().float().sum())} in minibatch {self._minibatch}")
        self.accelerator.backward(loss)

    def step(self) -> float:
        """Clip and step, unless a loss or the gradient norm is non-finite anywhere; zero grads."""
        norm = self._clip()
        scaled = self.accelerator.scaler is not None  # fp16: the grad scaler skips inf steps itself
        bad_norm = not math.isfinite(norm) and not scaled
        if self._shared_flag(self._bad_loss or bad_norm):
            if bad_norm:
                self.findings.append(f"grad_norm: {norm} at optimizer step after minibatch {self._minibatch}")
            self.skipped += 1
        else:
            self.optimizer.step()
            fault_point("update")
        self._bad_loss = False
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _shared_flag(self, flag: bool) -> bool:
        """True when ``flag`` is set on any process."""
        return any_process(self.accelerator, flag)

    def _clip(self) -> float:
        """Gradient norm after clipping to ``max_grad_norm`` (0 = measure only)."""
        limit = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        if self.sharded:
            return clip_grad_norm(self.parameters, limit)
        return float(self.accelerator.clip_grad_norm_(self.parameters, limit))


def any_process(accelerator: Any, flag: bool) -> bool:
    """True when ``flag`` is set on any process (a collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.gather(value).max() > 0)


# ----------------------------------------------------------------------------- signals


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT stopped the run at an iteration boundary, after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[Path]) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        saved = f"checkpoint {checkpoint} saved" if checkpoint is not None else "no iteration finished, nothing saved"
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; {saved}; "
            "continue with `treegrpo train CONFIG --resume auto` (same output dir)"
        )


class StopSignals:
    """The first SIGTERM / SIGINT asks the loop to stop at the next iteration boundary; a second quits now."""

    SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: Optional[int] = None

    def _handle(self, signum: int, frame: Any) -> None:
        """Remember the first signal; re-deliver a second one with the default action."""
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        logger.warning(
            "received %s: finishing this iteration, then saving a checkpoint (send it again to quit without saving)",
            signal.Signals(signum).name,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Inside, SIGTERM / SIGINT are caught (main thread only; elsewhere nothing changes)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base lr after ``n`` scheduler steps (one per iteration)."""

    def factor(n: int) -> float:
        if warmup > 0 and n < warmup:
            return (n + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (n - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Ema:
    """Exponential moving average of the trained weights (fp32 shadows)."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.parameters = parameters
        self.decay = decay
        self.shadow = {name: p.detach().to(torch.float32).clone() for name, p in parameters.items()}

    @torch.no_grad()
    def update(self) -> None:
        """``shadow = decay * shadow + (1 - decay) * weight``."""
        for name, parameter in self.parameters.items():
            self.shadow[name].lerp_(parameter.detach().to(torch.float32), 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the model holds the EMA weights; the trained weights come back after."""
        saved = {name: p.detach().clone() for name, p in self.parameters.items()}
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.shadow[name].to(parameter.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(saved[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of the shadows."""
        return {name: value.to("cpu").contiguous() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore saved shadows."""
        for name in self.shadow:
            self.shadow[name] = state[name].to(self.shadow[name].device, torch.float32).clone()


class _Routed:
    """The backbone's denoiser seen through a wrapper (DDP): calls go to the wrapper, attributes to the module."""

    def __init__(self, wrapper: torch.nn.Module, module: torch.nn.Module) -> None:
        object.__setattr__(self, "_wrapper", wrapper)
        object.__setattr__(self, "_module", module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@contextlib.contextmanager
def routed_through(backbone: Backbone, wrapper: torch.nn.Module) -> Iterator[None]:
    """While inside, the backbone's model_fn calls ``wrapper`` (so DDP sees forward and backward)."""
    module = backbone.denoiser
    if wrapper is module:
        yield
        return
    backbone.denoiser = _Routed(wrapper, module)  # type: ignore[assignment]
    try:
        yield
    finally:
        backbone.denoiser = module


def reference_model_fn(backbone: Backbone, conditioning: Any, guidance_scale: float) -> ModelFn:
    """A model_fn that evaluates the frozen reference policy (for the KL term)."""
    inner = backbone.model_fn(conditioning, guidance_scale)

    def fn(latents: torch.Tensor, step_index: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), backbone.reference():
            return inner(latents, step_index, cond_index)

    return fn


def make_stepper(backbone: Backbone, steps: int, noise_level: float, sde_type: str) -> Any:
    """``backbone.stepper`` with ``sde_type`` where the backbone accepts it."""
    if "sde_type" in inspect.signature(backbone.stepper).parameters:
        return backbone.stepper(steps, noise_level, sde_type=sde_type)  # type: ignore[call-arg]
    return backbone.stepper(steps, noise_level)


# ----------------------------------------------------------------------------- distributed advantages


def _offset_ids(ids: torch.Tensor, offset: int) -> torch.Tensor:
    """Shift non-negative ids by ``offset`` (-1 stays -1)."""
    return torch.where(ids >= 0, ids + offset, ids)


def global_structure(
    rollout: TreeRollout, root_group: torch.Tensor, rank: int, gather: Callable[[torch.Tensor], torch.Tensor]
) -> TreeRollout:
    """The tree structure of every process's rollout as one latent-free TreeRollout.

    Ids are offset by process; ``node_cond`` becomes the global prompt-group id of each node, so
    ``leaf_cond`` is the group of each leaf. Every process must hold the same number of trees.
    """
    nodes, parents, trees = rollout.num_nodes, int(rollout.parent_step.shape[0]), rollout.num_trees

    def g(values: torch.Tensor) -> torch.Tensor:
        return gather(values.contiguous())

    node_group = root_group[rollout.node_tree]
    empty = torch.empty(0)
    return TreeRollout(
        node_parent=g(_offset_ids(rollout.node_parent, rank * nodes)),
        node_depth=g(rollout.node_depth),
        node_tree=g(rollout.node_tree + rank * trees),
        node_cond=g(node_group),
        node_step=g(rollout.node_step),
        parent_latents=empty,
        parent_step=g(rollout.parent_step),
        parent_cond=g(node_group[rollout.parent_node]),
        parent_node=g(rollout.parent_node + rank * nodes),
        edge_parent_slot=g(rollout.edge_parent_slot + rank * parents),
        edge_child=g(rollout.edge_child + rank * nodes),
        child_latents=empty,
        edge_log_prob=g(rollout.edge_log_prob.to(torch.float32)),
        leaf_node=g(rollout.leaf_node + rank * nodes),
        leaf_latents=empty,
        nfe=rollout.nfe,
        model_calls=rollout.model_calls,
        root_latents=torch.empty(g(torch.zeros(trees, device=rollout.node_tree.device)).shape[0], 0),
    )


def balance_parents(
    rollout: TreeRollout, mask: torch.Tensor, advantages: torch.Tensor, target: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add zero-advantage parents until ``target`` parents have selected edges.

    Every process then runs the same number of minibatches, so DDP's collectives line up.
    """
    slots = rollout.edge_parent_slot
    have = torch.zeros(rollout.parent_step.shape[0], dtype=torch.bool, device=slots.device)
    have[slots[mask]] = True
    missing = target - int(have.sum())
    if missing <= 0:
        return mask, advantages
    extra = torch.nonzero(~have).squeeze(1)[:missing]
    padded = torch.zeros_like(have)
    padded[extra] = True
    added = padded[slots]
    return mask | added, advantages.masked_fill(added, 0.0)


# ----------------------------------------------------------------------------- images


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """``[N, 3, H, W]`` -> one ``[3, rows * H, columns * W]`` grid (2-pixel gaps)."""
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    grid = torch.ones(c, rows * (h + 2), columns * (w + 2))
    for i in range(n):
        r, k = divmod(i, columns)
        grid[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, k * (w + 2) + 1 : k * (w + 2) + 1 + w] = images[i].cpu()
    return grid


def save_png(image: torch.Tensor, file: Path) -> None:
    """Save a ``[3, H, W]`` float image in [0, 1] as PNG."""
    from PIL import Image

    file.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(file)


def tree_nodes(rollout: TreeRollout, tree: int) -> tuple[list[int], dict[int, torch.Tensor]]:
    """Node ids of one tree and the latents of each (roots and trained children)."""
    nodes = torch.nonzero(rollout.node_tree == tree).squeeze(1).tolist()
    latents = {tree: rollout.root_latents[tree]}
    for edge, child in enumerate(rollout.edge_child.tolist()):
        if rollout.node_tree[child] == tree:
            latents[child] = rollout.child_latents[edge]
    return nodes, latents


def tree_figure(rollout: TreeRollout, decode: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor, tree: int = 0) -> Any:
    """A matplotlib figure of one tree: decoded node images by depth, final leaf images below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes, latents = tree_nodes(rollout, tree)
    images = dict(zip(nodes, decode(torch.stack([latents[n] for n in nodes]))))
    leaves = torch.nonzero(rollout.leaf_tree == tree).squeeze(1).tolist()
    finals = decode(rollout.leaf_latents[leaves])
    parent = rollout.node_parent.tolist()
    depth = rollout.node_depth.tolist()
    children: dict[int, list[int]] = {n: [] for n in nodes}
    for n in nodes:
        if parent[n] >= 0:
            children[parent[n]].append(n)
    x: dict[int, float] = {}
    order = [int(rollout.leaf_node[i]) for i in leaves]
    for i, n in enumerate(order):
        x[n] = float(i)
    for n in sorted(nodes, key=lambda m: -depth[m]):
        if n not in x:
            x[n] = float(np.mean([x[c] for c in children[n]])) if children[n] else 0.0
    max_depth = max(depth[n] for n in nodes)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(order)), 1.4 * (max_depth + 2)))
    size = 0.42
    for n in nodes:
        if parent[n] >= 0:
            ax.plot([x[parent[n]], x[n]], [-depth[parent[n]], -depth[n]], color="0.6", lw=0.8, zorder=0)
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
    ax.set_title("tree 0: nodes by depth (rows), final images and scores (bottom)", fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- evaluation


def ode_plan(steps: int) -> Plan:
    """All steps deterministic: one final image per root."""
    return tuple(ODE for _ in range(steps))


@torch.no_grad()
def evaluate(
    backbone: Backbone, rewards: RewardSet, prompts: Sequence[str], *, steps: int, guidance_scale: float,
    seed: int, max_batch: int,
) -> tuple[dict[str, float], torch.Tensor]:
    """ODE samples (fixed seeded noise) of ``prompts`` scored by every reward: (means, images)."""
    generator = torch.Generator().manual_seed(seed + 7919)
    stepper = backbone.stepper(steps, 0.0)
    noise = backbone.initial_noise(len(prompts), generator)
    conditioning = backbone.encode_prompts(list(prompts))
    cond = torch.arange(len(prompts), device=noise.device)
    rollout = rollout_trees(backbone.model_fn(conditioning, guidance_scale), stepper, ode_plan(steps), noise, cond, max_batch=max_batch)
    images = backbone.decode(rollout.leaf_latents)
    total, components = rewards(images, list(prompts))
    result = {f"eval/{name}": float(values.mean()) for name, values in components.items()}
    result["eval/score"] = float(total.mean())
    return result, images


# ----------------------------------------------------------------------------- the trainer


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std(unbiased=False)) if values.numel() > 1 else 0.0


def _json_value(value: Any) -> Any:
    """Finite floats as is; NaN / inf as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class IterationResult:
    """What one iteration leaves behind (for logging and pictures)."""

    metrics: dict[str, Any]
    rollout: TreeRollout
    scores: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """The RL loop over one backbone, one method and one reward set (see the module docstring)."""

    def __init__(
        self,
        cfg: TrainerConfig,
        *,
        run_dir: Optional[Path] = None,
        resume_from: Optional[Path] = None,
        backbone: Optional[Backbone] = None,
        rewards: Optional[RewardSet] = None,
        accelerator: Any = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.output_dir)
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=cfg.train.find_unused_parameters)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.train.mixed_precision, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available()
        )
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self._check_sharding()
        self.prompts: PromptSets = load_prompt_sets(cfg.data, cfg.seed)
        self.sampler = PromptSampler(len(self.prompts.train), cfg.seed)
        self._seed_everything()
        self.backbone = backbone or self._load_backbone()
        self.rewards = rewards or build_rewards(cfg.reward, self.accelerator.device)
        self.sharded = self._shard()
        self.wrapped = self.backbone.denoiser if self.sharded else self.accelerator.prepare(self.backbone.denoiser)
        self.parameters = self.backbone.trainable_parameters()
        self.named = {n: p for n, p in self.backbone.denoiser.named_parameters() if p.requires_grad}
        self.optimizer = self.accelerator.prepare(self._make_optimizer())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self._raw_optimizer(),
            lr_lambda(cfg.train.lr_schedule, cfg.train.warmup, cfg.train.iterations),
        )
        self.learner = AccelerateLearner(self.accelerator, self.optimizer, self.parameters, cfg.train.max_grad_norm, self.sharded)
        self.ema = Ema(self.named, cfg.train.ema) if cfg.train.ema > 0 else None
        self.generators = self._make_generators()
        self.update_cfg = UpdateConfig(cfg.train.inner_epochs, cfg.train.parents_per_batch, cfg.train.grad_accum)
        self.start_iteration = 0
        self.metrics_lines = 0
        self.writer: Any = None
        self.last: Optional[IterationResult] = None
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite_in_a_row)
        self.stop = StopSignals()
        if resume_from is not None:
            self._resume(resume_from)

    # ------------------------------------------------------------------ set-up

    def _check_sharding(self) -> None:
        """Trees must split evenly over processes; FSDP comes from ``train.fsdp``, not accelerate's plugin."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise ConfigError(
                "accelerate's FSDP plugin is not used by treegrpo; launch with a multi-process config "
                "(e.g. --config_file configs/accelerate/8gpu_ddp.yaml) and set train.fsdp=true to shard the model "
                "(configs/accelerate/README.md)"
            )
        roots = self.cfg.data.prompts_per_iteration * self.cfg.tree.trees
        if roots % self.world:
            raise ConfigError(
                f"{roots} trees per iteration (data.prompts_per_iteration x tree.trees) do not split over "
                f"{self.world} processes; make it a multiple of {self.world}"
            )

    def _shard(self) -> bool:
        """With ``train.fsdp`` and several processes, shard the denoiser (FSDP2); whether it was sharded."""
        if not self.cfg.train.fsdp:
            return False
        if self.world == 1:
            logger.warning("train.fsdp=true with one process: nothing to shard, training unsharded")
            return False
        units = shard_denoiser(self.backbone.denoiser, self.cfg.train.mixed_precision)
        logger.info("FSDP: denoiser sharded over %d processes in %d units", self.world, units)
        return True

    def _seed_everything(self) -> None:
        """Seed the global RNGs (same model init on every process)."""
        random.seed(self.cfg.seed + self.rank)
        np.random.seed((self.cfg.seed + self.rank) % 2**32)
        torch.manual_seed(self.cfg.seed)

    def _load_backbone(self) -> Backbone:
        """The configured model on this process's device."""
        from dataclasses import replace

        from treegrpo.models.loading import load_backbone

        model = replace(self.cfg.model, path=resolve_model_path(self.cfg.model.path))
        with_reference = self.cfg.loss.kl_beta > 0 and model.full_finetune
        return load_backbone(model, device=self.accelerator.device, with_reference=with_reference)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable weights."""
        if not self.parameters:
            raise ConfigError("the model has no trainable weights; set model.lora.rank >= 1 or model.full_finetune=true")
        t = self.cfg.train
        return torch.optim.AdamW(self.parameters, lr=t.lr, betas=(t.betas[0], t.betas[1]), eps=t.adam_eps, weight_decay=t.weight_decay)

    def _make_generators(self) -> dict[str, torch.Generator]:
        """Noise (shared by all processes), rollout and minibatch generators (per process)."""
        seed, rank = self.cfg.seed, self.rank
        device = self.accelerator.device
        return {
            "noise": torch.Generator().manual_seed(seed),
            "rollout": torch.Generator(device=device).manual_seed(seed + 1_000_003 * (rank + 1)),
            "minibatch": torch.Generator().manual_seed(seed + 2_000_003 * (rank + 1)),
        }

    # ------------------------------------------------------------------ resume / checkpoints

    def _resume(self, folder: Path) -> None:
        """Restore weights, optimizer, scheduler, EMA, sampler, iteration and RNG from a checkpoint."""
        state = ckpt.read_state(folder)
        if state["world_size"] != self.world:
            raise ckpt.CheckpointError(
                f"{folder} was saved by {state['world_size']} processes but this run has {self.world}; "
                "resume with the same number of processes"
            )
        weights = ckpt.load_weights(folder, "trained")
        assert weights is not None, f"{folder} has no trained.safetensors"
        ckpt.load_trained_state(self.backbone.denoiser, weights)
        self.optimizer.load_state_dict(ckpt.safe_torch_load(folder / "optimizer.pt"))
        if self.sharded:
            shard_optimizer_state(self._raw_optimizer())
        self.scheduler.load_state_dict(ckpt.safe_torch_load(folder / "scheduler.pt"))
        ema = ckpt.load_weights(folder, "ema")
        if self.ema is not None and ema is not None:
            self.ema.load_state_dict(ema)
        self.sampler.load_state_dict(state["sampler"])
        self.start_iteration = int(state["iteration"])
        self.metrics_lines = int(state["metrics_lines"])
        self.guard.in_a_row = int(state.get("nonfinite_in_a_row", 0))
        ckpt.load_rng(folder, self.rank, self.generators)

    def _raw_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer inside accelerate's wrapper."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def save_checkpoint(self, iteration: int) -> None:
        """Write the checkpoint of ``iteration`` completed iterations (all processes take part).

        Weights and optimizer state are saved whole; with FSDP every process helps gather them.
        """
        acc = self.accelerator
        weights = optimizer = None
        if self.sharded or self.is_main:  # gathering shards is a collective: then every process takes part
            weights = ckpt.trained_state(self.backbone.denoiser)
            optimizer = full_optimizer_state(self._raw_optimizer()) if self.sharded else self.optimizer.state_dict()
        if self.is_main:
            ckpt.begin(self.run_dir, iteration)
        acc.wait_for_everyone()
        ckpt.save_rng(ckpt.temp_folder(self.run_dir, iteration), self.rank, self.generators)
        acc.wait_for_everyone()
        if self.is_main:
            state = {
                "iteration": iteration,
                "sampler": self.sampler.state_dict(),
                "metrics_lines": self.metrics_lines,
                "world_size": self.world,
                "method": self.cfg.method,
                "nonfinite_in_a_row": self.guard.in_a_row,
            }
            ckpt.save_main(
                ckpt.temp_folder(self.run_dir, iteration),
                weights=weights,
                ema=self.ema.state_dict() if self.ema is not None else None,
                optimizer=optimizer,
                scheduler=self.scheduler.state_dict(),
                state=state,
            )
            ckpt.finish(self.run_dir, iteration, self.cfg.train.keep_checkpoints)
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ one iteration

    def _draw(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """This process's prompts, local conditioning row of each local root, global group of each root."""
        cfg = self.cfg
        indices = self.sampler.draw(cfg.data.prompts_per_iteration)
        texts = [self.prompts.train[i] for i in indices]
        roots = len(texts) * cfg.tree.trees
        per_process = roots // self.world
        root_group = torch.arange(len(texts)).repeat_interleave(cfg.tree.trees)[self.rank * per_process : (self.rank + 1) * per_process]
        groups, root_cond = torch.unique(root_group, return_inverse=True)
        return [texts[int(g)] for g in groups], root_cond, root_group

    def _noise(self) -> torch.Tensor:
        """Initial noise of this process's roots (drawn for all roots, so it does not depend on sharding)."""
        roots = self.cfg.data.prompts_per_iteration * self.cfg.tree.trees
        per_process = roots // self.world
        noise = self.backbone.initial_noise(roots, self.generators["noise"])
        return noise[self.rank * per_process : (self.rank + 1) * per_process]

    def _progress(self, iteration: int) -> Any:
        """A tqdm bar over denoising steps (main process, when enabled)."""
        from tqdm.auto import tqdm

        enabled = self.cfg.train.progress and self.is_main
        return tqdm(total=self.cfg.sampling.steps, desc=f"iter {iteration + 1} rollout", leave=False, disable=not enabled)

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate ``values`` from every process (rank order) on the CPU."""
        if self.world == 1:
            return values.cpu()
        return self.accelerator.gather(values.to(self.accelerator.device)).cpu()

    def run_iteration(self, iteration: int) -> IterationResult:
        """Rollout, scoring, advantages and update for one iteration; returns its metrics."""
        cfg, device = self.cfg, self.accelerator.device
        start = time.time()
        plan = plan_for_epoch(cfg.tree, cfg.sampling.steps, iteration, cfg.seed)
        texts, root_cond, root_group = self._draw()
        noise = self._noise()
        conditioning = self.backbone.encode_prompts(texts)
        stepper = make_stepper(self.backbone, cfg.sampling.steps, cfg.sampling.noise_level, cfg.sampling.sde_type)
        self.backbone.denoiser.eval()
        with self._progress(iteration) as bar:
            rollout = rollout_trees(
                self.backbone.model_fn(conditioning, cfg.sampling.guidance_scale), stepper, plan, noise.to(device),
                root_cond.to(device), max_batch=cfg.sampling.max_batch, generator=self.generators["rollout"],
                on_step=lambda step, width: bar.update(1),
            )
        fault_point("rollout")
        rollout_seconds = time.time() - start
        images = self.backbone.decode(rollout.leaf_latents)
        leaf_prompts = [texts[int(i)] for i in rollout.leaf_cond]
        scores, components = self.rewards(images, leaf_prompts)
        fault_point("reward")
        reward_seconds = time.time() - start - rollout_seconds

        structure = global_structure(_cpu(rollout), root_group, self.rank, self._gather)
        all_scores = self._gather(scores)
        findings = log_prob_findings(rollout.edge_log_prob, rollout.parent_step[rollout.edge_parent_slot])
        findings += reward_findings(components, leaf_prompts)
        skip = any_process(self.accelerator, bool(findings) or not bool(torch.isfinite(all_scores).all()))
        if skip and not findings:
            findings = ["reward: non-finite scores on another process"]
        safe_scores = torch.nan_to_num(all_scores, nan=0.0, posinf=0.0, neginf=0.0) if skip else all_scores
        advantages = compute_advantages(structure, safe_scores, structure.leaf_cond, cfg.advantage)

        update_start = time.time()
        self.learner.reset()
        if skip:
            stats: dict[str, float] = {"training_nfe": 0.0, "trained_edges": 0.0, "optimizer_steps": 0.0}
        else:
            stats = self._update(iteration, rollout, structure, advantages, all_scores, scores, root_group, conditioning, stepper)
            findings += self.learner.findings + stats_findings(stats)
        lr = float(self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        if self.ema is not None and not skip:
            self.ema.update()
        update_seconds = time.time() - update_start

        metrics = self._metrics(iteration, plan, all_scores, components, advantages, stats, rollout, lr)
        metrics.update(
            seconds=time.time() - start, rollout_seconds=rollout_seconds, reward_seconds=reward_seconds,
            update_seconds=update_seconds,
        )
        metrics.update(self.guard.end_iteration(iteration + 1, findings, 1 if skip else self.learner.skipped))
        return IterationResult(metrics, rollout, scores)

    def _update(
        self, iteration: int, rollout: TreeRollout, structure: TreeRollout, advantages: Any, all_scores: torch.Tensor,
        scores: torch.Tensor, root_group: torch.Tensor, conditioning: Any, stepper: Any,
    ) -> dict[str, float]:
        """Select and balance this process's edges, then run the clipped update; returns its stats."""
        cfg, device = self.cfg, self.accelerator.device
        kl_on = cfg.loss.kl_beta > 0
        edges = int(rollout.edge_child.shape[0])
        mine = slice(self.rank * edges, (self.rank + 1) * edges)
        edge_adv = advantages.edge[mine].to(device)
        mask = select_edges(structure, advantages.edge, cfg.advantage, kl_on)[mine].to(device)
        parents = torch.zeros(rollout.parent_step.shape[0], dtype=torch.bool, device=device)
        parents[rollout.edge_parent_slot[mask]] = True
        target = int(self._gather(parents.sum().reshape(1)).max())
        mask, edge_adv = balance_parents(rollout, mask, edge_adv, target)
        if cfg.train.debug_dump:
            self._dump(iteration, scores, root_group[rollout.leaf_tree.cpu()], advantages, all_scores, structure)
        self.backbone.denoiser.train()
        with routed_through(self.backbone, self.wrapped):
            train_fn = self.backbone.model_fn(conditioning, cfg.sampling.guidance_scale)
            reference_fn = reference_model_fn(self.backbone, conditioning, cfg.sampling.guidance_scale) if kl_on else None
            stats = update_policy(
                train_fn, stepper, rollout, edge_adv, mask, self.learner, cfg.loss, self.update_cfg,
                reference_fn=reference_fn, generator=self.generators["minibatch"],
            )
        self.backbone.denoiser.eval()
        return stats

    def _metrics(
        self, iteration: int, plan: Plan, all_scores: torch.Tensor, components: dict[str, torch.Tensor],
        advantages: Any, stats: dict[str, float], rollout: TreeRollout, lr: float,
    ) -> dict[str, Any]:
        """One metrics.jsonl record (global over processes)."""
        mean, std = _mean_std(all_scores)
        record: dict[str, Any] = {"step": iteration + 1, "epoch": iteration, "plan": describe(plan),
                                  "reward_mean": mean, "reward_std": std}
        for name, values in components.items():
            record[f"reward/{name}_mean"], record[f"reward/{name}_std"] = _mean_std(self._gather(values))
        leaf = advantages.leaf
        record["group_std_mean"] = float(leaf.group_std.mean()) if leaf.num_groups else 0.0
        record["guard_fraction"] = leaf.guard_fraction
        reduced = self._reduce_stats(stats)
        record["loss"] = reduced.get("policy_loss", float("nan")) + self.cfg.loss.kl_beta * reduced.get("kl", 0.0)
        record.update(reduced)
        counts = self._gather(torch.tensor([float(rollout.nfe), stats["training_nfe"], float(rollout.model_calls), stats["trained_edges"]]).reshape(1, 4)).sum(0)
        record.update(rollout_nfe=int(counts[0]), training_nfe=int(counts[1]), model_calls=int(counts[2]), trained_edges=int(counts[3]))
        record.update(lr=lr, num_processes=self.world, prompts=self.cfg.data.prompts_per_iteration)
        return record

    def _reduce_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Mean of the update diagnostics over processes (keys that every process has)."""
        keys = ["policy_loss", "kl", "clip_fraction", "approx_kl", "ratio_mean", "ratio_min", "ratio_max",
                "advantage_mean", "advantage_abs_mean", "grad_norm", "optimizer_steps"]
        values = torch.tensor([[stats.get(k, float("nan")) for k in keys]], dtype=torch.float64)
        gathered = self._gather(values)
        result = {}
        for i, key in enumerate(keys):
            column = gathered[:, i]
            finite = column[torch.isfinite(column)]
            if finite.numel():
                result[key] = float(finite.mean())
        return result

    def _dump(self, iteration: int, scores: torch.Tensor, groups: torch.Tensor, advantages: Any,
              all_scores: torch.Tensor, structure: TreeRollout) -> None:
        """Per-process leaf scores, group ids and the advantages computed from the gathered data."""
        folder = self.run_dir / "debug"
        folder.mkdir(parents=True, exist_ok=True)
        leaves = int(scores.shape[0])
        mine = slice(self.rank * leaves, (self.rank + 1) * leaves)
        torch.save(
            {
                "weights_checksum": torch.stack([full_tensor(p.detach()).double().sum() for p in self.parameters]).sum().cpu(),
                "scores": scores.cpu(), "groups": groups.cpu(), "leaf_advantages": advantages.leaf.advantages[mine].cpu(),
                "all_scores": all_scores.cpu(), "all_groups": structure.leaf_cond.cpu(),
                "group_mean": advantages.leaf.group_mean.cpu(), "group_std": advantages.leaf.group_std.cpu(),
            },
            folder / f"step-{iteration + 1:06d}-rank{self.rank}.pt",
        )

    # ------------------------------------------------------------------ logging, evaluation

    def _open_writer(self) -> None:
        """TensorBoard writer (main process); events after a resumed step are purged."""
        if not self.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        purge = self.start_iteration + 1 if self.start_iteration else None
        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)

    def _truncate_metrics(self) -> None:
        """Drop metrics lines written after the checkpoint being resumed, and torn last lines (main process)."""
        if not self.is_main:
            return
        file = self.run_dir / "metrics.jsonl"
        if file.exists():
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[: self.metrics_lines]
            write_atomic(file, "".join(line for line in lines if line.endswith("\n")))
        file = self.run_dir / "eval.jsonl"
        if file.exists():
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            write_atomic(file, "".join(line for line in lines if _eval_step(line) <= self.start_iteration))

    def _log(self, record: dict[str, Any]) -> None:
        """Append to metrics.jsonl, TensorBoard and the log (main process)."""
        self.metrics_lines += 1
        if not self.is_main:
            return
        fault_point("metrics")
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
        step = record["step"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(float(value)):
                self.writer.add_scalar(key, value, step)
        if step % self.cfg.train.log_every == 0 or step == self.cfg.train.iterations:
            logger.info(
                "step %d/%d  reward %.4f +- %.4f  loss %.3g  clip %.3f  guard %.2f  nfe %d+%d  %.1fs",
                step, self.cfg.train.iterations, record["reward_mean"], record["reward_std"], record.get("loss", float("nan")),
                record.get("clip_fraction", float("nan")), record["guard_fraction"], record["rollout_nfe"],
                record["training_nfe"], record["seconds"],
            )

    @contextlib.contextmanager
    def _eval_weights(self) -> Iterator[None]:
        """EMA weights when EMA is on, else the trained ones."""
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            yield

    def evaluate_and_draw(self, step: int) -> Optional[dict[str, float]]:
        """Held-out evaluation, sample grid and tree picture (main process); returns eval metrics.

        With FSDP every process runs the evaluation's forwards (they are collectives); only the
        main process writes.
        """
        self.accelerator.wait_for_everyone()
        result = None
        if (self.is_main or self.sharded) and self.prompts.eval:
            cfg = self.cfg
            with self._eval_weights():
                result, images = evaluate(
                    self.backbone, self.rewards, self.prompts.eval, steps=cfg.sampling.steps,
                    guidance_scale=cfg.sampling.guidance_scale, seed=cfg.data.eval_seed, max_batch=cfg.sampling.max_batch,
                )
        if self.is_main and result is not None:
            grid = image_grid(images, math.ceil(math.sqrt(images.shape[0])))
            save_png(grid, self.run_dir / "samples" / f"step-{step:06d}.png")
            self.writer.add_image("eval/samples", grid, step)
            for key, value in result.items():
                self.writer.add_scalar(key, value, step)
            with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **result}) + "\n")
            if self.last is not None:
                self._draw_tree(step)
            logger.info("eval step %d: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
        self.accelerator.wait_for_everyone()
        return result

    def _draw_tree(self, step: int) -> None:
        """Picture of tree 0 of the latest rollout."""
        import matplotlib.pyplot as plt

        assert self.last is not None
        figure = tree_figure(_cpu(self.last.rollout), self.backbone.decode, self.last.scores.cpu())
        file = self.run_dir / "trees" / f"step-{step:06d}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(file, dpi=100)
        self.writer.add_figure("tree", figure, step)
        plt.close(figure)

    def _stop_if_requested(self, step: int, saved: bool) -> None:
        """After a SIGTERM / SIGINT on any process: checkpoint ``step`` (unless just saved) and stop."""
        local = float(self.stop.received or 0)
        signum = int(self._gather(torch.tensor([local])).max()) if self.world > 1 else int(local)
        if not signum:
            return
        if not saved:
            self.save_checkpoint(step)
        raise TrainingInterrupted(signum, step, self.run_dir / ckpt.CHECKPOINTS / ckpt.step_name(step))

    def export(self) -> Path:
        """Write RUN/final via ``backbone.save_trained`` (EMA weights when on; gathered whole under FSDP)."""
        folder = self.run_dir / "final"
        weights = None
        if self.sharded:
            weights = full_state_dict(self.backbone.denoiser, trainable_only=not self.cfg.model.full_finetune)
        if self.is_main:
            with self._eval_weights():
                self.backbone.save_trained(folder, weights=weights)
        self.accelerator.wait_for_everyone()
        return folder

    # ------------------------------------------------------------------ the loop

    def train(self) -> list[dict[str, Any]]:
        """Run from ``start_iteration`` to ``train.iterations``; returns this session's metrics."""
        cfg = self.cfg.train
        if self.is_main:
            write_atomic(self.run_dir / "config.yaml", to_yaml(self.cfg))
        self._truncate_metrics()
        self._open_writer()
        records = []
        try:
            with self.stop.installed():
                if self.start_iteration == 0 and cfg.eval_at_start:
                    self.evaluate_and_draw(0)
                for iteration in range(self.start_iteration, cfg.iterations):
                    self.last = self.run_iteration(iteration)
                    self._log(self.last.metrics)
                    records.append(self.last.metrics)
                    step = iteration + 1
                    self.guard.check(step)
                    if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.iterations:
                        self.evaluate_and_draw(step)
                    saved = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.iterations
                    if saved:
                        self.save_checkpoint(step)
                    self._stop_if_requested(step, bool(saved))
                if self.start_iteration < cfg.iterations:
                    self.evaluate_and_draw(cfg.iterations)
                self.export()
        finally:
            if self.writer is not None:
                self.writer.close()
        return records


def write_atomic(file: Path, text: str) -> None:
    """Replace ``file`` with ``text`` so that a crash leaves either the old or the new content."""
    temporary = file.with_name(f".{file.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, file)


def _eval_step(line: str) -> float:
    """The step of one eval.jsonl line (a torn or malformed line counts as infinitely late)."""
    try:
        return float(json.loads(line)["step"]) if line.endswith("\n") else math.inf
    except (ValueError, KeyError, TypeError):
        return math.inf


def _cpu(rollout: TreeRollout) -> TreeRollout:
    """A copy of a rollout with every tensor on the CPU."""
    from dataclasses import fields as dataclass_fields

    values = {f.name: getattr(rollout, f.name) for f in dataclass_fields(rollout)}
    return TreeRollout(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in values.items()})


# ----------------------------------------------------------------------------- entry point


def find_resume_checkpoint(run_dir: Path, explicit: bool) -> Optional[Path]:
    """The newest complete checkpoint of ``run_dir``; with an explicit RUN, its absence is an error."""
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None and explicit:
        raise ckpt.CheckpointError(
            f"{run_dir} has no complete checkpoint to resume; start it anew with --overwrite or check the path"
        )
    return latest


def check_model_folder(cfg: TrainerConfig) -> None:
    """``model.path`` must be a supported pipeline (read from model_index.json, nothing loaded)."""
    from dataclasses import replace

    from treegrpo.models.loading import chosen_family, read_model_index

    model = replace(cfg.model, path=resolve_model_path(cfg.model.path))
    try:
        chosen_family(model, read_model_index(model))
    except ValueError as error:
        raise ConfigError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None


def preflight(cfg: TrainerConfig, device: torch.device | str) -> RewardSet:
    """Every user input that can be checked before the run folder is touched: prompts, model, rewards.

    Prompts and the model folder are checked without loading a model; the rewards are built here
    (missing weights fail now, before the diffusion model loads) and handed to the trainer.
    """
    load_prompt_sets(cfg.data, cfg.seed)
    check_model_folder(cfg)
    return build_rewards(cfg.reward, device)


def train(cfg: TrainerConfig, *, resume: Optional[str] = None, overwrite: bool = False) -> list[dict[str, Any]]:
    """Train as ``cfg`` says; ``resume`` is a run folder or ``"auto"`` (newest complete checkpoint)."""
    from accelerate import PartialState

    run_dir = Path(cfg.output_dir if resume in (None, "auto") else str(resume))
    checkpoint = find_resume_checkpoint(run_dir, explicit=resume not in (None, "auto")) if resume else None
    state = PartialState(cpu=not torch.cuda.is_available())  # multi-process CPU runs use gloo
    if holds_run(run_dir) and resume is None and not overwrite:
        prepare_run_dir(run_dir, resume=False, overwrite=False)  # raises the one-line RunDirError
    rewards = preflight(cfg, state.device)
    if state.is_main_process:
        prepare_run_dir(run_dir, resume=resume is not None, overwrite=overwrite)
    state.wait_for_everyone()
    trainer = Trainer(cfg, run_dir=run_dir, resume_from=checkpoint, rewards=rewards)
    return trainer.train()
