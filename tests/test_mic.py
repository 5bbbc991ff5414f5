"""``spikeear mic``: a file at (sped-up) real-time pace through the same path as a microphone."""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import sys
import time
import types

import numpy as np
import pytest
import soundfile as sf
import uvicorn
from rich.console import Console

from app import cli, mic
from app.errors import CliError
from app.server import create_app
from app.settings import Settings
from models.model_file import DEFAULT_MODEL_PATH
from tests.conftest import RANKING, fixture_path
from tests.servers import in_thread

LEADER = RANKING[0]  # the controlled model's word for anything it hears


@pytest.fixture(scope="module")
def model(controlled_model_file) -> str:
    """The controlled model (``tests/conftest.py``): it reports "go" for the "yes" clip,
    so the words the mic shows are known whatever the bundled weights hear."""
    return controlled_model_file


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory) -> str:
    """ "yes" with 0.5 s of silence either side."""
    audio, rate = sf.read(fixture_path("yes"), dtype="float32")
    gap = np.zeros(rate // 2, np.float32)
    path = tmp_path_factory.mktemp("mic") / "yes_padded.wav"
    sf.write(path, np.concatenate([gap, audio, gap]), rate)
    return str(path)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    mic.add_mic_arguments(parser)
    return parser.parse_args(argv)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["mic", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def transcript_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("transcript:"))


def test_input_file_runs_to_completion_with_the_transcript(model, speech_file, capsys):
    started = time.monotonic()
    code, out, err = run(["--input-file", speech_file, "--speed", "20", "--model", model], capsys)
    assert code == 0, err
    assert time.monotonic() - started < 30
    assert "yes_padded.wav (16000 Hz)" in out
    assert transcript_line(out) == f"transcript: {LEADER}"
    assert f"{LEADER}  (" in out  # the per-word line with times and confidence


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="no bundled model")
def test_input_file_bundled_model(speech_file, capsys):
    code, out, err = run(["--input-file", speech_file, "--speed", "20"], capsys)
    assert code == 0, err
    assert transcript_line(out) == "transcript: yes"


def test_the_live_view_on_a_terminal(model, speech_file):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    args = parse(["--input-file", speech_file, "--speed", "20", "--model", model])
    finals = mic.run_mic(args, console=console)
    out = buffer.getvalue()
    assert "level" in out and "heard" in out and "transcript:" in out
    assert [f["word"] for f in finals] == [LEADER]
    assert 0.4 <= finals[0]["start"] < finals[0]["end"] <= 1.6
    # The in-process recognizer's messages are the /v1/stream ones, keys in wire order.
    assert list(finals[0]) == ["type", "word", "start", "end", "confidence"]


def test_display_shows_partial_and_finals():
    display = mic.Display("title")
    display.audio(np.full(800, 0.1, np.float32), 1.5)
    display.message({"type": "partial", "word": "stop", "confidence": 0.42, "time": 1.2})
    buffer = io.StringIO()
    Console(file=buffer, width=80, color_system=None).print(display)
    assert "stop" in buffer.getvalue() and "42%" in buffer.getvalue()
    assert "-20 dB" in buffer.getvalue()
    display.message({"type": "final", "word": "stop", "start": 1.0, "end": 1.5, "confidence": 0.9})
    display.message({"type": "final", "word": "_unknown_", "start": 2, "end": 2.4, "confidence": 0})
    assert display.partial is None
    assert display.transcript() == "stop (unknown)"
    assert mic.Display.final_line(display.finals[0]) == "  1.00–1.50 s  stop  (90%)"


def test_missing_and_unreadable_input_files(model, tmp_path, capsys):
    code, _, err = run(["--input-file", str(tmp_path / "none.wav"), "--model", model], capsys)
    assert code == 2
    assert err.strip() == f"spikeear mic: error: {tmp_path / 'none.wav'}: no such file"
    (tmp_path / "text.wav").write_text("not audio")
    code, _, err = run(["--input-file", str(tmp_path / "text.wav"), "--model", model], capsys)
    assert code == 2 and "not a readable audio file" in err and "Traceback" not in err
    code, _, err = run(["--input-file", str(tmp_path / "none.wav"), "--speed", "0"], capsys)
    assert code == 2 and "--speed must be positive" in err


def test_missing_model_and_conflicting_flags(speech_file, tmp_path, capsys):
    code, _, err = run(["--input-file", speech_file, "--model", str(tmp_path / "m.pt")], capsys)
    assert code == 2 and "no such model file" in err
    code, _, err = run(
        ["--input-file", speech_file, "--model", "m.pt", "--server", "http://x"], capsys
    )
    assert code == 2 and "--model applies to the in-process model" in err


def has_input_devices() -> bool:
    try:
        import sounddevice
    except (OSError, ImportError):
        return False
    return any(d["max_input_channels"] > 0 for d in sounddevice.query_devices())


def test_list_devices_and_microphone_without_a_sound_card(capsys):
    if has_input_devices():
        pytest.skip("this machine has an audio input device")
    for argv in (["--list-devices"], []):
        code, out, err = run(argv, capsys)
        assert code == 2, out
        assert err.startswith("spikeear mic: error: no audio input"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


class FakePortAudioError(Exception):
    pass


def fake_sounddevice(devices: list[dict]) -> types.ModuleType:
    module = types.ModuleType("sounddevice")
    module.PortAudioError = FakePortAudioError
    module.query_devices = lambda *a: devices
    module.default = types.SimpleNamespace(device=[1, 0])
    return module


def test_list_devices_with_portaudio(monkeypatch, capsys):
    output_only = {"name": "Speakers", "max_input_channels": 0, "default_samplerate": 48000.0}
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([output_only]))
    code, _, err = run(["--list-devices"], capsys)
    assert code == 2 and "no audio input devices found" in err
    microphone = {"name": "USB mic", "max_input_channels": 1, "default_samplerate": 44100.0}
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([output_only, microphone]))
    code, out, _ = run(["--list-devices"], capsys)
    assert code == 0 and "*   1  USB mic  (1 ch, 44100 Hz)" in out and "Speakers" not in out


def test_stream_url():
    assert mic.stream_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/stream"
    assert mic.stream_url("https://host/") == "wss://host/v1/stream"
    assert mic.stream_url("localhost:8000") == "ws://localhost:8000/v1/stream"
    assert mic.stream_url("ws://host:1/custom") == "ws://host:1/custom"


@contextlib.contextmanager
def running_server(model: str):
    server = uvicorn.Server(
        uvicorn.Config(create_app(Settings(model_path=model)), log_level="warning")
    )
    with in_thread(server) as port:
        yield f"http://127.0.0.1:{port}"


def test_server_mode_gives_the_same_words(model, speech_file, capsys):
    local = mic.run_mic(parse(["--input-file", speech_file, "--speed", "20", "--model", model]))
    capsys.readouterr()
    with running_server(model) as url:
        argv = ["--input-file", speech_file, "--speed", "20", "--server", url]
        code, out, err = run(argv, capsys)
        assert code == 0, err
        assert f"server ws://127.0.0.1:{url.rsplit(':', 1)[1]}/v1/stream" in out
        remote = [line for line in out.splitlines() if " s  " in line]
        assert [f["word"] for f in local] == [LEADER]
        assert remote == [mic.Display.final_line(f) for f in local]
        assert transcript_line(out) == f"transcript: {LEADER}"
        # A protocol error from the server becomes a one-line CliError, not a traceback.
        remote = mic.RemoteRecognizer(url, 4000)
        try:
            with pytest.raises(CliError, match=r"server: .*unsupported sample rate 4000 Hz"):
                for _ in range(100):
                    remote.feed(np.zeros(200, np.float32))
                    time.sleep(0.02)
                remote.finish()
        finally:
            remote.close()


def test_server_not_reachable(speech_file, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code, _, err = run(["--input-file", speech_file, "--server", f"127.0.0.1:{port}"], capsys)
    assert code == 2 and err.startswith(
        f"spikeear mic: error: cannot connect to ws://127.0.0.1:{port}"
    )


def test_wired_into_the_spikeear_command(speech_file, capsys):
    from app import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "mic" not in commands.choices:
        pytest.skip("'mic' is not yet a spikeear subcommand")
    assert cli.main(["mic", "--input-file", speech_file + ".missing"]) == 2
    assert "no such file" in capsys.readouterr().err
