"""The client side of the reward server: :class:`RemoteReward` and the one JSON exchange it (and the
VLM judge) is built on.

``RemoteReward`` scores through ``python -m treegrpo.rewards.server`` (protocol in that module's
docstring). It retries timeouts, refused connections, 5xx and garbage answers (wrong count,
non-finite scores) with exponential backoff, and waits out a busy server's 503 as its
``Retry-After`` asks (at most 30 s; each 503 is an attempt); when the attempts are spent, a batch is *not scored*
(NaN scores and one warning line: the trainer leaves it out and stops a run whose reward stays
unavailable, see ``train.max_unscored_in_a_row``), and ``health()`` raises a one-line
:class:`RemoteRewardUnavailable`. 4xx answers are a configuration error and raise
:class:`RemoteRewardError` at once; a 401 names the environment variable to set
(``TREEGRPO_REWARD_TOKEN``, or the reward's ``token_env``), whose value is sent as
``Authorization: Bearer`` and never logged. Redirects are not followed (the header would go along).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from treegrpo.errors import ConfigError
from treegrpo.prompts import prompt_metadata
from treegrpo.rewards.base import BatchedReward

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

TOKEN_ENV = "TREEGRPO_REWARD_TOKEN"
"""The environment variable :class:`RemoteReward` reads its bearer token from (option ``token_env``)."""
MAX_RETRY_AFTER_S = 30.0
"""The longest a client waits when a busy server's ``Retry-After`` asks for more (option ``max_retry_after``)."""
_sleep = time.sleep  # the tests count the waits instead of sleeping them


class RequestError(Exception):
    """A client error with its HTTP status (4xx): raised by the server's checks, and by ``http_json`` for a 4xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RemoteRewardError(RuntimeError):
    """The reward server rejected a request (4xx) or, as :class:`RemoteRewardUnavailable`, gave no usable answer."""


class RemoteRewardRejected(RemoteRewardError, ConfigError):
    """The server refused the request (4xx: a wrong model name, key or token): the settings are at fault, so
    the command line prints it as one line with exit 2, whether it comes at start-up or mid-run."""


class RemoteRewardUnavailable(RemoteRewardError):
    """Every attempt failed (timeouts, refused connections, 5xx, unusable answers): the server is down or stalls."""


class ServerBusy(ConnectionError):
    """A 503 with ``Retry-After``: the server asks for ``retry_after`` seconds before the next attempt."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def check_token(token: str, source: str) -> str:
    """``token`` stripped, if it is one word of printable ASCII (it travels in a header); else a ConfigError
    naming ``source`` (never the token)."""
    token = token.strip()
    if not token:
        raise ConfigError(f"{source} is empty: it must hold the token")
    if not all(0x21 <= ord(char) <= 0x7E for char in token):
        raise ConfigError(f"{source} must hold one token of printable ASCII characters without spaces")
    return token


def encode_image(image: torch.Tensor) -> str:
    """[3, H, W] float in [0, 1] -> base64 PNG (8-bit RGB)."""
    array = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array.numpy())).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- client


class RemoteReward(BatchedReward):
    """Score through a reward server; bounded in time, retried, one-line errors.

    Images travel as 8-bit PNG, the same rounding the local scorers apply first. Each attempt is
    bounded by ``timeout`` per socket operation; attempts are ``retries + 1``, spaced by
    ``backoff * 2**k`` seconds, or after a busy server's 503 by the ``Retry-After`` it sends (at most
    ``max_retry_after``); a response body must arrive within ``timeout`` in all. When the
    environment variable named by ``token_env`` is set, every request carries
    ``Authorization: Bearer <its value>`` (a server started with ``--token-file`` asks for it).
    """

    name = "remote"
    abstains = True  # a batch the server could not score comes back NaN (see the module docstring)

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        batch_size: int = 32,
        max_response_bytes: int = 16 * 1024 * 1024,
        token_env: str = TOKEN_ENV,
        max_retry_after: float = MAX_RETRY_AFTER_S,
        name: str | None = None,
        **options: Any,
    ) -> None:
        for shared in ("device", "dtype", "reward_device", "offload"):  # no local model to place
            options.pop(shared, None)
        if options:
            raise TypeError(f"unknown option(s) for RemoteReward: {sorted(options)}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_retry_after < 0:
            raise ValueError("RemoteReward needs timeout > 0, retries >= 0, backoff >= 0 and max_retry_after >= 0")
        super().__init__(device="cpu", batch_size=batch_size)
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_response_bytes = int(max_response_bytes)
        self.max_retry_after = float(max_retry_after)
        self.token_env = token_env
        token = os.environ.get(token_env, "")
        self._headers = {"Authorization": f"Bearer {check_token(token, f'${token_env}')}"} if token.strip() else {}
        if name:
            self.name = name

    def _request(self, path: str, body: bytes | None) -> Any:
        """One HTTP exchange -> parsed JSON; ``RequestError`` for 4xx, other exceptions to retry."""
        return http_json(self.url + path, body, timeout=self.timeout, max_response_bytes=self.max_response_bytes,
                         headers=self._headers)

    def _rejected(self, error: RequestError) -> RemoteRewardRejected:
        """A 4xx as a one-line configuration error; a 401 says which variable to set (never the token)."""
        if error.status == 401 and not self._headers:
            return RemoteRewardRejected(f"reward server {self.url} needs a token (401): set {self.token_env} to the "
                                     "token in the server's --token-file")
        if error.status == 401:
            return RemoteRewardRejected(f"reward server {self.url} refused the token in {self.token_env} (401): set it "
                                     "to the token in the server's --token-file")
        return RemoteRewardRejected(f"reward server {self.url} rejected the request ({error.status}): {error}")

    def _with_retries(self, path: str, body: bytes | None, check: Callable[[Any], _T]) -> _T:
        """Call ``_request`` up to ``retries + 1`` times, waiting by exponential backoff or as a busy server asks."""
        last = "no attempt made"
        attempts = self.retries + 1
        wait = 0.0
        for attempt in range(attempts):
            if attempt:
                _sleep(wait)
            try:
                return check(self._request(path, body))
            except RequestError as error:
                raise self._rejected(error) from None
            except ServerBusy as error:
                last = _describe(error)
                wait = min(error.retry_after, self.max_retry_after)
                logger.info("reward server %s busy, attempt %d/%d: waiting %g s", self.url, attempt + 1, attempts, wait)
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
                last = _describe(error)
                logger.warning("reward server %s, attempt %d/%d failed: %s", self.url, attempt + 1, attempts, last)
            wait = self.backoff * 2**attempt
        raise RemoteRewardUnavailable(
            f"reward server {self.url} failed {attempts} attempt(s), last: {last}; "
            "is `python -m treegrpo.rewards.server` running there?"
        )

    def health(self) -> dict[str, Any]:
        """``GET /health`` (with retries)."""

        def check(payload: Any) -> dict[str, Any]:
            if not isinstance(payload, dict) or payload.get("status") != "ok":
                raise ValueError(f"unexpected health answer {str(payload)[:60]}")
            return payload

        return self._with_retries("/health", None, check)

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        request: dict[str, Any] = {"prompts": list(prompts), "images": [encode_image(im) for im in images]}
        metadata = [prompt_metadata(prompt) for prompt in prompts]
        if any(fields is not None for fields in metadata):  # a prompt set's fields go along (GenEval's objects)
            request["metadata"] = metadata
        body = json.dumps(request).encode()
        expected = len(prompts)

        def check(payload: Any) -> torch.Tensor:
            scores = payload.get("scores") if isinstance(payload, dict) else None
            if (
                not isinstance(scores, list)
                or len(scores) != expected
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)
            ):
                raise ValueError(f"answer has no list of {expected} numeric scores: {str(payload)[:60]}")
            if not all(math.isfinite(s) for s in scores):
                raise ValueError("answer contains non-finite scores")
            return torch.tensor(scores, dtype=torch.float32)

        try:
            scores: torch.Tensor = self._with_retries("/score", body, check)
        except RemoteRewardUnavailable as error:
            logger.warning("%d image(s) not scored: %s", expected, error)
            return torch.full((expected,), float("nan"))
        return scores


# ----------------------------------------------------------------------------- HTTP helper


def http_json(
    url: str,
    body: bytes | None,
    *,
    timeout: float,
    max_response_bytes: int,
    headers: dict[str, str] | None = None,
) -> Any:
    """One JSON exchange (POST when ``body`` is given, else GET), bounded by ``timeout`` in all.

    Raises :class:`RequestError` for a 4xx answer (its status kept, so a caller may retry 429) and for
    a redirect (never followed), ``ConnectionError`` for 5xx (:class:`ServerBusy` for a 503 with
    ``Retry-After`` in seconds), ``ValueError`` for a non-JSON or oversized body, and the socket's own
    errors (timeouts, refused or dropped connections) as they come.
    """
    request = urllib.request.Request(
        url, data=body, method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
    )
    deadline = time.monotonic() + timeout
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = _read_before(response, deadline, max_response_bytes)
    except urllib.error.HTTPError as error:
        detail = _error_detail(error)
        if 300 <= error.code < 400:
            location = str(error.headers.get("Location", "elsewhere"))[:200]
            raise RequestError(error.code, f"redirected to {location}: give that URL (redirects are not followed, "
                               "so headers such as the token never go to another address)") from None
        if 400 <= error.code < 500:
            raise RequestError(error.code, detail) from None
        retry_after = _retry_after(error.headers.get("Retry-After")) if error.code == 503 else None
        if retry_after is not None:
            raise ServerBusy(f"HTTP 503: {detail}", retry_after) from None
        raise ConnectionError(f"HTTP {error.code}: {detail}") from None
    if len(raw) > max_response_bytes:
        raise ValueError(f"response larger than {max_response_bytes} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"response is not JSON: {raw[:60]!r}") from None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its seconds form; None for a date or nonsense (backoff then)."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into its HTTPError: the Authorization header must not follow one elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _read_before(response: http.client.HTTPResponse, deadline: float, max_bytes: int) -> bytes:
    """The body, read chunk by chunk, so a server trickling bytes cannot outlast the deadline."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)  # the caller reports the size
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The server's one-line ``{"error": ...}`` if it sent one, else the HTTP reason."""
    try:
        payload = json.loads(error.read(4096))
        return str(payload.get("error", error.reason))
    except Exception:
        return str(error.reason)


def _describe(error: BaseException) -> str:
    """A short one-line cause: timeout, refused, garbage."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return f"{type(error).__name__}: {error}".splitlines()[0][:200]
