"""Checkpoints with exact resume, written atomically, loaded without unpickling anything.

``RUN/checkpoints/step-NNNNNN/`` holds::

    trained.safetensors      trained weights (LoRA or full denoiser), by parameter name
    ema.safetensors          EMA shadow weights (when train.ema > 0)
    optimizer.pt             optimizer state_dict  (torch.save; loaded with weights_only=True)
    scheduler.pt             lr scheduler state_dict (same)
    rng-rank{R}.pt           RNG states of process R as tensors: torch, cuda, numpy, trainer generators
    rng-rank{R}.json         python ``random`` state and numpy's scalar fields
    state.json               iteration, prompt-sampler position, metrics offset, world size
    MANIFEST.json            size and SHA-256 of every file above (written after them)
    COMPLETE                 written last

Everything is written into ``.tmp-step-NNNNNN`` and renamed into place after an fsync, so a
folder named ``step-*`` is always whole; loading also requires ``COMPLETE`` and a manifest that
matches the files. Resume takes the newest checkpoint that passes :func:`verify` and warns about
newer ones that do not. The newest ``keep`` complete checkpoints are kept; stale temp folders of
an interrupted save are deleted at the next save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from treegrpo.errors import ConfigError
from treegrpo.runtime.faults import fault_point
from treegrpo.runtime.fsdp import full_state_dict, shard_like

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
MANIFEST = "MANIFEST.json"
STEP_PATTERN = re.compile(r"^step-(\d{6,})$")


class CheckpointError(ConfigError):
    """A checkpoint or run folder is missing or unusable; the message names the fix."""


def step_name(iteration: int) -> str:
    """Folder name of the checkpoint after ``iteration`` completed iterations."""
    return f"step-{iteration:06d}"


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry (rename durability); ignored where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file in ``folder`` and the folder itself."""
    for file in folder.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def normal_file_modes(path: Path) -> None:
    """Give ``path`` (or every file under it) the mode a normally created file gets (0666 minus the umask).

    safetensors and huggingface_hub write through private temp files (0600); exported weights and
    checkpoints should be as readable as the run's other files.
    """
    mask = os.umask(0)
    os.umask(mask)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        os.chmod(file, 0o666 & ~mask)


def write_json(file: Path, value: Any) -> None:
    """Write JSON and fsync it."""
    fault_point("checkpoint_write")
    with open(file, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- RNG state


def capture_rng(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) describing every RNG of this process."""
    tensors: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    for name, generator in generators.items():
        tensors[f"generator.{name}"] = generator.get_state()
    version, internal, gauss = random.getstate()
    info = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    return tensors, info


def restore_rng(tensors: dict[str, torch.Tensor], info: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put every RNG of this process back where :func:`capture_rng` found it."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    state = info["numpy"]
    keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, generator in generators.items():
        key = f"generator.{name}"
        if key not in tensors:
            raise CheckpointError(f"checkpoint has no state for generator {name!r}; resume with the same treegrpo version")
        generator.set_state(tensors[key])


# ----------------------------------------------------------------------------- save / load


def trained_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights of ``module`` by name (full, detached, contiguous CPU copies).

    With an FSDP-sharded module this gathers every weight whole: every process must call it.
    """
    return full_state_dict(module, trainable_only=True)


def load_trained_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights into ``module`` (names must match exactly; sharded modules take their shard)."""
    parameters = {name: p for name, p in module.named_parameters() if p.requires_grad}
    missing = sorted(set(parameters) - set(state))
    unexpected = sorted(set(state) - set(parameters))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "resume with the run's original model and LoRA settings"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(shard_like(state[name], parameter))


def safe_torch_load(file: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (never arbitrary pickles)."""
    return torch.load(file, map_location="cpu", weights_only=True)


def begin(run_dir: Path, iteration: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``iteration`` (main process only)."""
    folder = run_dir / CHECKPOINTS / f".tmp-{step_name(iteration)}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def temp_folder(run_dir: Path, iteration: int) -> Path:
    """Where every process writes its part of the checkpoint of ``iteration``."""
    return run_dir / CHECKPOINTS / f".tmp-{step_name(iteration)}"


def save_main(
    folder: Path,
    *,
    weights: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    state: dict[str, Any],
    anchor: dict[str, torch.Tensor] | None = None,
) -> None:
    """The main process's share: weights, EMA, the slow copy of a likelihood-free objective, optimizer, scheduler, run state."""
    fault_point("checkpoint_write")
    save_file(weights, str(folder / "trained.safetensors"))
    for name, averaged in (("ema", ema), ("anchor", anchor)):
        if averaged is not None:
            fault_point("checkpoint_write")
            save_file(averaged, str(folder / f"{name}.safetensors"))
    fault_point("checkpoint_write")
    torch.save(optimizer, folder / "optimizer.pt")
    fault_point("checkpoint_write")
    torch.save(scheduler, folder / "scheduler.pt")
    write_json(folder / "state.json", state)
    normal_file_modes(folder)


def save_rng(folder: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    """Every process writes its own RNG states."""
    tensors, info = capture_rng(generators)
    fault_point("checkpoint_write")
    torch.save(tensors, folder / f"rng-rank{rank}.pt")
    write_json(folder / f"rng-rank{rank}.json", info)


def finish(run_dir: Path, iteration: int, keep: int) -> Path:
    """Mark the temp folder complete, rename it into place and prune old checkpoints (main only)."""
    folder = temp_folder(run_dir, iteration)
    _fsync_tree(folder)
    write_json(folder / MANIFEST, manifest(folder))
    fault_point("checkpoint_write")
    (folder / COMPLETE).write_text("ok\n")
    _fsync_tree(folder)
    final = run_dir / CHECKPOINTS / step_name(iteration)
    fault_point("checkpoint_write")
    if final.exists():
        shutil.rmtree(final)
    os.replace(folder, final)
    _fsync_dir(final.parent)
    fault_point("checkpoint_write")
    prune(run_dir, keep)
    return final


def file_digest(file: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file name: {"size": bytes, "sha256": hex}}`` of every file of a checkpoint folder."""
    return {
        file.name: {"size": file.stat().st_size, "sha256": file_digest(file)}
        for file in sorted(folder.iterdir())
        if file.is_file() and file.name not in (MANIFEST, COMPLETE)
    }


def problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable checkpoint (one phrase), or None when it is whole."""
    if not (folder / COMPLETE).is_file():
        return f"no {COMPLETE} marker"
    try:
        listed = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"missing or unreadable {MANIFEST}"
    if not isinstance(listed, dict):
        return f"malformed {MANIFEST}"
    for name, expected in listed.items():
        file = folder / name
        if not isinstance(expected, dict) or not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected.get("size"):
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected.get('size')}"
        if file_digest(file) != expected.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def verify(folder: Path) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``folder`` is a whole checkpoint."""
    reason = problem(folder)
    if reason is not None:
        raise CheckpointError(f"{folder} is incomplete or corrupt ({reason}); resume from an earlier checkpoint")


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_PATTERN.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(STEP_PATTERN.match(p.name).group(1)))  # type: ignore[union-attr]


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and stale temp folders."""
    for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in (run_dir / CHECKPOINTS).glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run that passes :func:`verify` (newer broken ones are warned about), or None."""
    for folder in reversed(complete_checkpoints(run_dir)):
        reason = problem(folder)
        if reason is None:
            return folder
        logger.warning("skipping checkpoint %s: %s; falling back to the previous one", folder, reason)
    return None


def read_state(folder: Path) -> dict[str, Any]:
    """The run state of a checkpoint (after checking it is whole: marker, manifest, sizes, hashes)."""
    verify(folder)
    return json.loads((folder / "state.json").read_text())


def load_rng(folder: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    """Restore this process's RNG states from a checkpoint."""
    file = folder / f"rng-rank{rank}.pt"
    if not file.is_file():
        raise CheckpointError(
            f"{folder} has no RNG state for process {rank}; resume with the number of processes it was saved with"
        )
    restore_rng(safe_torch_load(file), json.loads((folder / f"rng-rank{rank}.json").read_text()), generators)


def load_weights(folder: Path, name: str) -> dict[str, torch.Tensor] | None:
    """``trained``, ``ema`` or ``anchor`` weights of a checkpoint, or None when absent."""
    file = folder / f"{name}.safetensors"
    return load_file(str(file)) if file.is_file() else None
