"""Archives to JSON lines: ``spikeear transcribe DIR_OR_GLOB --out results.jsonl [--ray]``.

Each file becomes one line as soon as it is done: the fields of ``transcribe --json``
(the file's path first), or the path and an ``error`` for a file that could not be
transcribed, which does not stop the job.  A file that already has a line in the output
is skipped, so an interrupted job picks up where it stopped.

In this process the files are transcribed one after another.  With ``--ray`` each worker
(a Ray actor on one CPU) loads the model once, and the driver sends the files' bytes to
the workers, at most :data:`IN_FLIGHT_PER_WORKER` at a time each: a cluster needs the
package installed, not the files, and a large archive is never held in memory.

Ray is imported here, and only when ``--ray`` is given (``pip install "spikeear[cluster]"``):
the server and the plain command never load it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app.errors import CliError

if TYPE_CHECKING:
    from models.recognizer import Recognizer

# What a folder is searched for (recursively); a glob or a named file may be anything,
# and one that is not audio gets an error line.
AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64"}
)
SPIKE_SUFFIXES = (".h5", ".hdf5")  # SHD-layout spike files: one line per recording in them
LOCAL_CLUSTER = "local"  # --ray without an address: a cluster on this machine, for this job
RAY_EXTRA = 'pip install "spikeear[cluster]"'
IN_FLIGHT_PER_WORKER = 2  # one file being transcribed, the next already on its way
ATTEMPTS = 2  # a file whose worker process died is tried once more on a fresh worker
CONNECT_TIMEOUT_S = 5.0  # Ray itself retries an unreachable address for minutes


# ----- inputs and the results file -----------------------------------------------------------


def expand_inputs(inputs: list[str]) -> list[str]:
    """The files named by ``inputs``: files as given, folders searched for audio files,
    quoted globs (``**`` descends) expanded; each file once, in a stable order."""
    files: list[str] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found = _audio_in_folder(spec)
            if not found:
                raise CliError(
                    f"{spec}: no audio files in this folder ({', '.join(sorted(AUDIO_SUFFIXES))})"
                )
        elif path.is_file():
            found = [spec]
        elif any(c in spec for c in "*?["):
            found = sorted(p for p in _glob(spec) if Path(p).is_file())
            if not found:
                raise CliError(f"{spec}: matches no files")
        else:
            raise CliError(f"{spec}: no such file or folder")
        files += found
    unique = {_key(f): f for f in reversed(files)}  # the first spelling of a file wins
    return sorted(unique.values(), key=files.index)


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern, recursive=True)


def _audio_in_folder(folder: str) -> list[str]:
    def unreadable(error: OSError) -> None:
        raise CliError(f"{error.filename}: cannot read this folder ({error.strerror})")

    found = []
    for root, dirs, names in os.walk(folder, onerror=unreadable):
        dirs.sort()
        found += [
            os.path.join(root, name)
            for name in sorted(names)
            if Path(name).suffix.lower() in AUDIO_SUFFIXES
        ]
    return found


def _key(path: str) -> str:
    """A file's identity in a results file: its absolute path."""
    return os.path.normpath(os.path.abspath(path))


def finished_files(out: Path) -> dict[str, bool]:
    """The files a results file already has lines for, each with whether it succeeded;
    refuses a file that is not JSON lines written by this command."""
    if not out.exists():
        return {}
    if out.is_dir():
        raise CliError(f"{out}: is a folder; --out takes a .jsonl file")
    finished: dict[str, bool] = {}
    try:
        with open(out, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                    raise CliError(
                        f"{out}: line {number} is not a result of spikeear transcribe; --out "
                        "takes a JSON lines file this command wrote, or a new one"
                    )
                key = _key(record["file"])
                finished[key] = finished.get(key, True) and "error" not in record
    except UnicodeDecodeError:
        raise CliError(f"{out}: not a text file; --out takes a JSON lines file") from None
    return finished


class ResultsFile:
    """Appends each file's lines at once, flushed, so that a killed job loses no line it
    reported and leaves no half line."""

    def __init__(self, path: Path) -> None:
        ends_open = path.exists() and path.stat().st_size and _last_byte(path) != b"\n"
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if ends_open:
            self._file.write("\n")

    def write(self, lines: list[dict]) -> None:
        self._file.write("".join(json.dumps(line) + "\n" for line in lines))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1)


# ----- one file ---------------------------------------------------------------------------------


def file_results(recognizer: Recognizer, path: str, read_from: str | None = None) -> list[dict]:
    """The ``transcribe --json`` objects of one file, each with the file's path first (a
    spike file gives one per recording in it); ``read_from`` is a local copy of the file to
    read instead (a Ray worker's).  Raises what reading or decoding raises."""
    from app.service import transcript_json
    from audio_frontend.audio_io import audio_blocks
    from audio_frontend.spike_files import read_spike_file
    from models.recognizer import StreamOptions

    source = read_from or path
    started = time.perf_counter()
    if path.endswith(SPIKE_SUFFIXES):
        samples, _, _ = read_spike_file(source)
        transcripts = [recognizer.transcribe_spikes(events) for events in samples]
    else:
        rate, _, blocks = audio_blocks(source)
        transcripts = [recognizer.transcribe(blocks, rate, StreamOptions(sample_rate=rate))]
    elapsed = time.perf_counter() - started
    return [{"file": path, **transcript_json(t, elapsed / len(transcripts))} for t in transcripts]


def archive_lines(recognizer: Recognizer, path: str, read_from: str | None = None) -> list[dict]:
    """:func:`file_results`, or one line with the error: in an archive of thousands, one bad
    file (of any kind of badness) must not stop the others."""
    try:
        return file_results(recognizer, path, read_from)
    except Exception as error:
        message = str(error) or type(error).__name__
        return [error_line(path, message.replace(read_from, path) if read_from else message)]


def error_line(path: str, message: str) -> dict:
    return {"file": path, "error": message}


# ----- in this process --------------------------------------------------------------------------


def in_process_lines(files: list[str], recognizer: Recognizer) -> Iterator[list[dict]]:
    for path in files:
        yield archive_lines(recognizer, path)


# ----- on Ray -----------------------------------------------------------------------------------


def import_ray() -> ModuleType:
    try:
        import ray
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "ray":
            raise
        raise CliError(f"--ray needs Ray, an optional extra: {RAY_EXTRA}") from None
    return ray


class ArchiveWorker:
    """A Ray actor: one recognizer, loaded once, transcribing the files it is sent."""

    def __init__(self, model_bytes: bytes, words: bytes | None = None) -> None:
        import torch

        from app.words import WordSet
        from models.model_file import load_model
        from models.recognizer import Recognizer

        torch.set_num_threads(1)  # one actor per CPU; see app.cli.main on inference threads
        with tempfile.NamedTemporaryFile(suffix=".pt") as spool:
            spool.write(model_bytes)
            spool.flush()
            self.recognizer = Recognizer(load_model(spool.name))
        if words is not None:  # the driver's word set file, as it was when the job started
            with tempfile.NamedTemporaryFile(suffix=".json") as spool:
                spool.write(words)
                spool.flush()
                WordSet(self.recognizer, spool.name)

    def ready(self) -> bool:
        return True

    def transcribe(self, path: str, data: bytes) -> list[dict]:
        # Through a local copy, so that the file goes through the same reader as in process.
        with tempfile.NamedTemporaryFile(suffix=Path(path).suffix) as spool:
            spool.write(data)
            spool.flush()
            return archive_lines(self.recognizer, path, read_from=spool.name)


def check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing listens on (Ray would retry for minutes)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise CliError(
            f"--ray {address}: not a Ray address (HOST:PORT, ray://HOST:PORT, or auto; "
            "no address starts a cluster on this machine)"
        )
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise CliError(
            f"cannot reach the Ray cluster at {address}: {error.strerror or error}"
        ) from None


class RayCluster:
    """A connection to a Ray cluster (or a new one on this machine, ``LOCAL_CLUSTER``) and
    its workers; ``close()`` disconnects, and stops a cluster this object started."""

    def __init__(self, address: str, workers: int | None = None) -> None:
        self.ray = import_ray()
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address == LOCAL_CLUSTER:
            try:
                self.ray.init(address="local", num_cpus=workers, include_dashboard=False, **quiet)
            except Exception as error:  # a token Ray cannot read, no room for its object store
                raise CliError(f"could not start Ray here: {_first_line(error)}") from None
        else:
            if address != "auto":
                check_reachable(address)
            try:
                self.ray.init(address=address, **quiet)
            except ConnectionError as error:
                if address != "auto":
                    raise CliError(
                        f"cannot join the Ray cluster at {address}{_token_hint(error)}"
                    ) from None
                raise CliError(
                    "--ray auto: no Ray cluster runs on this machine (start one with "
                    "'ray start --head', give its HOST:PORT, or leave out the address)"
                ) from None
            except Exception as error:  # a version mismatch, a refused client, ...
                raise CliError(f"cannot join the Ray cluster at {address}: {error}") from None
        self.cpus = int(self.ray.cluster_resources().get("CPU", 0))
        self.workers = workers or self.cpus
        if not 1 <= self.workers <= self.cpus:
            self.close()
            raise CliError(
                f"--workers {self.workers}: the Ray cluster has {self.cpus} CPUs "
                "(a worker takes one)"
            )

    def close(self) -> None:
        self.ray.shutdown()

    def start_workers(self, model_bytes: bytes, words: bytes | None = None) -> None:
        """One actor per worker, each with the model (and custom words) loaded; waits
        until they are ready."""
        from ray.exceptions import RayActorError

        self._actor = self.ray.remote(num_cpus=1)(ArchiveWorker)
        self._model = self.ray.put(model_bytes)  # sent to each node once, not per worker
        self._words = words
        self._workers = [self._actor.remote(self._model, self._words) for _ in range(self.workers)]
        try:
            self.ray.get([w.ready.remote() for w in self._workers])
        except RayActorError as error:
            raise CliError(f"a Ray worker could not start: {_first_line(error)}") from None

    def lines(self, files: list[str]) -> Iterator[list[dict]]:
        """Each file's lines, as the workers finish them (after :meth:`start_workers`)."""
        from ray.exceptions import RayError

        ray, workers = self.ray, self._workers
        todo = deque((path, 1) for path in files)
        running: dict[Any, tuple[int, str, int]] = {}  # result -> (worker, path, attempt)
        load = [0] * len(workers)
        restarts = 0

        def send(slot: int) -> list[dict]:
            """Keep a worker supplied; returns the lines of files that could not be read."""
            unreadable = []
            while load[slot] < IN_FLIGHT_PER_WORKER and todo:
                path, attempt = todo.popleft()
                try:
                    data = Path(path).read_bytes()
                except OSError as error:
                    unreadable.append(error_line(path, f"{path}: {error.strerror or error}"))
                    continue
                running[workers[slot].transcribe.remote(path, data)] = (slot, path, attempt)
                load[slot] += 1
            return unreadable

        for slot in range(len(workers)):
            yield from ([line] for line in send(slot))
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            slot, path, attempt = running.pop(done)
            load[slot] -= 1
            try:
                yield ray.get(done)
            except RayError as error:
                # The worker process died (a crash, out of memory) with this file in hand.
                if attempt < ATTEMPTS:
                    todo.appendleft((path, attempt + 1))
                else:
                    yield [error_line(path, f"the worker died on it: {_first_line(error)}")]
                if not _alive(ray, workers[slot]):
                    restarts += 1
                    if restarts > ATTEMPTS * len(workers):
                        raise CliError(f"Ray workers keep dying: {_first_line(error)}") from None
                    workers[slot] = self._actor.remote(self._model, self._words)
            yield from ([line] for line in send(slot))


def _token_hint(error: BaseException) -> str:
    """Why Ray refused, when it was the cluster's token (Ray sends one to an explicit
    address only when told to)."""
    causes = []
    while error is not None:
        causes.append(str(error))
        error = error.__cause__ or error.__context__
    if not any("InvalidAuthToken" in cause for cause in causes):
        return ""
    return (
        ": it asks for its token (set RAY_AUTH_MODE=token, with the cluster's token in "
        "~/.ray/auth_token or RAY_AUTH_TOKEN)"
    )


def _alive(ray: ModuleType, worker: Any) -> bool:
    try:
        return bool(ray.get(worker.ready.remote(), timeout=30))
    except Exception:
        return False


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


# ----- the job ----------------------------------------------------------------------------------


@dataclass
class ArchiveRun:
    """What a job did: files found, skipped as already done, transcribed and failed (in
    this run), audio seconds transcribed, and wall time to start (workers ready) and to
    transcribe (first file sent to last line written)."""

    files: int
    skipped: int
    transcribed: int = 0
    failed: int = 0
    audio_s: float = 0.0
    startup_s: float = 0.0
    transcribe_s: float = 0.0


def transcribe_archive(
    inputs: list[str],
    out: str,
    model: str | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    words: str | None = None,
) -> ArchiveRun:
    """Transcribe the files ``inputs`` name into the JSON lines file ``out``, in this
    process or (``ray_address``) on a Ray cluster with ``workers`` workers."""
    from app.words import WordSet
    from models.model_file import DEFAULT_MODEL_PATH, load_model
    from models.recognizer import Recognizer

    started = time.perf_counter()
    files = expand_inputs(inputs)
    out_path = Path(out)
    finished = finished_files(out_path)
    todo = [f for f in files if _key(f) not in finished]
    run = ArchiveRun(files=len(files), skipped=len(files) - len(todo))
    if run.skipped:
        failed = sum(not finished[_key(f)] for f in files if _key(f) in finished)
        retry = f" ({failed} of them failed: delete their lines to retry)" if failed else ""
        _note(f"{out}: skipping {run.skipped} of {len(files)} files already there{retry}")
    if not todo:
        return run
    bundle = load_model(model)  # a bad model file is reported before any cluster starts
    cluster = None
    if ray_address is None:
        recognizer = Recognizer(bundle)
        if words is not None:
            WordSet(recognizer, words)
        lines = in_process_lines(todo, recognizer)
    else:
        cluster = RayCluster(ray_address, workers)
    try:
        if cluster is not None:
            cluster.start_workers(
                Path(model or DEFAULT_MODEL_PATH).read_bytes(),
                Path(words).read_bytes() if words is not None else None,
            )
            lines = cluster.lines(todo)
        results = ResultsFile(out_path)
        run.startup_s = time.perf_counter() - started
        try:
            with _progress(show_progress) as progress:
                task = progress.add_task("transcribing", total=len(todo))
                for file_lines in lines:
                    results.write(file_lines)
                    run.transcribed += 1
                    run.failed += any("error" in line for line in file_lines)
                    run.audio_s += sum(line.get("duration", 0.0) for line in file_lines)
                    progress.advance(task)
        finally:
            results.close()
        run.transcribe_s = time.perf_counter() - started - run.startup_s
    finally:
        if cluster is not None:
            cluster.close()
    return run


def _progress(show: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout keeps the summary
        disable=not show,
    )


def _note(message: str) -> None:
    import sys

    print(f"spikeear transcribe: {message}", file=sys.stderr)
