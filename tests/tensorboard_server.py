"""A real TensorBoard server for tests: the venv's ``tensorboard`` on 127.0.0.1, a free port,
waited for, and stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.processes import stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict, timeout: float = 30):
    """POST as TensorBoard's own frontend does (JSON body; the header it checks for CSRF)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@contextlib.contextmanager
def tensorboard(logdir: Path, ready_runs: int = 1, timeout: float = 120) -> Iterator[str]:
    """Serve ``logdir``; yields the base URL once ``ready_runs`` runs have scalars."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tensorboard"),
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, tags = time.monotonic() + timeout, {}
        while sum(bool(t) for t in tags.values()) < ready_runs:
            assert server.poll() is None, "tensorboard exited"
            assert time.monotonic() < deadline, f"tensorboard never showed {ready_runs} runs"
            with contextlib.suppress(OSError, ValueError):
                tags = get_json(f"{base}/data/plugin/scalars/tags")
            time.sleep(0.5)
        yield base
    finally:
        stop(server)
