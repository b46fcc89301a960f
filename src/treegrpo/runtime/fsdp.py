"""FSDP for the trained denoiser (``train.fsdp=true``): PyTorch's FSDP2 ``fully_shard``, block by block.

Each process holds 1/N of the denoiser's weights, gradients and optimizer state; a forward
all-gathers one block at a time and frees it after. Every forward is therefore a collective:
every process must run the same number of forwards (the trainer keeps rollouts, minibatches and
evaluations in step). Checkpoints and exports hold full, unsharded tensors gathered here, so a
run's files are the same with and without FSDP.

torch's ``fully_shard`` is called directly instead of accelerate's FSDP plugin because the plugin
does not run on the CPU (accelerate falls back to DDP there), which would leave the sharded path
untested; FSDP2 runs on gloo as on NCCL.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def shard_denoiser(module: torch.nn.Module, mixed_precision: str = "no") -> int:
    """Shard every block of ``module``'s top-level block lists, then the rest; returns the unit count.

    The block lists are the children that are ``ModuleList`` s: ``transformer_blocks`` (SD3, FLUX),
    ``single_transformer_blocks`` (FLUX), ``down_blocks`` / ``up_blocks`` (UNets). With ``bf16``
    the all-gathered weights are cast to bf16 for compute and gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    units = 0
    for child in module.children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                fully_shard(block, mp_policy=policy)
                units += 1
    fully_shard(module, mp_policy=policy)
    return units + 1


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (a collective: every process calls it); plain tensors as they are."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like`` (this process's shard when ``like`` is sharded; a collective then)."""
    if isinstance(like, DTensor):
        local = full.to(like.to_local().device, like.dtype)
        return distribute_tensor(local, like.device_mesh, like.placements)
    return full.to(like.device, like.dtype)


def full_state_dict(module: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full CPU copies of ``module``'s trainable weights, or of its whole state dict (collective when sharded)."""
    if trainable_only:
        items = [(name, p.detach()) for name, p in module.named_parameters() if p.requires_grad]
    else:
        items = list(module.state_dict().items())
    return {name: full_tensor(value).to("cpu").contiguous().clone() for name, value in items}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor gathered whole (collective when sharded).

    The per-parameter dicts are rebuilt, never edited: ``state_dict()`` shares them with the live
    optimizer.
    """
    state = optimizer.state_dict()
    return {
        "state": {index: {key: full_tensor(value) for key, value in entry.items()} for index, entry in state["state"].items()},
        "param_groups": state["param_groups"],
    }


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of a full state: lay each parameter-shaped state tensor out as its parameter."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if not isinstance(parameter, DTensor):
                continue
            entry = optimizer.state.get(parameter, {})
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) and value.shape == parameter.shape:
                    entry[key] = shard_like(value, parameter)


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm of (possibly sharded) parameters to ``max_norm``; returns the norm before."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    total = full_tensor(total)
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)
