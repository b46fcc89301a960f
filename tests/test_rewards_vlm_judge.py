"""vlm_judge against a local fake of vLLM's OpenAI server (127.0.0.1 only): request shape, parsing of
odd answers, yes/no from logprobs, and each fault (garbage, slowness, 500s then success, 429, a
dropped connection, a bad model name)."""

from __future__ import annotations

import base64
import io
import math
import time
from typing import Any

import pytest
import torch
from PIL import Image

from treegrpo.testing.fake_judge_server import DROP, FakeJudgeServer, Reply, chat
from treegrpo.rewards import get_reward
from treegrpo.rewards.server import RemoteRewardError
from treegrpo.rewards.vlm_judge import parse_rating, parse_yes_no, yes_probability

IMAGES = torch.rand(3, 3, 12, 20, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a red cat", "a dog", "a bird"]
FAST = dict(model="judge", timeout=2.0, retries=2, backoff=0.01, batch_timeout_s=5.0, max_concurrency=4)


def _text(request: dict[str, Any]) -> str:
    return request["messages"][0]["content"][0]["text"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8", 7 / 9), ("8/10", 7 / 9), ("Score: 7.5", 6.5 / 9), ("I'd rate it 4 out of 10.", 3 / 9),
        ("On a scale of 1-10, this deserves a 9.", 8 / 9), ("Rating: **10**", 1.0), ("1", 0.0),
        ("4/5 stars", 7 / 9), ("The image is nice. 6", 5 / 9),
        ("", None), ("no idea", None), ("11", None), ("0", None), ("-3", None), ("score: NaN", None),
    ],
)
def test_parse_rating(text: str, expected: float | None) -> None:
    got = parse_rating(text)
    assert (got is None) if expected is None else (got is not None and math.isclose(got, expected, rel_tol=1e-9))


def test_parse_yes_no_and_logprobs() -> None:
    assert parse_yes_no("Yes.") == 1.0 and parse_yes_no("no, it shows a dog") == 0.0
    assert parse_yes_no("The answer is yes") == 1.0 and parse_yes_no("maybe") is None
    assert parse_yes_no("yes and no") == 1.0 and parse_yes_no("I cannot say yes or no") is None
    p = yes_probability([{"token": "Yes", "logprob": math.log(0.6)}, {"token": " no", "logprob": math.log(0.2)},
                         {"token": "yes", "logprob": math.log(0.1)}, {"token": "Maybe", "logprob": math.log(0.1)}])
    assert p is not None and math.isclose(p, 0.7 / 0.9)
    assert yes_probability([{"token": "Maybe", "logprob": -0.1}]) is None and yes_probability(None) is None


def test_score_mode_request_shape_and_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    answers = {"a red cat": "Score: 10", "a dog": "I'd say 4/10", "a bird": "1"}
    with FakeJudgeServer(lambda req, n: Reply(payload=chat(next(v for k, v in answers.items() if f'"{k}"' in _text(req))))) as server:
        judge = get_reward("vlm_judge", base_url=server.base_url, api_key_env="JUDGE_KEY", device="cuda", **FAST)
        scores = judge(IMAGES, PROMPTS)
    torch.testing.assert_close(scores, torch.tensor([1.0, 3 / 9, 0.0]))
    request = server.requests[0]
    assert request["model"] == "judge" and request["temperature"] == 0.0 and "logprobs" not in request
    image_part = request["messages"][0]["content"][1]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1])))
    assert png.size == (20, 12) and png.format == "PNG"
    assert all(h.get("Authorization") == "Bearer sekret" for h in server.headers_seen)
    assert judge.last_stats.ok == 3 and judge.last_stats.fallbacks == 0


def test_yes_no_uses_logprobs_when_given_else_the_text() -> None:
    def script(req: dict[str, Any], n: int) -> Reply:
        assert req["logprobs"] is True and req["top_logprobs"] == 5
        if '"a red cat"' in _text(req):
            return Reply(payload=chat("Yes", [("Yes", math.log(0.75)), ("No", math.log(0.25))]))
        return Reply(payload=chat("No." if '"a dog"' in _text(req) else "yes"))

    with FakeJudgeServer(script) as server:
        scores = get_reward("vlm_judge", base_url=server.base_url, mode="yes_no", **FAST)(IMAGES, PROMPTS)
    torch.testing.assert_close(scores, torch.tensor([0.75, 0.0, 1.0]))


def test_garbage_gets_the_fallback_and_is_counted() -> None:
    def script(req: dict[str, Any], n: int) -> Reply:
        if '"a dog"' in _text(req):
            return Reply(payload=chat("I cannot judge images."))
        if '"a bird"' in _text(req):
            return Reply(raw=b"<html>oops</html>")  # not JSON: retried, then counted as an error
        return Reply(payload=chat("7"))

    with FakeJudgeServer(script) as server:
        judge = get_reward("vlm_judge", base_url=server.base_url, fallback_score=0.5, **FAST)
        scores = judge(IMAGES, PROMPTS)
    torch.testing.assert_close(scores, torch.tensor([6 / 9, 0.5, 0.5]))
    stats = judge.last_stats
    assert (stats.ok, stats.unparsed, stats.errors, stats.timeouts) == (1, 1, 1, 0)
    assert stats.retries == 2 and server.calls == 1 + 1 + 3  # garbage text is not retried, non-JSON is
    assert judge.total_stats.unparsed == 1


def test_500s_then_success_and_429_are_retried() -> None:
    def script(req: dict[str, Any], n: int) -> Reply:
        return Reply(500, {"error": "busy"}) if n <= 2 else Reply(payload=chat("9"))

    with FakeJudgeServer(script) as server:
        judge = get_reward("vlm_judge", base_url=server.base_url, **{**FAST, "max_concurrency": 1})
        scores = judge(IMAGES[:1], PROMPTS[:1])
    assert scores.tolist() == pytest.approx([8 / 9]) and judge.last_stats.retries == 2 and server.calls == 3
    with FakeJudgeServer(lambda req, n: Reply(429, {"error": "slow down"}) if n == 1 else Reply(payload=chat("5"))) as server:
        judge = get_reward("vlm_judge", base_url=server.base_url, **{**FAST, "max_concurrency": 1})
        assert judge(IMAGES[:1], PROMPTS[:1]).tolist() == pytest.approx([4 / 9])


def test_dropped_connection_is_retried() -> None:
    with FakeJudgeServer(lambda req, n: DROP if n == 1 else Reply(payload=chat("10"))) as server:
        judge = get_reward("vlm_judge", base_url=server.base_url, **{**FAST, "max_concurrency": 1})
        assert judge(IMAGES[:1], PROMPTS[:1]).tolist() == [1.0]
    assert judge.last_stats.retries == 1
    with FakeJudgeServer(lambda req, n: DROP) as server:  # always dropped: not scored (NaN), counted as an error
        judge = get_reward("vlm_judge", base_url=server.base_url, **{**FAST, "retries": 1})
        assert torch.isnan(judge(IMAGES[:2], PROMPTS[:2])).all()
    assert judge.last_stats.errors == 2 and "attempt(s) failed" in judge.last_stats.failures[0]


def test_slow_server_is_bounded_by_batch_timeout() -> None:
    """A server slower than the batch budget: the call returns within about batch_timeout_s, every
    slow item gets the fallback and is counted; the fast one keeps its score."""
    def script(req: dict[str, Any], n: int) -> Reply:
        return Reply(payload=chat("8"), delay=0.0 if '"a red cat"' in _text(req) else 3.0)

    with FakeJudgeServer(script) as server:
        judge = get_reward("vlm_judge", base_url=server.base_url, model="judge", timeout=10.0, retries=3,
                           backoff=0.01, batch_timeout_s=0.6, fallback_score=-1.0)
        start = time.monotonic()
        scores = judge(IMAGES, PROMPTS)
        elapsed = time.monotonic() - start
    assert elapsed < 1.5
    assert scores.tolist() == pytest.approx([7 / 9, -1.0, -1.0])
    assert judge.last_stats.timeouts == 2 and judge.last_stats.ok == 1


def test_configuration_errors_raise_one_line() -> None:
    with FakeJudgeServer(lambda req, n: Reply(404, {"error": {"message": "model 'nope' does not exist"}})) as server:
        with pytest.raises(RemoteRewardError, match=r"rejected the request \(404\)") as info:
            get_reward("vlm_judge", base_url=server.base_url, **{**FAST, "model": "nope"})(IMAGES[:1], PROMPTS[:1])
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="needs model"):
        get_reward("vlm_judge")
    with pytest.raises(ValueError, match="must contain \\{prompt\\}"):
        get_reward("vlm_judge", model="m", prompt_template="rate this")
    with pytest.raises(ValueError, match="mode 'stars'"):
        get_reward("vlm_judge", model="m", mode="stars")
    with pytest.raises(TypeError, match="unknown option"):
        get_reward("vlm_judge", model="m", colour="red")
