"""Serve a reward over HTTP (stdlib only), and :class:`RemoteReward`, the client that scores through it.

Run big reward models in their own process or machine::

    python -m treegrpo.rewards.server hpsv2 --port 8000 --option device=cuda

Protocol (JSON, never pickle):

* ``POST /score`` ``{"prompts": [str, ...], "images": [base64 PNG, ...]}`` -> ``{"scores": [float, ...]}``
* ``GET /health`` -> ``{"status": "ok", "reward": name}``
* Errors: ``{"error": "one line"}`` with 400 (malformed), 404, 411 (no length), 413 (request or
  image too large), 500 (the reward failed).

The server binds 127.0.0.1 unless told otherwise, caps the request size, the number of images and
the pixels per image (checked from the PNG header before decoding), and scores one request at a
time. The client retries timeouts, refused connections, 5xx and garbage answers (wrong count,
non-finite scores) with exponential backoff; when the attempts are spent, a batch is *not scored*
(NaN scores and one warning line: the trainer leaves it out and stops a run whose reward stays
unavailable, see ``train.max_unscored_in_a_row``), and ``health()`` raises a one-line
:class:`RemoteRewardUnavailable`. 4xx answers are a configuration error and raise
:class:`RemoteRewardError` at once.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import http.client
import io
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from treegrpo.rewards.base import BatchedReward, RewardFn

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_IMAGES = 512
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RequestError(Exception):
    """A client error with its HTTP status (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RemoteRewardError(RuntimeError):
    """The reward server rejected a request (4xx) or, as :class:`RemoteRewardUnavailable`, gave no usable answer."""


class RemoteRewardUnavailable(RemoteRewardError):
    """Every attempt failed (timeouts, refused connections, 5xx, unusable answers): the server is down or stalls."""


# ----------------------------------------------------------------------------- image codec


def encode_image(image: torch.Tensor) -> str:
    """[3, H, W] float in [0, 1] -> base64 PNG (8-bit RGB)."""
    array = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array.numpy())).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: Any, max_pixels: int) -> torch.Tensor:
    """base64 PNG -> [3, H, W] float in [0, 1]; rejects non-PNG and oversized images before decoding."""
    if not isinstance(data, str):
        raise RequestError(400, "each image must be a base64 PNG string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "image is not valid base64") from None
    if not raw.startswith(_PNG_SIGNATURE):
        raise RequestError(400, "image is not a PNG")
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as pil:
            width, height = pil.size
            if width * height > max_pixels:
                raise RequestError(413, f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
            array = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    except RequestError:
        raise
    except Exception as error:  # PIL raises many types for corrupt data
        raise RequestError(400, f"cannot decode PNG ({type(error).__name__})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def parse_score_request(body: bytes, *, max_images: int, max_pixels: int) -> tuple[torch.Tensor, list[str]]:
    """Validate a ``/score`` JSON body into (images [B, 3, H, W], prompts)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestError(400, "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise RequestError(400, 'body must be a JSON object {"prompts": [...], "images": [...]}')
    prompts, images = payload.get("prompts"), payload.get("images")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestError(400, '"prompts" must be a list of strings')
    if not isinstance(images, list) or len(images) != len(prompts):
        raise RequestError(400, '"images" must be a list with one base64 PNG per prompt')
    if not images:
        raise RequestError(400, "no images to score")
    if len(images) > max_images:
        raise RequestError(413, f"{len(images)} images exceed the limit of {max_images} per request")
    tensors = [decode_image(item, max_pixels) for item in images]
    if len({tuple(t.shape) for t in tensors}) != 1:
        raise RequestError(400, "all images of one request must have the same size")
    return torch.stack(tensors), prompts


# ----------------------------------------------------------------------------- server


class RewardHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server holding one reward; scoring is serialised by a lock."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        reward: RewardFn,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_images: int = DEFAULT_MAX_IMAGES,
        request_timeout: float = 60.0,
    ) -> None:
        super().__init__(address, RewardRequestHandler)
        self.reward = reward
        self.max_request_bytes = int(max_request_bytes)
        self.max_image_pixels = int(max_image_pixels)
        self.max_images = int(max_images)
        self.request_timeout = float(request_timeout)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://host:port`` actually bound (useful with port 0)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class RewardRequestHandler(BaseHTTPRequestHandler):
    """``GET /health`` and ``POST /score``; every answer is JSON."""

    server: RewardHTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # bounds reads from slow or stalled clients
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok", "reward": getattr(self.server.reward, "name", "reward")})
        else:
            self._send(404, {"error": f"unknown path {self.path}: use GET /health or POST /score"})

    def do_POST(self) -> None:
        try:
            if self.path.rstrip("/") != "/score":
                raise RequestError(404, f"unknown path {self.path}: use POST /score")
            images, prompts = parse_score_request(
                self._read_body(), max_images=self.server.max_images, max_pixels=self.server.max_image_pixels
            )
        except RequestError as error:
            self.close_connection = True
            self._send(error.status, {"error": str(error)})
            return
        try:
            with self.server.lock:
                scores = self.server.reward(images, prompts)
            values = [float(v) for v in scores.reshape(-1).tolist()]
        except Exception as error:
            logger.exception("reward failed on a request of %d images", len(prompts))
            self._send(500, {"error": f"reward failed: {type(error).__name__}: {error}".splitlines()[0]})
            return
        self._send(200, {"scores": values})

    def _read_body(self) -> bytes:
        """The request body, refusing missing or oversized Content-Length before reading."""
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise RequestError(411, "Content-Length is required")
        try:
            length = int(length_header)
        except ValueError:
            raise RequestError(400, "Content-Length is not an integer") from None
        if length < 0:
            raise RequestError(400, "Content-Length is negative")
        if length > self.server.max_request_bytes:
            self._discard(length)
            raise RequestError(413, f"request of {length} bytes exceeds the limit of {self.server.max_request_bytes}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def _discard(self, length: int) -> None:
        """Read and drop a moderately oversized body so the client sees the 413, not a reset."""
        if length > 4 * self.server.max_request_bytes:
            return  # far too big: just close (the client may see a reset)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)


def make_server(
    reward: RewardFn,
    host: str = "127.0.0.1",
    port: int = 0,
    **limits: Any,
) -> RewardHTTPServer:
    """Bind (port 0 = any free port) without serving yet; call ``serve_forever()`` on the result."""
    return RewardHTTPServer((host, port), reward, **limits)


def serve(
    reward_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_images: int = DEFAULT_MAX_IMAGES,
    **options: Any,
) -> None:
    """Build ``get_reward(reward_name, **options)`` and serve it until interrupted."""
    from treegrpo.rewards import get_reward

    reward = get_reward(reward_name, **options)
    server = make_server(
        reward, host, port,
        max_request_bytes=max_request_bytes, max_image_pixels=max_image_pixels, max_images=max_images,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("reward server listens on %s: anyone who can reach it can use it (no authentication)", host)
    logger.info("serving reward %r at %s", reward_name, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("reward server stopped")
    finally:
        server.server_close()


def _parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with JSON values where they parse (numbers, true/false), strings otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"option must look like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m treegrpo.rewards.server NAME [--host H] [--port P] [--option key=value ...]``."""
    parser = argparse.ArgumentParser(description="Serve a treegrpo reward over HTTP.")
    parser.add_argument("reward")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS)
    parser.add_argument("--option", type=_parse_option, action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(
        args.reward, args.host, args.port,
        max_request_bytes=args.max_request_bytes, max_image_pixels=args.max_image_pixels, **dict(args.option),
    )


# ----------------------------------------------------------------------------- client


class RemoteReward(BatchedReward):
    """Score through a reward server; bounded in time, retried, one-line errors.

    Images travel as 8-bit PNG, the same rounding the local scorers apply first. Each attempt is
    bounded by ``timeout`` per socket operation; attempts are ``retries + 1``, spaced by
    ``backoff * 2**k`` seconds; a response body must arrive within ``timeout`` in all.
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
        name: str | None = None,
        **options: Any,
    ) -> None:
        for shared in ("device", "dtype", "reward_device", "offload"):  # no local model to place
            options.pop(shared, None)
        if options:
            raise TypeError(f"unknown option(s) for RemoteReward: {sorted(options)}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("RemoteReward needs timeout > 0, retries >= 0 and backoff >= 0")
        super().__init__(device="cpu", batch_size=batch_size)
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_response_bytes = int(max_response_bytes)
        if name:
            self.name = name

    def _request(self, path: str, body: bytes | None) -> Any:
        """One HTTP exchange -> parsed JSON; ``RequestError`` for 4xx, other exceptions to retry."""
        return http_json(self.url + path, body, timeout=self.timeout, max_response_bytes=self.max_response_bytes)

    def _with_retries(self, path: str, body: bytes | None, check: Any) -> Any:
        """Call ``_request`` up to ``retries + 1`` times with exponential backoff."""
        last = "no attempt made"
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return check(self._request(path, body))
            except RequestError as error:
                raise RemoteRewardError(f"reward server {self.url} rejected the request ({error.status}): {error}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
                last = _describe(error)
                logger.warning("reward server %s, attempt %d/%d failed: %s", self.url, attempt + 1, attempts, last)
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
        body = json.dumps({"prompts": list(prompts), "images": [encode_image(im) for im in images]}).encode()
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

    Raises :class:`RequestError` for a 4xx answer (its status kept, so a caller may retry 429),
    ``ConnectionError`` for 5xx, ``ValueError`` for a non-JSON or oversized body, and the socket's
    own errors (timeouts, refused or dropped connections) as they come.
    """
    request = urllib.request.Request(
        url, data=body, method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
    )
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = _read_before(response, deadline, max_response_bytes)
    except urllib.error.HTTPError as error:
        detail = _error_detail(error)
        if 400 <= error.code < 500:
            raise RequestError(error.code, detail) from None
        raise ConnectionError(f"HTTP {error.code}: {detail}") from None
    if len(raw) > max_response_bytes:
        raise ValueError(f"response larger than {max_response_bytes} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"response is not JSON: {raw[:60]!r}") from None


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


if __name__ == "__main__":
    main()
