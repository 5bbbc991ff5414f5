"""``spikeear serve --workers N``: N server processes on one port, one listening socket each.

uvicorn's own ``--workers`` shares one listening socket among its processes, and
whichever process wakes first accepts every connection waiting in the backlog: a
burst of 100 WebSocket clients split 100/0, 78/22 and 55/45 over two workers
(measured), and one worker then carries most of the streams while the other idles.
Here every worker listens on its own ``SO_REUSEPORT`` socket and the kernel spreads
new connections over the sockets by a hash of their addresses.  All sockets are
bound before any worker starts, so a client that connects while a worker is still
loading the model waits in that worker's backlog rather than piling onto the first
worker up.

The parent only supervises: it restarts a worker that dies, stops when one cannot
start at all, and on SIGINT/SIGTERM stops the workers (each gives its open streams
the grace period for their last words, then finishes its open requests).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from multiprocessing.process import BaseProcess

from uvicorn.config import STARTUP_FAILURE

STOP_TIMEOUT_S = 30.0
logger = logging.getLogger("uvicorn.error")


def listening_sockets(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """``count`` sockets listening on one address; port 0 picks one free port for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # the others join the first one's port
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _run_worker(sock: socket.socket, options: dict) -> None:
    """One worker process: a uvicorn server on its own socket, the app from the environment."""
    from app.server import app_from_environment
    from app.shutdown import run_server

    try:
        app = app_from_environment()
    except Exception:
        logger.exception("worker [%s] could not load the app", os.getpid())
        sys.exit(STARTUP_FAILURE)
    if not run_server(app, sockets=[sock], **options):
        sys.exit(STARTUP_FAILURE)


def serve_workers(
    sockets: list[socket.socket], options: dict, shutdown_grace_s: float = 0.0
) -> bool:
    """Run one worker per socket until SIGINT/SIGTERM.  ``options`` are
    :class:`uvicorn.Config` keywords; a worker stopping gets ``shutdown_grace_s`` for its
    open streams' last words, on top of the usual wait.  False when a worker could not start."""
    context = multiprocessing.get_context("spawn")  # no torch state forked into workers

    def start(sock: socket.socket) -> BaseProcess:
        process = context.Process(target=_run_worker, args=(sock, options))
        process.start()
        return process

    stopping = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stopping.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    processes = [start(sock) for sock in sockets]
    started = True
    try:
        while not stopping.wait(0.5):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    logger.error("worker [%s] failed to start; stopping", process.pid)
                    started = False
                    stopping.set()
                    break
                logger.warning(
                    "worker [%s] exited (%s); starting another", process.pid, process.exitcode
                )
                processes[i] = start(sockets[i])
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        for process in processes:
            process.join(STOP_TIMEOUT_S + shutdown_grace_s)
            if process.is_alive():
                process.kill()
                process.join()
        for sock in sockets:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return started
