"""The live demo page in a real (headless) Chromium, fed by Chromium's fake microphone.

Chromium plays a WAV file as its microphone (``--use-file-for-fake-audio-capture``,
looped), so the whole path runs: getUserMedia, the AudioWorklet, the WebSocket
``/v1/stream`` protocol with ``activity`` messages, and the rasters.  With
``SPIKEEAR_UPDATE_SCREENSHOT=1`` the screenshot also replaces ``docs/demo.png``.

The "Add a word" panel records its takes from the same fake microphone (a recording of
"marvin", restarted for every take), posts them as WAV files to ``/v1/words``, and the
word is then heard on ``/v1/stream``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import uvicorn

from app.server import create_app
from app.settings import Settings
from models.model_file import DEFAULT_MODEL_PATH
from tests.conftest import FIXTURES, fixture_path
from tests.servers import in_thread

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo.png"
WAIT_MS = 20_000
MARVIN = sorted((FIXTURES / "custom_words").glob("marvin_*.wav"))[0]  # not a built-in word
CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def padded_fixture(tmp_path: Path, word: str = "yes", source: Path | None = None) -> Path:
    """The fixture with 0.5 s of silence either side, as 16-bit PCM (what Chromium reads)."""
    audio, rate = sf.read(source or fixture_path(word), dtype="int16")
    gap = np.zeros(rate // 2, np.int16)
    path = tmp_path / f"{word}_padded.wav"
    sf.write(path, np.concatenate([gap, audio, gap]), rate, subtype="PCM_16")
    return path


def model_path(tmp_path: Path) -> tuple[str | None, bool]:
    """The bundled model if it is there (words are then checked), else a random one."""
    if DEFAULT_MODEL_PATH.exists():
        return None, True
    from audio_frontend.cochlea import CochleaConfig
    from models.model_file import ModelBundle
    from models.vocabulary import DEFAULT_VOCABULARY
    from tests.test_network import trained_like

    path = tmp_path / "random.pt"
    ModelBundle(trained_like(), CochleaConfig(), DEFAULT_VOCABULARY, 10.0, {"name": "random"}).save(
        path
    )
    return str(path), False


@pytest.fixture
def server(tmp_path):
    model, trained = model_path(tmp_path)
    settings = Settings(model_path=model)
    config = uvicorn.Config(
        create_app(settings), log_level="warning", ws_max_size=settings.max_message_bytes
    )
    with in_thread(uvicorn.Server(config)) as port:
        yield f"http://127.0.0.1:{port}", trained


@pytest.fixture
def sync_api():
    """Playwright's sync API, where it and a system Chromium are installed (else skip)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )


@pytest.mark.slow  # a headless Chromium: seconds to start, up to 20 s to hear a word
def test_microphone_demo_shows_words_and_rasters(sync_api, server, tmp_path):
    url, trained = server
    wav = padded_fixture(tmp_path)
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"]
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            page = browser.new_page(viewport={"width": 412, "height": 915}, device_scale_factor=2)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            page.wait_for_selector("#vocabulary span", timeout=WAIT_MS)
            page.click("#mic")
            page.wait_for_function(
                """(needWord) => {
                    const spikes = Number(document.getElementById("input-raster").dataset.spikes);
                    const words = document.querySelectorAll("#transcript li").length;
                    return spikes > 0 && (!needWord || words > 0);
                }""",
                arg=trained,
                timeout=WAIT_MS,
            )
            if not trained:
                page.wait_for_timeout(2500)  # no words to wait for: let the rasters fill
            state = page.evaluate(
                """() => ({
                    state: document.body.dataset.state,
                    status: document.getElementById("status").textContent,
                    spikes: Number(document.getElementById("input-raster").dataset.spikes),
                    frames: Number(document.getElementById("output-raster").dataset.frames),
                    words: [...document.querySelectorAll("#transcript li")]
                        .map((li) => li.dataset.word),
                })"""
            )
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            if trained and os.environ.get("SPIKEEAR_UPDATE_SCREENSHOT") == "1":
                DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(tmp_path / "demo.png", DOCS_SCREENSHOT)
            page.click("#mic")  # stop: the page sends eof, the server flushes and closes
            page.wait_for_function("() => document.body.dataset.state === 'idle'", timeout=WAIT_MS)
        finally:
            browser.close()
    assert not errors, errors
    assert state["state"] == "listening", state
    assert state["spikes"] > 0 and state["frames"] > 0, state
    if trained:
        assert state["words"][0] == "yes", state


def custom_words(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/v1/words", timeout=10) as response:
        return json.load(response)["words"]


@pytest.mark.slow  # a headless Chromium, three 1.5 s takes, then the word said once
def test_add_a_word_panel_enrolls_a_recorded_word(sync_api, server, tmp_path):
    url, trained = server
    if not trained:
        pytest.skip("the bundled model (its enrollment space) is not there")
    wav = padded_fixture(tmp_path, "marvin", MARVIN)
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"]
    errors: list[str] = []
    posts: list[str] = []  # the content type of every POST /v1/words

    def on_request(request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/words"):
            posts.append(request.headers.get("content-type", ""))

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", on_request)
            page.goto(url + "/")
            page.wait_for_selector("#vocabulary span", timeout=WAIT_MS)
            assert page.is_disabled("#enroll")
            # Three takes from the microphone: each one a fresh capture of the file.
            for take in range(1, 4):
                page.click("#record")
                page.wait_for_function(
                    "(n) => document.querySelectorAll('#takes li').length === n",
                    arg=take,
                    timeout=WAIT_MS,
                )
            assert page.is_disabled("#record")
            assert page.is_disabled("#enroll")  # no word yet
            # A refusal: the server's message is shown, the takes are kept.
            page.fill("#word-input", "yes")
            page.click("#enroll")
            page.wait_for_selector("#word-message[data-kind=error]", timeout=WAIT_MS)
            refused = page.text_content("#word-message")
            assert page.locator("#takes li").count() == 3
            # The word itself, enrolled with Enter from the word field.
            page.fill("#word-input", "Marvin")
            page.press("#word-input", "Enter")
            page.wait_for_selector("#vocabulary span.custom[data-word=marvin]", timeout=WAIT_MS)
            enrolled = custom_words(url)
            listed = page.text_content("#custom-words li[data-word=marvin]")
            takes_left = page.locator("#takes li").count()
            # Said right away on /v1/stream.
            page.click("#mic")
            page.wait_for_selector("#transcript li[data-word=marvin]", timeout=WAIT_MS)
            page.click("#mic")
            page.wait_for_function("() => document.body.dataset.state === 'idle'", timeout=WAIT_MS)
            # Removed again.
            page.click("#custom-words li[data-word=marvin] button")
            page.wait_for_selector(
                "#vocabulary span[data-word=marvin]", state="detached", timeout=WAIT_MS
            )
            remaining = custom_words(url)
        finally:
            browser.close()
    assert not errors, errors
    assert refused == "'yes' is a built-in word"
    assert len(posts) == 2 and all(p.startswith("multipart/form-data") for p in posts)
    # The three takes: WAV files from the page's own encoder, which the server decoded.
    sources = ["take1.wav", "take2.wav", "take3.wav"]
    assert enrolled == [{"word": "marvin", "examples": 3, "sources": sources}]
    assert "3 examples" in listed and takes_left == 0
    assert remaining == []


def stream_messages(client, audio: np.ndarray, config: dict) -> list[dict]:
    messages = []
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"config": config}))
        for start in range(0, len(audio), 1600):
            ws.send_bytes(audio[start : start + 1600].tobytes())
        ws.send_text(json.dumps({"eof": 1}))
        while messages[-1:] != [{"type": "eof"}]:
            messages.append(ws.receive_json())
    return messages


def test_activity_messages_for_the_rasters(tmp_path):
    """The page's protocol addition: ``"activity": true`` adds aggregated activity messages."""
    from fastapi.testclient import TestClient

    from models.decoding import DecoderConfig
    from models.model_file import load_model
    from models.recognizer import Recognizer

    model, _ = model_path(tmp_path)
    bundle = load_model(model)
    audio, rate = sf.read(fixture_path("yes"), dtype="int16")
    audio = np.concatenate([np.zeros(rate // 2, np.int16), audio, np.zeros(rate // 2, np.int16)])
    reference = Recognizer(bundle).transcribe([audio], rate)
    with TestClient(create_app(Settings(model_path=model), bundle)) as client:
        plain = stream_messages(client, audio, {"sample_rate": rate})
        messages = stream_messages(client, audio, {"sample_rate": rate, "activity": True})
    activity = [m for m in messages if m["type"] == "activity"]
    assert [m for m in messages if m["type"] != "activity"] == plain  # the rest is unchanged
    assert all(m["type"] != "activity" for m in plain)
    assert activity and all(
        list(m) == ["type", "time", "bins", "input", "output"] for m in activity
    )
    bin_s = bundle.bin_ms / 1000
    min_bins = math.ceil(0.05 / bin_s - 1e-6)
    assert all(m["bins"] >= min_bins for m in activity[:-1])  # at most one per 50 ms of audio
    assert sum(m["bins"] for m in activity) == round(activity[-1]["time"] / bin_s)
    # The activity covers the audio and the silence that ends every stream.
    ending = DecoderConfig().hangover_s
    assert activity[-1]["time"] == pytest.approx(reference.duration + ending, abs=2 * bin_s)
    times = [m["time"] for m in activity]
    assert times == sorted(times)
    for m in activity:
        assert len(m["input"]) == bundle.frontend.channels and min(m["input"]) >= 0
        assert len(m["output"]) == len(bundle.vocabulary)
        assert sum(m["output"]) == pytest.approx(1.0, abs=0.01)
    assert sum(sum(m["input"]) for m in activity) == reference.stats["input_spikes"]
