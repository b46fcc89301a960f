"""Experiment trackers beyond TensorBoard (W&B, trackio, SwanLab, ...) through accelerate's tracker classes.

``train.log_with`` names them (a list or ``"tensorboard,wandb"``); names are checked when the
config is read and the packages before the run folder is touched. Trackers see scalars grouped
by prefix (:func:`tracker_key`: ``train/``, ``eval/``, ``time/``, ``nfe/``), the resolved config
once, and evaluation images with their prompt and reward as captions. metrics.jsonl keeps its
own unprefixed keys.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from treegrpo.errors import ConfigError

logger = logging.getLogger(__name__)

PACKAGES: dict[str, str] = {"comet_ml": "comet-ml"}
"""pip names that differ from the tracker name."""

NFE_KEYS: tuple[str, ...] = ("rollout_nfe", "training_nfe", "model_calls")
"""metrics.jsonl keys that count model evaluations (logged under ``nfe/``)."""

DEFAULT_PROJECT = "treegrpo"
"""Project name for W&B / trackio / SwanLab unless ``WANDB_PROJECT`` (W&B) says otherwise."""


def wandb_logged_in(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether W&B can log: a key in ``WANDB_API_KEY`` or the netrc ``wandb login`` writes, or an offline mode."""
    import netrc

    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY") or env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return True
    file = env.get("NETRC") or str(Path(env.get("HOME", str(Path.home()))) / ".netrc")
    try:
        hosts = netrc.netrc(file).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    base = env.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return base in hosts


def check_tracker_logins(names: Sequence[str]) -> None:
    """A tracker that would fail at its first log line is refused before anything loads (W&B without a login)."""
    if "wandb" in names and not wandb_logged_in():
        raise ConfigError("train.log_with names wandb but W&B is not logged in; run `wandb login`, set WANDB_API_KEY, "
                          "or WANDB_MODE=offline to log locally (or drop wandb from train.log_with)")


def check_trackers_installed(names: Sequence[str]) -> None:
    """Each named tracker's package must import (checked before the run folder is touched)."""
    from accelerate.tracking import get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name != "tensorboard" and name not in available:
            package = PACKAGES.get(name, name)
            raise ConfigError(f"train.log_with names {name} but {package} is not installed; pip install {package} or drop it")


def tracker_key(key: str) -> str:
    """A metrics.jsonl key as trackers show it: ``eval/...`` kept, ``nfe/``, ``time/``, else ``train/``."""
    if key.startswith("eval/"):
        return key
    if key in NFE_KEYS:
        return f"nfe/{key}"
    if key == "seconds" or key.endswith("_seconds"):
        return f"time/{key}"
    return f"train/{key}"


def tracker_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of one metrics.jsonl record under their tracker keys (``step`` left out)."""
    return {
        tracker_key(key): float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    }


def flat_config(values: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"train.lr": 1e-5, ...}`` (lists as strings) for trackers' hyperparameters."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, (list, tuple)) else value
    return flat


def _image_class(name: str) -> Any:
    """The tracker's captioned image type (``wandb.Image``, ``swanlab.Image``, ``trackio.Image``), or None."""
    if name not in ("wandb", "swanlab", "trackio"):
        return None
    module = __import__(name)
    return getattr(module, "Image", None)


class Trackers:
    """accelerate trackers other than TensorBoard (which :class:`~treegrpo.trainer.metrics.MetricsLog` keeps).

    Only the main process builds one. Each session (a start or a resume) is one tracker run named
    after the run folder.
    """

    def __init__(self, names: Sequence[str], run_dir: Path) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers: list[Any] = []
        project = os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
        options: dict[str, dict[str, Any]] = {
            "wandb": {"name": run_dir.name, "dir": str(run_dir)},
            "swanlab": {"experiment_name": run_dir.name, "logdir": str(run_dir / "swanlog")},
            "trackio": {"name": run_dir.name},
        }
        for name in names:
            if name == "tensorboard":
                continue
            cls = LOGGER_TYPE_TO_CLASS[name]
            if cls.requires_logging_directory:
                tracker = cls(project, str(run_dir / name))
            else:
                tracker = cls(project, **options.get(name, {}))
            self.trackers.append(tracker)

    def start(self, config: dict[str, Any]) -> None:
        """Open every tracker run and store the resolved config (flattened) once."""
        flat = flat_config(config)
        for tracker in self.trackers:
            tracker.start()
            tracker.store_init_configuration(flat)

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars (already under their tracker keys) at ``step``."""
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str], step: int) -> None:
        """HWC uint8 images with captions (trackers without a captioned image type are skipped)."""
        for tracker in self.trackers:
            image = _image_class(tracker.name)
            if image is not None:
                tracker.log({key: [image(array, caption=text) for array, text in zip(images, captions)]}, step=step)

    def finish(self) -> None:
        """Close every tracker run."""
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
