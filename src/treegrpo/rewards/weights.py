"""Finding and loading reward-model weights: a local path, or a file in the Hugging Face hub cache.

Checkpoints are read as plain tensors only (``torch.load(weights_only=True)`` or safetensors), never
as arbitrary pickles. A missing file raises :class:`WeightsNotFoundError` in one line that says what
was missing, where we looked and where to get it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WeightsNotFoundError(FileNotFoundError):
    """A reward model's weights (or tokenizer) could not be found locally or in the hub cache."""


def _looks_like_repo_id(name: str) -> bool:
    """``owner/name`` with no path separators beyond the one slash and no file suffix."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_file(
    location: str | os.PathLike[str],
    filename: str,
    *,
    what: str,
    get_it: str,
    local_files_only: bool = False,
) -> Path:
    """Return a readable file for ``location``: a file path, a folder holding ``filename``,
    or a hub repo id whose ``filename`` is fetched through the hub cache."""
    path = Path(location).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        raise WeightsNotFoundError(f"{what}: no {filename} in folder {path}; get it from {get_it}")
    name = str(location)
    if not _looks_like_repo_id(name):
        raise WeightsNotFoundError(f"{what}: file {path} does not exist; get it from {get_it}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=name, filename=filename, local_files_only=local_files_only))
    except Exception as error:  # hub errors vary by version: offline, missing repo, missing file
        mode = "the local hub cache" if local_files_only else "the hub (and its cache)"
        reason = type(error).__name__
        raise WeightsNotFoundError(
            f"{what}: {filename} from {name} not found in {mode} ({reason}); get it from {get_it} "
            "and pass its local path"
        ) from error


def load_state_dict(path: str | os.PathLike[str], *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a plain state dict (tensors only) on CPU; unwrap ``key`` (e.g. ``"state_dict"``) if present."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"cannot read {path} as a plain tensor checkpoint ({type(error).__name__}): "
                "re-save it as a state dict or safetensors"
            ) from error
    if key is not None and isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors: re-save it with torch.save(model.state_dict())")
    return dict(state)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop a common key prefix such as ``"module."`` (from DDP) when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def from_pretrained(
    loader: Callable[..., T],
    location: str | os.PathLike[str],
    *,
    what: str,
    get_it: str,
    local_files_only: bool = False,
    **kwargs: Any,
) -> T:
    """Call a transformers ``from_pretrained`` and turn its failure into a one-line error."""
    try:
        return loader(str(location), local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as error:
        mode = "locally / in the hub cache" if local_files_only else "locally, in the hub cache or on the hub"
        raise WeightsNotFoundError(
            f"{what}: could not load {location} {mode} ({type(error).__name__}); get it from {get_it} "
            "and pass its folder"
        ) from error


def load_pretrained_model(
    cls: Any,
    location: str | os.PathLike[str],
    *,
    what: str,
    get_it: str,
    local_files_only: bool = False,
) -> Any:
    """``cls.from_pretrained`` that refuses weights transformers would silently re-initialise."""
    model, info = from_pretrained(
        cls.from_pretrained, location, what=what, get_it=get_it,
        local_files_only=local_files_only, output_loading_info=True,
    )
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        raise ValueError(
            f"{what}: {location} lacks {len(missing)} weight(s) {missing[:3]} and has {len(mismatched)} "
            f"of the wrong shape {mismatched[:3]}; is it the right checkpoint?"
        )
    return model


def build_uninitialised(cls: Callable[..., T], config: Any, **kwargs: Any) -> T:
    """Construct a transformers model from ``config`` without running weight init (weights follow)."""
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        return cls(config, **kwargs)


def load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error listing what is missing/unexpected."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what}: checkpoint does not fit the model: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}); is it the right checkpoint?"
        )
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{what}: {len(wrong)} tensor shape(s) differ, e.g. {k} {tuple(state[k].shape)} vs "
            f"{tuple(expected[k].shape)}; check the head-width options"
        )
    module.load_state_dict(state, strict=True)
