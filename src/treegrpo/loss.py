"""The clipped policy objective over trained edges, aggregated per parent node.

  ratio_e = exp(log pi_theta(e) - log pi_old(e))
  loss_e  = max(-A_e * ratio_e, -A_e * clip(ratio_e, 1 - eps, 1 + eps))
  L       = mean over parents of (sum or mean of loss_e over the parent's child edges)
            + kl_beta * the same aggregate of KL(pi_theta || pi_ref) per edge (optional)

Pure functions; the caller supplies the re-scored log-probs and means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from treegrpo.choices import Choice
from treegrpo.errors import ConfigError


class NodeAggregation(Choice):
    """How a parent's child-edge losses combine: their mean or their sum."""

    mean = "mean"
    sum = "sum"


@dataclass
class LossConfig:
    """Options of the clipped objective (the ``loss`` config section)."""

    clip_eps: float = 1e-4
    node_aggregation: NodeAggregation = NodeAggregation.mean
    """Per parent node: the mean or the sum of its child edges' losses."""
    kl_beta: float = 0.0
    """Weight of the KL to the reference policy (0 = off)."""

    def check(self) -> None:
        """Ranges the types cannot express; one-line ConfigError naming the key."""
        self.node_aggregation = NodeAggregation.parse(self.node_aggregation, "loss.node_aggregation")
        if not self.clip_eps > 0:
            raise ConfigError(f"loss.clip_eps must be > 0, got {self.clip_eps}")
        if self.kl_beta < 0:
            raise ConfigError(f"loss.kl_beta must be >= 0 (0 = no KL term), got {self.kl_beta}")


def clipped_surrogate(
    new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-edge PPO-clip loss and the ratio."""
    ratio = torch.exp(new_log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped), ratio


def aggregate_per_parent(values: torch.Tensor, parent: torch.Tensor, how: str) -> torch.Tensor:
    """Mean over parents of the per-parent sum or mean of ``values`` (``parent``: dense ids)."""
    if how not in ("mean", "sum"):
        raise ValueError(f"loss.node_aggregation must be 'mean' or 'sum', got {how!r}")
    num = int(parent.max()) + 1
    total = torch.zeros(num, dtype=values.dtype, device=values.device).index_add(0, parent, values)
    if how == "mean":
        count = torch.zeros(num, dtype=values.dtype, device=values.device).index_add(
            0, parent, torch.ones_like(values)
        )
        total = total / count.clamp_min(1)
    return total.mean()


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussians of equal std, averaged over non-batch dims: ``(dm^2 / 2 std^2)``."""
    safe = torch.where(std > 0, std, torch.ones_like(std))
    kl = (mean - ref_mean) ** 2 / (2 * safe**2)
    return torch.where(std > 0, kl, torch.zeros_like(kl)).mean(dim=tuple(range(1, mean.ndim)))


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, float]


def policy_loss(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    parent: torch.Tensor,
    cfg: LossConfig,
    *,
    kl: torch.Tensor | None = None,
) -> LossOutput:
    """The full objective for one minibatch of edges plus its diagnostics.

    ``parent`` gives each edge's parent as a dense id within the minibatch; ``kl`` (optional) is
    the per-edge KL to the reference policy.
    """
    per_edge, ratio = clipped_surrogate(new_log_prob, old_log_prob, advantages, cfg.clip_eps)
    loss = aggregate_per_parent(per_edge, parent, cfg.node_aggregation)
    stats: dict[str, float] = {}
    if kl is not None and cfg.kl_beta > 0:
        kl_term = aggregate_per_parent(kl, parent, cfg.node_aggregation)
        loss = loss + cfg.kl_beta * kl_term
        stats["kl"] = float(kl_term.detach())
    with torch.no_grad():
        log_ratio = new_log_prob - old_log_prob
        stats.update(
            policy_loss=float(per_edge.mean()),
            clip_fraction=float(((ratio - 1).abs() > cfg.clip_eps).float().mean()),
            approx_kl=float(0.5 * (log_ratio**2).mean()),
            ratio_mean=float(ratio.mean()),
            ratio_min=float(ratio.min()),
            ratio_max=float(ratio.max()),
            advantage_mean=float(advantages.mean()),
            advantage_abs_mean=float(advantages.abs().mean()),
        )
    return LossOutput(loss, stats)
