"""Load on the reward server: N concurrent ``RemoteReward`` clients against one server on 127.0.0.1.

The server (``python -m treegrpo.rewards.server``, its own process) serves a cheap built-in reward
(``jpeg_compressibility``), so what is measured is the server's own cost: HTTP, JSON, PNG decoding,
admission. For each N in ``--clients`` the same number of requests (``--requests``, each of
``--images`` random images) is split over N client threads that start together; every client
retries (honouring 503 + Retry-After) until its request is scored. With ``--max-pending`` below N
the 503 path shows up, and still no request may fail in the end.

    OMP_NUM_THREADS=1 python -m benchmarks.reward_server_load --out benchmarks/results/reward_server_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from treegrpo.rewards.remote import RemoteReward, ServerBusy

REPO = Path(__file__).resolve().parents[1]


class CountingClient(RemoteReward):
    """A ``RemoteReward`` that counts the server's busy answers and any other failed attempt."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.busy = 0
        self.errors = 0

    def _request(self, path: str, body: bytes | None) -> Any:
        try:
            return super()._request(path, body)
        except ServerBusy:
            self.busy += 1
            raise
        except Exception:
            self.errors += 1
            raise


def free_port() -> int:
    """A port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, reward: str, max_pending: int, log: Path) -> subprocess.Popen[bytes]:
    """The reward server as its own process, answering /health."""
    command = [sys.executable, "-m", "treegrpo.rewards.server", reward, "--port", str(port),
               "--max-pending", str(max_pending)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env)
    deadline = time.monotonic() + 120  # torch imports first
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"the reward server did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.2)


def one_round(url: str, clients: int, requests: int, images: int, size: int, retries: int) -> dict[str, Any]:
    """``requests`` requests split over ``clients`` threads started together; latency per request."""
    per_client = max(1, requests // clients)
    start_together = threading.Barrier(clients + 1)
    latencies: list[float] = []
    failed = 0
    busy = 0
    errors = 0
    lock = threading.Lock()

    def client_thread(index: int) -> None:
        nonlocal failed, busy, errors
        client = CountingClient(url, timeout=60, retries=retries, backoff=0.05, batch_size=images)
        generator = torch.Generator().manual_seed(index)
        batch = (torch.rand(images, 3, size, size, generator=generator) * 255).round() / 255
        prompts = [f"client {index} image {i}" for i in range(images)]
        mine: list[float] = []
        bad = 0
        start_together.wait()
        for _ in range(per_client):
            start = time.perf_counter()
            scores = client(batch, prompts)
            mine.append(time.perf_counter() - start)
            bad += int(not bool(torch.isfinite(scores).all()))
        with lock:
            latencies.extend(mine)
            failed += bad
            busy += client.busy
            errors += client.errors

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_together.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    total = per_client * clients
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": total,
        "images_per_request": images,
        "seconds": round(seconds, 3),
        "requests_per_s": round(total / seconds, 1),
        "images_per_s": round(total * images / seconds, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
        "failed": failed,
        "busy_503": busy,
        "other_failed_attempts": errors,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | requests | req/s | images/s | p50 ms | p99 ms | max ms | failed | 503 answers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['requests_per_s']} | {row['images_per_s']} | "
            f"{row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} | {row['failed']} | {row['busy_503']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/reward_server_load.json")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=2048, help="requests per round, split over the clients")
    parser.add_argument("--images", type=int, default=4, help="images per request")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--max-pending", type=int, default=16)
    parser.add_argument("--retries", type=int, default=50, help="attempts per request beyond the first")
    parser.add_argument("--reward", default="jpeg_compressibility")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_at_start = os.getloadavg()

    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(port, args.reward, args.max_pending, Path(folder) / "server.log")
        try:
            url = f"http://127.0.0.1:{port}"
            one_round(url, 1, 8, args.images, args.size, args.retries)  # warm-up: imports, first allocations
            rows = []
            for clients in args.clients:
                rows.append(one_round(url, clients, args.requests, args.images, args.size, args.retries))
                print(f"clients {clients}: {rows[-1]}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(table(rows))
    result = {
        "command": " ".join(["OMP_NUM_THREADS=1 python -m benchmarks.reward_server_load", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if any(row["failed"] for row in rows):
        raise SystemExit("some requests were not scored in the end (see the failed column)")


if __name__ == "__main__":
    main()
