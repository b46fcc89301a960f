"""Every preset learns on the 2-D toy; TreeGRPO keeps its reward after saturating (the guard's job)."""

import pytest

from treegrpo.toy import ToyRunConfig, ToyTask, ToyVelocity, pretrain_toy, train_toy

# learning rates picked on this task from the grid {1e-3, 3e-3}: the highest that stays stable
LEARNING_RATES = {"treegrpo": 1e-3, "flow_grpo": 3e-3, "dance_grpo": 3e-3, "mix_grpo": 3e-3,
                  "branch_grpo": 3e-3, "ddpo": 3e-3}


@pytest.fixture(scope="module")
def base() -> ToyVelocity:
    return pretrain_toy(ToyTask(), seed=0)


@pytest.mark.parametrize("method", sorted(LEARNING_RATES))
def test_every_preset_raises_the_toy_reward(method: str, base: ToyVelocity) -> None:
    history = train_toy(ToyRunConfig(method=method, iterations=40, lr=LEARNING_RATES[method]), ToyTask(), base)
    before, after = history["reward"][0], history["reward"][-1]
    assert before < 0.35  # the pretrained policy puts about 1/4 of its mass on the target mode
    assert after > before + 0.3, f"{method}: {before:.3f} -> {after:.3f}"


def test_treegrpo_keeps_its_reward_after_saturating(base: ToyVelocity) -> None:
    history = train_toy(ToyRunConfig(method="treegrpo", iterations=300, lr=1e-3), ToyTask(), base)
    reward = history["reward"]
    peak = max(reward)
    assert peak > 0.95
    tail = sum(reward[-20:]) / 20
    assert tail > 0.93 * peak, f"peak {peak:.3f}, last 20 iterations {tail:.3f}"
    assert max(history["guard_fraction"]) > 0  # the zero-spread guard did fire once rewards saturated


def test_toy_counts_tree_nfe(base: ToyVelocity) -> None:
    cfg = ToyRunConfig(method="treegrpo", iterations=1, prompts_per_iteration=2,
                       method_overrides={"tree": {"window_placement": "fixed", "window_start": 0}})
    history = train_toy(cfg, ToyTask(), base)
    assert history["rollout_nfe"] == [2 * 202]
    assert history["training_nfe"][0] <= 2 * 13
