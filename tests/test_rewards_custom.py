"""A user's own reward by import path in the reward spec: functions used as is, classes built with
the options; unknown plain names keep the "did you mean" error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from treegrpo.errors import ConfigError
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
    with pytest.raises(ValueError, match=r"returned scores of shape \(4,\) for 3 images"):
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
    with pytest.raises(ConfigError, match="no module 'no_such_module.sub' is installed or in the working folder") as info:
        get_reward("no_such_module.sub:fn")
    assert "'/path/to/sub.py:fn'" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        get_reward(f"{user_module}:missing")
    with pytest.raises(ValueError, match="not a function or class"):
        get_reward(f"{user_module}:NOT_CALLABLE")
    assert is_import_path("a.b:c") and is_import_path("pkg:Cls.method") and not is_import_path("hpsv2")
    assert not is_import_path("a b:c") and not is_import_path(":c") and not is_import_path("a:")


SCORE_FILE = "import torch\n\ndef score(images, prompts):\n    return images.mean(dim=(1, 2, 3))\n"


def test_a_reward_module_beside_the_config_is_found_and_recorded_by_its_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``mymod.py`` next to the YAML, the command run from elsewhere (a 44-line ``No module named`` before): the
    config records the file's absolute path, so the run's config.yaml resumes from any folder."""
    from treegrpo.config import load_config, to_yaml, with_absolute_paths

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    (project / "besidemod.py").write_text(SCORE_FILE)
    (project / "run.yaml").write_text('reward: {"besidemod:score": 1.0}\neval: {rewards: "besidemod:score"}\ndata: {builtin: shapes}\n')
    monkeypatch.chdir(elsewhere)
    cfg = with_absolute_paths(load_config(project / "run.yaml"))
    recorded = f"{project / 'besidemod.py'}:score"
    assert cfg.reward == {recorded: 1.0} and cfg.eval.rewards == recorded
    assert recorded in to_yaml(cfg)
    images = torch.rand(3, 3, 8, 12)
    torch.testing.assert_close(get_reward(recorded)(images, ["a", "b", "c"]), images.mean(dim=(1, 2, 3)))
    assert is_import_path(recorded) and is_import_path("rel/dir/file.py:fn")


def test_a_reward_module_in_the_working_folder_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from treegrpo.config import resolve_config, with_absolute_paths

    (tmp_path / "cwdmod.py").write_text(SCORE_FILE)
    monkeypatch.chdir(tmp_path)
    images = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(get_reward("cwdmod:score")(images, ["a", "b"]), images.mean(dim=(1, 2, 3)))
    cfg = with_absolute_paths(resolve_config({"reward": "cwdmod:score", "data": {"builtin": "shapes"}}))
    assert cfg.reward == f"{tmp_path / 'cwdmod.py'}:score"
    with pytest.raises(ConfigError, match="does not exist"):
        get_reward(f"{tmp_path / 'gone.py'}:score")



def per_pixel(images, prompts):  # type: ignore[no-untyped-def]
    """A typical mistake: a per-pixel map instead of one score per image."""
    return images.mean(dim=1)


def test_a_reward_of_the_wrong_shape_is_a_one_line_error_at_the_command(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """It used to end a run in a traceback (``returned 4096 scores for 4 images``); now exit 2 and one line."""
    from treegrpo.cli import main

    code = main(["train", "--output-dir", str(tmp_path / "run"), "model.path=builtin:shapes", "data.builtin=shapes",
                 "reward=tests.test_rewards_custom:per_pixel", "model.dtype=fp32", "model.max_sequence_length=1",
                 "train.iterations=1", "data.prompts_per_iteration=2", "sampling.steps=4", "tree.k=2", "tree.window=2",
                 "train.log_with=none",
                 "train.eval_at_start=false", "train.progress=none"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "returned scores of shape (" in err[0] and "32, 32) for" in err[0] and "one score per image" in err[0]
    from treegrpo.rewards.base import checked_scores

    with pytest.raises(ConfigError, match="returned dict, not numbers"):
        checked_scores({"a": 1}, "mine", 2)
    assert checked_scores([[0.5], [0.25]], "mine", 2).tolist() == [0.5, 0.25]  # [B, 1] is one score per image


def raising(images, prompts):  # type: ignore[no-untyped-def]
    """A reward with a bug of its own."""
    scale = 0
    return images.mean(dim=(1, 2, 3)) / (1 // scale)


def test_a_reward_that_raises_is_one_line_naming_it_and_its_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from treegrpo.cli import main

    out = tmp_path / "run"
    code = main(["train", "--output-dir", str(out), "model.path=builtin:shapes", "data.builtin=shapes",
                 "reward=tests.test_rewards_custom:raising", "model.dtype=fp32", "model.max_sequence_length=1",
                 "train.iterations=1", "data.prompts_per_iteration=2", "sampling.steps=4", "tree.k=2", "tree.window=2",
                 "train.log_with=none", "train.eval_at_start=false", "train.progress=none"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    line = next(number for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1)
                if "1 // scale" in text)
    assert "reward 'tests.test_rewards_custom:raising' raised ZeroDivisionError: integer division or modulo by zero" in err[0]
    assert f"test_rewards_custom.py:{line}); fix the reward" in err[0]
    from treegrpo.rewards.multi import MultiReward

    with pytest.raises(ZeroDivisionError):  # a built-in reward's failure stays a traceback (a bug of ours)
        MultiReward({"jpeg_compressibility": FunctionRaising()}).components(torch.rand(2, 3, 8, 8), ["a", "b"])


class FunctionRaising:
    name = "jpeg_compressibility"

    def __call__(self, images, prompts):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("ours")


def test_resuming_a_run_whose_reward_file_is_gone_is_one_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from treegrpo.cli import main

    reward = tmp_path / "mine.py"
    reward.write_text("def score(images, prompts):\n    return images.mean(dim=(1, 2, 3))\n")
    out = tmp_path / "run"
    words = ["model.path=builtin:shapes", "data.builtin=shapes", f"reward={reward}:score", "model.dtype=fp32",
             "model.max_sequence_length=1", "train.iterations=1", "data.prompts_per_iteration=2", "sampling.steps=4",
             "tree.k=2", "tree.window=2", "train.log_with=none", "train.eval_at_start=false", "train.progress=none"]
    assert main(["train", "--output-dir", str(out), *words]) == 0
    reward.unlink()
    capsys.readouterr()
    code = main(["train", "--resume", str(out), "train.iterations=2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and f"{reward} does not exist" in err[0], err
