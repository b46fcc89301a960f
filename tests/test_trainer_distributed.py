"""Gathering tree structures across processes whose shares differ in size (two threads stand in for two ranks)."""

from __future__ import annotations

import threading
from typing import Any

import torch

from treegrpo.math import plans
from treegrpo.engine.update import compute_advantages
from treegrpo.engine.methods import AdvantageConfig
from treegrpo.engine.rollout import TreeStructure, rollout_trees
from treegrpo.math.sampling import FlowMatchStepper
from treegrpo.trainer.distributed import gather_structure

PLAN = plans.tree_plan(6, k=2, window=2, start=1)


class ThreadCollective:
    """``Processes.gather`` for ranks that are threads: every rank deposits, waits, and reads all deposits."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list[Any] = [None] * world

    def for_rank(self, rank: int) -> Any:
        collective = self

        class Rank:
            def __init__(self) -> None:
                self.rank, self.world = rank, collective.world

            def gather(self, values: torch.Tensor) -> torch.Tensor:
                collective.slots[rank] = values.cpu()
                collective.barrier.wait()
                everything = torch.cat(list(collective.slots))
                collective.barrier.wait()
                return everything

        return Rank()


def _structure(trees: int, root_cond: torch.Tensor) -> TreeStructure:
    stepper = FlowMatchStepper(torch.linspace(1, 0, len(PLAN) + 1), noise_level=0.7)
    noise = torch.randn(trees, 4, generator=torch.Generator().manual_seed(trees))
    rollout = rollout_trees(lambda x, step, cond: -x, stepper, PLAN, noise, root_cond,
                            generator=torch.Generator().manual_seed(1))
    return rollout.structure


def _leaf_score(structure: TreeStructure) -> torch.Tensor:
    """A score per leaf from its tree and its rank among the tree's leaves (no dependence on noise)."""
    scores = torch.empty(structure.leaf_node.shape[0])
    for tree in range(structure.num_trees):
        leaves = torch.nonzero(structure.leaf_tree == tree).squeeze(1)
        scores[leaves] = torch.arange(leaves.numel(), dtype=torch.float32) * (tree + 1) % 5
    return scores


def test_gathered_structure_of_unequal_shares_gives_the_advantages_of_one_rollout() -> None:
    # four trees of two prompts ([0, 0, 1, 1]); rank 0 holds three trees, rank 1 one
    groups = torch.tensor([0, 0, 1, 1])
    shares = [(torch.tensor([0, 0, 1]), groups[:3]), (torch.tensor([0]), groups[3:])]
    local = [_structure(len(group), cond) for cond, group in shares]
    collective = ThreadCollective(2)
    results: list[Any] = [None, None]

    def run(rank: int) -> None:
        results[rank] = gather_structure(local[rank], shares[rank][1], collective.for_rank(rank))

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = results
    assert first.own_edges == slice(0, local[0].num_edges)
    assert second.own_edges == slice(local[0].num_edges, local[0].num_edges + local[1].num_edges)
    gathered, again = first.structure, second.structure
    assert torch.equal(gathered.edge_child, again.edge_child) and gathered.num_trees == 4
    # each process's slice of the gathered edges is its own edges, in its own order
    for rank in range(2):
        own = results[rank].own_edges
        assert torch.equal(gathered.edge_depth[own], local[rank].edge_depth)

    whole = _structure(4, groups)  # the same four trees grown by one process
    config = AdvantageConfig(min_group_std=0.0)
    expected = compute_advantages(whole, _leaf_score(whole), config)
    got = compute_advantages(gathered, _leaf_score(gathered), config)
    for tree in range(4):
        for depth in (1, 2):
            want = expected.edge[(whole.edge_tree == tree) & (whole.edge_depth == depth)]
            have = got.edge[(gathered.edge_tree == tree) & (gathered.edge_depth == depth)]
            assert torch.allclose(want.sort().values, have.sort().values), (tree, depth)
    assert torch.equal(gathered.leaf_group.unique(), torch.tensor([0, 1]))
    assert torch.equal(gathered.node_group, groups[gathered.node_tree])
