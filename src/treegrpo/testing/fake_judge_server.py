"""A small stand-in for vLLM's OpenAI server (``POST /v1/chat/completions``) on 127.0.0.1, for the
judge tests and ``benchmarks.reward_overlap``. A ``script(request, call_number)`` decides each
answer: ``Reply`` (status, JSON or raw body, optional delay) or ``DROP`` (close without answering)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

import time


@dataclass
class Reply:
    status: int = 200
    payload: Any = None
    raw: bytes | None = None
    delay: float = 0.0


DROP = "drop"
Script = Callable[[dict[str, Any], int], Union[Reply, str]]


def chat(content: str, top_logprobs: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """A chat/completions answer as vLLM shapes it (optionally with first-token top_logprobs)."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if top_logprobs is not None:
        first = top_logprobs[0]
        choice["logprobs"] = {"content": [{
            "token": first[0], "logprob": first[1], "bytes": list(first[0].encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top_logprobs],
        }]}
    return {"id": "chatcmpl-test", "object": "chat.completion", "model": "judge", "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}


class FakeJudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.calls = 0
        self.requests: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> "FakeJudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeJudgeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with self.server.lock:
            self.server.calls += 1
            call = self.server.calls
            self.server.requests.append(body)
            self.server.headers_seen.append(dict(self.headers))
        if self.path != "/v1/chat/completions":
            self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))
            return
        action = self.server.script(body, call)
        if action == DROP:
            self.close_connection = True
            return  # no status line: the client sees the connection close
        assert isinstance(action, Reply)
        if action.delay:
            time.sleep(action.delay)
        self._send(action)

    def _send(self, reply: Reply) -> None:
        data = reply.raw if reply.raw is not None else json.dumps(reply.payload).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to do
