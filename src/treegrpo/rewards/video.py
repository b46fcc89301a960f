"""Scoring clips ``[B, F, 3, H, W]`` with image rewards: pick frames, score them, average per clip.

A reward that scores clips itself declares ``takes_video = True`` and receives the whole clip.
Any other reward is wrapped in :class:`FrameSampledReward` (by :class:`~treegrpo.rewards.multi.MultiReward`
as soon as clips arrive, or with the reward option ``frames``)::

    frames: 4        # four frames evenly spaced over the clip, first and last included (default)
    frames: first    # the first frame only
    frames: all      # every frame
"""

from __future__ import annotations

from typing import Sequence

import torch

from treegrpo.errors import ConfigError
from treegrpo.rewards.base import RewardFn

DEFAULT_FRAMES: int | str = 4


def check_frames(frames: int | str) -> int | str:
    """``frames`` unchanged if it is a positive count, ``"first"`` or ``"all"``; else a one-line ConfigError."""
    if isinstance(frames, str) and frames.isdigit():
        frames = int(frames)
    if frames in ("first", "all") or (isinstance(frames, int) and not isinstance(frames, bool) and frames >= 1):
        return frames
    raise ConfigError(f"reward option frames={frames!r} is not a positive frame count, 'first' or 'all'")


def frame_indices(num_frames: int, frames: int | str) -> list[int]:
    """The frames scored out of ``num_frames``: evenly spaced (rounded), the first, or all."""
    frames = check_frames(frames)
    if frames == "first":
        return [0]
    if frames == "all" or frames >= num_frames:  # type: ignore[operator]
        return list(range(num_frames))
    if frames == 1:
        return [num_frames // 2]
    return [round(i * (num_frames - 1) / (frames - 1)) for i in range(frames)]  # type: ignore[operator]


def is_video(images: torch.Tensor) -> bool:
    """Whether ``images`` is a batch of clips ``[B, F, 3, H, W]``."""
    return images.dim() == 5 and images.shape[2] == 3


class FrameSampledReward:
    """An image reward applied to sampled frames of each clip, averaged per clip; images pass through unchanged."""

    takes_video = True

    def __init__(self, reward: RewardFn, frames: int | str = DEFAULT_FRAMES) -> None:
        self.reward = reward
        self.frames = check_frames(frames)
        self.name = getattr(reward, "name", "reward")
        self.abstains = bool(getattr(reward, "abstains", False))  # NaN = not scored, frame by frame

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores ``[B]``: the mean over the chosen frames of each clip (one reward call for all of them)."""
        if not is_video(images):
            return self.reward(images, prompts)
        batch, num_frames = int(images.shape[0]), int(images.shape[1])
        index = frame_indices(num_frames, self.frames)
        picked = images[:, index].flatten(0, 1)
        repeated = [prompt for prompt in prompts for _ in index]
        scores = self.reward(picked, repeated).reshape(batch, len(index))
        return scores.to(torch.float32).mean(dim=1)


def for_clips(reward: RewardFn) -> RewardFn:
    """``reward`` itself if it takes clips, else wrapped to score sampled frames (default frame choice)."""
    return reward if getattr(reward, "takes_video", False) else FrameSampledReward(reward)


def middle_frames(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]``: the middle frame of each clip, or ``images`` themselves (what pictures show per node)."""
    return images[:, images.shape[1] // 2] if is_video(images) else images
