"""The live demo page in a real (headless) Chromium, fed by Chromium's fake microphone.

Chromium plays a WAV file as its microphone (``--use-file-for-fake-audio-capture``,
looped), so the whole path runs: getUserMedia, the AudioWorklet, the WebSocket
``/v1/stream`` protocol with ``activity`` messages, and the rasters.  With
``SPIKEEAR_UPDATE_SCREENSHOT=1`` the screenshot also replaces ``docs/demo.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import uvicorn

from app.server import create_app
from app.settings import Settings
from models.model_file import DEFAULT_MODEL_PATH
from tests.conftest import fixture_path
from tests.servers import in_thread

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo.png"
WAIT_MS = 20_000


def padded_fixture(tmp_path: Path, word: str = "yes") -> Path:
    """The fixture with 0.5 s of silence either side, as 16-bit PCM (what Chromium reads)."""
    audio, rate = sf.read(fixture_path(word), dtype="int16")
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
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]
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
