"""Config resolution (defaults -> preset -> YAML -> overrides), one-line errors, prompt data, checkpoints."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treegrpo.runtime import checkpoint as ckpt
from treegrpo.config import ConfigError, load_config, reward_weights, resolve_config, show_defaults
from treegrpo.data import DataError, PromptSampler, load_prompt_sets, load_prompts, split_heldout

BASE = {"data": {"prompts": "prompts.txt"}}


def test_defaults_and_preset_resolution() -> None:
    cfg = resolve_config(BASE)
    assert (cfg.method, cfg.tree.schedule, cfg.tree.k, cfg.tree.window) == ("treegrpo", "tree", 3, 3)
    flow = resolve_config({**BASE, "method": "flow_grpo"})
    assert (flow.tree.schedule, flow.tree.trees, flow.loss.kl_beta) == ("flat", 12, 0.04)


def test_yaml_overrides_preset_and_cli_overrides_yaml(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("method: flow_grpo\ndata: {prompts: p.txt}\ntree: {trees: 6}\ntrain: {lr: 2.0e-5}\n")
    assert load_config(file).tree.trees == 6
    cfg = load_config(file, ["tree.trees=24", "model.lora.rank=4", "reward={hpsv2: 1.0, pickscore: 0.5}"])
    assert (cfg.tree.trees, cfg.model.lora.rank, cfg.train.lr) == (24, 4, 2e-5)
    assert cfg.loss.kl_beta == 0.04  # still the preset's
    assert reward_weights(cfg.reward) == {"hpsv2": (1.0, {}), "pickscore": (0.5, {})}
    assert load_config(file, ["method=mix_grpo"]).tree.schedule == "mix"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["tree.kk=3"], "unknown config key 'tree.kk'; did you mean 'tree.k'?"),
        (["trian.lr=1"], "did you mean 'train.lr'?"),
        (["train.lr=abc"], "bad value for 'train.lr'"),
        (["sampling.steps=1.5"], "bad value for 'sampling.steps'"),
        (["method=flow_grpoo"], "did you mean 'flow_grpo'?"),
        (["reward=hpsv3"], "did you mean 'hpsv2'?"),
        (["tree=3"], "'tree' is a section"),
        (["tree.split_steps={}"], "'tree.split_steps' takes a value of type Optional[list[int]], not a map"),  # hypothesis found it
        (["train.lr={a: 1}"], "'train.lr' takes a value of type float, not a map"),
        (["tree.k"], "must look like dotted.key=value"),
        (["train.lr_schedule=cosin"], "did you mean 'cosine'?"),
        (["tree.window=10"], "tree.window <= 9"),
        (["tree.k=0"], "tree.k must be >= 1, got 0"),
        (["train.fsdp=true", "train.ema=0.9"], "train.ema is not supported with train.fsdp=true"),
        (["train.fsdp=true", "train.mixed_precision=fp16"], "use bf16"),
        (["method=flow_grpo", "tree.antithetic=true"], "tree.schedule=flat never branches"),
        (["tree.schedule=mix", "tree.antithetic=true"], "tree.schedule=mix never branches"),
    ],
)
def test_bad_keys_and_values_name_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_config(BASE, overrides)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)
    if "must be >=" in expected:  # a range, not the plan: no advice about sampling.steps
        assert "sampling.steps" not in str(error.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no prompts configured"):
        resolve_config({})


def test_show_defaults_applies_the_preset() -> None:
    assert "schedule: mix" in show_defaults("mix_grpo")
    assert "schedule: tree" in show_defaults()


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 5), window=st.integers(1, 9), lr=st.floats(1e-7, 1.0), trees=st.integers(1, 64))
def test_overrides_round_trip(k: int, window: int, lr: float, trees: int) -> None:
    cfg = resolve_config(BASE, [f"tree.k={k}", f"tree.window={window}", f"train.lr={lr!r}", f"tree.trees={trees}"])
    assert (cfg.tree.k, cfg.tree.window, cfg.train.lr, cfg.tree.trees) == (k, window, lr, trees)


# ----------------------------------------------------------------------------- data


def test_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert load_prompts(str(tmp_path / "p.txt")) == ["a cat", "a dog"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": "y"}) + "\n")
    assert load_prompts(str(tmp_path / "p.jsonl")) == ["x", "y"]
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "nofield.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    for name, message in [("missing.txt", "does not exist"), ("empty.txt", "holds no prompts"),
                          ("latin.txt", "not UTF-8"), ("nofield.jsonl", "data.prompt_field")]:
        with pytest.raises(DataError, match=message) as error:
            load_prompts(str(tmp_path / name))
        assert "\n" not in str(error.value)


def test_too_few_prompts_and_heldout_split(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(10)))
    cfg = resolve_config({"data": {"prompts": str(tmp_path / "p.txt"), "prompts_per_iteration": 11}})
    with pytest.raises(DataError, match="lower data.prompts_per_iteration"):
        load_prompt_sets(cfg.data, 0)
    train, held = split_heldout([f"p{i}" for i in range(10)], 3, seed=1)
    assert len(train) == 7 and len(held) == 3 and not set(train) & set(held)


def test_heldout_prompts_follow_eval_seed_not_seed(tmp_path: Path) -> None:
    """Runs with different seeds are evaluated on the same held-out prompts (data.eval_seed)."""
    shapes = resolve_config({"data": {"builtin": "shapes", "builtin_size": 64, "num_eval_prompts": 32}})
    a, b = load_prompt_sets(shapes.data, 0), load_prompt_sets(shapes.data, 1)
    assert a.eval == b.eval and a.train != b.train
    shapes.data.eval_seed = 1
    assert load_prompt_sets(shapes.data, 0).eval != a.eval
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(40)))
    files = resolve_config({"data": {"prompts": str(tmp_path / "p.txt"), "heldout": 8}})
    assert load_prompt_sets(files.data, 0).eval == load_prompt_sets(files.data, 3).eval


def test_builtin_composition_prompts_and_unknown_builtin() -> None:
    cfg = resolve_config({"data": {"builtin": "shapes_composition", "builtin_size": 64, "num_eval_prompts": 32}})
    sets = load_prompt_sets(cfg.data, 0)
    from treegrpo.demo.evaluate import prompt_group

    assert {prompt_group(p) for p in sets.train + sets.eval} == {"count", "relation"}
    with pytest.raises(ConfigError, match="data.builtin"):
        resolve_config({"data": {"builtin": "shapes_hard"}})


@settings(max_examples=30, deadline=None)
@given(pool=st.integers(1, 20), sizes=st.lists(st.integers(1, 9), min_size=2, max_size=8), cut=st.integers(0, 7))
def test_sampler_resumes_exactly(pool: int, sizes: list[int], cut: int) -> None:
    straight = PromptSampler(pool, seed=3)
    expected = [straight.draw(n) for n in sizes]
    first = PromptSampler(pool, seed=3)
    cut = min(cut, len(sizes))
    got = [first.draw(n) for n in sizes[:cut]]
    resumed = PromptSampler(pool, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += [resumed.draw(n) for n in sizes[cut:]]
    assert got == expected
    for n in sizes:  # every pass is a permutation: no prompt repeats within a pass
        assert all(0 <= i < pool for i in PromptSampler(pool, 0).draw(n))


# ----------------------------------------------------------------------------- checkpoints


def test_rng_round_trip_and_atomic_checkpoints(tmp_path: Path) -> None:
    generators = {"a": torch.Generator().manual_seed(1)}
    folder = ckpt.begin(tmp_path, 3)
    ckpt.save_rng(folder, 0, generators)
    expected = (torch.rand(3), np.random.rand(), random.random(), torch.rand(2, generator=generators["a"]))
    ckpt.save_main(folder, weights={"w": torch.ones(2)}, ema=None, optimizer={"state": {}}, scheduler={}, state={"iteration": 3})
    assert ckpt.latest_checkpoint(tmp_path) is None  # not renamed yet: invisible
    final = ckpt.finish(tmp_path, 3, keep=2)
    ckpt.load_rng(final, 0, generators)
    again = (torch.rand(3), np.random.rand(), random.random(), torch.rand(2, generator=generators["a"]))
    assert torch.equal(expected[0], again[0]) and expected[1:3] == again[1:3] and torch.equal(expected[3], again[3])
    for step in (4, 5):
        ckpt.begin(tmp_path, step)
        ckpt.finish(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    (tmp_path / "checkpoints" / "step-000009").mkdir()  # no COMPLETE marker: ignored
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000005"


def test_an_import_path_is_a_valid_reward_name() -> None:
    cfg = resolve_config(BASE, ['reward={"treegrpo.demo.reward:ShapesReward": 1.0}'])
    assert reward_weights(cfg.reward) == {"treegrpo.demo.reward:ShapesReward": (1.0, {})}
    with pytest.raises(ConfigError, match="unknown reward 'shapez'"):
        resolve_config(BASE, ["reward=shapez"])


def test_minibatches_are_sized_in_parents_or_in_edges_not_both() -> None:
    assert resolve_config(BASE).train.minibatch_sizes() == (16, None)
    assert resolve_config(BASE, ["train.edges_per_batch=32"]).train.minibatch_sizes() == (None, 32)
    assert resolve_config(BASE, ["train.parents_per_batch=11"]).train.minibatch_sizes() == (11, None)
    with pytest.raises(ConfigError, match="both size the minibatches; set one of them"):
        resolve_config(BASE, ["train.parents_per_batch=11", "train.edges_per_batch=32"])
