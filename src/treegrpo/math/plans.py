"""Per-step rollout plans: every GRPO-family method is a plan of step kinds plus an advantage rule.

A plan gives each of the T denoising steps a kind:
- ``ODE``: deterministic step, not trained, no new node;
- ``SDE``: one stochastic child (a trained edge unless ``trained`` is False);
- ``BRANCH``: ``k`` stochastic children drawn from one model evaluation, all trained.

Window placement (where TreeGRPO's branching window W or MixGRPO's SDE window sits) is a pure,
seeded function of the iteration, so a resumed run draws exactly the windows it would have drawn.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from treegrpo.choices import Choice

class WindowPlacement(Choice):
    """``tree.window_placement``: where the window sits each iteration: fixed, shifting, or drawn from a
    truncated geometric law."""

    fixed = "fixed"
    shifting = "shifting"
    geometric = "geometric"


class StepKind(str, Enum):
    ODE = "ode"
    SDE = "sde"
    BRANCH = "branch"


@dataclass(frozen=True)
class StepSpec:
    """What happens at one denoising step."""

    kind: StepKind
    children: int = 1
    trained: bool = False

    @property
    def stochastic(self) -> bool:
        return self.kind is not StepKind.ODE

    def __post_init__(self) -> None:
        if self.kind is StepKind.BRANCH and self.children < 2:
            raise ValueError(f"a BRANCH step needs at least 2 children, got {self.children}")
        if self.kind is not StepKind.BRANCH and self.children != 1:
            raise ValueError(f"{self.kind.value} steps have exactly one child")
        if self.kind is StepKind.ODE and self.trained:
            raise ValueError("ODE steps are deterministic and cannot be trained")


ODE = StepSpec(StepKind.ODE)
SDE_TRAINED = StepSpec(StepKind.SDE, trained=True)
SDE_UNTRAINED = StepSpec(StepKind.SDE, trained=False)


def branch(k: int) -> StepSpec:
    return StepSpec(StepKind.BRANCH, children=k, trained=True)


Plan = tuple[StepSpec, ...]


# ----------------------------------------------------------------------------- closed forms


def leaves_per_tree(plan: Sequence[StepSpec]) -> int:
    """Number of leaves one root grows into: the product of children over all steps."""
    return math.prod(spec.children for spec in plan)


def nodes_per_tree(plan: Sequence[StepSpec]) -> int:
    """Number of tree nodes: the root plus one node per stochastic-and-trained child."""
    width, nodes = 1, 1
    for spec in plan:
        width *= spec.children
        if spec.trained:
            nodes += width
    return nodes


def rollout_nfe_per_tree(plan: Sequence[StepSpec]) -> int:
    """Model evaluations to roll out one tree: one per frontier node per step."""
    width, nfe = 1, 0
    for spec in plan:
        nfe += width
        width *= spec.children
    return nfe


def training_nfe_per_tree(plan: Sequence[StepSpec]) -> int:
    """Model evaluations of the training pass: one per parent of trained edges (k edges each)."""
    width, nfe = 1, 0
    for spec in plan:
        if spec.trained:
            nfe += width
        width *= spec.children
    return nfe


def trained_edges_per_tree(plan: Sequence[StepSpec]) -> int:
    width, edges = 1, 0
    for spec in plan:
        width *= spec.children
        if spec.trained:
            edges += width
    return edges


# ----------------------------------------------------------------------------- window placement


def max_window_start(num_steps: int, window: int) -> int:
    """Largest start that keeps the window off the last step (its last step stays deterministic)."""
    return num_steps - window - 1


def check_window(num_steps: int, window: int) -> None:
    if window < 1:
        raise ValueError(f"tree.window must be >= 1, got {window}")
    if max_window_start(num_steps, window) < 0:
        raise ValueError(
            f"a window of {window} steps does not fit in {num_steps} steps without touching the "
            f"last step; use tree.window <= {num_steps - 1} or more sampling.steps"
        )


def window_start(
    iteration: int,
    num_steps: int,
    window: int,
    placement: WindowPlacement,
    *,
    start: int = 0,
    shift: int = 1,
    shift_every: int = 1,
    geometric_ratio: float = 0.5,
    seed: int = 0,
) -> int:
    """First step of the window at ``iteration`` (pure; seeded by ``seed`` and ``iteration``).

    - fixed: always ``start``;
    - shifting: ``start + shift * (iteration // shift_every)``, wrapping so the window never reaches
      the last step (what the official TreeGRPO code does, with wrap-around for long runs);
    - geometric: drawn from ``P[i] = (1 - r) r^i / (1 - r^(T - w))`` over ``i = 0 .. T - w - 1``.
    """
    check_window(num_steps, window)
    last = max_window_start(num_steps, window)
    placement = WindowPlacement(placement)  # a bad value raises ValueError
    if placement is WindowPlacement.fixed:
        if not 0 <= start <= last:
            raise ValueError(f"tree.window_start must lie in [0, {last}], got {start}")
        return start
    if placement is WindowPlacement.shifting:
        if shift_every < 1:
            raise ValueError(f"tree.shift_every must be >= 1, got {shift_every}")
        return (start + shift * (iteration // shift_every)) % (last + 1)
    r = geometric_ratio
    if not 0 < r < 1:
        raise ValueError(f"tree.geometric_ratio must lie in (0, 1), got {r}")
    weights = [(1 - r) * r**i for i in range(last + 1)]
    rng = random.Random(f"{seed}:window:{iteration}")
    return rng.choices(range(last + 1), weights=weights)[0]


def geometric_window_probabilities(num_steps: int, window: int, ratio: float) -> list[float]:
    """The truncated geometric law of the paper, for tests and documentation."""
    n = max_window_start(num_steps, window) + 1
    norm = 1 - ratio**n
    return [(1 - ratio) * ratio**i / norm for i in range(n)]


# ----------------------------------------------------------------------------- plan builders


def tree_plan(num_steps: int, k: int, window: int, start: int) -> Plan:
    """TreeGRPO: BRANCH(k) on the ``window`` steps from ``start``, ODE elsewhere."""
    if k < 1:
        raise ValueError(f"tree.k must be >= 1, got {k}")
    inside = branch(k) if k > 1 else SDE_TRAINED
    return tuple(inside if start <= t < start + window else ODE for t in range(num_steps))


def flat_plan(num_steps: int, trained_steps: Sequence[int] | None = None) -> Plan:
    """Flow-GRPO / DanceGRPO / DDPO: every step SDE; only ``trained_steps`` (default all) trained."""
    trained = set(range(num_steps) if trained_steps is None else trained_steps)
    return tuple(SDE_TRAINED if t in trained else SDE_UNTRAINED for t in range(num_steps))


def ode_plan(num_steps: int) -> Plan:
    """Every step ODE: deterministic trajectories, nothing trained by the clipped objective (evaluation,
    and the likelihood-free objectives' rollouts)."""
    return tuple(ODE for _ in range(num_steps))


def mix_plan(num_steps: int, window: int, start: int) -> Plan:
    """MixGRPO: SDE (trained) inside a sliding window, ODE elsewhere."""
    return tuple(SDE_TRAINED if start <= t < start + window else ODE for t in range(num_steps))


def split_plan(num_steps: int, k: int, split_steps: Sequence[int]) -> Plan:
    """BranchGRPO: BRANCH(k) at the split steps, trained SDE in between."""
    bad = [s for s in split_steps if not 0 <= s < num_steps]
    if bad:
        raise ValueError(f"branch split steps {bad} lie outside 0..{num_steps - 1}")
    splits = set(split_steps)
    return tuple(branch(k) if t in splits else SDE_TRAINED for t in range(num_steps))


def sample_trained_steps(num_steps: int, fraction: float, iteration: int, seed: int) -> list[int]:
    """A seeded random subset of ``round(fraction * T)`` steps (DanceGRPO's timestep fraction)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"method.train_fraction must lie in (0, 1], got {fraction}")
    count = max(1, round(fraction * num_steps))
    rng = random.Random(f"{seed}:steps:{iteration}")
    return sorted(rng.sample(range(num_steps), count))


def describe(plan: Sequence[StepSpec]) -> str:
    """Compact text form, e.g. ``o o B3 B3 B3 o o o o o``."""
    def one(spec: StepSpec) -> str:
        if spec.kind is StepKind.BRANCH:
            return f"B{spec.children}"
        if spec.kind is StepKind.SDE:
            return "S" if spec.trained else "s"
        return "o"

    return " ".join(one(spec) for spec in plan)
