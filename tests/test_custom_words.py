"""Custom words: enrollment, the word set file, recognition by every path, the API.

End-to-end tests use the bundled model (its enrollment space) and three recordings of
"marvin" (tests/fixtures/custom_words), a word outside its vocabulary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from app.cli import main
from app.server import create_app
from app.settings import Settings
from app.words import Recording, WordExistsError, WordSet
from audio_frontend.audio_io import load_audio
from models.custom_words import (
    CustomWord,
    CustomWordError,
    CustomWords,
    EnrollmentSpace,
    check_word,
    load_word_set,
)
from models.model_file import load_model
from models.recognizer import Recognizer, StreamOptions
from tests.conftest import FIXTURES, fixture_path

WORDS_DIR = FIXTURES / "custom_words"
ENROLL = sorted(WORDS_DIR.glob("marvin_*.wav"))[:3]
HELD_BACK = sorted(WORDS_DIR.glob("marvin_*.wav"))[3]  # another speaker's "marvin"
OTHER_WORD = WORDS_DIR / "bed_4c7c95de_nohash_0.wav"


def recordings(paths: list[Path]) -> list[Recording]:
    return [Recording(p.name, *load_audio(p)) for p in paths]


def words_of(recognizer: Recognizer, path: Path, **options) -> list[str]:
    audio, rate = load_audio(path)
    transcript = recognizer.transcribe([audio], rate, StreamOptions(sample_rate=rate, **options))
    return [w.word for w in transcript.words]


@pytest.fixture(scope="module")
def bundle():
    return load_model()


@pytest.fixture
def recognizer(bundle) -> Recognizer:
    return Recognizer(bundle)


@pytest.fixture
def enrolled(recognizer) -> Recognizer:
    WordSet(recognizer).enroll("marvin", recordings(ENROLL))
    return recognizer


@pytest.mark.parametrize("word", ["", "two words", "lights!", "x" * 33, "-dash", "über"])
def test_a_word_that_cannot_be_one_is_refused(word):
    with pytest.raises(CustomWordError, match="cannot be a word"):
        check_word(word)


def test_a_fitted_space_matches_a_word_and_refuses_others_and_survives_the_file():
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.0, 1.0, (3, 16))
    labels = np.repeat(["a", "b", "new"], 40)
    rates = np.concatenate([c + rng.normal(0, 0.02, (40, 16)) for c in centres]) ** 2
    space = EnrollmentSpace.fit(rates, labels, labels != "new", (1, 2))
    assert len(space.negatives) == 80
    enrolled = CustomWords(space, (CustomWord.enroll(space, "new", rates[80:83], ()),))
    assert enrolled.match(centres[2] ** 2, None).word == "new"
    assert enrolled.match(centres[0] ** 2, None) is None
    assert enrolled.takes_over("a", centres[2] ** 2, None).word == "new"
    assert enrolled.takes_over("a", centres[0] ** 2, None) is None  # it sounds like "a"
    assert space.words == ("a", "b") and space.word_prototypes.shape == (2, 16)
    loaded = EnrollmentSpace.from_dict(space.to_dict())
    assert loaded.fingerprint == space.fingerprint


def test_words_are_stored_in_lower_case():
    assert check_word(" Lights ") == "lights" and check_word("o'clock") == "o'clock"


def test_the_bundled_model_hears_marvin_only_once_it_is_enrolled(recognizer, enrolled):
    fresh = Recognizer(load_model())
    assert "marvin" not in words_of(fresh, HELD_BACK, emit_unknown=True)
    assert words_of(enrolled, HELD_BACK) == ["marvin"]


def test_a_custom_word_does_not_take_built_in_words_noise_or_other_words(enrolled):
    for word in ("yes", "no", "stop", "seven", "left"):
        assert words_of(enrolled, fixture_path(word)) == [word]
    assert words_of(enrolled, fixture_path("noise")) == []
    assert "marvin" not in words_of(enrolled, OTHER_WORD, emit_unknown=True)


def test_custom_words_stream_in_chunks_as_in_one_piece_with_partials(enrolled):
    audio, rate = load_audio(HELD_BACK)
    whole = enrolled.transcribe([audio], rate, StreamOptions(sample_rate=rate)).words
    events = []
    with enrolled.opened(StreamOptions(sample_rate=rate)) as stream:
        for start in range(0, len(audio), 320):
            enrolled.feed_audio(stream, audio[start : start + 320])
            while stream.ready:
                events += enrolled.step([stream])[0]
        enrolled.feed_audio(stream, np.zeros(0, np.float32), final=True)
        while stream.ready:
            events += enrolled.step([stream])[0]
    finals = [e for e in events if e.kind == "final"]
    assert finals == whole and [w.word for w in finals] == ["marvin"]
    partial = next(e for e in events if e.kind == "partial" and e.word == "marvin")
    assert partial.time < finals[0].time


def test_a_streams_vocabulary_may_name_custom_words(enrolled):
    assert words_of(enrolled, HELD_BACK, vocabulary=("marvin",)) == ["marvin"]
    assert words_of(enrolled, HELD_BACK, vocabulary=("yes", "no")) == []
    with pytest.raises(ValueError, match="lights"):
        enrolled.open_stream(StreamOptions(vocabulary=("marvin", "lights")))


def test_the_recognizer_decides_as_takes_over_reads_the_described_words(enrolled):
    """What benchmarks/custom_words.py relies on: finals with custom words are the
    network's own finals with CustomWords.takes_over applied to their hidden rates."""
    for path in (HELD_BACK, OTHER_WORD, fixture_path("yes")):
        audio, rate = load_audio(path)
        enrolled_words = enrolled.custom_words
        enrolled.custom_words = CustomWords(enrolled_words.space)
        described = enrolled.describe(audio, rate)
        enrolled.custom_words = enrolled_words
        offline = []
        for event, rates in described:
            match = enrolled_words.takes_over(event.word, rates, None)
            offline.append(match.word if match else event.word)
        assert words_of(enrolled, path, emit_unknown=True) == offline


def test_bad_enrollments_are_refused_with_a_reason(recognizer, tmp_path):
    words = WordSet(recognizer)
    with pytest.raises(WordExistsError, match="built-in"):
        words.enroll("yes", recordings(ENROLL))
    silent = Recording("silence.wav", np.zeros(16000, np.float32), 16000)
    with pytest.raises(CustomWordError, match=r"silence\.wav: no speech found"):
        words.enroll("hush", [silent])
    short = Recording("short.wav", np.zeros(800, np.float32), 16000)
    with pytest.raises(CustomWordError, match="too short"):
        words.enroll("hush", [short])
    long = Recording("long.wav", np.zeros(16000 * 6, np.float32), 16000)
    with pytest.raises(CustomWordError, match="too long"):
        words.enroll("hush", [long])
    with pytest.raises(CustomWordError, match="at least one recording"):
        words.enroll("hush", [])
    words.enroll("marvin", recordings(ENROLL[:1]))
    with pytest.raises(WordExistsError, match="already enrolled"):
        words.enroll("marvin", recordings(ENROLL))


def test_the_word_set_file_keeps_words_for_the_next_start(bundle, tmp_path):
    path = tmp_path / "words.json"
    WordSet(Recognizer(bundle), path).enroll("marvin", recordings(ENROLL))
    data = json.loads(path.read_text())
    assert data["format"] == "spikeear-words" and [w["word"] for w in data["words"]] == ["marvin"]
    assert data["words"][0]["examples"] == 3
    again = Recognizer(bundle)
    WordSet(again, path)
    assert words_of(again, HELD_BACK) == ["marvin"]
    assert WordSet(Recognizer(bundle), path).remove("marvin")
    assert load_word_set(path, bundle.enrollment).names == ()


def test_a_word_set_of_another_format_or_model_is_refused(bundle, tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"words": []}')
    with pytest.raises(CustomWordError, match="not a word set file"):
        load_word_set(other, bundle.enrollment)
    other.write_text("not json")
    with pytest.raises(CustomWordError, match="not a word set file"):
        load_word_set(other, bundle.enrollment)
    other.write_text(json.dumps({"format": "spikeear-words", "version": 1, "space": "x"}))
    with pytest.raises(CustomWordError, match="another model"):
        load_word_set(other, bundle.enrollment)


# ----- the command line ---------------------------------------------------------------------
def test_spikeear_enroll_adds_a_word_to_the_set(tmp_path, capsys):
    path = tmp_path / "words.json"
    assert main(["enroll", "marvin", *map(str, ENROLL), "--words", str(path)]) == 0
    assert "'marvin' enrolled from 3 examples" in capsys.readouterr().out
    assert json.loads(path.read_text())["words"][0]["word"] == "marvin"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["two words", "x.wav"], "cannot be a word"),
        (["yes", "x.wav"], "built-in"),
        (["lights"], "give recordings"),
        (["lights", "missing.wav"], "missing.wav"),
    ],
)
def test_spikeear_enroll_explains_what_is_wrong(tmp_path, capsys, arguments, message):
    assert main(["enroll", *arguments, "--words", str(tmp_path / "w.json")]) == 2
    assert message in capsys.readouterr().err


def test_spikeear_enroll_refuses_a_file_that_is_not_a_word_set(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1}')
    assert main(["enroll", "marvin", *map(str, ENROLL), "--words", str(bad)]) == 2
    assert "not a word set file" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_spikeear_enroll_synthesize_makes_a_word_from_its_spelling(tmp_path, capsys):
    path = tmp_path / "words.json"
    assert main(["enroll", "marvin", "--synthesize", "--words", str(path)]) == 0
    sources = json.loads(path.read_text())["words"][0]["sources"]
    assert len(sources) >= 3 and all(":" in s for s in sources)  # engine:voice:pitch:speed


# ----- the service --------------------------------------------------------------------------
@pytest.fixture
def service(tmp_path) -> TestClient:
    settings = Settings(words_path=str(tmp_path / "words.json"))
    with TestClient(create_app(settings)) as client:
        yield client


def post_word(client: TestClient, word: str, paths: list[Path], **form):
    files = [("files", (p.name, p.read_bytes(), "audio/wav")) for p in paths]
    return client.post("/v1/words", data={"word": word, **form}, files=files or None)


def test_the_service_enrolls_lists_recognises_and_deletes_a_word(service, tmp_path):
    answer = post_word(service, "marvin", ENROLL)
    assert answer.status_code == 201 and answer.json() == {"word": "marvin", "examples": 3}
    listed = service.get("/v1/words").json()["words"]
    assert [(w["word"], w["examples"]) for w in listed] == [("marvin", 3)]
    assert json.loads((tmp_path / "words.json").read_text())["words"][0]["word"] == "marvin"

    upload = {"file": (HELD_BACK.name, HELD_BACK.read_bytes(), "audio/wav")}
    assert service.post("/v1/transcribe", files=upload).json()["text"] == "marvin"
    audio, rate = sf.read(HELD_BACK, dtype="int16")
    with service.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"config": {"sample_rate": rate, "vocabulary": ["marvin"]}}))
        ws.send_bytes(audio.tobytes())
        ws.send_text('{"eof": 1}')
        messages = []
        while (message := ws.receive_json())["type"] != "eof":
            messages.append(message)
    assert [m["word"] for m in messages if m["type"] == "final"] == ["marvin"]
    with service.websocket_connect("/vosk") as ws:
        ws.send_text(json.dumps({"config": {"sample_rate": rate}}))
        ws.send_bytes(audio.tobytes())
        ws.receive_json()
        ws.send_text('{"eof": 1}')
        assert "marvin" in ws.receive_json()["text"]

    assert service.delete("/v1/words/marvin").status_code == 204
    assert service.delete("/v1/words/marvin").status_code == 404
    assert service.get("/v1/words").json() == {"words": []}
    assert service.post("/v1/transcribe", files=upload).json()["text"] != "marvin"


@pytest.mark.parametrize(
    ("word", "paths", "status", "message"),
    [
        ("two words", ENROLL, 400, "cannot be a word"),
        ("yes", ENROLL, 409, "built-in"),
        ("lights", [], 400, "synthesize=true"),
    ],
)
def test_the_service_refuses_bad_words_with_json_errors(service, word, paths, status, message):
    answer = post_word(service, word, paths)
    assert answer.status_code == status and message in answer.json()["error"]


def test_the_service_refuses_bad_recordings_with_json_errors(service, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    answer = post_word(service, "lights", [not_audio])
    assert answer.status_code == 415 and "notes.wav" in answer.json()["error"]
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.int16), 16000)
    answer = post_word(service, "lights", [silent])
    assert answer.status_code == 400 and "no speech found" in answer.json()["error"]
    assert post_word(service, "marvin", ENROLL).status_code == 201
    answer = post_word(service, "marvin", ENROLL)
    assert answer.status_code == 409 and "already enrolled" in answer.json()["error"]
    assert service.get("/health").json()["status"] == "ok"


def test_serve_refuses_a_word_set_file_it_cannot_read(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["serve", "--words", str(bad), "--workers", "1", "--port", "0"]) == 2
    assert "not a word set file" in capsys.readouterr().err


def test_a_model_without_an_enrollment_space_says_it_cannot_learn_words(controlled_client):
    assert controlled_client.get("/v1/words").json() == {"words": []}
    assert controlled_client.delete("/v1/words/lights").status_code == 404
    answer = controlled_client.post("/v1/words", data={"word": "lights", "synthesize": "true"})
    assert answer.status_code == 400 and "cannot learn custom words" in answer.json()["error"]


def test_template_distance_is_zero_for_a_word_said_slower_and_grows_with_difference():
    """benchmarks/custom_word_templates.py's DTW: a recording stretched in time matches
    itself exactly, another sequence does not."""
    from benchmarks.custom_word_templates import dtw_distance

    rng = np.random.default_rng(0)
    word = rng.standard_normal((20, 16))
    word /= np.linalg.norm(word, axis=1, keepdims=True)
    slower = np.repeat(word, 2, axis=0)  # every bin held twice as long
    other = rng.standard_normal((25, 16))
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    assert dtw_distance(word, word) == pytest.approx(0.0, abs=1e-12)
    assert dtw_distance(word, slower) == pytest.approx(0.0, abs=1e-12)
    assert dtw_distance(word, other) > 0.5
