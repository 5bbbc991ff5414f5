// spikeear live demo: microphone -> AudioWorklet -> /v1/stream (f32le) -> words and rasters.
//
// Protocol (see app/routers/stream.py): the page sends
//   {"config": {"sample_rate": <AudioContext rate>, "format": "f32le", "partials": true,
//               "activity": true}}
// then binary Float32 frames, and {"eof": 1} when the microphone stops.  It receives
// "partial", "final", "activity" (input spikes per channel, class probabilities), "error"
// and "eof" messages.
//
// A server started with --api-key answers /v1/models with 401: the page then asks for a
// key, keeps it for this tab (sessionStorage), sends it as X-API-Key and, since a
// browser cannot set headers on a WebSocket, as ?api_key= on /v1/stream.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PX_PER_SECOND = 200; // raster scroll speed in CSS pixels
  const GUTTER = 62; // CSS pixels for the row labels
  const CHUNK_MS = 40; // audio frame size posted by the worklet
  const MIN_RATE = 8000;
  const MAX_RATE = 48000;
  const BACKGROUND = "#0b0e17";
  const LABELS = { _unknown_: "unknown", _silence_: "silence" };
  const KEY_STORAGE = "spikeear-api-key";

  const ui = {
    body: document.body,
    mic: $("mic"),
    micLabel: $("mic-label"),
    status: $("status"),
    level: $("level"),
    vocabulary: $("vocabulary"),
    partialWord: $("partial-word"),
    partialConfidence: $("partial-confidence"),
    partialBar: $("partial-bar"),
    transcript: $("transcript"),
    clear: $("clear"),
    modelName: $("model-name"),
    inputCanvas: $("input-raster"),
    outputCanvas: $("output-raster"),
    keyForm: $("key-form"),
    keyInput: $("api-key"),
    keyError: $("key-error"),
  };

  const model = { vocabulary: [], channels: 64, binMs: 10, name: "" };
  let session = null; // the running microphone session
  let inputRaster = null;
  let outputRaster = null;
  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
  let keyNeeded = false; // the server refused /v1/models without (this) key

  function setState(name, message) {
    ui.body.dataset.state = name;
    if (message !== undefined) {
      ui.status.textContent = message;
    }
    const on = name === "listening" || name === "connecting";
    ui.mic.setAttribute("aria-pressed", String(on));
    ui.mic.setAttribute("aria-label", on ? "Stop the microphone" : "Start the microphone");
    ui.micLabel.textContent = on ? "Stop" : "Start";
    ui.mic.disabled = name === "stopping";
  }

  function label(word) {
    return LABELS[word] || word;
  }

  // ----- scrolling rasters ------------------------------------------------------------
  class Raster {
    // rows: row count; labels: [row index, text] pairs; bottomUp: row 0 at the bottom.
    constructor(canvas, rows, labels, bottomUp) {
      this.canvas = canvas;
      this.rows = rows;
      this.labels = labels;
      this.bottomUp = bottomUp;
      this.buffer = document.createElement("canvas");
      this.resize();
    }

    resize() {
      const dpr = window.devicePixelRatio || 1;
      const width = Math.max(GUTTER + 10, Math.round(this.canvas.clientWidth * dpr));
      const height = Math.max(20, Math.round(this.canvas.clientHeight * dpr));
      if (width === this.canvas.width && height === this.canvas.height) {
        return;
      }
      const old = this.buffer;
      const fresh = document.createElement("canvas");
      fresh.width = Math.max(1, width - Math.round(GUTTER * dpr));
      fresh.height = height;
      const ctx = fresh.getContext("2d");
      ctx.fillStyle = BACKGROUND;
      ctx.fillRect(0, 0, fresh.width, fresh.height);
      if (old.width > 0 && old.height > 0) {
        ctx.drawImage(old, fresh.width - old.width, 0, old.width, fresh.height);
      }
      this.buffer = fresh;
      this.canvas.width = width;
      this.canvas.height = height;
      this.render();
    }

    // Scroll left by `bins` time bins and paint one column: `color(value, row)` or null.
    push(bins, values, color) {
      const dpr = window.devicePixelRatio || 1;
      const buffer = this.buffer;
      const ctx = buffer.getContext("2d");
      const dx = Math.max(1, Math.round(((bins * model.binMs) / 1000) * PX_PER_SECOND * dpr));
      ctx.drawImage(buffer, -dx, 0);
      const x = buffer.width - dx;
      ctx.fillStyle = BACKGROUND;
      ctx.fillRect(x, 0, dx, buffer.height);
      const rowHeight = buffer.height / this.rows;
      for (let row = 0; row < this.rows; row++) {
        const fill = color(values[row], row);
        if (!fill) {
          continue;
        }
        const slot = this.bottomUp ? this.rows - 1 - row : row;
        const top = Math.round(slot * rowHeight);
        ctx.fillStyle = fill;
        ctx.fillRect(x, top, dx, Math.max(1, Math.round((slot + 1) * rowHeight) - top));
      }
      this.render();
    }

    render() {
      const dpr = window.devicePixelRatio || 1;
      const ctx = this.canvas.getContext("2d");
      const gutter = Math.round(GUTTER * dpr);
      ctx.fillStyle = "#121728";
      ctx.fillRect(0, 0, gutter, this.canvas.height);
      ctx.drawImage(this.buffer, gutter, 0);
      const rowHeight = this.canvas.height / this.rows;
      const fontPx = Math.min(12 * dpr, Math.max(8 * dpr, rowHeight * 0.85));
      ctx.font = `${fontPx}px system-ui, sans-serif`;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (const [row, text, highlight] of this.labels) {
        const y = this.bottomUp
          ? this.canvas.height - (row + 0.5) * rowHeight
          : (row + 0.5) * rowHeight;
        ctx.fillStyle = highlight ? "#ffb547" : "#8c93ab";
        const edge = fontPx * 0.7;
        ctx.fillText(text, gutter - 6 * dpr, Math.min(this.canvas.height - edge, Math.max(edge, y)));
      }
    }
  }

  function buildRasters() {
    const channels = model.channels;
    const inputLabels = [
      [0, "ch 0 · low"],
      [Math.floor(channels / 2), `ch ${Math.floor(channels / 2)}`],
      [channels - 1, `ch ${channels - 1} · high`],
    ];
    inputRaster = new Raster(ui.inputCanvas, channels, inputLabels, true);
    const words = model.vocabulary.length ? model.vocabulary : ["?"];
    outputRaster = new Raster(
      ui.outputCanvas,
      words.length,
      words.map((word, row) => [row, label(word), false]),
      false,
    );
  }

  function spikeColor(count, bins) {
    if (!count) {
      return null;
    }
    const rate = count / ((bins * model.binMs) / 10); // spikes per channel per 10 ms
    const a = 0.08 + 0.92 * Math.pow(Math.min(1, rate / 20), 0.8); // speech: ~7 per 10 ms
    return `rgba(255, 181, 71, ${a.toFixed(3)})`;
  }

  function onActivity(message) {
    const bins = Math.max(1, message.bins || 1);
    inputRaster.push(bins, message.input, (count) => spikeColor(count, bins));
    const output = message.output || [];
    let best = 0;
    for (let i = 1; i < output.length; i++) {
      if (output[i] > output[best]) {
        best = i;
      }
    }
    outputRaster.push(bins, output, (p, row) => {
      if (!(p > 0.02)) {
        return null;
      }
      const a = Math.min(1, 0.1 + p).toFixed(3);
      return row === best && p > 0.3 ? `rgba(255, 181, 71, ${a})` : `rgba(90, 209, 199, ${a})`;
    });
    outputRaster.labels.forEach((entry) => {
      entry[2] = entry[0] === best && output[best] > 0.3;
    });
    const drawn = message.input.reduce((sum, c) => sum + c, 0);
    ui.inputCanvas.dataset.spikes = String(Number(ui.inputCanvas.dataset.spikes) + drawn);
    ui.inputCanvas.dataset.bins = String(Number(ui.inputCanvas.dataset.bins) + bins);
    ui.outputCanvas.dataset.frames = String(Number(ui.outputCanvas.dataset.frames) + 1);
  }

  // ----- words --------------------------------------------------------------------------
  function showWord(word, confidence, final) {
    ui.partialWord.textContent = label(word);
    ui.partialWord.classList.toggle("final", final);
    ui.partialConfidence.textContent = `${Math.round(confidence * 100)}%`;
    ui.partialBar.style.width = `${Math.max(0, Math.min(100, confidence * 100))}%`;
  }

  function onPartial(message) {
    showWord(message.word, message.confidence, false);
  }

  function onFinal(message) {
    showWord(message.word, message.confidence, true);
    const item = document.createElement("li");
    const word = document.createElement("span");
    word.className = "word";
    word.textContent = label(message.word);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent =
      `${message.start.toFixed(2)}–${message.end.toFixed(2)} s · ` +
      `${Math.round(message.confidence * 100)}%`;
    item.append(word, meta);
    item.dataset.word = message.word;
    ui.transcript.append(item);
    ui.transcript.dataset.count = String(ui.transcript.children.length);
    for (const chip of ui.vocabulary.children) {
      chip.classList.toggle("hit", chip.dataset.word === message.word);
    }
  }

  // ----- microphone session --------------------------------------------------------------
  function streamUrl() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const query = apiKey ? `?api_key=${encodeURIComponent(apiKey)}` : "";
    return `${scheme}://${window.location.host}/v1/stream${query}`;
  }

  function decimationFor(rate) {
    let factor = 1;
    while (rate / factor > MAX_RATE) {
      factor++;
    }
    return factor;
  }

  // Average groups of `factor` samples (a crude anti-alias filter, only for > 48 kHz devices).
  function decimate(frame, factor) {
    if (factor === 1) {
      return frame;
    }
    const out = new Float32Array(Math.floor(frame.length / factor));
    for (let i = 0; i < out.length; i++) {
      let sum = 0;
      for (let j = 0; j < factor; j++) {
        sum += frame[i * factor + j];
      }
      out[i] = sum / factor;
    }
    return out;
  }

  function showLevel(frame) {
    let sum = 0;
    for (let i = 0; i < frame.length; i++) {
      sum += frame[i] * frame[i];
    }
    const rms = Math.sqrt(sum / Math.max(1, frame.length));
    const db = 20 * Math.log10(rms + 1e-9); // dBFS
    ui.level.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
  }

  async function start() {
    if (keyNeeded) {
      askForKey(ui.keyError.textContent);
      return;
    }
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setState(
        "error",
        "The microphone needs a secure page: open this demo via http://localhost or https://.",
      );
      return;
    }
    if (!window.AudioWorkletNode) {
      setState("error", "This browser has no AudioWorklet support.");
      return;
    }
    const current = { ws: null, context: null, media: null, node: null, error: null };
    session = current;
    setState("connecting", "Asking for the microphone…");
    try {
      current.media = await navigator.mediaDevices.getUserMedia({
        audio: {
          channelCount: 1,
          echoCancellation: false,
          noiseSuppression: false,
          autoGainControl: false,
        },
      });
      current.context = new AudioContext({ latencyHint: "interactive" });
      await current.context.audioWorklet.addModule("/static/audio-worklet.js");
      if (current.context.state === "suspended") {
        await current.context.resume();
      }
    } catch (error) {
      teardownAudio(current);
      session = null;
      const reason =
        error && error.name === "NotAllowedError"
          ? "Microphone permission was denied."
          : error && error.name === "NotFoundError"
            ? "No microphone found."
            : `Could not start the microphone: ${error && error.message ? error.message : error}`;
      setState("error", reason);
      return;
    }
    if (session !== current) {
      teardownAudio(current); // stopped while we were waiting for permission
      return;
    }
    const rate = current.context.sampleRate;
    const factor = decimationFor(rate);
    const sendRate = Math.round(rate / factor);
    if (sendRate < MIN_RATE) {
      teardownAudio(current);
      session = null;
      setState("error", `Unsupported audio rate ${rate} Hz.`);
      return;
    }

    const pending = [];
    const ws = new WebSocket(streamUrl());
    current.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      ws.send(
        JSON.stringify({
          config: { sample_rate: sendRate, format: "f32le", partials: true, activity: true },
        }),
      );
      for (const buffer of pending.splice(0)) {
        ws.send(buffer);
      }
      if (session === current) {
        setState("listening", `Listening at ${sendRate} Hz… say a command.`);
      }
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      switch (message.type) {
        case "activity":
          onActivity(message);
          break;
        case "partial":
          onPartial(message);
          break;
        case "final":
          onFinal(message);
          break;
        case "error":
          current.error = message.message;
          break;
        default:
          break;
      }
    };
    ws.onclose = (event) => {
      teardownAudio(current);
      if (session === current) {
        session = null;
      }
      if (current.error || (event.code !== 1000 && event.code !== 1005)) {
        setState("error", `Server: ${current.error || `connection closed (${event.code})`}`);
      } else {
        setState("idle", "Stopped. Press the microphone to listen again.");
      }
      ui.level.style.width = "0";
    };

    const source = current.context.createMediaStreamSource(current.media);
    const node = new AudioWorkletNode(current.context, "spikeear-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { chunkMs: CHUNK_MS },
    });
    current.node = node;
    node.port.onmessage = (event) => {
      const frame = decimate(event.data, factor);
      showLevel(frame);
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(frame.buffer);
      } else if (ws.readyState === WebSocket.CONNECTING) {
        pending.push(frame.buffer);
      }
    };
    const mute = current.context.createGain();
    mute.gain.value = 0; // the worklet must reach the destination to be pulled; stay silent
    source.connect(node).connect(mute).connect(current.context.destination);
    current.source = source;
  }

  function teardownAudio(current) {
    if (current.node) {
      current.node.port.postMessage("stop");
      current.node.port.onmessage = null;
      current.node.disconnect();
      current.node = null;
    }
    if (current.source) {
      current.source.disconnect();
      current.source = null;
    }
    if (current.media) {
      current.media.getTracks().forEach((track) => track.stop());
      current.media = null;
    }
    if (current.context) {
      current.context.close().catch(() => {});
      current.context = null;
    }
  }

  function stop() {
    const current = session;
    if (!current) {
      return;
    }
    teardownAudio(current);
    const ws = current.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      setState("stopping", "Finishing the last word…");
      ws.send(JSON.stringify({ eof: 1 })); // the server flushes, sends "eof" and closes
    } else {
      if (ws) {
        ws.close();
      }
      session = null;
      setState("idle", "Stopped.");
    }
  }

  // ----- start-up ---------------------------------------------------------------------------
  function askForKey(problem) {
    keyNeeded = true;
    ui.keyForm.hidden = false;
    ui.keyError.textContent = problem || "";
    setState("idle", "Enter the server's API key to start.");
    ui.keyInput.focus();
  }

  async function loadModel() {
    try {
      const response = await fetch("/v1/models", {
        headers: apiKey ? { "X-API-Key": apiKey } : {},
      });
      if (response.status === 401) {
        askForKey(apiKey ? "That key was not accepted." : "");
        return;
      }
      keyNeeded = false;
      ui.keyForm.hidden = true;
      const info = (await response.json()).models[0];
      model.vocabulary = info.vocabulary;
      model.channels = info.input_channels;
      model.binMs = info.bin_ms;
      model.name = info.name;
      ui.modelName.textContent = `model ${info.name} · ${info.parameters.toLocaleString()} parameters`;
      ui.vocabulary.replaceChildren(
        ...info.vocabulary
          .filter((word) => !(word in LABELS))
          .map((word) => {
            const chip = document.createElement("span");
            chip.textContent = word;
            chip.dataset.word = word;
            return chip;
          }),
      );
    } catch (error) {
      ui.modelName.textContent = "model information unavailable";
    }
    buildRasters();
  }

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = ui.keyInput.value.trim();
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    ui.keyError.textContent = "";
    loadModel();
  });
  ui.mic.addEventListener("click", () => {
    if (session) {
      stop();
    } else {
      start();
    }
  });
  ui.clear.addEventListener("click", () => {
    ui.transcript.replaceChildren();
    ui.transcript.dataset.count = "0";
  });
  window.addEventListener("resize", () => {
    if (inputRaster) {
      inputRaster.resize();
      outputRaster.resize();
    }
  });
  loadModel();
})();
