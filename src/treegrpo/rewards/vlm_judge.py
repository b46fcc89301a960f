"""A vision-language model as judge, over an OpenAI-compatible ``chat/completions`` API (vLLM, sglang).

Each image goes as a base64 PNG data URL with a prompt template per judging mode:

* ``score``: "rate 1-10"; the answer is parsed (``8/10``, ``Score: 7.5``, a number in prose) and
  mapped to [0, 1] as ``(rating - 1) / 9``.
* ``yes_no``: "does the image show ...? yes or no"; when the server returns ``logprobs`` /
  ``top_logprobs`` of the first token, the score is ``P(yes) / (P(yes) + P(no))``, else the parsed
  answer (1 or 0).

Requests run in a thread pool (``max_concurrency``), are retried with exponential backoff on 429,
5xx, timeouts and dropped connections, and every batch is bounded by ``batch_timeout_s``: an item
that has no usable answer by then (or whose answer cannot be parsed) is *not scored*: its score is
NaN (``fallback_score``, NaN unless set to a number), which the trainer leaves out of its group's
statistics and of training, and it is counted in :attr:`VlmJudgeReward.last_stats`. A 4xx other than 408/429 (wrong model name, bad key)
is a configuration error and raises at once. Temperature is 0 (deterministic judging).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from treegrpo.rewards.base import BatchedReward
from treegrpo.rewards.remote import RemoteRewardRejected, RequestError, _describe, encode_image, http_json

logger = logging.getLogger(__name__)

JudgeMode = Literal["score", "yes_no"]

TEMPLATES: dict[str, str] = {
    "score": (
        'This image was generated for the prompt: "{prompt}". Rate how well it matches the prompt and how '
        "good it looks, on a scale of 1 to 10. Answer with the number only."
    ),
    "yes_no": 'Does this image show: "{prompt}"? Answer yes or no.',
}
_RETRY_STATUSES = (408, 429)
_COUNTERS = {"unparsed": "unparsed", "error": "errors", "timeout": "timeouts"}
_NUMBER = r"(\d+(?:\.\d+)?)"
_FRACTION = re.compile(_NUMBER + r"\s*(?:/|out of)\s*" + _NUMBER, re.IGNORECASE)
_KEYWORD = re.compile(r"\b(?:score|rating|rate|grade)\b\D{0,20}?" + _NUMBER, re.IGNORECASE)
_RANGE = re.compile(r"\d+(?:\.\d+)?\s*(?:-|–|to)\s*\d+(?:\.\d+)?", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"(?<![\w.])-?" + _NUMBER)


# ----------------------------------------------------------------------------- pure parsing


def parse_rating(text: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The judge's rating in ``text`` mapped to [0, 1]; ``None`` when there is none in range.

    Tried in order: a fraction (``8/10``, ``8 out of 10``: rescaled to ``high``), a number after
    score/rating/rate/grade, then the first number outside any ``1-10`` / ``1 to 10`` range.
    """
    if not isinstance(text, str) or high <= low:
        return None
    value: float | None = None
    fraction = _FRACTION.search(text)
    if fraction and float(fraction.group(2)) > 0:
        value = float(fraction.group(1)) / float(fraction.group(2)) * high
    else:
        keyword = _KEYWORD.search(_RANGE.sub(" ", text))
        if keyword:
            value = float(keyword.group(1))
        else:
            number = _ANY_NUMBER.search(_RANGE.sub(" ", text))
            value = float(number.group(0)) if number else None
    if value is None or not math.isfinite(value) or not low <= value <= high:
        return None
    return (value - low) / (high - low)


def parse_yes_no(text: str) -> float | None:
    """1.0 for a yes, 0.0 for a no (the first word, else the only one of the two present), else ``None``."""
    if not isinstance(text, str):
        return None
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in ("yes", "no"):
        return 1.0 if words[0] == "yes" else 0.0
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes != has_no:
        return 1.0 if has_yes else 0.0
    return None


def yes_probability(top_logprobs: Any) -> float | None:
    """``P(yes) / (P(yes) + P(no))`` from a first token's ``top_logprobs``; ``None`` if neither is there."""
    if not isinstance(top_logprobs, list):
        return None
    mass = {"yes": 0.0, "no": 0.0}
    for entry in top_logprobs:
        if not isinstance(entry, dict):
            continue
        token, logprob = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or not math.isfinite(logprob):
            continue
        word = token.strip().strip(".,!:;\"'").lower()
        if word in mass:
            mass[word] += math.exp(logprob)
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


def chat_answer(payload: Any) -> tuple[str | None, Any]:
    """(message content, first token's ``top_logprobs``) of a chat/completions answer; ``None`` parts if absent."""
    try:
        choice = payload["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None, None
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    top = None
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list) and logprobs["content"]:
        first = logprobs["content"][0]
        top = first.get("top_logprobs") if isinstance(first, dict) else None
    return (content if isinstance(content, str) else None), top


# ----------------------------------------------------------------------------- the reward


@dataclass
class JudgeStats:
    """What happened to the items of one batch (or of all batches, in ``total_stats``)."""

    items: int = 0
    ok: int = 0
    unparsed: int = 0
    errors: int = 0
    timeouts: int = 0
    retries: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def fallbacks(self) -> int:
        """Items that got the fallback score (not scored, by default)."""
        return self.unparsed + self.errors + self.timeouts

    def add(self, other: "JudgeStats") -> None:
        """Accumulate another batch's counts (failure messages are kept per batch only)."""
        self.items += other.items
        self.ok += other.ok
        self.unparsed += other.unparsed
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.retries += other.retries


class _ConfigError(Exception):
    """A 4xx that retrying cannot fix (bad model name, bad key, malformed request)."""


class VlmJudgeReward(BatchedReward):
    """Score images with a VLM behind an OpenAI-compatible chat API; see the module docstring."""

    name = "vlm_judge"
    abstains = True  # NaN = this image could not be judged (see treegrpo.rewards.base)

    def __init__(
        self,
        *,
        model: str = "",
        base_url: str = "http://127.0.0.1:8000/v1",
        mode: JudgeMode = "score",
        prompt_template: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int | None = None,
        top_logprobs: int = 5,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        batch_timeout_s: float = 300.0,
        fallback_score: float = float("nan"),
        rating_range: Sequence[float] = (1.0, 10.0),
        batch_size: int = 64,
        max_response_bytes: int = 1 << 20,
        **options: Any,
    ) -> None:
        for shared in ("device", "dtype", "reward_device", "offload"):  # no local model
            options.pop(shared, None)
        if options:
            raise TypeError(f"unknown option(s) for vlm_judge: {sorted(options)}")
        if not model:
            raise ValueError("vlm_judge needs model: the name the server serves (see GET <base_url>/models)")
        if mode not in TEMPLATES:
            raise ValueError(f"vlm_judge mode {mode!r} is unknown: use 'score' or 'yes_no'")
        template = TEMPLATES[mode] if prompt_template is None else prompt_template
        if "{prompt}" not in template:
            raise ValueError("vlm_judge prompt_template must contain {prompt} where the image's prompt goes")
        if max_concurrency < 1 or timeout <= 0 or retries < 0 or backoff < 0 or batch_timeout_s <= 0:
            raise ValueError("vlm_judge needs max_concurrency >= 1, timeout > 0, retries >= 0, backoff >= 0, batch_timeout_s > 0")
        low, high = (float(v) for v in rating_range)
        if not high > low:
            raise ValueError(f"vlm_judge rating_range must be (low, high) with high > low, got {list(rating_range)}")
        super().__init__(device="cpu", batch_size=batch_size)
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.mode: JudgeMode = mode
        self.template = template
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens if max_tokens is not None else (4 if mode == "yes_no" else 16))
        self.top_logprobs = int(top_logprobs)
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.batch_timeout_s = float(batch_timeout_s)
        self.fallback_score = float(fallback_score)
        self.rating_range = (low, high)
        self.max_response_bytes = int(max_response_bytes)
        self.last_stats = JudgeStats()
        self.total_stats = JudgeStats()
        self._lock = threading.Lock()

    # -- one request

    def request_body(self, image_png_b64: str, prompt: str) -> dict[str, Any]:
        """The chat/completions JSON for one image (a text part and a PNG data URL)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": self.template.replace("{prompt}", prompt)},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_png_b64}"}},
                ],
            }],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.mode == "yes_no" and self.top_logprobs > 0:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body

    def score_answer(self, payload: Any) -> float | None:
        """The [0, 1] score of one answer, or ``None`` when it says nothing usable."""
        content, top = chat_answer(payload)
        if self.mode == "yes_no":
            probability = yes_probability(top)
            if probability is not None:
                return probability
            return parse_yes_no(content) if content is not None else None
        return parse_rating(content, *self.rating_range) if content is not None else None

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _judge(self, body: bytes, deadline: float, stats: JudgeStats) -> tuple[str, float | None, str]:
        """(status, score, detail) for one item: retried until an answer arrives or ``deadline`` passes."""
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None, f"batch time ran out ({last})"
            if attempt:
                with self._lock:
                    stats.retries += 1
                time.sleep(min(self.backoff * 2 ** (attempt - 1), remaining))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout", None, f"batch time ran out ({last})"
            try:
                payload = http_json(
                    self.url, body, timeout=min(self.timeout, remaining),
                    max_response_bytes=self.max_response_bytes, headers=self._headers(),
                )
            except RequestError as error:
                if error.status not in _RETRY_STATUSES:
                    raise _ConfigError(f"judge server {self.url} rejected the request ({error.status}): {error}") from None
                last = f"HTTP {error.status}"
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
                last = _describe(error)
                continue
            score = self.score_answer(payload)
            if score is None:
                content, _ = chat_answer(payload)
                return "unparsed", None, f"unusable answer {str(content if content is not None else payload)[:80]!r}"
            return "ok", score, ""
        return "error", None, f"{self.retries + 1} attempt(s) failed, last: {last}"

    # -- a batch

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        stats = JudgeStats(items=len(prompts))
        deadline = time.monotonic() + self.batch_timeout_s
        bodies = [json.dumps(self.request_body(encode_image(im), p)).encode() for im, p in zip(images, prompts)]
        scores = [self.fallback_score] * len(bodies)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="vlm-judge")
        try:
            futures = {pool.submit(self._judge, body, deadline, stats): i for i, body in enumerate(bodies)}
            done, pending = concurrent.futures.wait(futures, timeout=max(deadline - time.monotonic(), 0.0))
            fatal = None
            for future in done:
                index = futures[future]
                try:
                    status, score, detail = future.result()
                except _ConfigError as error:
                    fatal = str(error)
                    continue
                if status == "ok" and score is not None:
                    scores[index] = score
                    stats.ok += 1
                else:
                    counter = _COUNTERS[status]
                    setattr(stats, counter, getattr(stats, counter) + 1)
                    stats.failures.append(f"item {index}: {detail}")
            for future in pending:
                stats.timeouts += 1
                stats.failures.append(f"item {futures[future]}: no answer within batch_timeout_s={self.batch_timeout_s}")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if fatal is not None:
            raise RemoteRewardRejected(fatal)
        self.last_stats = stats
        self.total_stats.add(stats)
        if stats.fallbacks:
            logger.warning(
                "vlm_judge: %d of %d item(s) not judged, scored %.3g (%d unparsed, %d failed, %d timed out); first: %s",
                stats.fallbacks, stats.items, self.fallback_score, stats.unparsed, stats.errors, stats.timeouts,
                stats.failures[0] if stats.failures else "-",
            )
        return torch.tensor(scores, dtype=torch.float32)
