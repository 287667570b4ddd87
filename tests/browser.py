"""A real browser for tests: Debian's headless ``chromium``, driven over the DevTools
protocol (a small stdlib WebSocket client), so tests can read the rendered page, shadow DOM
included (TensorBoard's cards live in shadow roots), and keep screenshots.

``make test`` installs chromium when it is missing and apt-get can; tests that need it
skip, saying why, only where it cannot be installed.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.processes import stop

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)

#: Every element's text, shadow roots included, and every image with its load state.
PAGE_STATE_JS = """
(() => {
  const texts = [], images = [], links = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'IMG') images.push({src: el.src, complete: el.complete,
                                             width: el.naturalWidth});
      if (el.tagName === 'A' && el.href) links.push(el.href);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
    texts.push(root === document ? document.body.innerText : root.textContent);
  };
  walk(document);
  return JSON.stringify({texts, images, links, title: document.title});
})()
"""


def chromium_path() -> str:
    """The chromium binary, or skip with the reason (``make test`` installs it)."""
    found = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not found:
        pytest.skip(
            "chromium is not installed and could not be installed here (make test runs "
            "`apt-get install -y chromium` when apt-get is usable; or set CHROMIUM=<binary>)"
        )
    return found


class _WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol on 127.0.0.1: text frames."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        parts = urlparse(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            opcode = first & 0x0F
            if opcode in (0x1, 0x0):
                message += payload
                if first & 0x80:
                    return message.decode()
            elif opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")

    def close(self) -> None:
        self.sock.close()


class Page:
    """One browser tab: ``goto``, ``evaluate``, ``wait_for``, ``screenshot``."""

    def __init__(self, ws: _WebSocket) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.receive())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def state(self) -> dict:
        """The rendered page: texts (shadow DOM included), images, links, title."""
        return json.loads(self.evaluate(PAGE_STATE_JS))

    def wait_for(self, predicate, timeout: float = 60, what: str = "the page") -> dict:
        deadline, state = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                state = self.state()
                if predicate(state):
                    return state
            time.sleep(0.5)
        texts = " | ".join(state.get("texts", []))[:2000]
        raise AssertionError(f"timed out waiting for {what}; the page showed: {texts}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1800) -> Iterator[Page]:
    """A headless chromium with one tab, closed afterwards."""
    binary = chromium_path()
    profile = tempfile.mkdtemp(prefix="gradwatch-chromium-")
    proc = subprocess.Popen(
        [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ws = None
    try:
        port_file = Path(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.loads(r.read())
        page = next(t for t in targets if t.get("type") == "page")
        ws = _WebSocket(page["webSocketDebuggerUrl"])
        tab = Page(ws)
        tab.call("Page.enable")
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield tab
    finally:
        if ws is not None:
            ws.close()
        stop(proc)
        shutil.rmtree(profile, ignore_errors=True)
