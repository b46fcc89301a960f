"""A user's own reward by import path in the reward spec: functions used as is, classes built with
the options; unknown plain names keep the "did you mean" error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from treegrpo.rewards import get_reward, is_import_path
from treegrpo.rewards.multi import MultiReward


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewards.py").write_text(textwrap.dedent('''
        import torch

        def score(images, prompts):
            return [float(len(p)) for p in prompts]  # a list is fine: it becomes float32 [B]

        def wrong_count(images, prompts):
            return torch.zeros(images.shape[0] + 1)

        class Brightness:
            def __init__(self, scale=1.0, device="cpu"):
                self.scale, self.device = scale, device

            def __call__(self, images, prompts):
                return self.scale * images.mean(dim=(1, 2, 3))

        class NoDevice:
            def __init__(self, offset):
                self.offset = offset

            def __call__(self, images, prompts):
                return torch.full((images.shape[0],), float(self.offset))

        NOT_CALLABLE = 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_pkg.rewards"


def test_function_by_import_path_is_used_as_is(user_module: str) -> None:
    images = torch.rand(3, 3, 8, 10)
    reward = get_reward(f"{user_module}:score", device="cpu")  # the trainer's device is ignored
    scores = reward(images, ["a", "bb", "ccc"])
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 2.0, 3.0]
    assert reward.name == f"{user_module}:score"
    with pytest.raises(ValueError, match="takes no options"):
        get_reward(f"{user_module}:score", scale=2.0)
    with pytest.raises(ValueError, match="returned 4 scores for 3 images"):
        get_reward(f"{user_module}:wrong_count")(images, ["a", "b", "c"])


def test_class_by_import_path_gets_the_options(user_module: str) -> None:
    images = torch.full((2, 3, 4, 4), 0.5)
    reward = get_reward(f"{user_module}:Brightness", scale=4.0, device="cpu")
    assert reward.scale == 4.0 and reward(images, ["x", "y"]).tolist() == [2.0, 2.0]
    # a class without a device parameter still builds when the trainer passes one
    assert get_reward(f"{user_module}:NoDevice", offset=7, device="cuda")(images, ["x", "y"]).tolist() == [7.0, 7.0]
    multi = MultiReward.from_names({f"{user_module}:Brightness": 1.0, f"{user_module}:score": 0.5},
                                   {f"{user_module}:Brightness": {"scale": 2.0}})
    torch.testing.assert_close(multi(images, ["ab", "c"]), torch.tensor([1.0 + 1.0, 1.0 + 0.5]))


def test_bad_import_paths_and_unknown_names_are_one_line_errors(user_module: str) -> None:
    with pytest.raises(ValueError, match="did you mean 'hpsv2'") as info:
        get_reward("hpsv3")
    assert "import path" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ImportError, match="no_such_module"):
        get_reward("no_such_module.sub:fn")
    with pytest.raises(ImportError, match="has no attribute 'missing'"):
        get_reward(f"{user_module}:missing")
    with pytest.raises(ValueError, match="not a function or class"):
        get_reward(f"{user_module}:NOT_CALLABLE")
    assert is_import_path("a.b:c") and is_import_path("pkg:Cls.method") and not is_import_path("hpsv2")
    assert not is_import_path("a b:c") and not is_import_path(":c") and not is_import_path("a:")
