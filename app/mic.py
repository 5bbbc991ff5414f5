"""``spikeear mic``: live recognition from a microphone, shown in the terminal.

Audio comes from the default (or ``--device``) input through ``sounddevice``,
or from ``--input-file`` played at real-time pace (``--speed`` times faster),
which runs exactly the same code path without a sound card.  Words come from
the model in this process (``models.recognizer.Recognizer``) or, with
``--server URL``, from a running service's ``/v1/stream`` WebSocket.

On a terminal the display is a ``rich`` live view: a level meter, the current
partial word with its confidence updating in place, and the running transcript
of final words with their times.  Otherwise (or with ``--plain``) each final
word is printed as one line.  Either way a last ``transcript:`` line sums up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from app.errors import CliError
from app.schemas import message_json
from app.service import word_message  # no torch: the model loads in LocalRecognizer

CHUNK_S = 0.05  # audio per chunk fed to the recognizer (and per display update)
MIN_RATE, MAX_RATE = 8000, 48000
METER_WIDTH = 24
SHOWN_FINALS = 8  # finals listed one per line in the live view


def add_mic_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``spikeear mic``."""
    parser.add_argument(
        "--list-devices", action="store_true", help="list the audio input devices and exit"
    )
    parser.add_argument(
        "--device", help="input device: an index or part of a name from --list-devices"
    )
    parser.add_argument(
        "--input-file",
        metavar="FILE",
        help="read this audio file at real-time pace instead of the microphone",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="with --input-file: play this many times faster than real time (tests use 20)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="recognise with a running service (e.g. http://127.0.0.1:8000) over /v1/stream "
        "instead of a model in this process",
    )
    parser.add_argument("--model", help="model file (default: the bundled model)")
    parser.add_argument(
        "--words", metavar="WORDS.json", help="custom words to recognise too (spikeear enroll)"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="print one line per word instead of the live view (the default when stdout "
        "is not a terminal)",
    )


def cmd_mic(args: argparse.Namespace) -> None:
    run_mic(args)


# ----- audio sources ------------------------------------------------------------------------
def _import_sounddevice():
    try:
        import sounddevice
    except (OSError, ImportError) as error:  # OSError: the PortAudio library is missing
        raise CliError(
            f"no audio input available ({error}; install PortAudio, e.g. "
            "'apt-get install libportaudio2'); use --input-file FILE to read a file instead"
        ) from None
    return sounddevice


def _input_devices(sd) -> list[tuple[int, dict]]:
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as error:
        raise CliError(f"cannot list audio devices: {error}") from None
    return [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]


def list_devices(out) -> None:
    sd = _import_sounddevice()
    inputs = _input_devices(sd)
    if not inputs:
        raise CliError("no audio input devices found (is a microphone connected?)")
    try:
        default = sd.default.device[0]
    except (AttributeError, IndexError, TypeError):
        default = -1
    for index, device in inputs:
        mark = "*" if index == default else " "
        print(
            f"{mark} {index:3d}  {device['name']}  ({device['max_input_channels']} ch, "
            f"{device['default_samplerate']:.0f} Hz)",
            file=out,
        )
    print("* = default input; choose one with --device INDEX or --device NAME", file=out)


def _device_arg(device: str | None) -> int | str | None:
    if device is None:
        return None
    return int(device) if device.strip().isdigit() else device


class MicrophoneSource:
    """The input device, in chunks of CHUNK_S, via a PortAudio callback and a queue."""

    def __init__(self, device: str | None) -> None:
        self.sd = _import_sounddevice()
        if not _input_devices(self.sd):
            raise CliError(
                "no audio input device found (is a microphone connected?); "
                "use --input-file FILE to read a file instead"
            )
        self.device = _device_arg(device)
        try:
            info = self.sd.query_devices(self.device, "input")
        except (ValueError, self.sd.PortAudioError) as error:
            raise CliError(f"input device {device!r}: {error}") from None
        rate = round(info["default_samplerate"])
        self.sample_rate = rate if MIN_RATE <= rate <= MAX_RATE else 16000
        self.name = str(info["name"])
        self.chunks: queue.Queue[np.ndarray] = queue.Queue()
        self.overflows = 0

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        self.chunks.put(indata[:, 0].copy())

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            stream = self.sd.InputStream(
                samplerate=self.sample_rate,
                channels=1,
                dtype="float32",
                blocksize=round(self.sample_rate * CHUNK_S),
                device=self.device,
                callback=self._callback,
            )
        except (ValueError, self.sd.PortAudioError) as error:
            raise CliError(f"cannot open the input device: {error}") from None
        with stream:
            while True:
                try:
                    yield self.chunks.get(timeout=2.0)
                except queue.Empty:
                    raise CliError("the input device delivers no audio") from None


class FileSource:
    """An audio file in chunks of CHUNK_S, paced to ``speed`` times real time."""

    def __init__(self, path: str, speed: float) -> None:
        from audio_frontend.audio_io import AudioError, audio_blocks

        if not speed > 0:
            raise CliError("--speed must be positive")
        if not Path(path).is_file():
            raise CliError(f"{path}: no such file")
        try:
            self.sample_rate, self.duration, self._blocks = audio_blocks(path, seconds=1.0)
        except AudioError as error:
            raise CliError(str(error)) from None
        self.name = Path(path).name
        self.speed = speed

    def __iter__(self) -> Iterator[np.ndarray]:
        from audio_frontend.audio_io import AudioError

        step = max(1, round(self.sample_rate * CHUNK_S))
        started = time.monotonic()
        done = 0
        try:
            for block in self._blocks:
                for i in range(0, len(block), step):
                    chunk = block[i : i + step]
                    done += len(chunk)
                    due = started + done / self.sample_rate / self.speed
                    time.sleep(max(0.0, due - time.monotonic()))
                    yield chunk
        except AudioError as error:
            raise CliError(str(error)) from None


# ----- recognizers --------------------------------------------------------------------------
class LocalRecognizer:
    """The model in this process; messages shaped like the /v1/stream protocol."""

    def __init__(self, model: str | None, sample_rate: int, words: str | None = None) -> None:
        import torch

        from app.words import WordSet
        from audio_frontend.audio_io import AudioError
        from models.custom_words import CustomWordError
        from models.model_file import ModelFileError, load_model
        from models.recognizer import Recognizer, StreamOptions

        try:
            bundle = load_model(model)
        except ModelFileError as error:
            raise CliError(f"{error} (pass --model FILE or --server URL)") from None
        self.recognizer = Recognizer(bundle)
        if words is not None:
            try:
                WordSet(self.recognizer, words)
            except CustomWordError as error:
                raise CliError(str(error)) from None
        try:
            self.stream = self.recognizer.open_stream(StreamOptions(sample_rate=sample_rate))
        except AudioError as error:
            raise CliError(str(error)) from None
        self.label = f"model {bundle.card.get('name', Path(model or 'bundled').stem)}"
        # One stream steps a few bins at a time: intra-op threads only add synchronisation
        # (several times slower on a busy machine).  Restored by close().
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def feed(self, chunk: np.ndarray) -> list[dict]:
        self.recognizer.feed_audio(self.stream, chunk)
        return self._messages()

    def finish(self) -> list[dict]:
        self.recognizer.feed_audio(self.stream, np.zeros(0, np.float32), final=True)
        return self._messages()

    def _messages(self) -> list[dict]:
        """The drained events as the dicts a server would send (the display reads those)."""
        return [message_json(word_message(e)) for e in self.recognizer.drain(self.stream)]

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads)


def stream_url(server: str) -> str:
    """``http://host:port`` (or ws://, https://, wss://) to the ``/v1/stream`` WebSocket URL."""
    parts = urlsplit(server if "://" in server else f"http://{server}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise CliError(f"--server {server!r}: expected a URL like http://127.0.0.1:8000")
    path = parts.path if parts.path not in ("", "/") else "/v1/stream"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class RemoteRecognizer:
    """A running service's ``/v1/stream``: f32le audio out, JSON messages back.

    websockets' asyncio client on an event loop of its own thread, not its threaded
    client: that one reads a connection in one thread while the caller writes it in
    another, and OpenSSL does not allow that on one TLS connection (over wss:// a request
    was lost that way, 1 connection in ~10, and the handshake never finished).
    """

    def __init__(self, server: str, sample_rate: int) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidURI

        self.url = stream_url(server)
        self.messages: queue.Queue[dict | None] = queue.Queue()
        self.ended = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self.ws = self._call(self._connect(), timeout=15)
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as error:
            self._stop_loop()
            raise CliError(f"cannot connect to {self.url}: {error}") from None
        self.label = f"server {self.url}"
        self._reader = asyncio.run_coroutine_threadsafe(self._read(), self._loop)
        config = {"sample_rate": sample_rate, "format": "f32le", "partials": True}
        self._send(json.dumps({"config": config}))

    async def _connect(self):
        from websockets.asyncio.client import connect

        return await connect(self.url, open_timeout=10, max_size=None)

    def _call(self, coroutine, timeout: float | None = None):
        """Run ``coroutine`` on the connection's event loop; its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for text in self.ws:
                try:
                    self.messages.put(json.loads(text))
                except (TypeError, ValueError):
                    continue
        except ConnectionClosed:
            pass
        finally:
            self.messages.put(None)

    def _send(self, data: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self._call(self.ws.send(data))
        except ConnectionClosed:
            self._received()  # an error message from the server explains why, if it sent one
            raise CliError(f"{self.url}: the server closed the connection") from None

    def _received(self, until_end: bool = False, timeout: float = 30.0) -> list[dict]:
        out = []
        deadline = time.monotonic() + timeout
        while not self.ended:
            try:
                if until_end:
                    message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    message = self.messages.get_nowait()
            except queue.Empty:
                if until_end:
                    raise CliError(f"{self.url}: no reply from the server") from None
                break
            if message is None or message.get("type") == "eof":
                self.ended = True
                break
            if message.get("type") == "error":
                self.ended = True
                raise CliError(f"server: {message.get('message')}")
            out.append(message)
        return out

    def feed(self, chunk: np.ndarray) -> list[dict]:
        self._send(np.asarray(chunk, "<f4").tobytes())
        return self._received()

    def finish(self) -> list[dict]:
        self._send(json.dumps({"eof": 1}))
        return self._received(until_end=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed, or the server is gone
            self._call(self.ws.close(), timeout=5)
        with contextlib.suppress(Exception):
            self._reader.result(timeout=2)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)
        self._loop.close()


# ----- display ------------------------------------------------------------------------------
def _label(word: str) -> str:
    return {"_unknown_": "(unknown)", "_silence_": "(silence)"}.get(word, word)


def _bar(fraction: float, width: int) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


class Display:
    """What the terminal shows; a rich renderable that reflects the latest state."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.level_db = -120.0
        self.seconds = 0.0
        self.partial: dict | None = None
        self.finals: list[dict] = []

    def audio(self, chunk: np.ndarray, seconds: float) -> None:
        rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64)))) if len(chunk) else 0.0
        self.level_db = 20 * math.log10(rms + 1e-9)
        self.seconds = seconds

    def message(self, message: dict) -> None:
        if message["type"] == "partial":
            self.partial = message
        elif message["type"] == "final":
            self.finals.append(message)
            self.partial = None

    @staticmethod
    def final_line(final: dict) -> str:
        return (
            f"{final['start']:6.2f}–{final['end']:.2f} s  {_label(final['word'])}  "
            f"({final['confidence']:.0%})"
        )

    def transcript(self) -> str:
        return " ".join(_label(f["word"]) for f in self.finals) or "(no words)"

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        level = (self.level_db + 60) / 60
        color = "green" if level < 0.75 else "yellow" if level < 0.95 else "red"
        grid.add_row(
            "level",
            Text(_bar(level, METER_WIDTH), style=color)
            + Text(f" {max(self.level_db, -99):4.0f} dB  {self.seconds:6.1f} s", style="dim"),
        )
        if self.partial is not None:
            confidence = self.partial["confidence"]
            now = Text(f"{_label(self.partial['word']):<10}", style="bold cyan")
            now += Text(f" {_bar(confidence, 10)} {confidence:4.0%}", style="cyan")
        else:
            now = Text("…", style="dim")
        grid.add_row("now", now)
        grid.add_row("heard", Text(self.transcript(), style="bold"))
        lines = [Text(self.final_line(f)) for f in self.finals[-SHOWN_FINALS:]]
        return Group(Text(self.title, style="bold magenta"), grid, *lines)


# ----- the command --------------------------------------------------------------------------
def run_mic(args: argparse.Namespace, console=None) -> list[dict]:
    """Run ``spikeear mic``; returns the final words (protocol-shaped dicts)."""
    from rich.console import Console

    console = console or Console()
    if args.list_devices:
        list_devices(console.file)
        return []
    if args.server and args.model:
        raise CliError(
            "--model applies to the in-process model; with --server the service's is used"
        )
    source: FileSource | MicrophoneSource
    if args.input_file:
        source = FileSource(args.input_file, args.speed)
    else:
        source = MicrophoneSource(args.device)
    recognizer: LocalRecognizer | RemoteRecognizer
    if args.server:
        if args.words:
            raise CliError("--words is for the model in this process; the server has its own")
        recognizer = RemoteRecognizer(args.server, source.sample_rate)
    else:
        recognizer = LocalRecognizer(args.model, source.sample_rate, args.words)
    display = Display(
        f"spikeear mic · {source.name} ({source.sample_rate} Hz) · {recognizer.label}"
        + ("" if args.input_file else " · Ctrl+C to stop")
    )
    live = console.is_terminal and not args.plain
    try:
        if live:
            from rich.live import Live

            with Live(display, console=console, refresh_per_second=12, transient=False):
                _run(source, recognizer, display, None)
        else:
            console.print(display.title, highlight=False)
            _run(source, recognizer, display, console)
    finally:
        recognizer.close()
    console.print(f"transcript: {display.transcript()}", highlight=False)
    return display.finals


def _run(source, recognizer, display: Display, plain: Any) -> None:
    def show(messages: list[dict]) -> None:
        for message in messages:
            display.message(message)
            if plain is not None and message["type"] == "final":
                plain.print(Display.final_line(message), highlight=False)

    samples = 0
    try:
        for chunk in source:
            samples += len(chunk)
            display.audio(chunk, samples / source.sample_rate)
            show(recognizer.feed(chunk))
    except KeyboardInterrupt:
        pass  # stop listening; the last word is still finished below
    show(recognizer.finish())
