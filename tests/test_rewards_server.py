"""Reward server and RemoteReward client on 127.0.0.1: round trip, 4xx, and bounded failures
(slow server, closed port, garbage answers)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Sequence

import pytest
import torch

from treegrpo.rewards import get_reward
from treegrpo.rewards.server import RemoteReward, RemoteRewardError, RemoteRewardUnavailable, encode_image, make_server


class _Brightness:
    """A cheap reward: mean pixel value plus prompt length / 100."""

    name = "brightness"

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3)) + torch.tensor([len(p) / 100 for p in prompts])


def _start(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture()
def reward_server() -> Iterator[Any]:
    server = make_server(_Brightness(), "127.0.0.1", 0, max_request_bytes=200_000, max_image_pixels=64 * 64, max_images=8)
    _start(server)
    yield server
    server.shutdown()
    server.server_close()


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_round_trip_matches_local_scores(reward_server: Any) -> None:
    images = torch.rand(5, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    images = (images * 255).round() / 255  # PNG is 8-bit: exact on the 8-bit grid
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    client = get_reward("remote", url=reward_server.url, timeout=5, retries=0, batch_size=2)
    assert client.health() == {"status": "ok", "reward": "brightness"}
    scores = client(images, prompts)
    torch.testing.assert_close(scores, _Brightness()(images, prompts), rtol=0, atol=1e-6)


def test_bad_requests_get_4xx_json(reward_server: Any) -> None:
    url = reward_server.url + "/score"
    image = encode_image(torch.rand(3, 8, 8))
    cases = [
        (b"not json", 400),
        (json.dumps([1, 2]).encode(), 400),
        (json.dumps({"prompts": ["a"], "images": []}).encode(), 400),
        (json.dumps({"prompts": ["a"], "images": ["@@@"]}).encode(), 400),
        (json.dumps({"prompts": ["a"], "images": ["aGVsbG8="]}).encode(), 400),  # base64 of "hello"
        (json.dumps({"prompts": ["a"] * 9, "images": [image] * 9}).encode(), 413),
        (json.dumps({"prompts": ["a"], "images": [encode_image(torch.rand(3, 65, 64))]}).encode(), 413),
        (b"x" * 300_000, 413),
    ]
    for body, status in cases:
        got, payload = _post(url, body)
        assert got == status, (body[:40], payload)
        assert isinstance(payload.get("error"), str) and "\n" not in payload["error"]
    assert _post(reward_server.url + "/other", b"{}")[0] == 404
    # the client reports a 4xx at once, without retrying
    client = RemoteReward(reward_server.url, timeout=5, retries=3, backoff=1.0)
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"rejected the request \(413\)"):
        client(torch.rand(1, 3, 80, 80), ["too big"])
    assert time.monotonic() - start < 1.0


class _Scripted(BaseHTTPRequestHandler):
    """Answers with whatever the server's ``behaviour`` callable does."""

    def do_POST(self) -> None:
        self.server.calls += 1  # type: ignore[attr-defined]
        self.server.behaviour(self)  # type: ignore[attr-defined]

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _scripted_server(behaviour: Callable[[BaseHTTPRequestHandler], None]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    server.behaviour = behaviour  # type: ignore[attr-defined]
    server.calls = 0  # type: ignore[attr-defined]
    _start(server)
    return server


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _slow(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(1.5)
    try:
        _reply(handler, 200, b'{"scores": [0.0]}')
    except OSError:
        pass  # the client gave up long ago


def _trickle(handler: BaseHTTPRequestHandler) -> None:
    """Headers at once, then one body byte every 0.2 s: each read is quick, the whole is not."""
    body = b'{"scores": [0.0]}' + b" " * 20
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    try:
        for byte in body:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass  # the client gave up


def _raw_garbage(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.write(b"\x00\x01 this is not HTTP\r\n\r\n")


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (_slow, "timed out"),
        (_trickle, "timed out"),
        (lambda h: _reply(h, 200, b"<html>hello</html>"), "not JSON"),
        (lambda h: _reply(h, 200, b'{"scores": [1.0, 2.0, 3.0]}'), "numeric scores"),
        (lambda h: _reply(h, 200, b'{"scores": ["high"]}'), "numeric scores"),
        (lambda h: _reply(h, 200, b'{"scores": [NaN]}'), "non-finite"),
        (lambda h: _reply(h, 503, b'{"error": "overloaded"}'), "overloaded"),
        (_raw_garbage, "BadStatusLine"),
    ],
    ids=["slow", "trickle", "html", "wrong-count", "strings", "nan", "503", "not-http"],
)
def test_failures_retry_then_leave_the_batch_unscored(behaviour: Callable[[BaseHTTPRequestHandler], None], reason: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Spent retries are not a score: the batch comes back NaN ("not scored", which the trainer leaves out)
    with one warning line that says why; the health check raises it."""
    server = _scripted_server(behaviour)
    try:
        client = RemoteReward(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.4, retries=1, backoff=0.05)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="treegrpo.rewards.remote"):
            scores = client(torch.rand(1, 3, 8, 8), ["x"])
        elapsed = time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()
    assert scores.shape == (1,) and bool(torch.isnan(scores).all())
    message = caplog.records[-1].getMessage()
    assert "\n" not in message and "2 attempt(s)" in message and reason in message, message
    assert message.startswith("1 image(s) not scored: reward server")
    assert server.calls == 2  # type: ignore[attr-defined]
    assert elapsed < 2.0


def test_server_down_gives_refused_error_quickly() -> None:
    with socket.socket() as sock:  # find a free port, then close it: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = RemoteReward(f"http://127.0.0.1:{port}", timeout=1.0, retries=2, backoff=0.05)
    start = time.monotonic()
    assert bool(torch.isnan(client(torch.rand(1, 3, 8, 8), ["x"])).all())  # not scored
    assert time.monotonic() - start < 2.0
    with pytest.raises(RemoteRewardUnavailable, match=r"3 attempt\(s\), last: connection refused"):
        client.health()
