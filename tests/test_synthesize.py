"""training.synthesize writes a Speech Commands-layout folder of synthetic clips."""

import re

import numpy as np
import pytest
import soundfile as sf

from training.synthesize import MARKER, available_engines, synthesize

NAME = re.compile(r"^[0-9a-f]+_nohash_\d+\.wav$")


def test_synthesize_layout(tmp_path):
    usable = [engine for engine, why in available_engines().items() if why is None]
    if not usable:
        pytest.skip(
            "no speech synthesizer installed (apt-get install espeak-ng flite sox, "
            "or pip install py-nanotts)"
        )
    engine = usable[0]
    out = tmp_path / "synth"
    summary = synthesize(
        out, words=["yes", "cat"], engines=[engine], seed=1, max_voices=3, progress=False
    )

    assert (out / MARKER).is_file() and (out / MARKER).stat().st_size == 0
    assert engine in (out / "README.md").read_text()
    assert summary["clips"] > 0 and summary["failures"] == 0
    assert summary["per_word"] == {"yes": 3, "cat": 3}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cat", "yes"]
    wavs = sorted(out.glob("*/*.wav"))
    assert len(wavs) == summary["clips"] == 6
    speakers = {p.name.split("_")[0] for p in wavs}
    assert len(speakers) == 3  # one speaker per voice, each saying every word
    for path in wavs:
        assert NAME.match(path.name), path.name
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000)
        assert info.subtype == "PCM_16"
        audio, _ = sf.read(path, dtype="float32")
        peak_db = 20 * np.log10(np.max(np.abs(audio)))
        assert -25.5 <= peak_db <= -2.5

    # same seed, same clips
    again = synthesize(
        tmp_path / "again",
        words=["yes", "cat"],
        engines=[engine],
        seed=1,
        max_voices=3,
        progress=False,
    )
    assert again["per_word"] == summary["per_word"]
    for path in wavs:
        twin = tmp_path / "again" / path.parent.name / path.name
        assert np.array_equal(sf.read(path)[0], sf.read(twin)[0])


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "real.wav").write_bytes(b"")
    with pytest.raises(FileExistsError):
        synthesize(tmp_path, words=["yes"], progress=False)
