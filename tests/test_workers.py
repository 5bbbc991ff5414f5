"""``spikeear serve --workers 2``: one port, a burst of clients spread over both workers."""

import argparse
import socket
import subprocess
import sys
from contextlib import ExitStack

import psutil
import pytest
from websockets.sync.client import connect

from app.cli import MAX_AUTO_WORKERS, _worker_count
from tests.servers import ServerProcess

CLIENTS = 40


@pytest.mark.slow  # two server processes, each loading the model
def test_two_workers_share_a_burst_of_connections_and_stop_cleanly():
    server = ServerProcess("--port", "0", "--workers", "2", "--log-level", "warning")
    try:
        port = server.port()
        server.wait_healthy(port)
        with ExitStack() as clients:
            # Connected at once, as a burst: with one shared listening socket the first
            # worker to wake took the whole backlog (100/0 of 100 clients, measured).
            for _ in range(CLIENTS):
                clients.enter_context(connect(f"ws://127.0.0.1:{port}/v1/stream"))
            counts = server.connections_per_worker(port)
        assert len(counts) == 2 and sum(counts.values()) == CLIENTS
        # Spread by address hash: each gets about half; none (2 in 2**40) would mean no spread.
        assert min(counts.values()) >= 1, counts
        workers = [psutil.Process(pid) for pid in counts]
    finally:
        code = server.stop()
    assert code == 0, server.output
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
