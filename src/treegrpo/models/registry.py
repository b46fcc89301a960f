"""The model families: one entry each, naming its adapter class and the diffusers pipelines it loads.

Adding a family is one adapter file (a :class:`~treegrpo.models.common.DiffusersBackbone`
subclass) plus one entry here; loading, ``model.family`` validation and error messages read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from treegrpo.models.common import DiffusersBackbone
from treegrpo.models.flux import FluxBackbone
from treegrpo.models.flux2 import Flux2Backbone
from treegrpo.models.flux_kontext import FluxKontextBackbone
from treegrpo.models.ltx2 import LTX2Backbone
from treegrpo.models.hunyuanvideo15 import HunyuanVideo15Backbone
from treegrpo.models.qwenimage import QwenImageBackbone
from treegrpo.models.qwenimage_edit import QwenImageEditBackbone
from treegrpo.models.sana import SanaBackbone
from treegrpo.models.sd import SDBackbone
from treegrpo.models.sd3 import SD3Backbone
from treegrpo.models.wan import WanBackbone
from treegrpo.models.wan_i2v import WanI2VBackbone
from treegrpo.models.zimage import ZImageBackbone


@dataclass(frozen=True)
class Family:
    """A family's adapter class and the pipeline classes it loads (first = default)."""

    adapter: type[DiffusersBackbone]
    pipelines: tuple[str, ...]
    also_loads: tuple[str, ...] = ()
    """Pipeline classes of another family whose folders this one loads (as its first pipeline) when
    ``model.family`` names it: Wan 2.2 TI2V-5B is published as a ``WanPipeline`` and animates images as ``wan_i2v``."""


FAMILIES: dict[str, Family] = {
    family.adapter.family: family
    for family in (
        Family(SD3Backbone, ("StableDiffusion3Pipeline",)),
        Family(FluxBackbone, ("FluxPipeline",)),
        Family(FluxKontextBackbone, ("FluxKontextPipeline",)),
        Family(SDBackbone, ("StableDiffusionPipeline",)),
        Family(QwenImageBackbone, ("QwenImagePipeline",)),
        Family(QwenImageEditBackbone, ("QwenImageEditPipeline", "QwenImageEditPlusPipeline")),
        Family(Flux2Backbone, ("Flux2KleinPipeline", "Flux2Pipeline")),
        Family(ZImageBackbone, ("ZImagePipeline",)),
        Family(WanBackbone, ("WanPipeline",)),
        Family(WanI2VBackbone, ("WanImageToVideoPipeline",), also_loads=("WanPipeline",)),
        Family(SanaBackbone, ("SanaPipeline",)),
        Family(LTX2Backbone, ("LTX2Pipeline",)),
        Family(HunyuanVideo15Backbone, ("HunyuanVideo15Pipeline",)),
    )
}
"""``model.family`` -> its adapter (keyed by the adapter's own ``family``) and pipelines."""


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
    """The adapter class of a registered family."""
    return FAMILIES[family].adapter
