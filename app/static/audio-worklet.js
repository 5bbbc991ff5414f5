// Microphone capture for the spikeear demo page.
//
// Runs on the audio rendering thread: mixes the input to mono and posts it to
// the page as Float32Array frames of `chunkMs` milliseconds at the
// AudioContext's sample rate (the page forwards them to /v1/stream as f32le).

class SpikeearCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options.processorOptions && options.processorOptions.chunkMs) || 40;
    this.size = Math.max(128, Math.round((sampleRate * chunkMs) / 1000));
    this.frame = new Float32Array(this.size);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") {
        this.running = false;
      }
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channels = input.length;
      const length = input[0].length;
      for (let i = 0; i < length; i++) {
        let sum = 0;
        for (let c = 0; c < channels; c++) {
          sum += input[c][i];
        }
        this.frame[this.filled++] = sum / channels;
        if (this.filled === this.size) {
          this.port.postMessage(this.frame, [this.frame.buffer]);
          this.frame = new Float32Array(this.size);
          this.filled = 0;
        }
      }
    }
    return this.running;
  }
}

registerProcessor("spikeear-capture", SpikeearCapture);
