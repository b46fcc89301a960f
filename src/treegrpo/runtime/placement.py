"""Device and dtype names, resolved one way for models and rewards alike."""

from __future__ import annotations

import torch

from treegrpo.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(value: str | torch.dtype | None, key: str = "dtype") -> torch.dtype:
    """A torch dtype from a name such as ``"bf16"`` (or a dtype); ``None`` means float32."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    name = str(value).lower().removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"{key} {value!r} is not supported; use one of fp32, bf16, fp16")
    return DTYPES[name]


def resolve_device(value: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"`` -> CUDA when available, else CPU; anything else is parsed by torch."""
    if value is None or value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)
