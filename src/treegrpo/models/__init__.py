"""Model families behind one :class:`~treegrpo.models.base.Backbone` interface."""

from treegrpo.models.config import LoraConfig, ModelConfig
from treegrpo.models.loading import load_backbone

__all__ = ["LoraConfig", "ModelConfig", "load_backbone"]
