"""Counted slots (open streams, running uploads) shared by a server's worker processes.

``spikeear serve --workers N`` runs N processes behind one port, and ``--max-streams``
is a limit for the server, not for each process.  The processes share one small file
per counter: under an exclusive ``flock`` each reads the holders per process id,
forgets processes that have died (a worker that crashed holding slots must not keep
them: the supervisor starts another one in its place), and writes its own count back.
One admission costs a few system calls, ~20 us, and happens once per stream or upload.
Without a directory (one process, tests) the count stays in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path


class SlotCounter:
    """At most ``limit`` slots held at a time (0: no limit), across every process that
    uses the same ``path`` (None: this process only)."""

    def __init__(self, limit: int, path: str | Path | None = None) -> None:
        self.limit = limit
        self.path = Path(path) if path is not None else None
        self._held = 0  # this process's slots (all of them, when there is no file)

    def acquire(self) -> bool:
        """Take a slot if one is free."""
        if self.path is None:
            if self.limit and self._held >= self.limit:
                return False
            self._held += 1
            return True
        with self._locked() as counts:
            if self.limit and sum(counts.values()) >= self.limit:
                return False
            self._held += 1
            counts[os.getpid()] = self._held
            return True

    def release(self) -> None:
        self._held = max(0, self._held - 1)
        if self.path is not None:
            with self._locked() as counts:
                counts[os.getpid()] = self._held

    def held(self) -> int:
        """Slots held by all processes together."""
        if self.path is None:
            return self._held
        with self._locked() as counts:
            return sum(counts.values())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[int, int]]:
        """The counts per live process, written back when the block ends."""
        assert self.path is not None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 1 << 16, 0)
            stored = json.loads(text) if text else {}
            counts = {int(pid): n for pid, n in stored.items() if n > 0 and _alive(int(pid))}
            yield counts
            data = json.dumps({str(pid): n for pid, n in counts.items() if n > 0}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)  # also releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
