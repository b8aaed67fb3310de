// The validate stage's measurement in the browser (never shipped): measure.mjs runs each model of bench.json
// through classifier.js on the test images; this page posts what it got to /result for Python to judge.
//
// bench.json: measure.mjs's spec; test-images.u8: N x 784 grey levels (MNIST's own bytes, white digit on black).
import { hasWebGPU, measure } from "./measure.mjs";

async function post(body) { // the run's token came in the URL's fragment (never sent in a request): the server wants it
  await fetch("/result", { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Pipeline-Token": location.hash.slice(1) } });
}

try {
  const spec = await (await fetch("bench.json")).json();
  const pixels = new Uint8Array(await (await fetch("test-images.u8")).arrayBuffer());
  const results = await measure(spec, pixels);
  await post({ results, userAgent: navigator.userAgent, webgpu: await hasWebGPU(), crossOriginIsolated });
} catch (e) {
  await post({ error: `${e && e.message ? e.message : e}` });
}
