"""The FSDP helpers on plain (unsharded) tensors: they must equal torch's own operations.

The sharded path runs in tests/test_trainer.py::test_fsdp_trains_like_ddp_and_resumes_exactly.
"""

from __future__ import annotations

import torch

from treegrpo.runtime.fsdp import clip_grad_norm, full_optimizer_state, shard_optimizer_state


def _model_with_grads(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model(torch.randn(16, 4)).pow(2).sum().mul(50).backward()
    return model


def test_clip_grad_norm_matches_torch() -> None:
    ours, theirs = _model_with_grads(0), _model_with_grads(0)
    norm = clip_grad_norm(list(ours.parameters()), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 0.5)
    assert norm > 0.5 and abs(norm - float(expected)) < 1e-5 * float(expected)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(a.grad, b.grad)
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(2))], 1.0) == 0.0  # no gradients yet


def test_full_optimizer_state_is_a_copy_that_loads_back() -> None:
    model = _model_with_grads(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.step()
    saved = full_optimizer_state(optimizer)
    saved["state"][0]["exp_avg"] = torch.zeros_like(saved["state"][0]["exp_avg"])  # editing the copy ...
    assert float(optimizer.state[model[0].weight]["exp_avg"].abs().sum()) > 0  # ... leaves the optimizer alone
    other = torch.optim.AdamW(model.parameters(), lr=1e-2)
    other.load_state_dict(full_optimizer_state(optimizer))
    shard_optimizer_state(other)  # plain parameters: nothing to lay out
    assert torch.equal(other.state[model[2].bias]["exp_avg_sq"], optimizer.state[model[2].bias]["exp_avg_sq"])
