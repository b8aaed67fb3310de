// The validate stage's measurement in the browser (never shipped): for each model of preprocessing.json, the logits
// of every test image and the timed runs at each batch size, through classifier.js (the module apps embed) and
// preprocess.mjs's normalize (the JS preprocessing), posted to /result for Python to judge and summarize.
//
// bench.json: {models: [key], batches: [1, ...], warmup, rounds, iterations, max_ms, chunk} (iterations and max_ms
// bound one burst of a round); test-images.u8: N x 784
// grey levels (MNIST's own bytes, white digit on black). Python computes every figure from what is posted; this page
// only runs and times (performance.now() around each awaited classifier run, the wall clock an app sees).
import { createClassifier } from "./classifier.js";
import { normalize } from "./preprocess.mjs";

async function tensorOf(pixels, params, count) { // `count` images from the start of `pixels`, repeated if needed
  const size = 784, out = new Float32Array(count * size), n = pixels.length / size;
  for (let i = 0; i < count; i++) out.set(normalize(pixels.subarray((i % n) * size, (i % n + 1) * size), params), i * size);
  return out;
}

async function logitsOf(clf, spec, pixels) { // every test image's logits, in chunks
  const n = pixels.length / 784, classes = clf.labels.length;
  const logits = new Array(n * classes);
  for (let i = 0; i < n; i += spec.chunk) {
    const count = Math.min(spec.chunk, n - i);
    const out = await clf.run(await tensorOf(pixels.subarray(i * 784, (i + count) * 784), clf.params, count), count);
    for (let j = 0; j < out.length; j++) logits[i * classes + j] = out[j];
  }
  return logits;
}

// All models timed together, as runtime/bench.py's interleave does in Python: after a warm-up, each of spec.rounds
// rounds gives every model, in an order rotated by one each round, a burst of at most spec.iterations runs or
// spec.max_ms (never fewer than 3) at each batch size. times[key][batch] is one array of milliseconds per round.
async function timeInRounds(clfs, spec, pixels) {
  const keys = Object.keys(clfs), feeds = {}, times = {};
  for (const key of keys) {
    feeds[key] = {};
    times[key] = {};
    for (const b of spec.batches) {
      feeds[key][b] = await tensorOf(pixels, clfs[key].params, b);
      times[key][b] = [];
      for (let i = 0; i < spec.warmup; i++) await clfs[key].run(feeds[key][b], b);
    }
  }
  const floor = Math.min(3, spec.iterations);
  for (let r = 0; r < spec.rounds; r++) {
    const order = keys.slice(r % keys.length).concat(keys.slice(0, r % keys.length));
    for (const b of spec.batches) {
      for (const key of order) {
        const t = [], start = performance.now();
        while (t.length < spec.iterations && (t.length < floor || performance.now() - start < spec.max_ms)) {
          const t0 = performance.now();
          await clfs[key].run(feeds[key][b], b);
          t.push(performance.now() - t0);
        }
        times[key][b].push(t);
      }
    }
  }
  return times;
}

async function measure(spec, pixels) {
  const clfs = {}, results = {};
  for (const key of spec.models) { // created once, kept until every round is done
    clfs[key] = await createClassifier({ model: key });
    results[key] = { logits: await logitsOf(clfs[key], spec, pixels) };
  }
  const times = await timeInRounds(clfs, spec, pixels);
  for (const key of spec.models) {
    results[key].times = times[key];
    await clfs[key].release();
  }
  return results;
}

async function post(body) { // the run's token came in the URL's fragment (never sent in a request): the server wants it
  await fetch("/result", { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Pipeline-Token": location.hash.slice(1) } });
}

try {
  const spec = await (await fetch("bench.json")).json();
  const pixels = new Uint8Array(await (await fetch("test-images.u8")).arrayBuffer());
  const results = await measure(spec, pixels);
  const adapter = navigator.gpu ? await Promise.race([navigator.gpu.requestAdapter().catch(() => null),
    new Promise((r) => setTimeout(() => r(null), 3000))]) : null;
  await post({ results, userAgent: navigator.userAgent, webgpu: Boolean(adapter), crossOriginIsolated });
} catch (e) {
  await post({ error: `${e && e.message ? e.message : e}` });
}
