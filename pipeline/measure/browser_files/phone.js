// "Measure this device" (phone.html): measure.mjs, the validate stage's own measuring code, on every test image
// with phone.json's settings, then POST the logits and timings to `result` beside this page. The server put its
// token first in every path (/TOKEN/phone.html); the POST carries it in X-Pipeline-Token too. The server judges
// the figures and answers with its verdict, shown here. window.phone exposes the outcome for tests.
import { hasWebGPU, measure } from "./measure.mjs";

const $ = (id) => document.getElementById(id);
const token = location.pathname.split("/")[1];
window.phone = { done: false, ok: null, status: null, answer: "" };

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function fetchOk(name) {
  const r = await fetch(name);
  if (!r.ok) throw new Error(`${name}: HTTP ${r.status}`);
  return r;
}

async function post(body) { // -> {ok, status, text}: the server's verdict, or why it refused (plain text)
  const r = await fetch("result", { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Pipeline-Token": token } });
  const raw = await r.text();
  const text = (r.headers.get("Content-Type") || "").startsWith("text/html")
    ? new DOMParser().parseFromString(raw, "text/html").body.textContent.trim() : raw;
  return { ok: r.ok, status: r.status, text };
}

$("measure").addEventListener("click", async () => {
  $("measure").disabled = true;
  $("verdict").textContent = "";
  let answer;
  try {
    const spec = await (await fetchOk("phone.json")).json();
    say("fetching the test images");
    const pixels = new Uint8Array(await (await fetchOk("test-images.u8")).arrayBuffer());
    const results = await measure(spec, pixels, (step) => say(step));
    say("sending the logits and timings");
    answer = await post({ results, userAgent: navigator.userAgent, webgpu: await hasWebGPU(), crossOriginIsolated });
  } catch (e) {
    const error = `${e && e.message ? e.message : e}`;
    answer = await post({ error }).catch(() => ({ ok: false, status: 0, text: error }));
  }
  say(answer.ok ? "done: recorded on the computer that served this page" : `not recorded (HTTP ${answer.status})`,
    !answer.ok);
  $("verdict").textContent = answer.text;
  $("verdict").className = answer.ok ? "" : "error";
  $("measure").disabled = false;
  Object.assign(window.phone, { done: true, ok: answer.ok, status: answer.status, answer: answer.text });
});
