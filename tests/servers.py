"""`spikeear serve` in a child process, for the tests that need real worker processes.

Its output is drained by a thread from the start: a server whose output pipe fills up
stalls, and a test reading that pipe line by line waits forever if the line it wants
never comes.  Every wait here has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import psutil
import pytest
import uvicorn

from app.transport import websocket_options

STARTUP_S = 180.0  # loading torch and the model on a busy 2-core machine


def free_port() -> int:
    """A port free now, for a one-worker server (which announces the port it was given)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stream_until_a_partial(ws, audio, pace_s: float = 0.05) -> None:
    """Send ``audio`` (int16) over an open ``/v1/stream`` connection in 0.1 s chunks, one
    every ``pace_s``, until the word's first partial arrives (a stream mid-word)."""
    for start in range(0, len(audio), 1600):
        ws.send(audio[start : start + 1600].tobytes())
        time.sleep(pace_s)
        try:
            if json.loads(ws.recv(timeout=0.05))["type"] == "partial":
                return
        except TimeoutError:
            pass
    pytest.fail("no partial before the end of the word's audio")


def speak(ws, audio, chunk: int = 1600, timeout: float = 30.0) -> list[dict]:
    """``audio`` (int16) over an open ``/v1/stream`` connection (websockets' sync client),
    then eof: every message up to the server's eof."""
    for start in range(0, len(audio), chunk):
        ws.send(audio[start : start + chunk].tobytes())
    ws.send(json.dumps({"eof": 1}))
    messages = [json.loads(ws.recv(timeout=timeout))]
    while messages[-1]["type"] != "eof":
        messages.append(json.loads(ws.recv(timeout=timeout)))
    return messages


def bounded(seconds: float, body) -> None:
    """Run ``body()`` with a hard deadline: a client library's wait without a timeout of
    its own (a TLS handshake with a worker under load) fails the test, never hangs CI."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            body()
            outcome.append(None)
        except BaseException as error:  # handed to the test's thread below
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise AssertionError(f"did not finish within {seconds:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def serve_config(app, settings, log_level: str = "warning") -> uvicorn.Config:
    """``app`` with the transport options ``spikeear serve`` sets, its records going to
    the root logger (where a test's handler or caplog sees them)."""
    return uvicorn.Config(
        app,
        **websocket_options(settings),
        log_config=None,
        log_level=log_level,
    )


@contextlib.contextmanager
def in_thread(server: uvicorn.Server) -> Iterator[int]:
    """``server`` (its config without host and port) on a free loopback port, run in a
    thread until the block ends; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.process.pid

    def port(self, scheme: str = "http") -> int:
        """The port the server announces (it binds port 0 to a free one)."""
        pattern = re.compile(rf"serving on {scheme}://127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + STARTUP_S
        with self._changed:
            while True:
                for line in self.lines:
                    if match := pattern.search(line):
                        return int(match.group(1))
                left = deadline - time.monotonic()
                if self.process.poll() is not None or left <= 0:
                    raise AssertionError(f"no port announced: {''.join(self.lines)}")
                self._changed.wait(min(left, 1.0))

    def wait_healthy(self, port: int, context: ssl.SSLContext | None = None) -> None:
        scheme = "https" if context is not None else "http"
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert self.process.poll() is None, f"the server exited: {self.output}"
            try:
                with urllib.request.urlopen(
                    f"{scheme}://127.0.0.1:{port}/health", context=context, timeout=2
                ):
                    return
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)

    def connections_per_worker(self, port: int) -> dict[int, int]:
        """Established connections on ``port``, per worker process holding it."""
        counts = {}
        for child in psutil.Process(self.pid).children():
            sockets = child.net_connections(kind="tcp")
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets):
                counts[child.pid] = sum(
                    c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in sockets
                )
        return counts

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        code = self.process.wait()
        self._reader.join(5)  # the last lines, for the caller's checks
        return code
