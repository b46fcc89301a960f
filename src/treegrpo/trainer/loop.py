"""The RL loop: one trainer for every model and method, single- or multi-process (accelerate).

One iteration (:meth:`Trainer.run_iteration`) is plan -> rollout -> rewards -> advantages ->
update. Every process draws the same prompts and grows its share of the trees; scores and tree
structure are gathered (:mod:`treegrpo.trainer.distributed`) so that group statistics see whole
prompt groups; each process then trains on its own edges. Around iterations: EMA, metrics,
evaluation, checkpoints (exact resume) and a clean stop on SIGTERM / SIGINT.

Reliability: a non-finite reward, rollout log-prob, ratio, loss or gradient skips the update it
would poison (``nonfinite_skips`` / ``nonfinite`` in metrics.jsonl); ``train.max_nonfinite_in_a_row``
bad iterations in a row stop the run with :class:`~treegrpo.runtime.guards.NonFiniteError`. A remote reward's
NaN means "not scored": the image is left out of its group and of training (``reward_unscored``);
``train.max_unscored_in_a_row`` iterations with nothing scored stop the run with a checkpoint and the
resume command (:class:`~treegrpo.runtime.guards.RewardUnavailable`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from treegrpo.config import Progress, TrainerConfig, config_values, to_yaml
from treegrpo.data import PromptSampler, PromptSets, load_prompt_sets
from treegrpo.engine.methods import plan_for_iteration
from treegrpo.engine.rollout import TreeRollout, TreeStructure, concat_rollouts, rollout_trees
from treegrpo.engine.update import (
    EdgeAdvantages, UpdateConfig, UpdateResult, compute_advantages, draw_training_points, select_edges, update_on_samples,
    update_policy, velocities_at,
)
from treegrpo.hub import write_model_card
from treegrpo.math.advantages import component_normalized_scores
from treegrpo.math.likelihood_free import decay
from treegrpo.math.plans import Plan, describe
from treegrpo.math.sampling import FlowSchedule
from treegrpo.models.base import Backbone
from treegrpo.optim import Ema, lr_factor
from treegrpo.runtime import checkpoint as ckpt
from treegrpo.runtime.faults import fault_point
from treegrpo.runtime.fsdp import full_state_dict
from treegrpo.runtime.guards import (
    NonFiniteGuard, RewardUnavailable, UnscoredGuard, log_prob_findings, reward_findings, stats_findings,
)
from treegrpo.trainer.budget import TimeBudget
from treegrpo.trainer.distributed import (
    AccelerateLearner, Processes, balance_parents, gather_structure, peer_lost, process_group_kwargs,
)
from treegrpo.trainer.evaluation import RewardSet
from treegrpo.trainer.held_out import HeldOutEvaluation, LatestRollout
from treegrpo.trainer.metrics import MetricsLog, iteration_record, write_debug_dump
from treegrpo.trainer.progress import RunProgress, rollout_bar
from treegrpo.trainer.run_dir import resume_command, write_atomic
from treegrpo.trainer.setup import (
    build_judges, build_rewards, check_launch, load_configured_backbone, make_generators, make_optimizer, seed_everything,
    shard_if_asked,
)
from treegrpo.trainer.signals import StopSignals, TrainingInterrupted
from treegrpo.trainer.state import TrainingState, load_checkpoint, save_checkpoint


logger = logging.getLogger(__name__)


@dataclass
class SharedScores:
    """What every process knows after gathering: the whole tree structure, all scores, and whether to skip."""

    structure: TreeStructure
    own_edges: slice
    """This process's edges in ``structure``'s edge order (what it trains; its advantages are ``edge[own_edges]``)."""
    own_leaves: slice
    """This process's leaves in ``structure``'s leaf order (what a likelihood-free objective trains on)."""
    scores: torch.Tensor
    components: dict[str, torch.Tensor]
    """Each reward's scores of every leaf (gathered only with ``advantage.component_norm``; else empty)."""
    skip: bool
    findings: list[str]


@dataclass
class IterationResult:
    """What one iteration leaves behind (for logging and pictures)."""

    metrics: dict[str, Any]
    rollout: TreeRollout
    scores: torch.Tensor
    prompts: list[str]
    """This process's prompts (``rollout.node_cond`` indexes them)."""
    edge_advantages: Optional[torch.Tensor] = None
    """Advantages of this process's edges (indexed like ``rollout.structure.edge_child``)."""


Scores = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""(weighted score [L], each reward's scores [L]) of a rollout's leaves."""

NO_UPDATE = UpdateResult({"training_nfe": 0.0, "trained_edges": 0.0, "optimizer_steps": 0.0}, skipped_steps=1)
"""An iteration whose update was skipped as a whole (non-finite scores or log-probs): one skipped step."""


class Trainer:
    """The RL loop over one backbone, one method and one reward set (see the module docstring)."""

    def __init__(
        self,
        cfg: TrainerConfig,
        *,
        run_dir: Optional[Path] = None,
        resume_from: Optional[Path] = None,
        backbone: Optional[Backbone] = None,
        rewards: Optional[RewardSet] = None,
        judges: Optional[RewardSet] = None,
        accelerator: Any = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg = cfg
        self.budget = TimeBudget(cfg.train.max_minutes, start=time.time())
        self.run_dir = Path(run_dir or cfg.output_dir)
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=cfg.train.find_unused_parameters)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.train.mixed_precision, kwargs_handlers=[ddp, process_group_kwargs(cfg.train.dist_timeout)], cpu=not torch.cuda.is_available()
        )
        self.processes = Processes(self.accelerator)
        check_launch(self.accelerator, cfg)
        self.prompts: PromptSets = load_prompt_sets(cfg.data, cfg.seed)
        self.sampler = PromptSampler(len(self.prompts.train), cfg.seed)
        seed_everything(cfg.seed, self.processes.rank)
        self.backbone = backbone or load_configured_backbone(cfg, self.processes.device)
        self.rewards = rewards or build_rewards(cfg.reward, self.processes.device)
        self.judges = judges if judges is not None else build_judges(cfg, self.processes.device)
        self.schedule = self.backbone.schedule(cfg.sampling.steps)
        self.stepper = self.schedule.stepper(cfg.sampling.noise_level, cfg.sampling.sde_type)
        self.sharded = shard_if_asked(self.backbone, cfg, self.processes.world)
        self.wrapped = self.backbone.denoiser if self.sharded else self.accelerator.prepare(self.backbone.denoiser)
        self.parameters = self.backbone.trainable_parameters()
        self.optimizer = self.accelerator.prepare(make_optimizer(self.parameters, cfg.train))
        t = cfg.train
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            getattr(self.optimizer, "optimizer", self.optimizer), functools.partial(lr_factor, t.lr_schedule, t.warmup, t.iterations)
        )
        self.learner = AccelerateLearner(self.accelerator, self.optimizer, self.parameters, t.max_grad_norm,
                                         self.processes, self.sharded)
        named: dict[str, torch.Tensor] = {n: p for n, p in self.backbone.denoiser.named_parameters() if p.requires_grad}
        self.ema = Ema(named, t.ema) if t.ema > 0 else None
        self.anchor = Ema(named, 0.0) if cfg.loss.keeps_anchor else None
        """DiffusionNFT's sampling policy or AWM's KL EMA: a slow copy of the trained weights (loss.old_policy_decay)."""
        self.generators = make_generators(cfg.seed, self.processes.rank, self.processes.device)
        world = self.processes.world
        parents, edges = t.minibatch_sizes()
        self.update_cfg = UpdateConfig(t.inner_epochs, None if parents is None else parents // world, t.grad_accum,
                                       edges_per_batch=None if edges is None else edges // world)
        if world > 1:
            unit, size = ("parents", parents) if parents is not None else ("trained edges", edges)
            logger.info("minibatch: %d %s over %d processes (%d per process); its size is global",
                        size, unit, world, (size or 0) // world)
        self.state = TrainingState(self.backbone.denoiser, self.optimizer, self.scheduler, self.ema, self.sampler,
                                   self.generators, self.sharded, anchor=self.anchor)
        self.log = MetricsLog(self.run_dir, is_main=self.processes.is_main, iterations=t.iterations, log_every=t.log_every,
                              log_with=t.log_with, config=config_values(cfg))
        self.held_out = HeldOutEvaluation(cfg, self.backbone, self.rewards, self.judges, self.prompts.eval, self.run_dir,
                                          self.log, self.processes, self.sharded)
        self.reward_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treegrpo-reward")
        """Scores a rollout's chunks while the next chunk samples (``sampling.reward_chunks``); one worker keeps order."""
        self.last: Optional[IterationResult] = None
        self.last_evaluation = time.time()
        self.guard = NonFiniteGuard(t.max_nonfinite_in_a_row)
        self.unscored = UnscoredGuard(t.max_unscored_in_a_row)
        self.stop = StopSignals(announce=self.processes.is_main)
        self.start_iteration = self.metrics_lines = 0
        if resume_from is not None:
            point = load_checkpoint(resume_from, self.state, self.processes, cfg.seed)
            self.start_iteration, self.metrics_lines = point.iteration, point.metrics_lines
            self.guard.in_a_row = point.nonfinite_in_a_row

    # ------------------------------------------------------------------ one iteration

    def run_iteration(self, iteration: int) -> IterationResult:
        """One RL iteration: plan -> rollout -> rewards -> advantages -> update; returns its metrics."""
        cfg, start = self.cfg, time.time()
        plan = plan_for_iteration(cfg.tree, cfg.sampling.steps, iteration, cfg.seed)
        epoch = self.sampler.epoch  # the pass this iteration's first prompt comes from (a draw may end it)
        prompts, root_cond, root_group = self._draw_prompts()
        conditioning = self.backbone.encode_prompts(prompts)
        rollout, scored_while_sampling = self._rollout(plan, conditioning, root_cond, prompts, iteration)
        rollout_seconds = time.time() - start

        leaf_prompts = [prompts[int(i)] for i in rollout.leaf_cond]
        scores, components = self._scores(rollout, leaf_prompts, scored_while_sampling)
        fault_point("reward")
        reward_seconds = time.time() - start - rollout_seconds

        shared = self._share_scores(rollout, scores, components, leaf_prompts, root_group)
        # a non-finite score is "not scored": normalize_leaf_scores leaves it out of the statistics (advantage 0)
        advantages = compute_advantages(shared.structure, self._ranked_scores(shared), cfg.advantage)

        update_start = time.time()
        if cfg.train.debug_dump and not shared.skip:
            write_debug_dump(self.run_dir / "debug" / f"step-{iteration + 1:06d}-rank{self.processes.rank}.pt",
                             self.processes, self.parameters, scores, root_group[rollout.structure.leaf_tree.cpu()],
                             advantages.leaf, shared.scores, shared.structure.leaf_group)
        if shared.skip:
            update = NO_UPDATE
        elif cfg.loss.objective.likelihood_free:
            update = self._update_on_samples(rollout, shared, advantages, conditioning)
        else:
            update = self._update(rollout, shared, advantages, conditioning)
        stats = update.stats
        self.state.optimizer_steps += int(stats["optimizer_steps"])
        findings = shared.findings + ([] if shared.skip else update.findings + stats_findings(stats))
        lr = float(self.scheduler.get_last_lr()[0])
        with warnings.catch_warnings():  # a skipped update has no optimizer.step: the schedule still counts the iteration
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        if self.ema is not None and not shared.skip:
            self.ema.update()
        if self.anchor is not None and not shared.skip:
            self.anchor.update(decay(cfg.loss.anchor_decay, self.state.optimizer_steps))

        metrics = iteration_record(
            step=iteration + 1, epoch=epoch, plan=describe(plan), scores=shared.scores, components=components,
            leaf=advantages.leaf, stats=stats, rollout_nfe=rollout.nfe, model_calls=rollout.model_calls,
            kl_beta=cfg.loss.kl_beta, lr=lr, prompts=cfg.data.prompts_per_iteration, processes=self.processes,
        )
        metrics.update(
            seconds=time.time() - start, rollout_seconds=rollout_seconds, reward_seconds=reward_seconds,
            update_seconds=time.time() - update_start,
        )
        metrics.update(self.guard.end_iteration(iteration + 1, findings, update.skipped_steps))
        metrics.update(self.unscored.end_iteration(advantages.leaf.unscored, int(advantages.leaf.scored.numel())))
        return IterationResult(metrics, rollout, scores, prompts, advantages.edge[shared.own_edges].detach().cpu())

    def _draw_prompts(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """This process's prompts, the local conditioning row of each local tree, the global group of each."""
        cfg, rank, world = self.cfg, self.processes.rank, self.processes.world
        indices = self.sampler.draw(cfg.data.prompts_per_iteration)
        texts = [self.prompts.train[i] for i in indices]
        per_process = len(texts) * cfg.tree.trees // world
        root_group = torch.arange(len(texts)).repeat_interleave(cfg.tree.trees)[rank * per_process : (rank + 1) * per_process]
        groups, root_cond = torch.unique(root_group, return_inverse=True)
        return [texts[int(g)] for g in groups], root_cond, root_group

    def _rollout(
        self, plan: Plan, conditioning: Any, root_cond: torch.Tensor, prompts: list[str], iteration: int
    ) -> tuple[TreeRollout, list[Future[Scores]]]:
        """Grow this process's trees from their share of the iteration's noise (the same on any process count).

        With ``sampling.reward_chunks > 1`` the trees grow chunk by chunk and each chunk's images
        are scored in a worker thread while the next chunk is sampled; the futures come back too.
        """
        cfg, device = self.cfg, self.processes.device
        roots = cfg.data.prompts_per_iteration * cfg.tree.trees
        per_process = roots // self.processes.world
        noise = self.backbone.initial_noise(roots, self.generators["noise"])
        noise = noise[self.processes.rank * per_process : (self.processes.rank + 1) * per_process].to(device)
        root_cond = root_cond.to(device)
        model_fn = self.backbone.model_fn(conditioning, cfg.sampling.guidance_scale, self.schedule)
        chunks = torch.arange(per_process, device=device).tensor_split(min(cfg.sampling.reward_chunks, per_process))
        parts: list[TreeRollout] = []
        pending: list[Future[Scores]] = []
        self.backbone.denoiser.eval()
        with rollout_bar(self.cfg.train.progress == Progress.steps and self.processes.is_main, iteration,
                         self.cfg.sampling.steps * len(chunks)) as bar:
            for trees in chunks:
                # mixed precision: accelerate.prepare patched the denoiser's own forward with autocast, so the
                # rollout computes the old log-probs in the precision the update recomputes them in
                with self._sampling_policy():
                    part = rollout_trees(
                        model_fn, self.stepper, plan, noise[trees], root_cond[trees],
                        max_batch=cfg.sampling.max_batch, generator=self.generators["rollout"],
                        on_step=lambda step, width: bar.update(1), keep_means=cfg.loss.ratio_norm,
                        antithetic=cfg.tree.antithetic,
                    )
                parts.append(part)
                if len(chunks) > 1:
                    leaf_prompts = [prompts[int(i)] for i in part.leaf_cond]
                    images = self.backbone.decode(part.leaf_latents)
                    pending.append(self.reward_worker.submit(self.rewards, images, leaf_prompts))
        fault_point("rollout")
        return concat_rollouts(parts), pending

    def _scores(self, rollout: TreeRollout, leaf_prompts: list[str], pending: list[Future[Scores]]) -> Scores:
        """Scores of the rollout's leaves: the chunks scored while sampling, or all of them now."""
        if not pending:
            return self.rewards(self.backbone.decode(rollout.leaf_latents), leaf_prompts)
        done = [future.result() for future in pending]
        components = {name: torch.cat([part[1][name] for part in done]) for name in done[0][1]}
        return torch.cat([part[0] for part in done]), components

    def _share_scores(
        self, rollout: TreeRollout, scores: torch.Tensor, components: dict[str, torch.Tensor],
        leaf_prompts: list[str], root_group: torch.Tensor,
    ) -> SharedScores:
        """Gather every process's tree structure and scores; skip the update on non-finite values anywhere."""
        gathered = gather_structure(rollout.structure, root_group, self.processes)
        all_scores = self.processes.gather(scores)
        findings = log_prob_findings(rollout.structure.edge_log_prob, rollout.edge_step)
        findings += reward_findings(components, leaf_prompts, self.rewards.abstaining)
        faulty = self.processes.any(bool(findings))
        if faulty and not findings:
            findings = ["reward: non-finite scores on another process"]
        skip = faulty or not bool(torch.isfinite(all_scores).any())  # or nothing scored at all
        all_components: dict[str, torch.Tensor] = {}
        if self.cfg.advantage.component_norm:
            names = sorted(components)
            stacked = self.processes.gather(torch.stack([components[name] for name in names], dim=1))
            all_components = {name: stacked[:, column] for column, name in enumerate(names)}
        return SharedScores(gathered.structure, gathered.own_edges, gathered.own_leaves, all_scores, all_components,
                            skip, findings)

    def _ranked_scores(self, shared: SharedScores) -> torch.Tensor:
        """The leaf scores advantages rank: the weighted reward, or with ``advantage.component_norm`` the
        weighted sum of each reward normalised within its prompt group."""
        if not self.cfg.advantage.component_norm:
            return shared.scores
        components = {name: torch.nan_to_num(values) for name, values in shared.components.items()}
        ranked = component_normalized_scores(components, self.rewards.multi.weights, shared.structure.leaf_group,
                                             min_group_std=self.cfg.advantage.min_group_std)
        return torch.where(torch.isfinite(shared.scores), ranked, torch.nan)  # a leaf any reward left unscored

    def _update(
        self, rollout: TreeRollout, shared: SharedScores, advantages: EdgeAdvantages, conditioning: Any
    ) -> UpdateResult:
        """Select and balance this process's edges, then run the clipped update; returns what it did."""
        cfg, device = self.cfg, self.processes.device
        kl_on = cfg.loss.kl_beta > 0
        edge_adv = advantages.edge[shared.own_edges].to(device)
        # selection reads the whole structure (pruning ranks a depth's edges over every process), then keeps ours
        mask = select_edges(shared.structure, advantages.edge, cfg.advantage, kl_on)[shared.own_edges].to(device)
        parents = torch.zeros(rollout.num_parents, dtype=torch.bool, device=device)
        parents[rollout.edge_parent_slot[mask]] = True
        target = int(self.processes.gather(parents.sum().reshape(1)).max())
        mask, edge_adv = balance_parents(rollout, mask, edge_adv, target)
        guidance = cfg.sampling.guidance_scale
        train_fn = self.backbone.model_fn(conditioning, guidance, self.schedule, denoiser=self.wrapped)
        reference_fn = None
        if kl_on:
            reference = self.backbone.model_fn(conditioning, guidance, self.schedule,
                                               denoiser=self.backbone.reference_denoiser())
            reference_fn = torch.no_grad()(reference)
        self.backbone.denoiser.train()
        update = update_policy(
            train_fn, self.stepper, rollout, edge_adv, mask, self.learner, cfg.loss, self.update_cfg,
            reference_fn=reference_fn, generator=self.generators["minibatch"],
        )
        self.backbone.denoiser.eval()
        return update

    def _sampling_policy(self) -> contextlib.AbstractContextManager[None]:
        """The weights rollouts sample with: DiffusionNFT's slow copy when it keeps one, else the trained ones."""
        if self.anchor is not None and self.cfg.loss.objective == "nft":
            return self.anchor.applied()
        return contextlib.nullcontext()

    def _update_on_samples(
        self, rollout: TreeRollout, shared: SharedScores, advantages: EdgeAdvantages, conditioning: Any
    ) -> UpdateResult:
        """DiffusionNFT / AWM on this process's leaves: their clean samples re-noised at sampler steps."""
        cfg, device = self.cfg, self.processes.device
        samples, cond = rollout.leaf_latents.to(device), rollout.leaf_cond.to(device)
        leaf_advantages = advantages.leaf.advantages[shared.own_leaves].to(device)
        scored = advantages.leaf.scored[shared.own_leaves].to(device, torch.float32)  # unscored leaves: weight 0
        points = draw_training_points(samples, cfg.sampling.steps, cfg.loss, self.generators["minibatch"])
        # the launch preflight refuses likelihood-free objectives for DDIM families (setup.check_model_folder)
        assert isinstance(self.schedule, FlowSchedule), "a likelihood-free objective needs a flow-matching schedule"
        guidance, sigmas = cfg.sampling.guidance_scale, self.schedule.sigmas
        policy = self.backbone.model_fn(conditioning, guidance, self.schedule)
        anchor = reference = None
        if cfg.loss.objective == "nft" or cfg.loss.ema_kl_beta > 0:  # v_old, or AWM's EMA target
            with self.anchor.applied() if self.anchor is not None else contextlib.nullcontext():
                anchor = velocities_at(policy, sigmas, samples, cond, points, cfg.sampling.max_batch)
        if cfg.loss.kl_beta > 0:
            reference_fn = self.backbone.model_fn(conditioning, guidance, self.schedule,
                                                  denoiser=self.backbone.reference_denoiser())
            reference = velocities_at(reference_fn, sigmas, samples, cond, points, cfg.sampling.max_batch)
        train_fn = self.backbone.model_fn(conditioning, guidance, self.schedule, denoiser=self.wrapped)
        self.backbone.denoiser.train()
        update = update_on_samples(
            train_fn, sigmas, samples, cond, leaf_advantages, points, self.learner, cfg.loss, cfg.advantage.clip,
            self.update_cfg, anchor_velocity=anchor, reference_velocity=reference, generator=self.generators["minibatch"],
            sample_weight=scored,
        )
        self.backbone.denoiser.eval()
        return update

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, iteration: int) -> None:
        """Write the checkpoint of ``iteration`` completed iterations (every process takes part)."""
        save_checkpoint(self.run_dir, self.state, self.processes, iteration, metrics_lines=self.log.lines,
                        method=self.cfg.method, nonfinite_in_a_row=self.guard.in_a_row,
                        keep=self.cfg.train.keep_checkpoints)

    # ------------------------------------------------------------------ evaluation, export

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        """EMA weights when EMA is on, else the trained ones."""
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            yield

    def evaluate_and_draw(self, step: int, *, first_or_last: bool = False) -> Optional[dict[str, float]]:
        """Held-out evaluation, sample grid and tree picture (:mod:`~treegrpo.trainer.held_out`); returns eval metrics.

        ``first_or_last``: the base's or the final evaluation, which also runs ``eval.more_steps``.
        """
        self.processes.barrier()
        started = time.time()
        last = self.last
        latest = None if last is None else LatestRollout(last.rollout, last.scores, last.prompts, last.edge_advantages)
        with self.eval_weights():
            result = self.held_out.run(step, first_or_last=first_or_last, latest=latest)
        self.processes.barrier()
        self.budget.record_evaluation(time.time() - started)
        self.last_evaluation = time.time()
        return result

    def export(self) -> Path:
        """Write RUN/final via ``backbone.save_trained`` (EMA weights when on; gathered whole under FSDP)."""
        folder = self.run_dir / "final"
        weights = None
        if self.sharded:
            weights = full_state_dict(self.backbone.denoiser, trainable_only=not self.cfg.model.full_finetune)
        if self.processes.is_main:
            with self.eval_weights():
                self.backbone.save_trained(folder, weights=weights)
            pipe = getattr(self.backbone, "pipe", None)
            write_model_card(self.run_dir, type(pipe).__name__ if pipe is not None else None)
            ckpt.normal_file_modes(folder)
        self.processes.barrier()
        return folder

    # ------------------------------------------------------------------ the loop

    def _stop_if_requested(self, step: int, saved: bool) -> None:
        """After a SIGTERM / SIGINT on any process: checkpoint ``step`` (unless just saved) and stop."""
        local = float(self.stop.received or 0)
        signum = int(self.processes.gather(torch.tensor([local])).max())
        if not signum:
            return
        if not saved:
            self.save_checkpoint(step)
        raise TrainingInterrupted(signum, step, self.run_dir / ckpt.CHECKPOINTS / ckpt.step_name(step),
                                  resume=resume_command(self.run_dir, self.processes.world))

    @contextlib.contextmanager
    def _peers_watched(self, step: Callable[[], int]) -> Iterator[None]:
        """Turn a collective that failed for a lost process into :class:`PeerLost` (inside the signal handlers:
        a launcher's SIGTERM to the survivors then waits for the line)."""
        try:
            yield
        except RuntimeError as error:
            lost = peer_lost(error, self.processes, step(), self.run_dir)
            if lost is None:
                raise
            raise lost from error

    def _evaluation_due(self, step: int) -> bool:
        """An intermediate evaluation after ``step``: every ``eval_every`` steps or ``eval_every_minutes``, if it fits."""
        cfg = self.cfg.train
        due = bool(cfg.eval_every and step % cfg.eval_every == 0)
        due |= bool(cfg.eval_every_minutes and time.time() - self.last_evaluation >= 60 * cfg.eval_every_minutes)
        return due and step != cfg.iterations and self.processes.all(self.budget.fits(iterations=1, evaluations=1))

    def train(self) -> list[dict[str, Any]]:
        """Run from ``start_iteration`` to ``train.iterations`` (or until the time budget ends); returns this session's metrics."""
        cfg = self.cfg.train
        if self.processes.is_main:
            write_atomic(self.run_dir / "config.yaml", to_yaml(self.cfg))
        self.log.open(self.start_iteration, self.metrics_lines)
        records: list[dict[str, Any]] = []
        step, saved = self.start_iteration, True
        progress = RunProgress(enabled=cfg.progress != Progress.none and self.processes.is_main,
                               iterations=cfg.iterations, budget_minutes=cfg.max_minutes,
                               start_iteration=self.start_iteration)
        try:
            with self.stop.installed(), progress.shown(), self._peers_watched(lambda: step):
                if self.start_iteration == 0 and cfg.eval_at_start:
                    progress.evaluation(0, self.evaluate_and_draw(0, first_or_last=True) or {})
                for iteration in range(self.start_iteration, cfg.iterations):
                    if not self.processes.all(self.budget.fits(iterations=1)):
                        logger.info("time budget of %.1f min: stopping after %d iterations", cfg.max_minutes, step)
                        break
                    self.last = self.run_iteration(iteration)
                    self.budget.record_iteration(self.last.metrics["seconds"])
                    self.log.iteration(self.last.metrics)
                    records.append(self.last.metrics)
                    step = iteration + 1
                    progress.iteration(step, self.last.metrics["reward_mean"])
                    self.guard.check(step)
                    if self.unscored.exhausted:
                        self.save_checkpoint(step)
                        raise RewardUnavailable(step, self.unscored.in_a_row,
                                                self.run_dir / ckpt.CHECKPOINTS / ckpt.step_name(step),
                                                resume_command(self.run_dir, self.processes.world))
                    if self._evaluation_due(step):
                        progress.evaluation(step, self.evaluate_and_draw(step) or {})
                    saved = bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.iterations
                    if saved:
                        self.save_checkpoint(step)
                    self._stop_if_requested(step, saved)
                if step > self.start_iteration:
                    if not saved:
                        self.save_checkpoint(step)
                    progress.evaluation(step, self.evaluate_and_draw(step, first_or_last=True) or {})
                self.export()
        finally:
            self.log.close()
            self.reward_worker.shutdown(wait=False, cancel_futures=True)
        return records
