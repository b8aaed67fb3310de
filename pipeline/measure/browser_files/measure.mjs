// The measurement itself, shared by the validate stage's page (bench.js, headless Chromium on the build host) and
// `pipeline demo --lan`'s "measure this device" page (phone.js, a phone's browser): for each model, the logits of
// every test image and the timed runs at each batch size, through classifier.js (the module apps embed) and
// preprocess.mjs's normalize (the JS preprocessing). Python computes every figure from what the pages post; this
// module only runs and times (performance.now() around each awaited classifier run, the wall clock an app sees).
//
// spec: {models: [key], batches: [1, ...], warmup, rounds, iterations, max_ms, chunk} (iterations and max_ms bound
// one burst of a round); pixels: N x 784 grey levels (MNIST's own bytes, white digit on black).
import { createClassifier } from "./classifier.js";
import { normalize } from "./preprocess.mjs";

export async function tensorOf(pixels, params, count) { // `count` images from the start of `pixels`, repeated if needed
  const size = 784, out = new Float32Array(count * size), n = pixels.length / size;
  for (let i = 0; i < count; i++) out.set(normalize(pixels.subarray((i % n) * size, (i % n + 1) * size), params), i * size);
  return out;
}

export async function logitsOf(clf, spec, pixels) { // every test image's logits, in chunks
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
export async function timeInRounds(clfs, spec, pixels) {
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

// Every model's test-set logits, then all of them timed in rounds: {key: {logits, times}}. `progress(text)` hears
// each step (a page shows it; the validate stage's page passes nothing).
export async function measure(spec, pixels, progress = () => {}) {
  const clfs = {}, results = {};
  for (const key of spec.models) { // created once, kept until every round is done
    progress(`${key}: classifying ${pixels.length / 784} test images`);
    clfs[key] = await createClassifier({ model: key });
    results[key] = { logits: await logitsOf(clfs[key], spec, pixels) };
  }
  progress(`timing ${spec.models.join(", ")} at batch ${spec.batches.join(", ")} in ${spec.rounds} rounds`);
  const times = await timeInRounds(clfs, spec, pixels);
  for (const key of spec.models) {
    results[key].times = times[key];
    await clfs[key].release();
  }
  return results;
}

// Whether the browser offers WebGPU (an adapter, not just navigator.gpu: headless Chromium has the object but no
// adapter), asked with a 3 s bound.
export async function hasWebGPU() {
  const adapter = navigator.gpu ? await Promise.race([navigator.gpu.requestAdapter().catch(() => null),
    new Promise((r) => setTimeout(() => r(null), 3000))]) : null;
  return Boolean(adapter);
}
