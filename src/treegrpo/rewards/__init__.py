"""Reward models by name: ``get_reward("hpsv2", device="cuda")`` returns a :class:`RewardFn`.

Every reward maps ``(images [B, 3, H, W] in [0, 1], prompts) -> float32 CPU scores [B]``.
Entries are imported lazily (``"module:attribute"``), so asking for ``jpeg_compressibility`` never
imports transformers. Add your own with :func:`register_reward`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Union

from treegrpo.rewards.base import BatchedReward, RewardFn

RewardFactory = Callable[..., RewardFn]

_REGISTRY: dict[str, Union[str, RewardFactory]] = {
    "hpsv2": "treegrpo.rewards.clip_scorers:HPSv2Reward",
    "imagereward": "treegrpo.rewards.imagereward:ImageRewardReward",
    "pickscore": "treegrpo.rewards.clip_scorers:PickScoreReward",
    "aesthetic": "treegrpo.rewards.clip_scorers:AestheticReward",
    "clipscore": "treegrpo.rewards.clip_scorers:ClipScoreReward",
    "jpeg_compressibility": "treegrpo.rewards.jpeg:JpegCompressibility",
    "jpeg_incompressibility": "treegrpo.rewards.jpeg:JpegIncompressibility",
    "remote": "treegrpo.rewards.server:RemoteReward",
    "shapes": "treegrpo.demo.reward:ShapesReward",
}


def register_reward(name: str, factory: Union[str, RewardFactory]) -> None:
    """Register ``factory(**options) -> RewardFn`` (or a lazy ``"module:attribute"`` path) under ``name``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(f"lazy reward path must look like 'package.module:attribute', got {factory!r}")
    _REGISTRY[name] = factory


def available_rewards() -> list[str]:
    """All registered reward names, sorted."""
    return sorted(_REGISTRY)


def _resolve(name: str, entry: Union[str, RewardFactory]) -> RewardFactory:
    """Import a lazy ``"module:attribute"`` entry."""
    if not isinstance(entry, str):
        return entry
    module_name, _, attribute = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"reward {name!r} needs module {module_name} which failed to import: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise ImportError(f"reward {name!r}: {module_name} has no attribute {attribute!r}") from error


def get_reward(name: str, **options: Any) -> RewardFn:
    """Build the reward registered as ``name`` with its ``options`` (device, dtype, batch_size, ...)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1, cutoff=0.0)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown reward {name!r}: {hint}available: {', '.join(available_rewards())}")
    reward = _resolve(name, _REGISTRY[name])(**options)
    if not getattr(reward, "name", None):
        reward.name = name  # type: ignore[attr-defined]
    return reward


__all__ = ["BatchedReward", "RewardFn", "RewardFactory", "available_rewards", "get_reward", "register_reward"]
