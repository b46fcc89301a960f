"""Built-in prompt sets (``builtin:NAME``): counts, exact text, metadata, the user's own copies, and their
use as ``data.prompts`` / ``data.eval_prompts``; a prompt set's fields reach a reward behind the reward server."""

from __future__ import annotations

import collections
import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from treegrpo import prompt_sets
from treegrpo.config import resolve_config
from treegrpo.data import load_jsonl, load_prompt_sets, load_prompts
from treegrpo.errors import ConfigError
from treegrpo.prompts import DataError, PromptRecord, prompt_metadata
from treegrpo.rewards.server import RemoteReward, encode_image, make_server

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "treegrpo" / "prompt_sets"


def test_shipped_sets_keep_their_counts_text_and_metadata() -> None:
    drawbench = prompt_sets.load("drawbench")
    assert len(drawbench) == prompt_sets.SETS["drawbench"].count == 200
    categories = collections.Counter(p.metadata["category"] for p in drawbench)
    assert len(categories) == 11 and categories["Reddit"] == 38 and categories["Gary Marcus et al."] == 10
    assert "Tcennis rpacket." in drawbench and drawbench[0] == "A red colored car."  # misspellings kept as they are

    geneval = prompt_sets.load("builtin:geneval")
    assert len(geneval) == prompt_sets.SETS["geneval"].count == 553
    lines = [json.loads(line) for line in (SHIPPED / "geneval.jsonl").read_text().splitlines()]
    assert [str(p) for p in geneval] == [line["prompt"] for line in lines]
    assert all({"tag", "include"} <= set(p.metadata) for p in geneval)
    assert sum("exclude" in p.metadata for p in geneval) == 80
    assert collections.Counter(p.metadata["tag"] for p in geneval)["position"] == 100

    ocr = prompt_sets.load("ocr")
    assert len(ocr) == prompt_sets.SETS["ocr"].count == 1018
    assert [str(p) for p in ocr] == (SHIPPED / "ocr.txt").read_text().split("\n")
    assert all(isinstance(p, PromptRecord) and p.text == str(p) for p in drawbench + geneval + ocr)
    readme = (SHIPPED / "README.md").read_text()
    assert all(f"`builtin:{name.split('/')[0]}" in readme for name in prompt_sets.names())


def test_sets_not_shipped_are_read_from_the_users_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached: only the user's folder counts
    monkeypatch.setenv("HPS_ROOT", str(tmp_path / "hps"))
    monkeypatch.delenv(prompt_sets.USER_COPIES, raising=False)
    for name, needle in (("pickscore", "flow_grpo"), ("hpdv2/anime", "huggingface-cli download zhwang/HPDv2")):
        with pytest.raises(DataError, match=needle) as refused:
            load_prompts(f"builtin:{name}")
        assert "\n" not in str(refused.value) and prompt_sets.USER_COPIES in str(refused.value)
    copies = tmp_path / "copies"
    (copies / "pickscore").mkdir(parents=True)
    (copies / "pickscore" / "test.txt").write_text("a cat in a hat  \n\nTwo dogs\n")
    (copies / "hpdv2").mkdir()
    for style in prompt_sets.HPDV2_STYLES:
        (copies / "hpdv2" / f"{style}.json").write_text(json.dumps([f"{style} one", f"{style} two"]))
    monkeypatch.setenv(prompt_sets.USER_COPIES, str(copies))
    assert prompt_sets.load("pickscore") == ["a cat in a hat  ", "Two dogs"]  # exact text, blank lines skipped
    anime = prompt_sets.load("hpdv2/anime")
    assert anime == ["anime one", "anime two"] and anime[0].metadata == {"style": "anime"}
    every = prompt_sets.load("hpdv2")
    assert len(every) == 8 and [p.metadata["style"] for p in every[::2]] == list(prompt_sets.HPDV2_STYLES)


def test_builtin_sources_in_the_data_section_and_their_contradictions() -> None:
    cfg = resolve_config({}, ["data.prompts=builtin:ocr", "data.eval_prompts=builtin:geneval", "data.num_eval_prompts=5"])
    sets = load_prompt_sets(cfg.data, cfg.seed)
    assert len(sets.train) == 1018 and sets.eval == [str(p) for p in prompt_sets.load("geneval")[:5]]
    assert prompt_metadata(sets.eval[0]) == {"tag": "single_object", "include": [{"class": "bench", "count": 1}]}
    held = resolve_config({}, ["data.prompts=builtin:drawbench", "data.heldout=20"])
    split = load_prompt_sets(held.data, held.seed)
    assert len(split.train) == 180 and len(split.eval) == held.data.num_eval_prompts
    refusals = {
        "data.prompts=builtin:drawbenh": "unknown prompt set; did you mean 'drawbench'? (built-in sets: builtin:drawbench",
        "data.eval_prompts=builtin:hpdv3/anime": "built-in sets:",
        "data.builtin=drawbench": "a prompt set goes in data.prompts=builtin:drawbench",
    }
    for override, expected in refusals.items():
        with pytest.raises(ConfigError, match=re.escape(expected)) as refused:
            resolve_config({}, ["data.prompts=builtin:ocr", override] if "builtin=" not in override else [override])
        assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="drop data.prompt_field"):
        resolve_config({}, ["data.prompts=builtin:ocr", "data.prompt_field=caption"])
    with pytest.raises(ConfigError, match="has its own held-out prompts"):
        resolve_config({}, ["data.builtin=shapes", "data.eval_prompts=builtin:drawbench"])


def test_jsonl_fields_travel_with_their_prompt(tmp_path: Path) -> None:
    file = tmp_path / "p.jsonl"
    file.write_text('{"prompt": "a photo of a bench", "tag": "single_object"}\n{"prompt": "plain"}\n')
    first, second = load_jsonl(file)
    assert prompt_metadata(first) == {"tag": "single_object"} and prompt_metadata(second) is None


class _ObjectsSeen:
    """A stand-in for GenEval's detector behind the reward server: 1 for single-object prompts, and what it saw."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.seen += [prompt_metadata(p) for p in prompts]
        return torch.tensor([float((prompt_metadata(p) or {}).get("tag") == "single_object") for p in prompts])


def test_a_prompt_sets_fields_reach_the_reward_behind_the_server() -> None:
    stub = _ObjectsSeen()
    server = make_server(stub, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        geneval = prompt_sets.load("geneval")
        prompts = [geneval[0], geneval[100], "a plain prompt"]  # single_object, another tag, no fields
        scores = RemoteReward(server.url, retries=0)(torch.rand(3, 3, 8, 8), prompts)
        assert scores.tolist() == [1.0, 0.0, 0.0]
        assert stub.seen == [geneval[0].metadata, geneval[100].metadata, None]
        body = json.dumps({"prompts": ["a"], "images": [encode_image(torch.rand(3, 8, 8))], "metadata": [1]}).encode()
        request = urllib.request.Request(server.url + "/score", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 400 and b"one object (or null) per prompt" in refused.value.read()
    finally:
        server.shutdown()
        server.server_close()
