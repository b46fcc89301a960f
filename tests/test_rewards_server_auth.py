"""Who may score: the reward server's bearer token (401 from the headers alone, never echoed), the
client's token from the environment, redirects not followed with it, loopback-only listening without
a token, and token files."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from tests.test_rewards_server import _Brightness, _one_answer, _raw_request, _scripted_server, _start
from treegrpo.errors import ConfigError
from treegrpo.rewards import get_reward
from treegrpo.rewards.server import (RemoteReward, RemoteRewardError, RemoteRewardUnavailable, encode_image, is_loopback,
                                     make_server, read_token)

TOKEN = "s3cret-Token_42"


@pytest.fixture()
def guarded_server() -> Iterator[Any]:
    server = make_server(_Brightness(), "127.0.0.1", 0, token=TOKEN, max_image_pixels=64 * 64, read_timeout=1.0)
    _start(server)
    yield server
    server.shutdown()
    server.server_close()


def _post_with(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def test_score_needs_the_bearer_token_health_does_not(guarded_server: Any) -> None:
    body = json.dumps({"prompts": ["a"], "images": [encode_image(torch.rand(3, 8, 8))]}).encode()
    url = guarded_server.url + "/score"
    wrong = ["", "Bearer wrong", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer \u00e9t\u00e9"]
    for headers in [{"Authorization": value} if value else {} for value in wrong]:
        status, payload, answer_headers = _post_with(url, body, headers)
        assert status == 401, headers
        assert "\n" not in payload["error"] and "TREEGRPO_REWARD_TOKEN" in payload["error"]
        assert TOKEN not in payload["error"] and answer_headers["WWW-Authenticate"] == "Bearer"
    for scheme in ("Bearer", "bearer"):
        status, payload, _ = _post_with(url, body, {"Authorization": f"{scheme} {TOKEN}"})
        assert status == 200 and len(payload["scores"]) == 1
    with urllib.request.urlopen(guarded_server.url + "/health", timeout=5) as response:  # open: it scores nothing
        assert json.loads(response.read())["status"] == "ok"


def test_a_request_without_the_token_is_refused_before_its_body_is_read(guarded_server: Any) -> None:
    """The 401 comes from the headers alone: a body that never arrives, or is garbage, does not matter."""
    port = guarded_server.server_address[1]
    for head in (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",  # body never sent
                 b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nnot json!"):
        with _raw_request(port, head) as sock:
            sock.settimeout(0.8)  # under the server's 1 s read timeout: the answer cannot wait for the body
            status, payload = _one_answer(sock)
        assert status.startswith(b"HTTP/1.1 401") and "missing or wrong token" in payload["error"], status


def test_remote_reward_sends_the_token_from_the_environment(
    guarded_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = torch.rand(3, 3, 8, 8)
    monkeypatch.setenv("TREEGRPO_REWARD_TOKEN", f"  {TOKEN}\n")
    assert bool(torch.isfinite(RemoteReward(guarded_server.url, timeout=5, retries=0)(images, ["a", "b", "c"])).all())
    monkeypatch.delenv("TREEGRPO_REWARD_TOKEN")
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    client = get_reward("remote", url=guarded_server.url, timeout=5, retries=0, token_env="MY_TOKEN")
    assert bool(torch.isfinite(client(images, ["a", "b", "c"])).all())
    monkeypatch.setenv("MY_TOKEN", "two words")
    with pytest.raises(ConfigError, match=r"\$MY_TOKEN must hold one token") as info:
        RemoteReward(guarded_server.url, token_env="MY_TOKEN")
    assert "two words" not in str(info.value)


@pytest.mark.parametrize("token", [None, "wrong-token-123"])
def test_a_401_is_a_configuration_error_at_once_naming_the_variable(
    guarded_server: Any, token: str | None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if token is None:
        monkeypatch.delenv("TREEGRPO_REWARD_TOKEN", raising=False)
    else:
        monkeypatch.setenv("TREEGRPO_REWARD_TOKEN", token)
    client = RemoteReward(guarded_server.url, timeout=5, retries=3, backoff=1.0)
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteRewardError) as info:
        client(torch.rand(1, 3, 8, 8), ["x"])
    assert time.monotonic() - start < 1.0  # no retry (the first would wait 1 s)
    message = str(info.value)
    assert "(401)" in message and "TREEGRPO_REWARD_TOKEN" in message and "--token-file" in message
    assert not isinstance(info.value, RemoteRewardUnavailable) and "\n" not in message
    secrets = [TOKEN] + ([token] if token else [])
    assert not any(secret in text for secret in secrets for text in [message, caplog.text])


def test_a_redirect_is_not_followed_with_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server answering with a redirect is a configuration error; the Authorization header goes nowhere else."""

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", "http://127.0.0.1:9/elsewhere")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server = _scripted_server(redirect)
    monkeypatch.setenv("TREEGRPO_REWARD_TOKEN", TOKEN)
    try:
        client = RemoteReward(f"http://127.0.0.1:{server.server_address[1]}", timeout=2, retries=2, backoff=0.05)
        with pytest.raises(RemoteRewardError, match=r"\(302\): redirected to http://127.0.0.1:9/elsewhere"):
            client.health()
    finally:
        server.shutdown()
        server.server_close()
    assert server.calls == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.10", "example.org", "localhost.example.org"])
def test_other_hosts_need_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="refusing to listen on .* without a token"):
        make_server(_Brightness(), host, 0)


def test_read_token_strips_and_refuses_missing_or_empty_files(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(f"\n  {TOKEN} \n")
    assert read_token(good) == TOKEN
    (tmp_path / "empty").write_text(" \n\t")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read token file .*missing: No such file"):
        read_token(tmp_path / "missing")
