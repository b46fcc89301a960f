"""Load a diffusers pipeline (local folder or hub cache) as a :class:`~treegrpo.models.base.Backbone`.

The family is read from ``model_index.json``'s ``_class_name`` unless ``model.family`` says it::

    backbone = load_backbone(ModelConfig(path="stabilityai/stable-diffusion-3.5-medium"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from treegrpo.errors import ConfigError

from treegrpo.models.common import DiffusersBackbone, TrainingWindow
from treegrpo.models.config import ModelConfig, torch_dtype, validate_model_config
from treegrpo.models.registry import FAMILIES, adapter_class, family_of_pipeline, supported_pipelines
from treegrpo.runtime.placement import resolve_device

BUILTIN_MODELS: dict[str, Path] = {"builtin:shapes": Path(__file__).resolve().parents[1] / "demo" / "base"}
"""``model.path`` aliases of pipelines shipped inside the package (folders, so no package above is imported)."""


def resolve_model_path(path: str) -> str:
    """``builtin:shapes`` -> the demo base shipped in the package; anything else unchanged."""
    if path not in BUILTIN_MODELS:
        return path
    folder = BUILTIN_MODELS[path]
    if not (folder / "model_index.json").is_file():
        raise ConfigError(
            f"model.path {path} needs the shipped demo base at {folder}, which is missing; "
            "reinstall treegrpo or set model.path to a pipeline folder"
        )
    return str(folder)


def read_model_index(cfg: ModelConfig) -> dict[str, Any]:
    """The pipeline's ``model_index.json`` from a local folder or the hub (cache honoured)."""
    folder = Path(cfg.path).expanduser()
    if folder.is_dir():
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise ConfigError(
                f"{cfg.path} is not a diffusers pipeline folder (no model_index.json); point model.path at a "
                "folder written by pipe.save_pretrained or at a hub id such as stabilityai/stable-diffusion-3.5-medium"
            )
        model_index: dict[str, Any] = json.loads(index_file.read_text())
        return model_index
    if folder.exists():
        raise ConfigError(f"{cfg.path} is a file, not a pipeline folder; point model.path at the pipeline's folder")
    if looks_local(cfg.path):
        raise ConfigError(f"model.path {cfg.path} is not a folder ({folder.resolve()} does not exist); fix the path "
                          "(relative paths start from the working folder), or give a hub id such as org/name")
    return _read_hub_model_index(cfg)


def looks_local(path: str) -> bool:
    """A path that cannot be a hub id (``org/name``): absolute, ``~``, ``./`` or ``../``, more than one ``/``, or one
    whose first part is a folder here (``models/sd3`` with ``models/`` present): a missing one is a typo, not a
    download to attempt."""
    if path.startswith(("/", "~", "./", "../", ".\\")) or path.count("/") > 1 or "\\" in path:
        return True
    first = path.split("/", 1)[0]
    return "/" in path and Path(first).is_dir()


def _read_hub_model_index(cfg: ModelConfig) -> dict[str, Any]:
    """``model_index.json`` of a hub repository (or its cached copy)."""
    from huggingface_hub import hf_hub_download

    try:
        index_file = hf_hub_download(
            cfg.path, "model_index.json", revision=cfg.revision, local_files_only=cfg.local_files_only
        )
    except Exception as error:  # noqa: BLE001 - hub errors come in many types; all mean the same here
        raise ConfigError(
            f"cannot read model_index.json of {cfg.path!r} ({type(error).__name__}); set model.path to a local "
            "pipeline folder, or to a hub id that is cached or reachable (model.local_files_only=false to download)"
        ) from error
    model_index: dict[str, Any] = json.loads(Path(index_file).read_text())
    return model_index


def family_of(model_index: dict[str, Any], path: str) -> str:
    """The family of a pipeline from its ``_class_name``; one-line error for unsupported ones."""
    class_name = model_index.get("_class_name")
    family = family_of_pipeline(class_name) if isinstance(class_name, str) else None
    if family is None:
        raise ConfigError(
            f"{path} holds a {class_name or 'pipeline without _class_name'}, which is not supported; "
            f"use one of {supported_pipelines()} (a derivative with the same components under another class name "
            "loads with model.family set to that family)"
        )
    return family


def chosen_family(cfg: ModelConfig, model_index: dict[str, Any]) -> str:
    """``cfg.family`` when set (it must not contradict a supported ``_class_name`` it does not ``also_loads``), else the detected one."""
    if cfg.family is None:
        return family_of(model_index, cfg.path)
    detected = family_of_pipeline(model_index.get("_class_name", ""))
    also_loads = model_index.get("_class_name", "") in FAMILIES[cfg.family].also_loads
    if detected is not None and detected != cfg.family and not also_loads:
        raise ConfigError(
            f"model.family is {cfg.family!r} but {cfg.path} holds a {model_index['_class_name']} ({detected}); "
            "unset model.family to use the detected one"
        )
    if detected is None:
        check_components_fit(cfg, model_index)
    return cfg.family


def check_components_fit(cfg: ModelConfig, model_index: dict[str, Any]) -> None:
    """A pipeline loaded as another family (``model.family``) must have no component that family's pipeline
    does not take: an SDXL folder loaded as ``sd`` would drop its second text encoder and fail at the first step."""
    import diffusers

    assert cfg.family is not None
    pipeline = getattr(diffusers, FAMILIES[cfg.family].pipelines[0])
    expected, _ = pipeline._get_signature_keys(pipeline)
    present = {name for name, value in model_index.items() if not name.startswith("_") and isinstance(value, list)}
    extra = sorted(present - set(expected))
    if extra:
        raise ConfigError(
            f"model.family={cfg.family} cannot load {cfg.path}: its {model_index.get('_class_name', 'pipeline')} has "
            f"component(s) {', '.join(extra)} that {pipeline.__name__} does not take, so that model is not supported; "
            f"use one of {supported_pipelines()}"
        )


def _absent_components(model_index: dict[str, Any]) -> dict[str, None]:
    """Components saved as ``[null, null]`` (e.g. SD3 without T5), passed as ``None`` when loading."""
    return {
        name: None
        for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list) and value == [None, None]
    }


def _dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` where diffusers has it (newer releases deprecate ``torch_dtype=``), else ``torch_dtype=``."""
    from diffusers.utils import deprecation_utils

    if hasattr(deprecation_utils, "_resolve_dtype"):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


def load_pipeline(cfg: ModelConfig, family: str, model_index: dict[str, Any]) -> Any:
    """The family's pipeline from ``cfg.path`` in ``cfg.dtype`` (on the CPU; the backbone places it)."""
    import diffusers

    pipelines = FAMILIES[family].pipelines
    class_name = model_index.get("_class_name")
    pipeline_class = getattr(diffusers, class_name if class_name in pipelines else pipelines[0])
    kwargs: dict[str, Any] = {**_absent_components(model_index), **adapter_class(family).pipeline_load_kwargs}
    return pipeline_class.from_pretrained(
        cfg.path,
        **_dtype_argument(torch_dtype(cfg.dtype)),
        revision=cfg.revision,
        variant=cfg.variant,
        local_files_only=cfg.local_files_only,
        **kwargs,
    )


def load_backbone(
    cfg: ModelConfig,
    device: Optional[torch.device | str] = None,
    *,
    with_reference: bool = False,
    trainable: bool = True,
    training_window: Optional[TrainingWindow] = None,
) -> DiffusersBackbone:
    """Load ``cfg.path`` as a trainable policy (LoRA or full fine-tuning) on ``device``.

    ``device`` overrides ``cfg.device``. ``with_reference`` keeps a frozen copy of a fully
    fine-tuned denoiser for :meth:`~DiffusersBackbone.reference` (needed only with a KL term;
    LoRA models never need the copy). ``trainable=False`` loads for sampling only: no adapter,
    every weight frozen in ``cfg.dtype`` (load a trained LoRA with ``backbone.pipe.load_lora_weights``).
    ``training_window``: the steps the trainer may train (Wan 2.2 picks and checks its expert with it).
    """
    validate_model_config(cfg)
    model_index = read_model_index(cfg)
    family = chosen_family(cfg, model_index)
    pipe = load_pipeline(cfg, family, model_index)
    target = torch.device(device) if device is not None else resolve_device(cfg.device)
    if target.type == "cuda":  # process-wide: the kernel choice also holds in backward and checkpoint recomputes
        torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_attention)
    return adapter_class(family)(
        pipe, cfg, target, with_reference=with_reference, trainable=trainable, training_window=training_window
    )
