"""The spikeear command: front-end jobs, spike files and bad input."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf

from app.cli import build_parser, main
from audio_frontend import Cochlea
from audio_frontend.events import SpikeEvents
from audio_frontend.spike_files import read_spike_file, write_spike_file
from tests.conftest import fixture_path


def test_encode_round_trip_matches_chunked_and_whole(tmp_path, capsys):
    wav = fixture_path("yes")
    assert main(["encode", str(wav), "--out", str(tmp_path / "whole.h5")]) == 0
    assert main(["encode", str(wav), "--out", str(tmp_path / "chunk.h5"), "--chunk-ms", "7"]) == 0
    assert "spikes/s" in capsys.readouterr().out
    (whole,), labels, attributes = read_spike_file(tmp_path / "whole.h5")
    (chunked,), _, _ = read_spike_file(tmp_path / "chunk.h5")
    audio, rate = sf.read(wav, dtype="float32")
    direct = Cochlea().encode(audio, rate)
    for events in (whole, chunked):
        assert np.array_equal(events.times, direct.times)
        assert np.array_equal(events.channels, direct.channels)
    assert attributes["frontend"]["channels"] == 64 and labels.tolist() == [0]
    with h5py.File(tmp_path / "whole.h5") as file:  # the SHD layout
        assert {"spikes", "labels"} <= set(file) and {"times", "units"} <= set(file["spikes"])


def test_reads_published_shd_style_files(tmp_path):
    # As in the published SHD files: float16 times, uint16 units, no extra attributes.
    path = tmp_path / "shd.h5"
    with h5py.File(path, "w") as file:
        times = file.create_dataset("spikes/times", (2,), dtype=h5py.vlen_dtype(np.float16))
        units = file.create_dataset("spikes/units", (2,), dtype=h5py.vlen_dtype(np.uint16))
        times[0], units[0] = np.array([0.1, 0.05], np.float16), np.array([3, 699], np.uint16)
        times[1], units[1] = np.array([], np.float16), np.array([], np.uint16)
        file.create_dataset("labels", data=np.array([7, 2], np.uint16))
    samples, labels, _ = read_spike_file(path)
    assert labels.tolist() == [7, 2]
    assert samples[0].channels.tolist() == [699, 3]  # sorted by time
    assert samples[0].n_channels == 700 and len(samples[1]) == 0


def test_write_then_read_is_identical(tmp_path):
    events = SpikeEvents(np.array([0.0, 0.00125, 0.5]), np.array([1, 0, 63], np.int32), 64)
    write_spike_file(tmp_path / "e.h5", [events], [3], keys=["a", "b", "c", "d"])
    (back,), labels, attributes = read_spike_file(tmp_path / "e.h5")
    assert np.array_equal(back.times, events.times) and np.array_equal(
        back.channels, events.channels
    )
    assert attributes["keys"][3] == "d" and labels.tolist() == [3]


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "yes.png"
    assert main(["plot", str(fixture_path("yes")), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (["encode", "missing.wav", "--out", "x.h5"], "no such file"),
        (["encode", "{notes}", "--out", "x.h5"], "not a readable audio file"),
        (["encode", "{empty}", "--out", "x.h5"], "no audio"),
        (["encode", "{nan}", "--out", "x.h5"], "NaN"),
        (["encode", "{yes}", "--out", "x.h5", "--channels", "9999"], "channels"),
        (["encode", "{yes}", "--out", "x.h5", "--chunk-ms", "0"], "chunk-ms"),
        (["plot", "{dir}", "--out", "x.png"], "directory"),
        (["transcribe", "{notes}"], "not a readable audio file"),
        (["evaluate", "--data", "{dir}"], "no usable clips"),
        (["transcribe", "{yes}", "--model", "{notes}"], "not a spikeear model"),
    ],
)
def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path, argv, message):
    (tmp_path / "notes.txt").write_text("hello")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.0], np.float32), 16000, subtype="FLOAT")
    (tmp_path / "d").mkdir()
    names = {
        "notes": tmp_path / "notes.txt",
        "empty": tmp_path / "empty.wav",
        "nan": tmp_path / "nan.wav",
        "dir": tmp_path / "d",
        "yes": fixture_path("yes"),
    }
    argv = [a.format(**names) for a in argv]
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("module", ["app.server", "app.cli"])
def test_serving_imports_no_training_code(module):
    """The service (and the command line that starts it) load neither the training code
    nor its dependencies: the serving image has no training/."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert module in imported  # the report is there to be read
    assert not [name for name in imported if name.split(".")[0] in ("training", "librosa")]


@pytest.mark.parametrize("command", ["train", "features", "evaluate", "export-nir"])
def test_training_commands_without_the_training_code_say_so(monkeypatch, capsys, command):
    """As in the serving image: one line and a non-zero exit, not a traceback."""
    # import training fails, also where a test before this one imported some of it
    for name in ["training", *(n for n in sys.modules if n.startswith("training."))]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "app.train_commands", raising=False)
    assert main([command, "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err == f"spikeear {command}: error: training commands need the full install " + (
        "(the repository with its training/ package, 'pip install .'); this one only recognises\n"
    )
    # The other commands parse as ever.
    assert build_parser("serve").parse_args(["serve", "--port", "0"]).port == 0
