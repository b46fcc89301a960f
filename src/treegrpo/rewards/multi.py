"""Several rewards at once: a weighted sum, with the per-component scores kept for logging.

Two ways to combine components into a training signal:

* ``MultiReward.__call__``: ``S = sum_j w_j R_j`` per image, normalised later by the trainer.
* :func:`advantage_sum` (MixGRPO's alternative): normalise each component within its prompt group
  first, ``A_j = (R_j - mean_g) / (std_g + 1e-8)`` (population std), then ``A = sum_j w_j A_j``,
  so a reward with a large scale cannot drown the others.
"""

from __future__ import annotations

import traceback
from typing import Any, Mapping, Sequence

import torch

from treegrpo.prompts import source_images
from treegrpo.rewards.base import RewardFn, RewardOutputError, check_inputs, checked_scores
from treegrpo.rewards.video import FrameSampledReward, for_clips, is_video


class MultiReward:
    """Weighted sum of named rewards; :meth:`components` exposes each one's scores."""

    name = "multi"

    def __init__(self, rewards: Mapping[str, RewardFn], weights: Mapping[str, float] | None = None) -> None:
        if not rewards:
            raise ValueError("MultiReward needs at least one reward")
        weights = dict(weights) if weights is not None else {k: 1.0 for k in rewards}
        if set(weights) != set(rewards):
            raise ValueError(f"weights {sorted(weights)} must name exactly the rewards {sorted(rewards)}")
        self.rewards = dict(rewards)
        self.weights = {k: float(v) for k, v in weights.items()}
        self.last_components: dict[str, torch.Tensor] = {}

    @classmethod
    def from_names(
        cls,
        weights: Mapping[str, float],
        options: Mapping[str, Mapping[str, Any]] | None = None,
        **shared: Any,
    ) -> "MultiReward":
        """Build each named reward with ``get_reward(name, **shared, **options[name])``."""
        from treegrpo.rewards import get_reward

        options = options or {}
        unknown = sorted(set(options) - set(weights))
        if unknown:
            raise ValueError(f"options given for reward(s) {unknown} that have no weight")
        rewards = {}
        for name in weights:
            settings = {**shared, **options.get(name, {})}
            frames = settings.pop("frames", None)  # video: which frames an image reward scores
            reward = get_reward(name, **settings)
            rewards[name] = reward if frames is None else FrameSampledReward(reward, frames)
        return cls(rewards, weights)

    def check_prompts(self, prompts: Sequence[str], source: str) -> None:
        """Let each reward that reads its prompts (``check_prompts(prompts, source)``, e.g. OCR's quoted
        text) refuse them now, before a model loads, rather than at the first scoring."""
        for reward in self.rewards.values():
            inner = getattr(reward, "reward", reward)  # a frame-sampling wrapper checks what it wraps
            check = getattr(inner, "check_prompts", None)
            if check is not None:
                check(prompts, source)

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each reward's float32 CPU scores [B], by name (unweighted); clips ``[B, F, 3, H, W]`` go to
        rewards that take video, and as sampled frames (:mod:`treegrpo.rewards.video`) to the others.
        Rewards with ``takes_source`` also get ``source_images=`` (see :mod:`treegrpo.rewards.base`)."""
        video = is_video(images)
        check_inputs(images[:, 0] if video else images, prompts)
        out = {}
        sources = None
        for key, reward in self.rewards.items():
            try:
                if getattr(reward, "takes_source", False) and not video:  # editing: the prompts' source images too
                    sources = source_images(prompts) if sources is None else sources
                    raw = reward(images, prompts, source_images=sources)  # type: ignore[call-arg]
                else:
                    raw = (for_clips(reward) if video else reward)(images, prompts)
            except Exception as error:
                from treegrpo.rewards import is_import_path

                if not is_import_path(key):
                    raise  # a built-in reward's failure is a bug: its traceback shows where
                raise RewardOutputError(f"reward {key!r} raised {type(error).__name__}: {first_line(error)} "
                                        f"({where_raised(error)}); fix the reward") from error
            out[key] = checked_scores(raw, key, int(images.shape[0]))
        return out

    @property
    def abstaining(self) -> frozenset[str]:
        """Rewards whose NaN means "not scored" (remote judges; see :mod:`treegrpo.rewards.base`), not a fault."""
        return frozenset(key for key, reward in self.rewards.items() if getattr(reward, "abstains", False))

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum_j w_j R_j`` of already computed components."""
        return weighted_sum(components, self.weights)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Weighted sum; the components of this call stay in ``last_components`` for logging."""
        self.last_components = self.components(images, prompts)
        return self.combine(self.last_components)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def where_raised(error: BaseException) -> str:
    """``file:line`` of the deepest frame of ``error``'s traceback outside installed packages (the user's code)."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if "site-packages" not in f.filename and "/treegrpo/" not in f.filename.replace("\\", "/")]
    frame = (own or frames)[-1] if frames else None
    return f"{frame.filename}:{frame.lineno}" if frame is not None else "no traceback"


def weighted_sum(components: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``sum_j weights[j] * components[j]`` over the weighted names (all must be present)."""
    missing = sorted(set(weights) - set(components))
    if missing:
        raise KeyError(f"no scores for weighted reward(s) {missing}; have {sorted(components)}")
    total: torch.Tensor | None = None
    for key, weight in weights.items():
        term = float(weight) * components[key].to(torch.float32)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("weights is empty: nothing to sum")
    return total


def group_normalize(scores: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - group mean) / (group population std + eps)`` for each element's group."""
    scores = scores.to(torch.float32).reshape(-1)
    group_ids = group_ids.reshape(-1)
    if group_ids.shape != scores.shape:
        raise ValueError(f"group_ids has {group_ids.numel()} entries for {scores.numel()} scores")
    from treegrpo.math.advantages import group_stats

    _, inverse = torch.unique(group_ids, return_inverse=True)
    mean, std = group_stats(scores, inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0)
    return (scores - mean[inverse]) / (std[inverse] + eps)


def advantage_sum(
    component_scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    group_ids: torch.Tensor,
) -> torch.Tensor:
    """MixGRPO's multi-reward advantage: group-normalise each component, then weight and sum."""
    normalised = {k: group_normalize(component_scores[k], group_ids) for k in weights if k in component_scores}
    return weighted_sum(normalised, weights)
