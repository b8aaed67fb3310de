#!/usr/bin/env node
// Classify digit images with the bundled ONNX model in Node (onnxruntime-node), preprocessing them exactly as the
// Python runtime does (preprocess.mjs mirrors runtime/preprocess.py).
//
//   node classify.mjs IMG...      label and probability per PNG/JPEG file
//   node classify.mjs --golden    the bundled golden set: JS preprocessing within 1 grey level (1/255) of Python's
//                                 on every image, the same labels, and logits within the stated tolerance
//   node classify.mjs --test-set  all 10,000 MNIST test images: the accuracy must equal the report's exactly
//   --model NAME                  one of preprocessing.json's models (default: its first)
//   --json                        the checks' results as one JSON object on stdout
// Exit status: 0 ok, 1 a check failed or an input or the model was refused (one line on stderr), 2 bad usage.
// Output: one tab-separated line per file (file, label, probability); a tab, newline, carriage return or backslash
// in a file name or label is written as \t, \n, \r, \\ (other control characters as \xHH), so no name forges a row.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { readImage } from "./decode.mjs";
import { checkParams, ModelError, normalize, PreprocessError, scoreRows, toMnistPixels, toProbabilities } from "./preprocess.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const FIELD = 28;
/** The golden check's tolerances: fixed here (pipeline/bundle_js.py's PIXEL_TOLERANCE and LOGITS_ATOL, which a test
 * holds equal), never read from golden.json, the very file being checked (an edited file could loosen them). */
const PIXEL_TOLERANCE = 1;
const LOGITS_ATOL = 1e-4;
const ESCAPES = { "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" };

/** One field of the tab-separated output, escaped so a file name cannot forge a row or a column. */
export function tsvField(text) {
  return String(text).replace(/[\\\x00-\x1f\x7f]/g,
    (ch) => ESCAPES[ch] ?? `\\x${ch.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

// a closed stdout (`| head -1`) ends the command quietly, as a finished one: no stack, nothing more written
process.stdout.on("error", (e) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

class UsageError extends Error {}

function argmax(row) { // np.argmax: the first of equal maxima
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function parseArgs(argv) {
  const opts = { files: [], golden: false, testSet: false, json: false, model: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--golden") opts.golden = true;
    else if (a === "--test-set") opts.testSet = true;
    else if (a === "--json") opts.json = true;
    else if (a === "--model") opts.model = argv[++i];
    else if (a === "-h" || a === "--help") { opts.help = true; }
    else if (a.startsWith("--")) throw new UsageError(`unknown option ${a}; use IMG..., --golden, --test-set, --model NAME, --json.`);
    else opts.files.push(a);
  }
  if (!opts.help && !opts.golden && !opts.testSet && opts.files.length === 0) throw new UsageError("give image files, --golden or --test-set.");
  return opts;
}

/** preprocessing.json: what the bundle generated from each ONNX file's metadata_props (runtime/metadata.py). */
function loadConfig() {
  const cfg = JSON.parse(readFileSync(join(HERE, "preprocessing.json"), "utf8"));
  for (const [name, m] of Object.entries(cfg.models)) {
    const missing = ["input_name", "output_name", "input_shape", "pixel_scale", "mean", "std", "classes"].filter((k) => m[k] == null);
    if (missing.length) throw new PreprocessError(`model ${name} lacks the metadata ${missing.join(", ")}; rebuild the bundle from a pipeline export.`);
  }
  return cfg;
}

async function openModel(cfg, name) {
  const key = name ?? Object.keys(cfg.models)[0];
  if (!Object.hasOwn(cfg.models, key)) throw new UsageError(`no model ${key}; this bundle has ${Object.keys(cfg.models).join(", ")}.`);
  const params = checkParams(cfg.models[key], key); // the rules Python's Classifier applies: std 0, a string, NaN...
  let ort;
  try {
    ort = (await import("onnxruntime-node")).default;
  } catch (e) {
    throw new PreprocessError(`onnxruntime-node is not installed: run \`npm install --ignore-scripts\` in ${HERE} (${e.code ?? e.message}).`);
  }
  const session = await ort.InferenceSession.create(join(HERE, params.file));
  /** scores for n normalized images (Float32Array of n*784) -> rows: [n, classes] and finite, or ModelError */
  const run = async (x, n) => {
    const out = await session.run({ [params.input_name]: new ort.Tensor("float32", x, [n, 1, FIELD, FIELD]) });
    return scoreRows(out[params.output_name], n, params, params.file);
  };
  return { key, params, run };
}

async function classifyFiles(model, files) {
  const images = files.map((f) => {
    try {
      return toMnistPixels(readImage(f));
    } catch (e) {
      if (e instanceof PreprocessError && !e.message.startsWith(f)) throw new PreprocessError(`${f}: ${e.message}`);
      throw e;
    }
  }); // every file is read before any inference, so a bad one stops the run before output starts
  const lines = [];
  for (let i = 0; i < files.length; i++) { // ...and every file is classified before the first line, as predict does
    const [scores] = await model.run(normalize(images[i], model.params), 1);
    const p = toProbabilities(scores, model.params.output_kind, model.params.file), k = argmax(scores);
    lines.push([files[i], model.params.classes[k], p[k].toFixed(4)].map(tsvField).join("\t"));
  }
  for (const line of lines) console.log(line);
  return true;
}

/** The golden check: JS preprocessing vs Python's pixels, labels, and the model's logits on Python's pixels. */
async function checkGolden(model, report) {
  const golden = JSON.parse(readFileSync(join(HERE, "golden", "golden.json"), "utf8"));
  const images = Array.isArray(golden?.images) ? golden.images : [];
  let maxPixel = 0, maxLogit = 0;
  const problems = [];
  if (images.length === 0) problems.push("golden.json holds no images, so nothing was checked");
  const c = model.params.classes.length;
  for (const [n, g] of images.entries()) {
    const name = typeof g?.file === "string" ? g.file : `entry ${n}`;
    if (typeof g?.file !== "string" || typeof g.label !== "string" || !Array.isArray(g.pixels) || g.pixels.length !== FIELD * FIELD
        || !g.pixels.every((v) => Number.isInteger(v) && v >= 0 && v <= 255) || !Array.isArray(g.logits) || g.logits.length !== c
        || !g.logits.every((v) => typeof v === "number" && Number.isFinite(v))) {
      problems.push(`${name}: malformed golden entry (needs file, label, ${FIELD * FIELD} pixels 0..255 and ${c} finite logits)`);
      continue;
    }
    const pixels = toMnistPixels(readImage(join(HERE, "golden", g.file)));
    let d = 0;
    for (let i = 0; i < pixels.length; i++) d = Math.max(d, Math.abs(pixels[i] - g.pixels[i]));
    maxPixel = Math.max(maxPixel, d);
    if (!(d <= PIXEL_TOLERANCE)) problems.push(`${g.file}: preprocessing differs from Python's by ${d} grey levels`);
    const [own] = await model.run(normalize(pixels, model.params), 1);
    const label = model.params.classes[argmax(own)];
    if (label !== g.label) problems.push(`${g.file}: label ${label}, Python's ${g.label}`);
    const [onPython] = await model.run(normalize(Uint8Array.from(g.pixels), model.params), 1);
    const l = Math.max(...onPython.map((v, i) => Math.abs(v - g.logits[i])));
    maxLogit = Math.max(maxLogit, l);
    if (!(l <= LOGITS_ATOL)) problems.push(`${g.file}: logits differ from Python's by ${l.toExponential(2)}`);
  }
  report.golden = { images: images.length, max_pixel_diff: maxPixel, pixel_tolerance: PIXEL_TOLERANCE,
                    max_logit_diff: maxLogit, logits_atol: LOGITS_ATOL, tolerances_from: "classify.mjs (fixed)", problems };
  console.error(`golden: ${images.length} images, max pixel diff ${maxPixel}/255 (tolerance ${PIXEL_TOLERANCE}), ` +
                `max |logit diff| ${maxLogit.toExponential(2)} (atol ${LOGITS_ATOL}), ${problems.length} problem(s)`);
  for (const p of problems) console.error(`  ${p}`);
  return problems.length === 0;
}

/** MNIST's IDX files as the bundle carries them (no numpy needed): raw test images, normalized, batches of 1000. */
async function checkTestSet(model, report) {
  const images = readFileSync(join(HERE, "data", "t10k-images-idx3-ubyte"));
  const labels = readFileSync(join(HERE, "data", "t10k-labels-idx1-ubyte"));
  if (images.readUInt32BE(0) !== 2051 || labels.readUInt32BE(0) !== 2049) throw new PreprocessError("data/ does not hold MNIST IDX files.");
  const n = images.readUInt32BE(4), size = FIELD * FIELD;
  let correct = 0;
  for (let start = 0; start < n; start += 1000) {
    const m = Math.min(1000, n - start);
    const x = new Float32Array(m * size);
    for (let i = 0; i < m; i++) x.set(normalize(images.subarray(16 + (start + i) * size, 16 + (start + i + 1) * size), model.params), i * size);
    const rows = await model.run(x, m);
    rows.forEach((row, i) => { if (argmax(row) === labels[8 + start + i]) correct++; });
  }
  const accuracy = correct / n, expected = model.params.accuracy;
  report.test_set = { model: model.key, images: n, correct, accuracy, report_accuracy: expected };
  const ok = accuracy === expected;
  console.error(`test set: ${model.key} ${correct}/${n} = ${(100 * accuracy).toFixed(2)} %, report ${(100 * expected).toFixed(2)} %: ` +
                (ok ? "equals report" : "DIFFERS from the report"));
  return ok;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help) {
    console.log(readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").slice(1, 12).map((l) => l.replace(/^\/\/ ?/, "")).join("\n"));
    return 0;
  }
  const model = await openModel(loadConfig(), opts.model);
  const report = {};
  let ok = true;
  if (opts.files.length) ok = (await classifyFiles(model, opts.files)) && ok;
  if (opts.golden) ok = (await checkGolden(model, report)) && ok;
  if (opts.testSet) ok = (await checkTestSet(model, report)) && ok;
  if (opts.json) console.log(JSON.stringify(report));
  return ok ? 0 : 1;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  if (e instanceof UsageError) { console.error(`usage: ${e.message}`); process.exitCode = 2; return; }
  if (e instanceof PreprocessError || e instanceof ModelError) { console.error(`error: ${e.message}`); process.exitCode = 1; return; }
  console.error(`error: ${e?.message ?? e}`); // onnxruntime's own errors (a broken model file) are one line too
  process.exitCode = 1;
});
