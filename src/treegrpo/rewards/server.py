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
time. The client, :class:`RemoteReward`, lives in :mod:`treegrpo.rewards.remote` and is re-exported
here.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from treegrpo.rewards.base import RewardFn
from treegrpo.rewards.remote import (  # the client, re-exported: `from treegrpo.rewards.server import RemoteReward` works
    RemoteReward,
    RemoteRewardError,
    RemoteRewardUnavailable,
    RequestError,
    encode_image,
)

__all__ = [
    "RemoteReward", "RemoteRewardError", "RemoteRewardUnavailable", "RequestError", "RewardHTTPServer",
    "decode_image", "encode_image", "main", "make_server", "parse_score_request", "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_IMAGES = 512
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- image codec


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


if __name__ == "__main__":
    main()
