"""The model families: one entry each, naming its adapter class and the diffusers pipelines it loads.

Adding a family is one adapter file (a :class:`~treegrpo.models.common.DiffusersBackbone`
subclass) plus one entry here; loading, ``model.family`` validation and error messages read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from treegrpo.models.common import DiffusersBackbone


@dataclass(frozen=True)
class Family:
    """Where a family's adapter lives (``"module:Class"``) and the pipeline classes it loads (first = default)."""

    adapter: str
    pipelines: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "sd3": Family("treegrpo.models.sd3:SD3Backbone", ("StableDiffusion3Pipeline",)),
    "flux": Family("treegrpo.models.flux:FluxBackbone", ("FluxPipeline",)),
    "flux_kontext": Family("treegrpo.models.flux_kontext:FluxKontextBackbone", ("FluxKontextPipeline",)),
    "sd": Family("treegrpo.models.sd:SDBackbone", ("StableDiffusionPipeline",)),
    "qwenimage": Family("treegrpo.models.qwenimage:QwenImageBackbone", ("QwenImagePipeline",)),
    "qwenimage_edit": Family("treegrpo.models.qwenimage_edit:QwenImageEditBackbone", ("QwenImageEditPipeline",)),
    "flux2": Family("treegrpo.models.flux2:Flux2Backbone", ("Flux2KleinPipeline",)),
    "zimage": Family("treegrpo.models.zimage:ZImageBackbone", ("ZImagePipeline",)),
    "wan": Family("treegrpo.models.wan:WanBackbone", ("WanPipeline",)),
}


def family_of_pipeline(class_name: str) -> str | None:
    """The family that loads a pipeline class (``model_index.json``'s ``_class_name``), if any."""
    for name, family in FAMILIES.items():
        if class_name in family.pipelines:
            return name
    return None


def supported_pipelines() -> str:
    """``"StableDiffusion3Pipeline (sd3), ..."`` for error messages."""
    return ", ".join(f"{pipeline} ({name})" for name, family in FAMILIES.items() for pipeline in family.pipelines)


def adapter_class(family: str) -> type[DiffusersBackbone]:
    """Import and return the adapter class of a registered family."""
    module_name, _, attribute = FAMILIES[family].adapter.partition(":")
    cls: type[DiffusersBackbone] = getattr(importlib.import_module(module_name), attribute)
    return cls
