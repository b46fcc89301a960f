"""Reward server and RemoteReward client on 127.0.0.1: round trip, 4xx, bounded failures (slow server,
closed port, garbage answers), slow clients, and the command line's one-line errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
import torch

from treegrpo.rewards import get_reward, register_reward
from treegrpo.rewards.server import RemoteReward, RemoteRewardError, RemoteRewardUnavailable, encode_image, make_server
from treegrpo.rewards import remote
from treegrpo.rewards.server import main as server_main


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


# ----------------------------------------------------------------------------- slow clients


def _raw_request(port: int, head: bytes, timeout: float = 5.0) -> socket.socket:
    """A connection that has sent ``head`` (request line and headers) and nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head)
    return sock


def _one_answer(sock: socket.socket) -> tuple[bytes, dict[str, Any]]:
    """The status line and JSON body of the first answer on ``sock``, read as soon as it is complete."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
        data.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
    ):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return head.split(b"\r\n", 1)[0], json.loads(body)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (b"" if it closed without a word)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


@pytest.fixture()
def impatient_server() -> Iterator[Any]:
    """A server that waits 0.5 s per read and 1.5 s for a whole request."""
    server = make_server(_Brightness(), "127.0.0.1", 0, max_image_pixels=64 * 64, read_timeout=0.5, read_deadline=1.5)
    _start(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_trickling_client_is_cut_at_the_deadline_and_blocks_no_one(impatient_server: Any, part: str) -> None:
    """One byte every 0.2 s never trips the 0.5 s read timeout; the 1.5 s deadline for the whole request
    drops it (408 when the headers were complete), and a normal request is answered meanwhile."""
    port = impatient_server.server_address[1]
    body = json.dumps({"prompts": ["a"], "images": [encode_image(torch.rand(3, 8, 8))]}).encode()
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
    first, rest = (head + b"\r\n", body) if part == "body" else (head[:20], head[20:] + b"\r\n" + body)
    outcome: dict[str, Any] = {}

    def trickle() -> None:
        start = time.monotonic()
        with _raw_request(port, first) as sock:
            try:
                for byte in rest:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)
                    if time.monotonic() - start > 8:
                        break
            except OSError:
                pass  # the server closed it
            outcome["answer"] = _answer(sock)
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=trickle)
    thread.start()
    time.sleep(0.3)  # the trickler is connected and sending
    client = RemoteReward(impatient_server.url, timeout=5, retries=0)
    start = time.monotonic()
    assert bool(torch.isfinite(client(torch.rand(2, 3, 8, 8), ["x", "y"])).all())
    assert time.monotonic() - start < 5.0  # not blocked by the trickler
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert outcome["seconds"] < 4.0, outcome  # 1.5 s deadline (the trickle alone would take over 100 s)
    if part == "body":
        assert outcome["answer"].startswith(b"HTTP/1.1 408") or outcome["answer"] == b"", outcome["answer"][:80]
    else:
        assert outcome["answer"] == b"" or outcome["answer"].startswith(b"HTTP/1.1 4"), outcome["answer"][:80]


def test_a_silent_connection_is_closed_after_the_read_timeout(impatient_server: Any) -> None:
    """A client that connects and sends nothing holds its connection only for the read timeout."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", impatient_server.server_address[1]), timeout=10) as sock:
        assert RemoteReward(impatient_server.url, timeout=5, retries=0).health()["status"] == "ok"
        assert _answer(sock) == b""
    assert time.monotonic() - start < 3.0  # 0.5 s read timeout


def test_a_body_that_never_comes_gets_408(impatient_server: Any) -> None:
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10
    with _raw_request(impatient_server.server_address[1], head) as sock:
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert "not received in time" in payload["error"] and "\n" not in payload["error"]


def test_a_client_that_went_away_is_no_traceback(reward_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Under load clients time out and leave; writing to them fails. That is a debug line, a bug is a traceback."""
    for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"), TimeoutError("timed out")):
        try:
            raise error
        except OSError:
            reward_server.handle_error(None, ("127.0.0.1", 1))
    assert capsys.readouterr().err == ""
    try:
        raise KeyError("a bug")
    except KeyError:
        reward_server.handle_error(None, ("127.0.0.1", 1))
    assert "Traceback" in capsys.readouterr().err


# ----------------------------------------------------------------------------- load bound


class _Held(_Brightness):
    """Scores only once ``go`` is set: requests pile up behind the one being scored."""

    def __init__(self) -> None:
        self.go = threading.Event()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        assert self.go.wait(10)
        return super().__call__(images, prompts)


def test_a_full_server_answers_503_with_retry_after_from_the_headers() -> None:
    """Two places (the one scoring counts): a third request gets 503 + Retry-After at once, body unread;
    the two admitted ones are scored when the reward goes on."""
    reward = _Held()
    server = make_server(reward, "127.0.0.1", 0, max_pending=2, read_timeout=2.0)
    _start(server)
    results: list[torch.Tensor] = []
    try:
        client = RemoteReward(server.url, timeout=10, retries=0)
        threads = [threading.Thread(target=lambda: results.append(client(torch.rand(1, 3, 8, 8), ["x"])))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while server.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.pending == 2
        head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"  # the body never comes
        with _raw_request(server.server_address[1], head) as sock:
            sock.settimeout(1.5)  # under the 2 s read timeout: answered without waiting for the body
            status, payload = _one_answer(sock)
        assert status.startswith(b"HTTP/1.1 503"), status
        assert "busy" in payload["error"] and "\n" not in payload["error"]
        with urllib.request.urlopen(server.url + "/health", timeout=5) as response:  # not counted
            assert response.status == 200
        request = urllib.request.Request(server.url + "/score", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 503 and int(info.value.headers["Retry-After"]) >= 1
        assert server.busy_answers == 2
        reward.go.set()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        reward.go.set()
        server.shutdown()
        server.server_close()
    assert len(results) == 2 and all(bool(torch.isfinite(r).all()) for r in results)
    assert server.pending == 0


def _busy_then_scores(answers: list[str | None]) -> Callable[[BaseHTTPRequestHandler], None]:
    """503 with each Retry-After value of ``answers`` in turn (None: no header), then one score."""

    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        calls = handler.server.calls  # type: ignore[attr-defined]
        if calls > len(answers):
            _reply(handler, 200, b'{"scores": [0.5]}')
            return
        body = b'{"error": "busy"}'
        handler.send_response(503)
        if answers[calls - 1] is not None:
            handler.send_header("Retry-After", str(answers[calls - 1]))
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return behaviour


@pytest.mark.parametrize(
    ("answers", "retries", "waits", "scored"),
    [
        (["7", "3600"], 2, [7.0, 30.0], True),  # as asked, capped at max_retry_after
        (["0", "Wed, 21 Oct 2026 07:28:00 GMT", None], 3, [0.0, 0.1, 0.2], True),  # a date, none: 0.05 * 2**attempt
        (["2", "2", "2"], 2, [2.0, 2.0], False),  # each 503 is an attempt: spent, not scored
    ],
    ids=["retry-after", "backoff", "spent"],
)
def test_remote_reward_waits_as_a_busy_server_asks(
    answers: list[str | None], retries: int, waits: list[float], scored: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(remote, "_sleep", slept.append)
    server = _scripted_server(_busy_then_scores(answers))
    try:
        client = RemoteReward(f"http://127.0.0.1:{server.server_address[1]}", timeout=2, retries=retries, backoff=0.05)
        scores = client(torch.rand(1, 3, 8, 8), ["x"])
    finally:
        server.shutdown()
        server.server_close()
    assert slept == pytest.approx(waits)
    assert server.calls == len(waits) + 1  # type: ignore[attr-defined]
    assert bool(torch.isfinite(scores).all()) == scored


# ----------------------------------------------------------------------------- command line


@pytest.fixture()
def probe_reward() -> Iterator[list[str]]:
    """A registered reward that records being built: bad settings must fail before any model loads."""
    built: list[str] = []

    def factory(**options: Any) -> _Brightness:
        built.append("built")
        return _Brightness()

    register_reward("server_test_probe", factory)
    yield built


def _main_fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line, expect exit code 2, return its one stderr line."""
    with pytest.raises(SystemExit) as info:
        server_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--read-timeout", "0"], "read_timeout must be a positive"), (["--read-deadline", "nan"], "read_deadline"),
     (["--max-images", "0"], "max_images must be at least 1"), (["--max-pending", "0"], "max_pending")],
)
def test_bad_limits_stop_the_command_before_the_reward_is_built(
    flags: list[str], message: str, probe_reward: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _main_fails(["server_test_probe", *flags], capsys)
    assert err.startswith("python -m treegrpo.rewards.server: error: ") and message in err, err
    assert probe_reward == []


def test_the_command_line_refuses_to_expose_a_reward_without_a_token(
    probe_reward: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _main_fails(["server_test_probe", "--host", "0.0.0.0"], capsys)
    assert "refusing to listen on '0.0.0.0' without a token" in err and "--token-file" in err
    err = _main_fails(["server_test_probe", "--token-file", str(tmp_path / "nope")], capsys)
    assert "cannot read token file" in err
    (tmp_path / "empty").write_text("\n")
    err = _main_fails(["server_test_probe", "--host", "0.0.0.0", "--token-file", str(tmp_path / "empty")], capsys)
    assert "is empty" in err
    (tmp_path / "secret").write_text("two words\n")
    err = _main_fails(["server_test_probe", "--token-file", str(tmp_path / "secret")], capsys)
    assert "printable ASCII" in err and "two words" not in err
    assert probe_reward == []  # nothing was built, nothing listened


def test_the_module_exits_2_with_one_line(tmp_path: Path) -> None:
    """The real entry point: one line on stderr, exit code 2, no traceback, before any reward loads."""
    result = subprocess.run(
        [sys.executable, "-m", "treegrpo.rewards.server", "jpeg_compressibility", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "without a token" in result.stderr, result.stderr


# ----------------------------------------------------------------------------- load benchmark


class _Slow(_Brightness):
    """20 ms per request: concurrent clients overlap for sure."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        time.sleep(0.02)
        return super().__call__(images, prompts)


def test_the_load_benchmark_meets_503s_and_still_scores_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/reward_server_load.py's round, small: one place for four clients, every request scored."""
    spec = importlib.util.spec_from_file_location(
        "benchmarks_reward_server_load", Path(__file__).resolve().parents[1] / "benchmarks" / "reward_server_load.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(remote, "_sleep", lambda seconds: time.sleep(min(seconds, 0.02)))  # Retry-After: 1 s, shortened
    server = make_server(_Slow(), "127.0.0.1", 0, max_pending=1)
    _start(server)
    try:
        row = bench.one_round(server.url, clients=4, requests=12, images=2, size=8, retries=200)
    finally:
        server.shutdown()
        server.server_close()
    assert row["requests"] == 12 and row["failed"] == 0 and row["other_failed_attempts"] == 0, row
    assert row["busy_503"] == server.busy_answers > 0, row
    assert "| 4 | 12 |" in bench.table([row])
