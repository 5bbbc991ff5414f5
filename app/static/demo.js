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
//
// "Add a word" records three takes of a new word from the microphone (the same worklet),
// encodes each as 16-bit PCM WAV and posts them to /v1/words; custom words are listed
// (GET /v1/words), removable (DELETE /v1/words/{word}) and recognised like built-in ones.
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
  const TAKE_SECONDS = 1.5; // one take of a new word
  const TAKES = 3; // takes per enrolled word

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
    wordForm: $("word-form"),
    wordInput: $("word-input"),
    record: $("record"),
    takeCountdown: $("take-countdown"),
    takeLevel: $("take-level"),
    takes: $("takes"),
    enroll: $("enroll"),
    wordMessage: $("word-message"),
    customWords: $("custom-words"),
  };

  // customWords: [{word, examples}] from GET /v1/words (examples null until it answers)
  const model = { vocabulary: [], customWords: [], channels: 64, binMs: 10, name: "" };
  const adding = { takes: [], recording: null, posting: false }; // the "Add a word" panel
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

  function showLevel(meter, frame) {
    let sum = 0;
    for (let i = 0; i < frame.length; i++) {
      sum += frame[i] * frame[i];
    }
    const rms = Math.sqrt(sum / Math.max(1, frame.length));
    const db = 20 * Math.log10(rms + 1e-9); // dBFS
    meter.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
  }

  // Why this browser cannot capture the microphone, or "" when it can.
  function microphoneProblem() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return "The microphone needs a secure page: open this demo via http://localhost or https://.";
    }
    if (!window.AudioWorkletNode) {
      return "This browser has no AudioWorklet support.";
    }
    return "";
  }

  // Open the microphone and load the capture worklet into `capture` (closed again by
  // teardownAudio); sets capture.rate, the rate of the frames startCapture delivers.
  // Fails with an Error whose message is for the user.
  async function openMicrophone(capture) {
    try {
      capture.media = await navigator.mediaDevices.getUserMedia({
        audio: {
          channelCount: 1,
          echoCancellation: false,
          noiseSuppression: false,
          autoGainControl: false,
        },
      });
      capture.context = new AudioContext({ latencyHint: "interactive" });
      await capture.context.audioWorklet.addModule("/static/audio-worklet.js");
      if (capture.context.state === "suspended") {
        await capture.context.resume();
      }
    } catch (error) {
      teardownAudio(capture);
      throw new Error(
        error && error.name === "NotAllowedError"
          ? "Microphone permission was denied."
          : error && error.name === "NotFoundError"
            ? "No microphone found."
            : `Could not start the microphone: ${error && error.message ? error.message : error}`,
      );
    }
    const rate = capture.context.sampleRate;
    capture.factor = decimationFor(rate);
    capture.rate = Math.round(rate / capture.factor);
    if (capture.rate < MIN_RATE) {
      teardownAudio(capture);
      throw new Error(`Unsupported audio rate ${rate} Hz.`);
    }
  }

  // Run the worklet: onFrame(Float32Array) every CHUNK_MS, mono at capture.rate.
  function startCapture(capture, onFrame) {
    const source = capture.context.createMediaStreamSource(capture.media);
    const node = new AudioWorkletNode(capture.context, "spikeear-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { chunkMs: CHUNK_MS },
    });
    capture.node = node;
    node.port.onmessage = (event) => onFrame(decimate(event.data, capture.factor));
    const mute = capture.context.createGain();
    mute.gain.value = 0; // the worklet must reach the destination to be pulled; stay silent
    source.connect(node).connect(mute).connect(capture.context.destination);
    capture.source = source;
  }

  async function start() {
    if (keyNeeded) {
      askForKey(ui.keyError.textContent);
      return;
    }
    const problem = microphoneProblem();
    if (problem) {
      setState("error", problem);
      return;
    }
    const current = { ws: null, context: null, media: null, node: null, error: null };
    session = current;
    setState("connecting", "Asking for the microphone…");
    try {
      await openMicrophone(current);
    } catch (error) {
      session = null;
      setState("error", error.message);
      return;
    }
    if (session !== current) {
      teardownAudio(current); // stopped while we were waiting for permission
      return;
    }
    const sendRate = current.rate;

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

    startCapture(current, (frame) => {
      showLevel(ui.level, frame);
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(frame.buffer);
      } else if (ws.readyState === WebSocket.CONNECTING) {
        pending.push(frame.buffer);
      }
    });
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
      model.customWords = (info.custom_words || []).map((word) => ({ word, examples: null }));
      showVocabulary();
      showCustomWords();
      refreshWords();
    } catch (error) {
      ui.modelName.textContent = "model information unavailable";
    }
    buildRasters();
  }

  // The words the page knows: the model's, then the custom ones (marked).
  function showVocabulary() {
    const chip = (word, custom) => {
      const element = document.createElement("span");
      element.textContent = word;
      element.dataset.word = word;
      if (custom) {
        element.className = "custom";
        element.title = "custom word";
        const note = document.createElement("span");
        note.className = "visually-hidden";
        note.textContent = " (custom word)";
        element.append(note);
      }
      return element;
    };
    ui.vocabulary.replaceChildren(
      ...model.vocabulary.filter((word) => !(word in LABELS)).map((word) => chip(word, false)),
      ...model.customWords.map(({ word }) => chip(word, true)),
    );
  }

  // ----- "Add a word": takes, enrollment, the custom word list ------------------------------
  function keyHeaders() {
    return apiKey ? { "X-API-Key": apiKey } : {};
  }

  function wordMessage(text, error) {
    ui.wordMessage.textContent = text;
    ui.wordMessage.dataset.kind = error ? "error" : "info";
  }

  // The server's {"error": ...} message of a refused request, else its status.
  async function refusal(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") {
        return body.error;
      }
    } catch {
      // not JSON
    }
    return `The server refused it (HTTP ${response.status}).`;
  }

  async function refreshWords() {
    try {
      const response = await fetch("/v1/words", { headers: keyHeaders() });
      const words = response.status === 200 ? (await response.json()).words : null;
      if (!Array.isArray(words)) {
        return;
      }
      model.customWords = words.map(({ word, examples }) => ({ word, examples }));
    } catch {
      return; // the list keeps what /v1/models said
    }
    showVocabulary();
    showCustomWords();
  }

  function showCustomWords() {
    ui.customWords.replaceChildren(
      ...model.customWords.map(({ word, examples }) => {
        const item = document.createElement("li");
        item.dataset.word = word;
        const name = document.createElement("span");
        name.className = "word";
        name.textContent = word;
        item.append(name);
        if (examples) {
          const meta = document.createElement("span");
          meta.className = "meta";
          meta.textContent = `${examples} example${examples === 1 ? "" : "s"}`;
          item.append(meta);
        }
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "link";
        remove.textContent = "remove";
        remove.setAttribute("aria-label", `Remove the word ${word}`);
        remove.addEventListener("click", () => removeWord(word));
        item.append(remove);
        return item;
      }),
    );
  }

  async function removeWord(word) {
    try {
      const response = await fetch(`/v1/words/${encodeURIComponent(word)}`, {
        method: "DELETE",
        headers: keyHeaders(),
      });
      if (response.status === 204 || response.status === 404) {
        wordMessage(`“${word}” removed.`);
      } else {
        wordMessage(await refusal(response), true);
      }
    } catch (error) {
      wordMessage(`Could not reach the server: ${error.message}`, true);
    }
    await refreshWords();
    ui.wordInput.focus();
  }

  // Mono samples in [-1, 1] as a 16-bit PCM WAV file.
  function wavBlob(samples, rate) {
    const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
    const ascii = (offset, text) => {
      for (let i = 0; i < text.length; i++) {
        view.setUint8(offset + i, text.charCodeAt(i));
      }
    };
    ascii(0, "RIFF");
    view.setUint32(4, 36 + samples.length * 2, true);
    ascii(8, "WAVE");
    ascii(12, "fmt ");
    view.setUint32(16, 16, true); // format chunk size
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true); // bytes per second
    view.setUint16(32, 2, true); // bytes per frame
    view.setUint16(34, 16, true); // bits per sample
    ascii(36, "data");
    view.setUint32(40, samples.length * 2, true);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(44 + i * 2, Math.round(s < 0 ? s * 0x8000 : s * 0x7fff), true);
    }
    return new Blob([view.buffer], { type: "audio/wav" });
  }

  function showTakes() {
    const count = adding.takes.length;
    ui.takes.replaceChildren(
      ...adding.takes.map((take, index) => {
        const item = document.createElement("li");
        const name = document.createElement("span");
        name.textContent = `Take ${index + 1}`;
        const play = document.createElement("button");
        play.type = "button";
        play.className = "link";
        play.textContent = "play";
        play.setAttribute("aria-label", `Play take ${index + 1}`);
        play.addEventListener("click", () => new Audio(take.url).play().catch(() => {}));
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "link";
        remove.textContent = "remove";
        remove.setAttribute("aria-label", `Remove take ${index + 1}`);
        remove.addEventListener("click", () => {
          URL.revokeObjectURL(take.url);
          adding.takes.splice(adding.takes.indexOf(take), 1);
          showTakes();
          ui.record.focus();
        });
        item.append(name, play, remove);
        return item;
      }),
    );
    ui.takes.dataset.count = String(count);
    const busy = Boolean(adding.recording) || adding.posting;
    ui.record.disabled = busy || count >= TAKES;
    ui.record.textContent =
      count >= TAKES ? `${TAKES} takes recorded` : `Record take ${count + 1} of ${TAKES}`;
    ui.enroll.disabled = busy || count !== TAKES || !ui.wordInput.value.trim();
  }

  async function recordTake() {
    if (adding.recording || adding.takes.length >= TAKES) {
      return;
    }
    const problem = microphoneProblem();
    if (problem) {
      wordMessage(problem, true);
      return;
    }
    const capture = { context: null, media: null, source: null, node: null };
    adding.recording = capture;
    wordMessage("");
    ui.takeCountdown.textContent = "Asking for the microphone…";
    showTakes();
    try {
      await openMicrophone(capture);
      const total = Math.round(TAKE_SECONDS * capture.rate);
      const samples = new Float32Array(total);
      let filled = 0;
      ui.takeCountdown.textContent = `Say the word now… ${TAKE_SECONDS.toFixed(1)} s`;
      await new Promise((resolve) => {
        const watchdog = setTimeout(resolve, TAKE_SECONDS * 1000 + 3000); // a stalled device
        startCapture(capture, (frame) => {
          const used = Math.min(frame.length, total - filled);
          samples.set(frame.subarray(0, used), filled);
          filled += used;
          showLevel(ui.takeLevel, frame);
          const left = (total - filled) / capture.rate;
          ui.takeCountdown.textContent = `Say the word now… ${left.toFixed(1)} s`;
          if (filled >= total) {
            clearTimeout(watchdog);
            resolve();
          }
        });
      });
      if (filled < total / 2) {
        throw new Error("The microphone delivered no audio.");
      }
      const wav = wavBlob(samples.subarray(0, filled), capture.rate);
      adding.takes.push({ wav, url: URL.createObjectURL(wav) });
      ui.takeCountdown.textContent = `Take ${adding.takes.length} recorded.`;
    } catch (error) {
      ui.takeCountdown.textContent = "";
      wordMessage(error.message, true);
    } finally {
      teardownAudio(capture);
      adding.recording = null;
      ui.takeLevel.style.width = "0";
      showTakes();
    }
    if (ui.record.disabled) {
      (ui.enroll.disabled ? ui.wordInput : ui.enroll).focus();
    }
  }

  async function enrollWord() {
    const word = ui.wordInput.value.trim();
    if (!word || adding.takes.length !== TAKES || adding.recording || adding.posting) {
      return;
    }
    const form = new FormData();
    form.append("word", word);
    adding.takes.forEach((take, index) => form.append("files", take.wav, `take${index + 1}.wav`));
    adding.posting = true;
    showTakes();
    wordMessage(`Enrolling “${word}”…`);
    try {
      const response = await fetch("/v1/words", {
        method: "POST",
        headers: keyHeaders(),
        body: form,
      });
      if (response.status !== 201) {
        wordMessage(await refusal(response), true);
        return;
      }
      const enrolled = await response.json();
      adding.takes.forEach((take) => URL.revokeObjectURL(take.url));
      adding.takes = [];
      ui.wordInput.value = "";
      ui.takeCountdown.textContent = "";
      wordMessage(`“${enrolled.word}” learned from ${enrolled.examples} takes: say it now.`);
      ui.wordInput.focus();
      await refreshWords();
    } catch (error) {
      wordMessage(`Could not reach the server: ${error.message}`, true);
    } finally {
      adding.posting = false;
      showTakes();
    }
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
  ui.record.addEventListener("click", recordTake);
  ui.wordInput.addEventListener("input", showTakes);
  ui.wordForm.addEventListener("submit", (event) => {
    event.preventDefault();
    enrollWord();
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
  showTakes();
  loadModel();
})();
