// asr serve's page: microphone -> AudioWorklet (16-bit frames of 100 ms) -> WebSocket /stream
// -> partial text rewritten in place, finals appended, latency shown. Protocol: docs/serve.md.
"use strict";

// The worklet runs on the audio thread; it is loaded from this string so that the page stays
// one HTML file and one script. It turns each 128-sample render quantum into 16-bit PCM and
// posts 100 ms frames (fewer, larger messages than one per quantum).
const WORKLET = `
class PcmFrames extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.frameSamples;
    this.frame = new Int16Array(this.size);
    this.filled = 0;
  }
  process(inputs) {
    const channel = inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const s = Math.max(-1, Math.min(1, channel[i]));
        this.frame[this.filled++] = s < 0 ? s * 32768 : s * 32767;
        if (this.filled === this.size) {
          this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
          this.frame = new Int16Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm-frames", PcmFrames);
`;

const button = document.getElementById("mic");
const statusText = document.getElementById("status");
const latencyText = document.getElementById("latency");
const finals = document.getElementById("finals");
const partial = document.getElementById("partial");

let session = null; // {media, context, node, socket, ended} while listening
const latencies = [];

function setStatus(text) {
  statusText.textContent = text;
}

function showLatency(seconds) {
  latencies.push(seconds * 1000);
  if (latencies.length > 50) latencies.shift();
  const sorted = [...latencies].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  latencyText.textContent = `latency ${Math.round(seconds * 1000)} ms (median ${Math.round(median)} ms)`;
}

async function openAudio() {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  // ask the browser to resample the microphone to 16 kHz; where it cannot (some browsers refuse
  // a media stream into a context of another rate), use its own rate: the server resamples
  let context = new AudioContext({ sampleRate: 16000 });
  let source;
  try {
    source = context.createMediaStreamSource(media);
  } catch (err) {
    await context.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(media);
  }
  const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
  await context.audioWorklet.addModule(url);
  const node = new AudioWorkletNode(context, "pcm-frames", {
    processorOptions: { frameSamples: Math.round(context.sampleRate / 10) },
  });
  source.connect(node);
  node.connect(context.destination); // pulls the graph; the node's output is silence
  return { media, context, node };
}

async function start() {
  button.disabled = true;
  setStatus("opening the microphone");
  let audio;
  try {
    audio = await openAudio();
  } catch (err) {
    setStatus(`no microphone: ${err.message}`);
    button.disabled = false;
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/stream`);
  socket.binaryType = "arraybuffer";
  session = audio;
  audio.socket = socket;
  let ready = false;
  const waiting = []; // frames captured before the server's "ready"
  audio.node.port.onmessage = (e) => {
    if (audio.ended) return; // frames still in flight after Stop
    if (ready && socket.readyState === WebSocket.OPEN) socket.send(e.data);
    else if (!ready) waiting.push(e.data);
  };
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "hello", sample_rate: audio.context.sampleRate, format: "pcm16" }));
  };
  socket.onmessage = (e) => {
    const event = JSON.parse(e.data);
    if (event.type === "ready") {
      ready = true;
      waiting.splice(0).forEach((frame) => socket.send(frame));
      setStatus("listening");
      button.textContent = "Stop";
      button.classList.add("on");
      button.disabled = false;
    } else if (event.type === "partial") {
      partial.textContent = event.text;
      showLatency(event.latency);
    } else if (event.type === "final") {
      partial.textContent = "";
      if (event.text) {
        const line = document.createElement("p");
        line.textContent = event.text;
        finals.appendChild(line);
      }
    }
  };
  socket.onclose = (e) => {
    closeAudio(audio);
    session = null;
    button.textContent = "Start listening";
    button.classList.remove("on");
    button.disabled = false;
    setStatus(e.code === 1000 ? "stopped" : `closed: ${e.code} ${e.reason || "connection lost"}`);
  };
}

function closeAudio(audio) {
  audio.media.getTracks().forEach((track) => track.stop());
  if (audio.context.state !== "closed") audio.context.close();
}

function stop() {
  // the server sends the last finals, then closes the socket (onclose above)
  button.disabled = true;
  setStatus("finishing");
  session.ended = true;
  closeAudio(session);
  if (session.socket.readyState === WebSocket.OPEN) session.socket.send(JSON.stringify({ type: "end" }));
}

button.addEventListener("click", () => (session ? stop() : start()));
