"""Serve a reward over HTTP (stdlib only), and :class:`RemoteReward`, the client that scores through it.

Run big reward models in their own process or machine::

    python -m treegrpo.rewards.server hpsv2 --port 8000 --option device=cuda
    python -m treegrpo.rewards.server hpsv2 --host 0.0.0.0 --token-file ~/.reward_token   # reachable by others

Protocol (JSON, never pickle):

* ``POST /score`` ``{"prompts": [str, ...], "images": [base64 PNG, ...]}`` -> ``{"scores": [float, ...]}``;
  optionally ``"metadata": [object or null, ...]``, one per prompt (a prompt set's fields, e.g. GenEval's
  ``tag`` / ``include``): the reward then gets those prompts as :class:`~treegrpo.prompts.PromptRecord`
* ``GET /health`` -> ``{"status": "ok", "reward": name}`` (never needs the token: it scores nothing)
* Errors: ``{"error": "one line"}`` with 400 (malformed), 401 (missing or wrong token), 404, 408
  (request not received in time), 411 (no length), 413 (request or image too large), 500 (the reward
  failed), 503 (busy; ``Retry-After: <whole seconds>`` says when to come back).

Who may score: with ``--token-file PATH`` (one token of printable ASCII; surrounding whitespace is
stripped) every ``POST /score`` must carry ``Authorization: Bearer <token>``, checked in constant time
from the headers before any of the body is read (401 otherwise); :class:`RemoteReward` sends the
token in ``$TREEGRPO_REWARD_TOKEN``. A server that would listen on anything but loopback (127.0.0.1,
::1, localhost) without a token refuses to start (one line, exit code 2). The token is never logged
and travels in clear text: beyond one machine, use a trusted network or a tunnel.

Load: scoring is one request at a time, and at most ``--max-pending`` score requests (16) are
admitted at once, the one being scored included; a request holds its place from its headers to its
answer. Beyond that the answer is 503 with ``Retry-After`` (about the time to score what is pending,
from recent scoring times; 1 to 60 s), given from the headers; :class:`RemoteReward` waits that long
(at most 30 s) and counts it as an attempt. So at most ``max_pending`` bodies are held and decoded
at once.

The server binds 127.0.0.1 unless told otherwise, caps the request size, the number of images and
the pixels per image (checked from the PNG header before decoding). Slow clients cannot hold it:
each read waits at most ``--read-timeout`` seconds (30; an idle connection is closed after it) and a
whole request (line, headers, body) must arrive within ``--read-deadline`` seconds (120) of the
server starting to wait for it, or it gets 408 (the connection is just closed while headers are
missing); every connection has its own thread, so a slow one delays no other. An answer given
from the headers alone (401, 404, 413, 503) is followed by discarding the unread body (never
stored nor decoded), so that a client still sending sees the answer rather than a reset.

The client, :class:`RemoteReward`, lives in :mod:`treegrpo.rewards.remote` and is re-exported here.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn, Sequence

import numpy as np
import torch
from PIL import Image

from treegrpo.errors import ConfigError
from treegrpo.prompts import PromptRecord
from treegrpo.rewards.base import RewardFn
from treegrpo.rewards.remote import (  # the client, re-exported: `from treegrpo.rewards.server import RemoteReward`
    TOKEN_ENV,
    RemoteReward,
    RemoteRewardError,
    RemoteRewardRejected,
    RemoteRewardUnavailable,
    RequestError,
    check_token,
    encode_image,
)

__all__ = [
    "RemoteReward", "RemoteRewardError", "RemoteRewardRejected", "RemoteRewardUnavailable", "RequestError", "RewardHTTPServer", "ServerLimits",
    "decode_image", "encode_image", "is_loopback", "main", "make_server", "parse_score_request", "read_token", "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_IMAGES = 512
DEFAULT_MAX_PENDING = 16
MAX_RETRY_AFTER = 60
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_READ_DEADLINE = 120.0
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
    metadata = payload.get("metadata")
    if metadata is not None and (not isinstance(metadata, list) or len(metadata) != len(prompts)
                                 or not all(m is None or isinstance(m, dict) for m in metadata)):
        raise RequestError(400, '"metadata" must be a list with one object (or null) per prompt')
    tensors = [decode_image(item, max_pixels) for item in images]
    if len({tuple(t.shape) for t in tensors}) != 1:
        raise RequestError(400, "all images of one request must have the same size")
    if metadata is not None:
        prompts = [p if m is None else PromptRecord(p, m) for p, m in zip(prompts, metadata)]
    return torch.stack(tensors), prompts


# ----------------------------------------------------------------------------- who may score


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1: addresses that only this machine reaches."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name, or "" (every interface)


def read_token(path: str | Path) -> str:
    """The token in ``path`` (whitespace stripped); a missing, empty or odd file is a ConfigError."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise ConfigError(f"cannot read token file {path}: {reason}") from None
    return check_token(text, f"token file {path}")


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token: anyone who reached it could use the reward."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host or 'every interface'!r} without a token: anyone who reaches it could use "
            "the reward; pass --token-file PATH (clients set TREEGRPO_REWARD_TOKEN) or listen on 127.0.0.1"
        )


# ----------------------------------------------------------------------------- server


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the server: request size, images, pixels, and time to send a request."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES
    max_pending: int = DEFAULT_MAX_PENDING  # score requests admitted at once, the one being scored included
    read_timeout: float = DEFAULT_READ_TIMEOUT  # one read from the socket (an idle connection is closed after it)
    read_deadline: float = DEFAULT_READ_DEADLINE  # one whole request: line, headers and body

    def check(self) -> None:
        """Refuse limits that would break the server (ConfigError, one line)."""
        for name in ("max_request_bytes", "max_image_pixels", "max_images", "max_pending"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("read_timeout", "read_deadline"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")


class RewardHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server holding one reward; scoring is serialised by a lock."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of clients waits to be accepted instead of being dropped

    def __init__(
        self,
        address: tuple[str, int],
        reward: RewardFn,
        *,
        limits: ServerLimits | None = None,
        token: str | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        self.limits.check()
        check_exposure(address[0], token)
        self._bearer = check_token(token, "the token").encode("ascii") if token is not None else None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, RewardRequestHandler)
        self.reward = reward
        self.lock = threading.Lock()  # one scoring at a time
        self._admission = threading.Lock()
        self.pending = 0  # score requests admitted and not yet answered
        self.busy_answers = 0  # 503s sent so far
        self.score_seconds = 0.0  # moving average of one scoring, for Retry-After

    def admit(self) -> bool:
        """Take one of the ``max_pending`` places (give it back with ``release``); False when all are taken."""
        with self._admission:
            if self.pending >= self.limits.max_pending:
                self.busy_answers += 1
                return False
            self.pending += 1
            return True

    def release(self) -> None:
        with self._admission:
            self.pending -= 1

    def retry_after(self) -> int:
        """Whole seconds a refused client should wait: about the time to score what is pending (1 to 60)."""
        return int(min(MAX_RETRY_AFTER, max(1, math.ceil(self.score_seconds * self.limits.max_pending))))

    def score(self, images: torch.Tensor, prompts: list[str]) -> list[float]:
        """The reward's scores, one request at a time; keeps the average scoring time up to date."""
        with self.lock:
            start = time.monotonic()
            scores = self.reward(images, prompts)
            seconds = time.monotonic() - start
            self.score_seconds = seconds if self.score_seconds == 0 else 0.8 * self.score_seconds + 0.2 * seconds
        return [float(v) for v in scores.reshape(-1).tolist()]

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (always, when there is none to carry)."""
        if self._bearer is None:
            return True
        scheme, _, credentials = (header or "").strip().partition(" ")
        supplied = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(supplied, self._bearer) and scheme.lower() == "bearer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or stalled is one debug line; anything else keeps its traceback (a bug)."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.debug("client %s: %s", client_address, _one_line(error))
        else:
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        """``http://host:port`` actually bound (useful with port 0)."""
        host, port = str(self.server_address[0]), int(self.server_address[1])
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _DeadlineReader(io.RawIOBase):
    """The connection's reads: each waits at most ``read_timeout``, and none starts after ``deadline``.

    The per-read timeout alone would let a client keep a request alive forever by sending one byte
    just before each timeout; the deadline bounds the whole request.
    """

    def __init__(self, sock: socket.socket, read_timeout: float) -> None:
        super().__init__()
        self.sock = sock
        self.read_timeout = read_timeout
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received before its deadline")
        self.sock.settimeout(min(self.read_timeout, remaining))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.read_timeout)  # writes keep the plain timeout


class RewardRequestHandler(BaseHTTPRequestHandler):
    """``GET /health`` and ``POST /score``; every answer is JSON."""

    server: RewardHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: do not hold the second back

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.limits.read_timeout)
        self.rfile.close()  # the plain socket file: reads go through the deadline instead
        self._reader = _DeadlineReader(self.connection, self.server.limits.read_timeout)
        self.rfile = io.BufferedReader(self._reader, 1 << 16)

    def handle_one_request(self) -> None:
        """One request, read within ``read_deadline`` from when the server starts waiting for it."""
        self._reader.deadline = time.monotonic() + self.server.limits.read_deadline
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok", "reward": getattr(self.server.reward, "name", "reward")})
        else:
            self._send(404, {"error": f"unknown path {self.path}: use GET /health or POST /score"})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/score":
            self._refuse(404, f"unknown path {self.path}: use POST /score")
            return
        if not self.server.authorized(self.headers.get("Authorization")):
            self._refuse(401, f"missing or wrong token: send Authorization: Bearer <token> (RemoteReward reads it "
                              f"from ${TOKEN_ENV})", {"WWW-Authenticate": "Bearer"})
            return
        if not self.server.admit():
            wait = self.server.retry_after()
            self._refuse(503, f"busy: {self.server.limits.max_pending} requests pending; retry after {wait} s",
                         {"Retry-After": str(wait)})
            return
        try:
            self._score()
        finally:
            self.server.release()

    def _score(self) -> None:
        """Read, decode and score one request; every failure is a one-line JSON answer."""
        try:
            body = self._read_body()
            if body is None:
                return
            images, prompts = parse_score_request(
                body, max_images=self.server.limits.max_images, max_pixels=self.server.limits.max_image_pixels
            )
        except RequestError as error:
            self.close_connection = True
            self._send(error.status, {"error": str(error)})
            return
        try:
            values = self.server.score(images, prompts)
        except Exception as error:
            logger.exception("reward failed on a request of %d images", len(prompts))
            self._send(500, {"error": f"reward failed: {type(error).__name__}: {error}".splitlines()[0]})
            return
        self._send(200, {"scores": values})

    def _content_length(self) -> int:
        """The declared body size; 411 without one, 400 for nonsense."""
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise RequestError(411, "Content-Length is required")
        try:
            length = int(length_header)
        except ValueError:
            raise RequestError(400, "Content-Length is not an integer") from None
        if length < 0:
            raise RequestError(400, "Content-Length is negative")
        return length

    def _read_body(self) -> bytes | None:
        """The request body; None once an oversized one is refused (413); one not received in time is a 408."""
        length = self._content_length()
        limit = self.server.limits.max_request_bytes
        if length > limit:
            self._refuse(413, f"request of {length} bytes exceeds the limit of {limit}")
            return None
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            limits = self.server.limits
            raise RequestError(
                408, f"request body not received in time ({limits.read_timeout:g} s per read, "
                f"{limits.read_deadline:g} s for the whole request)",
            ) from None
        if len(body) != length:
            raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer from the headers alone, then discard the unread body (never stored nor decoded).

        Closing with unread bytes makes the kernel reset the connection, and a client still sending
        would see that reset instead of this answer; the discarding stops at the read deadline.
        """
        self.close_connection = True
        self._send(status, {"error": message}, headers)
        try:
            length = self._content_length()
        except RequestError:
            return
        if length > 4 * self.server.limits.max_request_bytes:
            return  # far too big to wait for: just close (the client may see a reset)
        try:
            while length > 0:
                chunk = self.rfile.read1(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:  # timeouts and resets: the answer is out, nothing more to do
            pass


def make_server(
    reward: RewardFn, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None, **limits: Any
) -> RewardHTTPServer:
    """Bind (port 0 = any free port) without serving yet; call ``serve_forever()`` on the result.

    ``token``: what ``POST /score`` must carry as ``Authorization: Bearer``; ``limits``: :class:`ServerLimits` fields.
    """
    return RewardHTTPServer((host, port), reward, limits=ServerLimits(**limits), token=token)


def serve(
    reward_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    token: str | None = None,
    limits: ServerLimits | None = None,
    **options: Any,
) -> None:
    """Build ``get_reward(reward_name, **options)`` and serve it until interrupted; bad settings fail before it."""
    from treegrpo.rewards import get_reward

    limits = limits or ServerLimits()
    limits.check()
    check_exposure(host, token)
    reward = get_reward(reward_name, **options)
    server = RewardHTTPServer((host, port), reward, limits=limits, token=token)
    if token is not None and not is_loopback(host):
        logger.warning("the token travels in clear text (plain HTTP): reach %s over a trusted network or a tunnel",
                       host)
    logger.info("serving reward %r at %s%s", reward_name, server.url, " (token required)" if token else "")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("reward server stopped")
    finally:
        server.server_close()


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:200]


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
    """``python -m treegrpo.rewards.server NAME [--host H] [--port P] [limits] [--option key=value ...]``."""
    parser = _Parser(prog="python -m treegrpo.rewards.server", description="Serve a treegrpo reward over HTTP.")
    parser.add_argument("reward")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token-file", help="file holding the token POST /score must carry as Authorization: "
                        "Bearer (clients: $TREEGRPO_REWARD_TOKEN); required unless --host is loopback")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS)
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES, help="images per request")
    parser.add_argument("--max-pending", type=int, default=DEFAULT_MAX_PENDING,
                        help="score requests admitted at once, the one being scored included; more get 503")
    parser.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT,
                        help="seconds one read from a client may wait; an idle connection is closed after it")
    parser.add_argument("--read-deadline", type=float, default=DEFAULT_READ_DEADLINE,
                        help="seconds to receive one whole request (line, headers, body); slower ones get 408")
    parser.add_argument("--option", type=_parse_option, action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = ServerLimits(
        max_request_bytes=args.max_request_bytes, max_image_pixels=args.max_image_pixels, max_images=args.max_images,
        max_pending=args.max_pending,
        read_timeout=args.read_timeout, read_deadline=args.read_deadline,
    )
    try:
        token = read_token(args.token_file) if args.token_file is not None else None
        serve(args.reward, args.host, args.port, token=token, limits=limits, **dict(args.option))
    except ConfigError as error:
        parser.error(str(error).splitlines()[0] if str(error) else type(error).__name__)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


if __name__ == "__main__":
    main()
