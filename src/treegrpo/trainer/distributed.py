"""What the trainer does across processes: gathering (of unequal sizes), shared flags, the learner.

Every process grows its own share of the trees; scores and the tree structure are gathered so
that each prompt group is normalised whole, and every process computes the same advantages.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch

from treegrpo.engine.rollout import TreeRollout, TreeStructure
from treegrpo.engine.update import StepReport
from treegrpo.runtime.checkpoint import latest_checkpoint
from treegrpo.runtime.faults import fault_point
from treegrpo.runtime.fsdp import clip_grad_norm
from treegrpo.runtime.guards import NonFiniteError, RewardUnavailable
from treegrpo.trainer.run_dir import resume_command
from treegrpo.trainer.signals import TrainingInterrupted


logger = logging.getLogger(__name__)


def process_group_timeout(dist_timeout_minutes: float) -> timedelta:
    """How long a collective waits for the other processes (``train.dist_timeout``) before it fails.

    It must be given where the process group is created: :func:`treegrpo.trainer.launch.train`'s
    ``PartialState`` creates it before the :class:`~treegrpo.trainer.loop.Trainer`'s ``Accelerator``,
    whose handler (:func:`process_group_kwargs`) then changes nothing. Gloo honours it in every
    collective the trainer uses (a stalled peer fails them after it, "Timed out waiting ...ms").
    """
    return timedelta(minutes=dist_timeout_minutes)


def process_group_kwargs(dist_timeout_minutes: float) -> Any:
    """accelerate's handler with :func:`process_group_timeout`, for an ``Accelerator`` that creates the group."""
    from accelerate.utils import InitProcessGroupKwargs

    return InitProcessGroupKwargs(timeout=process_group_timeout(dist_timeout_minutes))


class PeerLost(RuntimeError):
    """A collective failed because another process died or stalled; this one stops with one line."""

    def __init__(self, rank: int, world: int, missing: Optional[list[int]], step: int, checkpoint: Optional[Path],
                 resume: str, timed_out: bool = False) -> None:
        self.missing = missing
        self.timed_out = timed_out
        who = (f"process{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {world} stopped answering"
               if missing else f"another of the {world} processes stopped answering")
        why = "no answer within train.dist_timeout: stalled, or killed?" if timed_out else "killed, out of memory?"
        kept = (f"the last complete checkpoint is {checkpoint}; continue with `{resume}`" if checkpoint is not None
                else "no checkpoint was saved yet; start the run again")
        super().__init__(f"process {rank}: {who} during step {step + 1} ({why} its own log says why); {kept}")


def peer_lost(error: RuntimeError, processes: Processes, step: int, run_dir: Path) -> Optional[PeerLost]:
    """A collective that failed because another process died or stalled (``train.dist_timeout``), as one
    line naming it; ``None`` for any other error (every process answers the roll call).

    A dead peer fails the collective at once (its sockets close); a stalled one (hung, SIGSTOPped)
    keeps them open, and gloo fails the collective after the process group's timeout
    (:func:`process_group_timeout`) with "Timed out waiting ...ms"; the roll call then names it too.
    """
    if processes.world == 1 or isinstance(error, (TrainingInterrupted, NonFiniteError, RewardUnavailable)):
        return None
    missing = roll_call(processes.rank, processes.world)
    timed_out = "Timed out" in str(error)
    distributed = isinstance(error, torch.distributed.DistError) or "closed by peer" in str(error) or timed_out
    if missing == [] or (missing is None and not distributed):
        return None
    return PeerLost(processes.rank, processes.world, missing, step, latest_checkpoint(run_dir),
                    resume_command(run_dir, processes.world), timed_out)


def roll_call(rank: int, world: int, wait_seconds: float = 3.0) -> Optional[list[int]]:
    """After a failed collective: the ranks that do not answer in the run's store within ``wait_seconds``
    (every live process answers), or ``None`` when the store cannot be reached."""
    import torch.distributed as dist

    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"treegrpo/alive/{rank}", "1")
        deadline = time.monotonic() + wait_seconds
        while True:
            missing = [other for other in range(world) if not store.check([f"treegrpo/alive/{other}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)
    except Exception as error:  # the store lived in the dead process, or the group is gone
        logger.debug("roll call failed: %s", error)
        return None


class Processes:
    """This process's place among the run's processes, and the collectives the trainer uses."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.rank: int = accelerator.process_index
        self.world: int = accelerator.num_processes
        self.is_main: bool = accelerator.is_main_process
        self.device: torch.device = accelerator.device

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate ``values`` of every process in rank order, on the CPU; first dims may differ."""
        if self.world == 1:
            return values.cpu()
        local = values.to(self.device).contiguous()
        sizes = self.accelerator.gather(torch.tensor([local.shape[0]], device=self.device)).tolist()
        longest = max(sizes)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        everything = self.accelerator.gather(padded).cpu()
        return torch.cat([everything[rank * longest : rank * longest + size] for rank, size in enumerate(sizes)])

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is set on any process (a collective: every process must call it)."""
        if self.world == 1:
            return flag
        return bool(self.gather(torch.tensor([1.0 if flag else 0.0])).max() > 0)

    def all(self, flag: bool) -> bool:
        """True when ``flag`` is set on every process (a collective)."""
        return not self.any(not flag)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        self.accelerator.wait_for_everyone()


def _shift(ids: torch.Tensor, offset: int) -> torch.Tensor:
    """Shift non-negative ids by ``offset`` (-1 stays -1)."""
    return torch.where(ids >= 0, ids + offset, ids)


@dataclass(frozen=True)
class GatheredStructure:
    """Every process's trees as one structure (prompt groups global), and this process's edges in it."""

    structure: TreeStructure
    own_edges: slice
    """Where this process's edges lie in the gathered edge order (its local edge order, offset)."""
    own_leaves: slice
    """Where this process's leaves lie in the gathered leaf order (its local leaf order, offset)."""


def gather_structure(local: TreeStructure, root_group: torch.Tensor, processes: Processes) -> GatheredStructure:
    """Every process's tree structure as one, with global prompt groups; this process's edge slice named.

    ``root_group`` is the global prompt-group id of each local tree (a local tree's ``node_group`` is
    its conditioning row on this process); node, edge and tree ids are offset by what the processes
    before this one hold (their counts may differ).
    """
    local = local.to("cpu")
    counts = processes.gather(torch.tensor([[local.num_nodes, local.num_edges, local.num_trees,
                                             int(local.leaf_node.numel())]]))
    offsets = torch.cat([torch.zeros(1, 4, dtype=counts.dtype), counts.cumsum(0)])
    node_offset, _, tree_offset, _ = (int(v) for v in offsets[processes.rank])
    gather = processes.gather
    structure = TreeStructure(
        node_parent=gather(_shift(local.node_parent, node_offset)),
        node_depth=gather(local.node_depth),
        node_tree=gather(local.node_tree + tree_offset),
        node_group=gather(root_group.cpu()[local.node_tree]),
        edge_child=gather(local.edge_child + node_offset),
        edge_log_prob=gather(local.edge_log_prob.to(torch.float32)),
        leaf_node=gather(local.leaf_node + node_offset),
        num_trees=int(counts[:, 2].sum()),
    )
    rank = processes.rank
    own = {column: slice(int(offsets[rank, column]), int(offsets[rank + 1, column])) for column in (1, 3)}
    return GatheredStructure(structure, own_edges=own[1], own_leaves=own[3])


def balance_parents(
    rollout: TreeRollout, mask: torch.Tensor, advantages: torch.Tensor, target: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add zero-advantage parents until ``target`` parents have selected edges.

    Every process then runs the same number of minibatches, so DDP's collectives line up.
    """
    slots = rollout.edge_parent_slot
    have = torch.zeros(rollout.num_parents, dtype=torch.bool, device=slots.device)
    have[slots[mask]] = True
    missing = target - int(have.sum())
    if missing <= 0:
        return mask, advantages
    extra = torch.nonzero(~have).squeeze(1)[:missing]
    padded = torch.zeros_like(have)
    padded[extra] = True
    added = padded[slots]
    return mask | added, advantages.masked_fill(added, 0.0)


class AccelerateLearner:
    """The engine's Learner through accelerate: backward (scaled / synced), clip, AdamW step.

    A non-finite loss or gradient norm skips that optimizer step on every process (the decision
    is shared, so DDP replicas stay equal); the step's :class:`StepReport` says so and why.
    """

    def __init__(self, accelerator: Any, optimizer: Any, parameters: list[torch.nn.Parameter], max_grad_norm: float,
                 processes: Processes, sharded: bool = False) -> None:
        self.accelerator = accelerator
        self.optimizer = optimizer
        self.parameters = parameters
        self.max_grad_norm = max_grad_norm
        self.processes = processes
        self.sharded = sharded
        self._bad_losses: list[str] = []
        """Non-finite losses since the last step (what the coming step must skip for)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backward through the (possibly DDP-wrapped) denoiser; DDP all-reduces here (even for a bad loss)."""
        if not bool(torch.isfinite(loss.detach()).all()):
            self._bad_losses.append(f"loss: {float(loss.detach().float().sum())}")
        self.accelerator.backward(loss)

    def step(self) -> StepReport:
        """Clip and step, unless a loss or the gradient norm is non-finite anywhere; zero grads."""
        norm = self._clip()
        scaled = self.accelerator.scaler is not None  # fp16: the grad scaler skips inf steps itself
        bad_norm = not math.isfinite(norm) and not scaled
        findings = tuple(self._bad_losses) + ((f"grad_norm: {norm}",) if bad_norm else ())
        self._bad_losses = []
        skip = self.processes.any(bool(findings))
        if not skip:
            self.optimizer.step()
            fault_point("update")
        self.optimizer.zero_grad(set_to_none=True)
        return StepReport(norm, applied=not skip, findings=findings)

    def _clip(self) -> float:
        """Gradient norm after clipping to ``max_grad_norm`` (0 = measure only)."""
        limit = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        if self.sharded:
            return clip_grad_norm(self.parameters, limit)
        return float(self.accelerator.clip_grad_norm_(self.parameters, limit))
