"""Writing clips ``[F, 3, H, W]`` in [0, 1]: MP4 through OpenCV when it is installed, else an animated GIF (PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FPS = 16
"""Wan's native frame rate."""


def _frames_uint8(clip: torch.Tensor) -> np.ndarray:
    """``[F, H, W, 3]`` uint8 frames."""
    return (clip.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_video(clip: torch.Tensor, stem: Path, fps: int = FPS) -> Path:
    """Write ``clip`` to ``stem.mp4`` (OpenCV's mp4v) or, without OpenCV, ``stem.gif``; returns the file."""
    frames = _frames_uint8(clip)
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        file = stem.with_suffix(".mp4")
        height, width = frames.shape[1:3]
        writer = cv2.VideoWriter(str(file), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        try:
            if writer.isOpened():
                for frame in frames:
                    writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV wants BGR
                return file
        finally:
            writer.release()
    return save_gif(frames, stem.with_suffix(".gif"), fps)


def save_gif(frames: np.ndarray, file: Path, fps: int = FPS) -> Path:
    """Animated GIF of ``[F, H, W, 3]`` uint8 frames (looping)."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    images[0].save(file, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return file
