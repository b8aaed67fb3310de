// The validate stage's measurement in the browser (never shipped): for each model of preprocessing.json, the logits
// of every test image and the timed runs at each batch size, through classifier.js (the module apps embed) and
// preprocess.mjs's normalize (the JS preprocessing), posted to /result for Python to judge and summarize.
//
// bench.json: {models: [key], batches: [1, ...], warmup, iterations, max_ms, chunk}; test-images.u8: N x 784
// grey levels (MNIST's own bytes, white digit on black). Python computes every figure from what is posted; this page
// only runs and times (performance.now() around each awaited classifier run, the wall clock an app sees).
import { createClassifier } from "./classifier.js";
import { normalize } from "./preprocess.mjs";

async function tensorOf(pixels, params, count) { // `count` images from the start of `pixels`, repeated if needed
  const size = 784, out = new Float32Array(count * size), n = pixels.length / size;
  for (let i = 0; i < count; i++) out.set(normalize(pixels.subarray((i % n) * size, (i % n + 1) * size), params), i * size);
  return out;
}

async function measure(key, spec, pixels) {
  const clf = await createClassifier({ model: key });
  const n = pixels.length / 784, classes = clf.labels.length;
  const logits = new Array(n * classes);
  for (let i = 0; i < n; i += spec.chunk) {
    const count = Math.min(spec.chunk, n - i);
    const out = await clf.run(await tensorOf(pixels.subarray(i * 784, (i + count) * 784), clf.params, count), count);
    for (let j = 0; j < out.length; j++) logits[i * classes + j] = out[j];
  }
  const times = {};
  for (const b of spec.batches) {
    const feed = await tensorOf(pixels, clf.params, b);
    for (let i = 0; i < spec.warmup; i++) await clf.run(feed, b);
    const t = [], start = performance.now();
    while (t.length < spec.iterations && (t.length < 10 || performance.now() - start < spec.max_ms)) {
      const t0 = performance.now();
      await clf.run(feed, b);
      t.push(performance.now() - t0);
    }
    times[b] = t;
  }
  await clf.release();
  return { logits, times };
}

async function post(body) { // the run's token came in the URL's fragment (never sent in a request): the server wants it
  await fetch("/result", { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Pipeline-Token": location.hash.slice(1) } });
}

try {
  const spec = await (await fetch("bench.json")).json();
  const pixels = new Uint8Array(await (await fetch("test-images.u8")).arrayBuffer());
  const results = {};
  for (const key of spec.models) results[key] = await measure(key, spec, pixels);
  const adapter = navigator.gpu ? await Promise.race([navigator.gpu.requestAdapter().catch(() => null),
    new Promise((r) => setTimeout(() => r(null), 3000))]) : null;
  await post({ results, userAgent: navigator.userAgent, webgpu: Boolean(adapter), crossOriginIsolated });
} catch (e) {
  await post({ error: `${e && e.message ? e.message : e}` });
}
