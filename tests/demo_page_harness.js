// Runs app/static/demo.js (argv[2]) in Node against a stub DOM and a fake server that
// wants the key "k1" (or none, with argv[3] "open"), clicks through the page, and prints
// what it saw as JSON; tests/test_network_access.py checks it.  No browser is needed.
const fs = require("fs");
const vm = require("vm");
const KEY = "k1";
const OPEN = process.argv[3] === "open";
function stub() {
  const target = function () {};
  return new Proxy(target, {
    get(t, prop) {
      if (prop === "then") return undefined;  // not a promise
      if (prop === Symbol.toPrimitive) return () => 0;
      if (!(prop in t)) t[prop] = stub();
      return t[prop];
    },
    set(t, prop, value) { t[prop] = value; return true; },
    apply() { return stub(); },
    construct() { return stub(); },
  });
}
const listeners = {};
const elements = {};
function element(id) {
  if (!elements[id]) {
    const el = stub();
    el.hidden = id === "key-form";
    el.textContent = "";
    el.value = "";
    el.addEventListener = (type, handler) => { listeners[`${id}:${type}`] = handler; };
    elements[id] = el;
  }
  return elements[id];
}
const fetches = [];
const sockets = [];
const storage = new Map();
class FakeSocket {
  constructor(url) { this.url = url; this.readyState = 0; sockets.push(this); }
  send() {}
  close() {}
}
FakeSocket.OPEN = 1;
FakeSocket.CONNECTING = 0;
class FakeAudioContext {
  constructor() {
    this.sampleRate = 48000;
    this.state = "running";
    this.audioWorklet = { addModule: async () => {} };
    this.destination = stub();
  }
  createMediaStreamSource() { return stub(); }
  createGain() { return stub(); }
  close() { return Promise.resolve(); }
}
const window = {
  location: { protocol: "http:", host: "127.0.0.1:8000" },
  isSecureContext: true,
  devicePixelRatio: 1,
  addEventListener() {},
  AudioWorkletNode: class { constructor() { this.port = { postMessage() {} }; } disconnect() {} },
};
const context = {
  window,
  document: { body: stub(), getElementById: element, createElement: () => stub() },
  navigator: { mediaDevices: { getUserMedia: async () => stub() } },
  sessionStorage: {
    getItem: (k) => (storage.has(k) ? storage.get(k) : null),
    setItem: (k, v) => storage.set(k, String(v)),
  },
  fetch: async (url, options) => {
    const key = ((options || {}).headers || {})["X-API-Key"];
    fetches.push({ url, key: key || null });
    if (!OPEN && key !== KEY) return { status: 401, json: async () => ({ error: "key" }) };
    const models = [{ vocabulary: ["yes", "no"], input_channels: 64, bin_ms: 10,
                      name: "fake", parameters: 1 }];
    return { status: 200, json: async () => ({ models }) };
  },
  WebSocket: FakeSocket,
  AudioContext: FakeAudioContext,
  AudioWorkletNode: window.AudioWorkletNode,
  console,
  Math, JSON, Promise, Float32Array, Int16Array, Uint8Array, Array, Object, String, Number,
  setTimeout, clearTimeout, encodeURIComponent,
};
const tick = () => new Promise((resolve) => setTimeout(resolve, 20));
(async () => {
  vm.runInNewContext(fs.readFileSync(process.argv[2], "utf8"), context);
  await tick();
  const report = {};
  report.asked = !elements["key-form"].hidden;
  report.firstFetchKey = fetches[0].key;
  if (OPEN) {
    await listeners["mic:click"]();
    await tick();
    report.socketUrl = sockets.length ? sockets[0].url : null;
    console.log(JSON.stringify(report));
    return;
  }
  await listeners["mic:click"]();  // the microphone before a key: asks again, no socket
  report.socketsWithoutKey = sockets.length;
  elements["api-key"].value = "wrong";
  listeners["key-form:submit"]({ preventDefault() {} });
  await tick();
  report.wrongKeyMessage = elements["key-error"].textContent;
  report.stillAsked = !elements["key-form"].hidden;
  elements["api-key"].value = " " + KEY + " ";
  listeners["key-form:submit"]({ preventDefault() {} });
  await tick();
  report.lastFetchKey = fetches[fetches.length - 1].key;
  report.formHidden = elements["key-form"].hidden;
  report.stored = storage.get("spikeear-api-key");
  await listeners["mic:click"]();
  await tick();
  report.socketUrl = sockets.length ? sockets[0].url : null;
  console.log(JSON.stringify(report));
})().catch((error) => { console.error(error); process.exit(1); });
