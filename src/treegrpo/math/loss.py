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
from treegrpo.math.likelihood_free import DecaySchedule, TimestepSampling


class NodeAggregation(Choice):
    """How a parent's child-edge losses combine: their mean or their sum."""

    mean = "mean"
    sum = "sum"


class Objective(Choice):
    """``loss.objective``: the clipped policy gradient over tree edges, or a likelihood-free objective on the
    clean samples (:mod:`treegrpo.math.likelihood_free`)."""

    clipped = "clipped"
    nft = "nft"
    awm = "awm"

    @property
    def likelihood_free(self) -> bool:
        """Trains on re-noised clean samples, not on the rollout's edges."""
        return self is not Objective.clipped


@dataclass
class LossConfig:
    """Options of the objective (the ``loss`` config section)."""

    objective: Objective = Objective.clipped
    clip_eps: float = 1e-4
    node_aggregation: NodeAggregation = NodeAggregation.mean
    """Per parent node: the mean or the sum of its child edges' losses."""
    kl_beta: float = 0.0
    """Weight of the KL to the reference policy (0 = off)."""
    ratio_norm: bool = False
    """GRPO-Guard's ratio normalisation: remove the ``|mu_new - mu_old|^2 / 2 std^2`` term that keeps
    ratios below 1 (so clipping acts on both sides) and scale the log-ratio by the step's std (one
    ratio scale for every step); see :func:`guarded_log_ratio`."""
    step_reweight: bool = False
    """GRPO-Guard's step reweighting: weight each edge's loss by ``1 / (sigma_t - sigma_{t+1})`` of its
    step, normalised to mean 1 over the schedule, so every step's gradient has one scale (flow models)."""
    nft_beta: float = 1.0
    """DiffusionNFT's beta: how far the implicit positive / negative policies sit from the old one (1 or 0.1)."""
    old_policy_decay: DecaySchedule = DecaySchedule.none
    """DiffusionNFT's sampling policy ``theta_old <- eta theta_old + (1 - eta) theta`` after each iteration, ``eta``
    by optimizer steps: ``none`` (on-policy), ``linear_to_0_5`` (min(0.001 i, 0.5), the paper's),
    ``delayed_linear_to_0_999``; rollouts sample from it and ``v_old`` is its velocity."""
    awm_power: float = 0.25
    """AWM's generalised-Huber power ``p`` (``ghuber``; 1 = the sigma-weighted flow-matching loss)."""
    ema_kl_beta: float = 0.0
    """AWM's second KL term, to an EMA of the policy updated with ``min(0.001 i, 0.3)`` (its code: 1.0)."""
    timesteps: TimestepSampling = TimestepSampling.per_sample
    """Likelihood-free objectives: which sampler steps each clean sample is re-noised at."""
    timestep_fraction: float = 0.99
    """``per_sample``: the kept share of the steps (``int(T * f)``); ``stratified``: the range of steps used."""
    timestep_draws: int = 6
    """``stratified``: steps drawn per sample (one per stratum of steps 1 .. ``int(T * timestep_fraction)``)."""

    @property
    def keeps_anchor(self) -> bool:
        """Whether the objective keeps a slow copy of the trained weights: DiffusionNFT's sampling policy (with a
        decay schedule) or the EMA of AWM's second KL term."""
        return (self.objective == Objective.nft and self.old_policy_decay != DecaySchedule.none) or (
            self.objective == Objective.awm and self.ema_kl_beta > 0)

    @property
    def anchor_decay(self) -> DecaySchedule:
        """The slow copy's decay schedule: ``loss.old_policy_decay`` (nft), AWM's ``min(0.001 i, 0.3)`` (awm)."""
        return self.old_policy_decay if self.objective == Objective.nft else DecaySchedule.linear_to_0_3

    def check(self) -> None:
        """Ranges the types cannot express and settings of one objective given to another; one-line ConfigError."""
        self.objective = Objective.parse(self.objective, "loss.objective")
        self.node_aggregation = NodeAggregation.parse(self.node_aggregation, "loss.node_aggregation")
        self.timesteps = TimestepSampling.parse(self.timesteps, "loss.timesteps")
        self.old_policy_decay = DecaySchedule.parse(self.old_policy_decay, "loss.old_policy_decay")
        if not self.clip_eps > 0:
            raise ConfigError(f"loss.clip_eps must be > 0, got {self.clip_eps}")
        for key in ("kl_beta", "ema_kl_beta"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} must be >= 0 (0 = no KL term), got {getattr(self, key)}")
        for key in ("nft_beta", "awm_power"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"loss.{key} must be > 0, got {getattr(self, key)}")
        if not 0 < self.timestep_fraction <= 1 or self.timestep_draws < 1:
            raise ConfigError("loss.timestep_fraction must be in (0, 1] and loss.timestep_draws >= 1, got "
                              f"{self.timestep_fraction} and {self.timestep_draws}")
        self._refuse_settings_of_other_objectives()

    def _refuse_settings_of_other_objectives(self) -> None:
        """A setting only another objective reads is a contradiction, not something to ignore."""
        defaults = LossConfig()
        owners = {"nft": ("nft_beta", "old_policy_decay"), "awm": ("awm_power", "ema_kl_beta"),
                  "clipped": ("ratio_norm", "step_reweight")}
        for objective, keys in owners.items():
            if self.objective == objective:
                continue
            for key in keys:
                if getattr(self, key) != getattr(defaults, key):
                    raise ConfigError(f"loss.{key}={getattr(self, key)} belongs to loss.objective={objective}, but the "
                                      f"objective is {self.objective.value}; drop it or set loss.objective={objective}")
        if not self.objective.likelihood_free:
            for key in ("timesteps", "timestep_fraction", "timestep_draws"):
                if getattr(self, key) != getattr(defaults, key):
                    raise ConfigError(f"loss.{key} sets where clean samples are re-noised, which only loss.objective="
                                      "nft or awm does; drop it or choose one of them")


def guarded_log_ratio(
    new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, new_mean: torch.Tensor, old_mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """GRPO-Guard's normalised log-ratio ``(log p_new - log p_old + b) * s`` per edge.

    For a Gaussian step of std ``s`` with ``x = mu_old + s z`` the plain log-ratio (averaged over
    dimensions) is ``mean(z d) / s - mean(d^2) / (2 s^2)`` with ``d = mu_new - mu_old``: its second
    term biases every ratio below 1 and grows as ``s`` shrinks. Adding ``b = mean(d^2) / (2 s^2)``
    and scaling by ``s`` leaves ``mean(z d)``: centred at 0 and on one scale for every step.
    """
    dims = tuple(range(1, new_mean.ndim))
    step_std = std.reshape(std.shape[0], -1)[:, 0]
    safe = torch.where(step_std > 0, step_std, torch.ones_like(step_std))
    bias = ((new_mean - old_mean) ** 2).mean(dim=dims) / (2 * safe**2)
    return torch.where(step_std > 0, (new_log_prob - old_log_prob + bias) * step_std, torch.zeros_like(bias))


def step_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's per-step loss weights ``1 / (sigma_t - sigma_{t+1})``, normalised to mean 1: ``[T]``.

    A flow step's mean moves by ``dt`` times the model output, so its gradient scales with ``dt``;
    the weights undo that, so late (short) steps are not drowned by early (long) ones.
    """
    steps = (sigmas[:-1] - sigmas[1:]).to(torch.float32)
    if bool((steps <= 0).any()):
        raise ValueError("step_weights needs strictly decreasing sigmas")
    inverse = 1.0 / steps
    return inverse / inverse.mean()


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-edge PPO-clip loss and the ratio ``exp(log_ratio)``."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped), ratio


def aggregate_per_parent(values: torch.Tensor, parent: torch.Tensor, how: NodeAggregation) -> torch.Tensor:
    """Mean over parents of the per-parent sum or mean of ``values`` (``parent``: dense ids)."""
    how = NodeAggregation(how)  # a bad value raises ValueError
    num = int(parent.max()) + 1
    total = torch.zeros(num, dtype=values.dtype, device=values.device).index_add(0, parent, values)
    if how is NodeAggregation.mean:
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
    log_ratio: torch.Tensor | None = None,
    edge_weight: torch.Tensor | None = None,
) -> LossOutput:
    """The full objective for one minibatch of edges plus its diagnostics.

    ``parent`` gives each edge's parent as a dense id within the minibatch; ``kl`` (optional) is
    the per-edge KL to the reference policy; ``log_ratio`` replaces ``new - old`` log-probs (the
    guarded ratio); ``edge_weight`` scales each edge's clipped loss (step reweighting).
    """
    if log_ratio is None:
        log_ratio = new_log_prob - old_log_prob
    per_edge, ratio = clipped_surrogate(log_ratio, advantages, cfg.clip_eps)
    if edge_weight is not None:
        per_edge = per_edge * edge_weight
    loss = aggregate_per_parent(per_edge, parent, cfg.node_aggregation)
    stats: dict[str, float] = {}
    if kl is not None and cfg.kl_beta > 0:
        kl_term = aggregate_per_parent(kl, parent, cfg.node_aggregation)
        loss = loss + cfg.kl_beta * kl_term
        stats["kl"] = float(kl_term.detach())
    with torch.no_grad():
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
