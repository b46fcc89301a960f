"""Method presets: each GRPO-family method is a rollout schedule plus an advantage rule.

The three config sections below are all a method is made of. A preset is a dict of overrides for
them; any field can be overridden again by the user (``tree.k=4``, ``advantage.backup_beta=1``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from treegrpo.choices import Choice
from treegrpo.errors import ConfigError, did_you_mean
from treegrpo.math import plans
from treegrpo.math.advantages import StdScope
from treegrpo.math.loss import LossConfig
from treegrpo.math.plans import WindowPlacement


class TreeSchedule(Choice):
    """The rollout's shape: a k-ary tree in a window, flat trajectories, MixGRPO's window, BranchGRPO's splits."""

    tree = "tree"
    flat = "flat"
    mix = "mix"
    split_ = "split"  # "split" is a str method
    ode = "ode"  # deterministic trajectories (the likelihood-free objectives' rollouts)


class Baseline(Choice):
    """What an edge's backed-up advantage is compared with: its prompt group's mean (the leaf
    normalisation alone), or also the other children of its parent node (leave-one-out per node)."""

    group = "group"
    siblings = "siblings"


@dataclass
class TreeConfig:
    """How each prompt's rollout is shaped (the ``tree`` config section)."""

    schedule: TreeSchedule = TreeSchedule.tree
    k: int = 3  # children per BRANCH step
    window: int = 3  # steps in the branching (tree) or SDE (mix) window
    window_placement: WindowPlacement = WindowPlacement.geometric
    window_start: int = 0  # fixed start, or first start when shifting
    shift: int = 1  # shifting: steps moved ...
    shift_every: int = 1  # ... every this many iterations
    geometric_ratio: float = 0.5  # geometric: P[i] ~ r^i
    trees: int = 1  # trees (independent trajectories for flat methods) per prompt
    split_steps: Optional[list[int]] = None
    """split: BRANCH steps (absolute indices); ``None`` = BranchGRPO's [0, 2, 4, 6] of 10 steps scaled to
    ``sampling.steps`` (see :func:`default_split_steps`)."""
    train_fraction: float = 1.0  # flat: fraction of steps trained, redrawn every iteration
    antithetic: bool = False
    """Mirror the noise of a node's children in pairs (``x`` and ``2 mean - x``): antithetic
    variates for the siblings' policy gradient; tree and split schedules only (the others never branch)."""

    def check(self) -> None:
        """The choices; the shape itself is checked by building its plan for ``sampling.steps`` (whole config)."""
        self.schedule = TreeSchedule.parse(self.schedule, "tree.schedule")
        self.window_placement = WindowPlacement.parse(self.window_placement, "tree.window_placement")
        windowed = self.schedule in (TreeSchedule.tree, TreeSchedule.mix)
        used = {"trees": True, "k": self.schedule in (TreeSchedule.tree, TreeSchedule.split), "window": windowed,
                "shift_every": windowed and self.window_placement == WindowPlacement.shifting}
        for key in (key for key, applies in used.items() if applies):  # the others never reach a plan
            if getattr(self, key) < 1:
                raise ConfigError(f"tree.{key} must be >= 1, got {getattr(self, key)}")
        if self.antithetic and self.schedule in (TreeSchedule.flat, TreeSchedule.mix, TreeSchedule.ode):
            raise ConfigError(f"tree.antithetic=true mirrors siblings, but tree.schedule={self.schedule.value} never "
                              "branches; use tree.schedule=tree or split, or drop tree.antithetic")


@dataclass
class AdvantageConfig:
    """How leaf rewards become edge advantages (the ``advantage`` config section)."""

    std_scope: StdScope = StdScope.group
    clip: float = 5.0  # leaf advantages clamped to +-clip
    min_group_std: float = 1e-3  # zero-spread guard: groups below get zero advantage (0 = off)
    std_floor: float = 0.0  # divide by max(std, std_floor): tiny spreads give small advantages
    backup_beta: float = 0.0  # 0 = uniform mean of children, 1 = softmax over log pi_old
    per_depth_norm: bool = False  # BranchGRPO: normalise edge advantages per depth
    depth_scale: bool = False  # rescale each depth's edge advantages to RMS 1 (root edges average many leaves)
    prune_depths: list[int] = field(default_factory=list)  # BranchGRPO depth pruning
    prune_keep_fraction: float = 1.0  # BranchGRPO width pruning at the deepest level
    baseline: Baseline = Baseline.group
    """``siblings``: each edge's advantage minus the mean of its siblings' (leave-one-out per parent node),
    so what was decided above the node (the initial noise, earlier branches) drops out; edges without
    siblings get zero."""
    component_norm: bool = False
    """Normalise each reward component within its prompt group before the weighted sum (so a component
    with a wide spread does not drown the others); needs two or more rewards."""

    def check(self) -> None:
        """Choices and ranges; one-line ConfigError naming the key."""
        self.std_scope = StdScope.parse(self.std_scope, "advantage.std_scope")
        self.baseline = Baseline.parse(self.baseline, "advantage.baseline")
        if not self.clip > 0:
            raise ConfigError(f"advantage.clip must be > 0, got {self.clip}")
        for key in ("min_group_std", "std_floor", "backup_beta"):
            if getattr(self, key) < 0:
                raise ConfigError(f"advantage.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 < self.prune_keep_fraction <= 1:
            raise ConfigError(f"advantage.prune_keep_fraction must be in (0, 1], got {self.prune_keep_fraction}")


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "treegrpo": {
        # shifting (the official code's placement) rather than the paper's geometric r=0.5: the window
        # ablations in benchmarks/RESULTS.md (sections 3 and 6) are why
        "tree": dict(schedule="tree", k=3, window=3, window_placement="shifting", window_start=0,
                     shift=1, shift_every=25, trees=1),
        "advantage": dict(backup_beta=0.0),
        "loss": dict(clip_eps=1e-4, node_aggregation="mean", kl_beta=0.0),
    },
    "flow_grpo": {
        "tree": dict(schedule="flat", trees=12, train_fraction=1.0),
        "advantage": dict(),
        "loss": dict(clip_eps=1e-4, kl_beta=0.04),
    },
    "dance_grpo": {
        "tree": dict(schedule="flat", trees=12, train_fraction=0.6),
        "advantage": dict(),
        "loss": dict(clip_eps=1e-4, kl_beta=0.0),
    },
    "mix_grpo": {
        "tree": dict(schedule="mix", trees=12, window=4, window_placement="shifting", window_start=0,
                     shift=1, shift_every=25),
        "advantage": dict(),
        "loss": dict(clip_eps=1e-4, kl_beta=0.0),
    },
    "branch_grpo": {
        "tree": dict(schedule="split", k=2, trees=1),  # split_steps: derived from sampling.steps
        "advantage": dict(backup_beta=1.0, per_depth_norm=True),
        "loss": dict(clip_eps=1e-3, kl_beta=0.0),
    },
    "ddpo": {
        "tree": dict(schedule="flat", trees=12, train_fraction=1.0),
        "advantage": dict(),
        "loss": dict(clip_eps=1e-4, kl_beta=0.0),
    },
    # likelihood-free (treegrpo.math.likelihood_free): deterministic rollouts, advantages over the global reward std,
    # the published settings of each paper's code; tree.schedule=tree feeds them a tree's leaves instead
    "diffusion_nft": {
        "tree": dict(schedule="ode", trees=12),
        "advantage": dict(std_scope="global", clip=5.0, min_group_std=0.0),
        "loss": dict(objective="nft", nft_beta=1.0, old_policy_decay="linear_to_0_5", kl_beta=1e-4,
                     timesteps="per_sample", timestep_fraction=0.99),
    },
    "awm": {
        "tree": dict(schedule="ode", trees=12),
        "advantage": dict(std_scope="global", clip=5.0, min_group_std=0.0),
        "loss": dict(objective="awm", awm_power=0.25, kl_beta=1e-4, ema_kl_beta=1.0, timesteps="stratified",
                     timestep_fraction=0.9, timestep_draws=6),
    },
}
"""Overrides per preset. ``ddpo`` differs from ``flow_grpo`` by no KL; on SD1.x/2.x models every
flat preset samples with DDIM-eta (the backbone's stepper), which is DDPO proper."""

METHODS = tuple(PRESETS)


@dataclass
class MethodConfig:
    """A method resolved to its three sections."""

    name: str = "treegrpo"
    tree: TreeConfig = field(default_factory=TreeConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def preset_sections(name: str) -> dict[str, dict[str, Any]]:
    """A copy of preset ``name``'s section overrides; an unknown name is a one-line ConfigError."""
    if name not in PRESETS:
        raise ConfigError(f"unknown method {name!r}{did_you_mean(name, METHODS)} (available: {', '.join(METHODS)})")
    return copy.deepcopy(PRESETS[name])


def preset(name: str, **overrides: dict[str, Any]) -> MethodConfig:
    """The preset ``name`` with optional per-section overrides, e.g. ``preset("treegrpo", tree={"k": 2})``."""
    sections = preset_sections(name)
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    config = MethodConfig(name=name)
    for section, values in sections.items():
        current = getattr(config, section)
        known = {f.name for f in fields(current)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown {section} keys {sorted(unknown)}; valid keys: {sorted(known)}")
        updated = replace(current, **values)
        updated.check()
        setattr(config, section, updated)
    return config


SPLIT_FRACTIONS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)
"""BranchGRPO's split points [0, 2, 4, 6] of its 10-step schedule, as fractions of the schedule."""


def default_split_steps(num_steps: int) -> list[int]:
    """BranchGRPO's split steps scaled to ``num_steps`` (10 steps -> [0, 2, 4, 6]; 4 -> [0, 1, 2])."""
    return sorted({int(fraction * num_steps + 1e-9) for fraction in SPLIT_FRACTIONS})


def plan_for_iteration(cfg: TreeConfig, num_steps: int, iteration: int, seed: int = 0) -> plans.Plan:
    """The per-step plan of RL iteration ``iteration`` (pure: the same iteration and seed give the same plan)."""
    if cfg.trees < 1:
        raise ValueError(f"tree.trees must be >= 1, got {cfg.trees}")
    if cfg.schedule in (TreeSchedule.tree, TreeSchedule.mix):
        start = plans.window_start(
            iteration, num_steps, cfg.window, cfg.window_placement,
            start=cfg.window_start, shift=cfg.shift, shift_every=cfg.shift_every,
            geometric_ratio=cfg.geometric_ratio, seed=seed,
        )
        if cfg.schedule == TreeSchedule.tree:
            return plans.tree_plan(num_steps, cfg.k, cfg.window, start)
        return plans.mix_plan(num_steps, cfg.window, start)
    if cfg.schedule == TreeSchedule.flat:
        trained = None if cfg.train_fraction >= 1 else plans.sample_trained_steps(num_steps, cfg.train_fraction, iteration, seed)
        return plans.flat_plan(num_steps, trained)
    if cfg.schedule == TreeSchedule.ode:
        return plans.ode_plan(num_steps)
    if cfg.schedule == TreeSchedule.split_:
        if cfg.k < 2:
            raise ValueError(f"tree.k must be >= 2 for the split schedule, got {cfg.k}")
        steps = default_split_steps(num_steps) if cfg.split_steps is None else cfg.split_steps
        try:
            return plans.split_plan(num_steps, cfg.k, steps)
        except ValueError as error:
            raise ValueError(
                f"tree.split_steps={list(steps)}: {error}; set tree.split_steps=null to scale BranchGRPO's splits "
                "to sampling.steps, or list steps below sampling.steps"
            ) from None
    raise ValueError(f"unknown tree.schedule {cfg.schedule!r}; use tree, flat, mix, split or ode")


def steps_ever_trained(cfg: TreeConfig, num_steps: int) -> tuple[int, ...]:
    """Every step some iteration's plan may train (a fixed window's steps; any reachable window otherwise).

    For denoisers that depend on the step (Wan 2.2's two experts): the model loads what these steps need.
    """
    if cfg.schedule in (TreeSchedule.tree, TreeSchedule.mix):
        plans.check_window(num_steps, cfg.window)
        fixed = cfg.window_placement == WindowPlacement.fixed
        starts = [cfg.window_start] if fixed else range(plans.max_window_start(num_steps, cfg.window) + 1)
        return tuple(sorted({t for s in starts for t in range(s, min(s + cfg.window, num_steps))}))
    return tuple(range(num_steps))  # flat (any fraction may draw any step) and split (trained SDE between splits)
