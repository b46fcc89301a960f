"""One TreeGRPO iteration through each real (tiny) backbone: rollout, decode, reward, update."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import pytest
import torch

from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, tiny_pipeline, torch_threads
from treegrpo.math.advantages import backup_edge_advantages, normalize_leaf_scores
from treegrpo.math.loss import LossConfig
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.plans import ODE, tree_plan
from treegrpo.engine.minibatches import make_minibatches, minibatch_loss, rescore_edges

SIZE = 16
STEPS = 4
PROMPTS = ["a red cube", "two cats"]
TREES_PER_PROMPT = 2
NOISE_LEVEL = {"sd3": 0.7, "flux": 0.7, "sd": 1.0}
GUIDANCE = {"sd3": 4.5, "flux": 3.5, "sd": 7.5}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.mark.parametrize("family", ["sd3", "flux", "sd"])
def test_tree_iteration_rescores_to_ratio_one_and_updates(family: str) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(
        ModelConfig(
            path=str(tiny_pipeline(family)),
            dtype="fp32",
            device="cpu",
            height=SIZE,
            width=SIZE,
            max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
            lora=LoraConfig(rank=4, alpha=8.0),
        )
    )
    check_tree_iteration(backbone, GUIDANCE[family], NOISE_LEVEL[family])


def check_tree_iteration(
    backbone: DiffusersBackbone, guidance: float, noise_level: float, without_gradient: tuple[str, ...] = ()
) -> float:
    """Rollout, re-score (ratio 1 before any update), decode, reward, one update; returns max |ratio - 1|.

    ``without_gradient``: names of trained weights the output cannot depend on (e.g. the text stream
    of a last dual-stream block); every other trained weight must get a gradient.
    """
    conditioning = backbone.encode_prompts(PROMPTS)
    schedule = backbone.schedule(STEPS)
    stepper = schedule.stepper(noise_level)
    model_fn = backbone.model_fn(conditioning, guidance, schedule)
    plan = tree_plan(STEPS, k=2, window=2, start=1)
    root_cond = torch.arange(len(PROMPTS)).repeat_interleave(TREES_PER_PROMPT)
    generator = torch.Generator().manual_seed(1)
    noise = backbone.initial_noise(root_cond.numel(), generator)
    rollout = rollout_trees(model_fn, stepper, plan, noise, root_cond, max_batch=8, generator=generator)
    assert rollout.leaf_latents.shape[0] == root_cond.numel() * 4
    assert rollout.structure.edge_log_prob.shape[0] == root_cond.numel() * (2 + 4)

    # Re-scoring the trained edges under the unchanged policy gives ratio 1 (one forward per parent).
    everything = torch.ones_like(rollout.structure.edge_log_prob, dtype=torch.bool)
    (batch,) = make_minibatches(rollout, everything, parents_per_batch=10_000)
    scored = rescore_edges(model_fn, stepper, rollout, batch)
    ratio = torch.exp(scored.log_prob - rollout.structure.edge_log_prob[batch.edge_ids])
    ratio_error = (ratio - 1).abs().max().item()
    print(f"{backbone.family}: max |ratio - 1| before any update = {ratio_error:.3g}")
    assert ratio_error < 1e-5

    # A full iteration: decode leaves, score them, back the advantages up the tree, one update.
    images = backbone.decode(rollout.leaf_latents)
    frames = (getattr(backbone, "num_frames"),) if images.dim() == 5 else ()  # video: [N, F, 3, H, W]
    assert images.shape == (rollout.leaf_latents.shape[0], *frames, 3, backbone.height, backbone.width)
    scores = images.flatten(1).mean(dim=1)
    leaf = normalize_leaf_scores(scores, rollout.leaf_cond, min_group_std=0.0)
    advantages = backup_edge_advantages(
        rollout.structure.node_parent, rollout.structure.node_depth, rollout.structure.edge_child, rollout.structure.edge_log_prob,
        rollout.structure.leaf_node, leaf.advantages,
    )
    parameters = backbone.trainable_parameters()
    before = [p.detach().clone() for p in parameters]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    output = minibatch_loss(model_fn, stepper, rollout, batch, advantages, LossConfig(clip_eps=1e-3))
    output.loss.backward()
    trained = {name: p for name, p in backbone.denoiser.named_parameters() if p.requires_grad}
    assert {name for name, p in trained.items() if p.grad is None} == set(without_gradient)
    optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(parameters, before))
    assert abs(output.stats["ratio_mean"] - 1) < 1e-5
    return ratio_error


def ode_latents(backbone: DiffusersBackbone, prompts: Sequence[str], steps: int, guidance: float, seed: int = 7,
                denoiser: Any = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Final latents of the engine's ODE plan from the pipeline's initial noise (drawn with ``seed`` unless
    ``noise`` is given; ``denoiser``: the module called, default the trained one)."""
    conditioning = backbone.encode_prompts(list(prompts))
    schedule = backbone.schedule(steps)
    if noise is None:
        noise = backbone.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    model_fn = backbone.model_fn(conditioning, guidance, schedule, denoiser=denoiser)
    with torch.no_grad():
        return rollout_trees(model_fn, schedule.stepper(0.0), (ODE,) * steps, noise, torch.arange(len(prompts))).leaf_latents
