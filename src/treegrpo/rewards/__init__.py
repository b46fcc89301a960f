"""Reward models by name: ``get_reward("hpsv2", device="cuda")`` returns a :class:`RewardFn`.

Every reward maps ``(images [B, 3, H, W] in [0, 1], prompts) -> float32 CPU scores [B]``.
Entries are imported lazily (``"module:attribute"``), so asking for ``jpeg_compressibility`` never
imports transformers. Add your own with :func:`register_reward`, or name it by import path in the
reward spec: ``get_reward("my_pkg.rewards:score")`` uses a function as is (``fn(images, prompts)``)
and instantiates a class with the options. A module that is not installed is also found as a file
in the working folder (``mymod:score`` -> ``./mymod.py``), or named by its file
(``/path/to/mymod.py:score``); configs record the file's absolute path (:func:`locate_import_path`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence, Union

import torch

from treegrpo.errors import ConfigError
from treegrpo.rewards.base import BatchedReward, RewardFn, check_inputs, checked_scores

RewardFactory = Callable[..., RewardFn]

_REGISTRY: dict[str, Union[str, RewardFactory]] = {
    "hpsv2": "treegrpo.rewards.clip_scorers:HPSv2Reward",
    "imagereward": "treegrpo.rewards.imagereward:ImageRewardReward",
    "pickscore": "treegrpo.rewards.clip_scorers:PickScoreReward",
    "aesthetic": "treegrpo.rewards.clip_scorers:AestheticReward",
    "clipscore": "treegrpo.rewards.clip_scorers:ClipScoreReward",
    "jpeg_compressibility": "treegrpo.rewards.jpeg:JpegCompressibility",
    "jpeg_incompressibility": "treegrpo.rewards.jpeg:JpegIncompressibility",
    "remote": "treegrpo.rewards.remote:RemoteReward",
    "ocr": "treegrpo.rewards.ocr:OcrReward",
    "vlm_judge": "treegrpo.rewards.vlm_judge:VlmJudgeReward",
    "shapes": "treegrpo.demo.reward:ShapesReward",
    "shapes_style": "treegrpo.demo.style:ShapesStyleReward",
}

BUILTIN_REWARDS: tuple[str, ...] = tuple(_REGISTRY)
"""The rewards that ship with treegrpo (``register_reward`` adds to the registry, not to this)."""


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


def _module_from_file(file: Path) -> ModuleType:
    """Import a Python file as a module (once per file)."""
    key = f"treegrpo_user_rewards.{file.stem}_{abs(hash(str(file)))}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def _local_file(module_name: str, folder: Path) -> Path:
    """Where ``module_name`` would be as a file under ``folder`` (``a.b`` -> ``folder/a/b.py``)."""
    return folder / (module_name.replace(".", "/") + ".py")


def _import(module_name: str, name: str) -> ModuleType:
    """The module of an import path: installed or on ``sys.path``, else a file (named, or in the working folder)."""
    if module_name.endswith(".py"):
        file = Path(module_name).expanduser()
        if not file.is_file():
            raise ConfigError(f"reward {name!r}: {file} does not exist; give the path of the Python file that defines it")
        return _module_from_file(file.resolve())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # the module exists but one of its own imports is missing: its traceback says which
        local = _local_file(module_name, Path.cwd())
        if local.is_file():
            return _module_from_file(local.resolve())
        raise ConfigError(
            f"reward {name!r}: no module {module_name!r} is installed or in the working folder ({Path.cwd()}); put "
            f"{module_name.replace('.', '/')}.py beside the config or here, pip install it, or name its file "
            f"('/path/to/{module_name.split('.')[-1]}.py:{name.partition(':')[2]}')"
        ) from None


def locate_import_path(name: str, folders: Sequence[Path]) -> str:
    """``name`` with its module as an absolute file path when the module is not importable as is but is a file in
    one of ``folders`` (or a relative ``.py`` path): what a run records, so resuming from elsewhere finds it."""
    if not is_import_path(name):
        return name
    module_name, _, attribute = name.partition(":")
    if module_name.endswith(".py"):
        file = Path(module_name).expanduser()
        return f"{file.resolve()}:{attribute}" if file.is_file() else name
    try:
        if importlib.util.find_spec(module_name) is not None:
            return name
    except (ImportError, ValueError):
        pass
    for folder in folders:
        file = _local_file(module_name, folder)
        if file.is_file():
            return f"{file.resolve()}:{attribute}"
    return name


def _resolve(name: str, entry: Union[str, RewardFactory]) -> RewardFactory:
    """Import a lazy ``"module:attribute"`` entry (or a user's import path)."""
    if not isinstance(entry, str):
        return entry
    module_name, _, attribute = entry.rpartition(":")
    try:
        module = _import(module_name, name)
    except ImportError as error:
        raise ImportError(f"reward {name!r} needs module {module_name} which failed to import: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"reward {name!r}: {module_name} has no attribute {attribute!r}; name a function or class "
                          "defined in it") from None


_IMPORT_PATH = re.compile(r"^(?:[A-Za-z_][\w.]*|.+\.py):[A-Za-z_][\w.]*$")
_SHARED_OPTIONS = ("device", "dtype")  # options the trainer gives every reward; a plain function ignores them


def is_import_path(name: str) -> bool:
    """``"package.module:attribute"`` or ``"path/to/file.py:attribute"`` (a user's own reward), not a registered name."""
    return bool(_IMPORT_PATH.match(name))


class FunctionReward:
    """A user's ``fn(images, prompts)`` as a reward: checked inputs, float32 CPU scores [B] out."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        return checked_scores(self.fn(images, list(prompts)), self.name, int(images.shape[0]))


def _accepts(factory: Callable[..., Any], option: str) -> bool:
    """Whether ``factory`` takes ``option`` as a keyword (or ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or p.name == option for p in parameters)


def _from_import_path(path: str, options: dict[str, Any]) -> RewardFn:
    """Import ``module:attribute``; a class is built with ``options``, a function is used as is."""
    target = _resolve(path, path)
    if inspect.isclass(target):
        kept = {k: v for k, v in options.items() if k not in _SHARED_OPTIONS or _accepts(target, k)}
        reward = target(**kept)
        if not callable(reward):
            raise ValueError(f"reward {path!r}: an instance of {target.__name__} is not callable; define __call__(images, prompts)")
        return reward
    if callable(target):
        extra = sorted(set(options) - set(_SHARED_OPTIONS))
        if extra:
            raise ValueError(f"reward {path!r} is a function and takes no options, got {extra}: make it a class to accept options")
        return FunctionReward(target, path)
    raise ValueError(f"reward {path!r} is a {type(target).__name__}, not a function or class: point at a callable")


def get_reward(name: str, /, **options: Any) -> RewardFn:
    """Build the reward registered as ``name`` (or imported from ``"module:attribute"``) with its ``options``
    (which may hold a ``name`` of their own: a remote reward's label)."""
    if name not in _REGISTRY:
        if is_import_path(name):
            reward = _from_import_path(name, options)
        else:
            close = difflib.get_close_matches(name, _REGISTRY, n=1, cutoff=0.0)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown reward {name!r}: {hint}available: {', '.join(available_rewards())}, "
                "or an import path 'package.module:function_or_class'"
            )
    else:
        reward = _resolve(name, _REGISTRY[name])(**options)
    if not getattr(reward, "name", None):
        reward.name = name  # type: ignore[attr-defined]
    return reward


__all__ = [
    "BatchedReward", "FunctionReward", "RewardFn", "RewardFactory", "available_rewards", "get_reward",
    "is_import_path", "register_reward",
]
