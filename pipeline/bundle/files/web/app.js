// The demo page: a drawing pad, an image upload, the top-3 labels and the batch-1 latency, all through
// classifier.js (the module other apps embed). window.demo exposes the state for tests.
import { createClassifier } from "./classifier.js";

const RUNS = 300; // timed batch-1 inferences (after WARMUP untimed ones)
const WARMUP = 20;
const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
let drawn = false, pending = Promise.resolve(), seq = 0, timer = null;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function show(result) {
  const order = result.probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  $("label").textContent = result.label;
  $("top3").replaceChildren(...order.map(([p, i]) => {
    const li = document.createElement("li");
    li.textContent = `${clf.labels[i]}: ${(100 * p).toFixed(1)} %`;
    return li;
  }));
}

function classifyNow(image) {
  pending = pending.then(async () => {
    try {
      show(await clf.classify(image));
      say("");
    } catch (e) {
      $("label").textContent = "";
      $("top3").replaceChildren();
      say(e.message, true);
    }
    $("label").dataset.seq = String(++seq);
  });
  return pending;
}

function percentile(sorted, q) { // numpy's default (linear) percentile
  const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

async function measure() {
  const pixels = new Uint8Array(784);
  for (let y = 6; y < 22; y++) pixels[y * 28 + 14] = 255; // a "1": the input's values do not change the work done
  for (let i = 0; i < WARMUP; i++) await clf.classifyPixels(pixels);
  const times = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    await clf.classifyPixels(pixels);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { backend: "wasm", runs: RUNS, p50_ms: percentile(times, 0.5), p99_ms: percentile(times, 0.99) };
}

const drawPad = () => {
  let last = null;
  const at = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  };
  const line = (a, b) => {
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 18;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...a);
    ctx.lineTo(...b);
    ctx.stroke();
    drawn = true;
  };
  pad.addEventListener("pointerdown", (e) => {
    pad.setPointerCapture(e.pointerId);
    last = at(e);
    line(last, last);
    clearTimeout(timer);
  });
  pad.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e);
    line(last, p);
    last = p;
  });
  const up = () => {
    if (!last) return;
    last = null;
    clearTimeout(timer); // classify once the person pauses, not after every stroke
    timer = setTimeout(() => classifyNow(pad), 250);
  };
  pad.addEventListener("pointerup", up);
  pad.addEventListener("pointercancel", up);
};

const clf = await createClassifier().catch((e) => { say(`cannot load the model: ${e.message}`, true); throw e; });
clearPad();
drawPad();
$("model").textContent = `${clf.params.variant} (${clf.params.file}), reported accuracy ${(100 * clf.params.accuracy).toFixed(2)} % on the MNIST test set; onnxruntime-web (wasm), all files served by this bundle.`;
$("clear").addEventListener("click", () => { clearPad(); $("label").textContent = ""; $("top3").replaceChildren(); say(""); });
$("classify").addEventListener("click", () => (drawn ? classifyNow(pad) : say("draw a digit first", true)));
$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  const img = new Image();
  const url = URL.createObjectURL(file);
  img.onload = () => { URL.revokeObjectURL(url); classifyNow(img); };
  img.onerror = () => { URL.revokeObjectURL(url); say(`${file.name} is not an image this browser can read.`, true); };
  img.src = url;
});
say("ready: draw a digit (dark on white) or upload an image.");
// navigator.gpu can exist without a usable GPU (headless Chromium with --disable-gpu has one): ask for an adapter
const adapter = navigator.gpu ? await Promise.race([navigator.gpu.requestAdapter().catch(() => null),
  new Promise((r) => setTimeout(() => r(null), 3000))]) : null;
$("webgpu").textContent = !navigator.gpu ? "WebGPU absent (navigator.gpu is missing in this browser): wasm only."
  : !adapter ? "WebGPU absent (navigator.gpu offers no adapter here): wasm only."
  : "WebGPU present; this bundle carries only onnxruntime-web's wasm build, so WebGPU was not measured.";
window.demo = {
  classifier: clf, latency: null, webgpu: Boolean(adapter),
  settled: async () => { await new Promise((r) => setTimeout(r, 300)); await pending; return seq; },
};
window.demo.latency = await measure();
const { p50_ms: p50, p99_ms: p99, runs } = window.demo.latency;
$("latency").textContent = `wasm, batch 1, ${runs} runs: p50 ${p50.toFixed(3)} ms, p99 ${p99.toFixed(3)} ms`;
