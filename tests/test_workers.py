"""``spikeear serve --workers 2``: one port, a burst of clients spread over both workers."""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack

import psutil
import pytest
from websockets.sync.client import connect

from app.cli import MAX_AUTO_WORKERS, _worker_count

CLIENTS = 40
STARTUP_S = 180.0


def _serving_port(process: subprocess.Popen) -> int:
    """The port the server announces (it binds port 0 to a free one)."""
    seen = []
    for line in process.stdout:
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
        seen.append(line)
    pytest.fail(f"the server exited without announcing its port: {''.join(seen)}")


def _wait_healthy(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail("the server did not start")


def _connections_per_worker(parent: psutil.Process, port: int) -> dict[int, int]:
    counts = {}
    for child in parent.children():
        sockets = child.net_connections(kind="tcp")
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets):
            counts[child.pid] = sum(
                c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in sockets
            )
    return counts


@pytest.mark.slow  # two server processes, each loading the model
def test_two_workers_share_a_burst_of_connections_and_stop_cleanly():
    command = [sys.executable, "-m", "app.cli", "serve", "--port", "0", "--workers", "2"]
    process = subprocess.Popen(
        [*command, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = _serving_port(process)
        _wait_healthy(port, process)
        with ExitStack() as clients:
            # Connected at once, as a burst: with one shared listening socket the first
            # worker to wake took the whole backlog (100/0 of 100 clients, measured).
            for _ in range(CLIENTS):
                clients.enter_context(connect(f"ws://127.0.0.1:{port}/v1/stream"))
            counts = _connections_per_worker(psutil.Process(process.pid), port)
        assert len(counts) == 2 and sum(counts.values()) == CLIENTS
        # Spread by address hash: each gets about half; none (2 in 2**40) would mean no spread.
        assert min(counts.values()) >= 1, counts
        workers = [psutil.Process(pid) for pid in counts]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        output = process.stdout.read()
    assert code == 0, output
    assert not any(worker.is_running() for worker in workers)


def test_worker_count_is_a_positive_count_or_auto():
    assert _worker_count("3") == 3
    assert 1 <= _worker_count("auto") <= MAX_AUTO_WORKERS
    for bad in ("0", "-2", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            _worker_count(bad)


@pytest.mark.slow  # a server process in a fresh interpreter
def test_a_taken_port_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert result.stderr.startswith("spikeear serve: error:") and "in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
