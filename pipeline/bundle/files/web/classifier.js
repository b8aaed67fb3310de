// The web bundle's embedding contract: an ES module other web apps import as it is.
//
//   import { createClassifier } from "./classifier.js";
//   const clf = await createClassifier();                 // options: {model, baseUrl, threads}
//   const { label, probabilities } = await clf.classify(canvasOrImgOrImageData);
//
// classify() preprocesses exactly as the Python runtime does (preprocess.mjs, the same bytes as the Node bundle's,
// with mean/std/layout/labels from preprocessing.json, which the bundle generated from the ONNX metadata), then
// runs the ONNX model with onnxruntime-web's WebAssembly build, loaded from ./ort/ (never from a CDN).
// Errors about an input (blank picture, unreadable image) are PreprocessError with a one-line message; a model or
// preprocessing contract the Python runtime refuses (std 0 or not a list, NaN scores, fewer labels than outputs, an
// unknown output_kind) throws ModelError, from createClassifier or classify, never a label.
import * as ort from "./ort/ort.wasm.min.mjs";
import { checkParams, ModelError, normalize, PreprocessError, scoreRows, toMnistPixels, toProbabilities } from "./preprocess.mjs";

export { ModelError, PreprocessError };

/** Images whose longer side exceeds this are downscaled (keeping the aspect) before preprocessing: a phone photo
 * of 4000x3000 would otherwise cost seconds of Lanczos work for a 20 px digit. */
export const MAX_SIDE = 1024;

function argmax(row) { // np.argmax: the first of equal maxima
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** ImageData, a canvas (HTML or Offscreen), an <img> or an ImageBitmap -> {width, height, data} (RGBA bytes). */
export function toImageData(image) {
  if (image && typeof image.width === "number" && image.data && typeof image.data.length === "number") return image;
  const isCanvas = (typeof HTMLCanvasElement !== "undefined" && image instanceof HTMLCanvasElement)
    || (typeof OffscreenCanvas !== "undefined" && image instanceof OffscreenCanvas);
  if (isCanvas) return image.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, image.width, image.height);
  const isImg = typeof HTMLImageElement !== "undefined" && image instanceof HTMLImageElement;
  const isBitmap = typeof ImageBitmap !== "undefined" && image instanceof ImageBitmap;
  if (!isImg && !isBitmap) throw new PreprocessError("classify() takes an ImageData, a canvas or an image element.");
  const w0 = isImg ? image.naturalWidth : image.width, h0 = isImg ? image.naturalHeight : image.height;
  if (isImg && (!image.complete || w0 === 0)) throw new PreprocessError("the image element has not loaded a picture (or it is not an image).");
  const k = Math.min(1, MAX_SIDE / Math.max(w0, h0));
  const w = Math.max(1, Math.round(w0 * k)), h = Math.max(1, Math.round(h0 * k));
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(image, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h);
}

/**
 * Load preprocessing.json and the model; resolve to {classify, classifyPixels, run, labels, params}.
 * options.model: a key of preprocessing.json's models (default: its first); options.baseUrl: where the bundle is
 * (default: this module's folder); options.threads: onnxruntime-web wasm threads (default 1: threads need a
 * cross-origin-isolated page).
 */
export async function createClassifier(options = {}) {
  const base = new URL(options.baseUrl ?? "./", import.meta.url);
  const resp = await fetch(new URL("preprocessing.json", base));
  if (!resp.ok) throw new Error(`preprocessing.json: HTTP ${resp.status}; serve the whole bundle folder.`);
  const cfg = await resp.json();
  const key = options.model ?? Object.keys(cfg.models)[0];
  if (!cfg?.models || !Object.hasOwn(cfg.models, key)) {
    throw new ModelError(`no model ${key}; this bundle has ${Object.keys(cfg?.models ?? {}).join(", ") || "none"}.`);
  }
  const params = checkParams(cfg.models[key], key); // before the model is fetched: Python's rules, Python's refusals
  ort.env.wasm.wasmPaths = new URL("ort/", base).href;
  ort.env.wasm.numThreads = options.threads ?? 1;
  const session = await ort.InferenceSession.create(new URL(params.file, base).href, { executionProviders: ["wasm"] });
  const dims = [1, ...params.input_shape];

  let queue = Promise.resolve(); // one session.run at a time: a session does not take concurrent runs

  /** The output tensor ({data, dims}) for a normalized input tensor of `batch` images, as the model gave it. */
  async function runTensor(tensor, batch) {
    const shape = [batch, ...dims.slice(1)];
    const next = queue.then(() => session.run({ [params.input_name]: new ort.Tensor("float32", tensor, shape) }));
    queue = next.catch(() => {});
    const out = await next;
    return params.output_name ? out[params.output_name] : Object.values(out)[0];
  }

  /** The model's raw scores (Float32Array, batch x classes), unchecked: NaN stays NaN, for a caller that counts it
   * (the validate stage's browser measurement). classify/classifyPixels check them before giving a label. */
  async function run(tensor, batch = 1) {
    return (await runTensor(tensor, batch)).data;
  }

  /** 784 MNIST-style grey levels (white digit on black, as toMnistPixels returns) -> the result; NaN scores, or
   * scores that are not one per label, throw ModelError (Classifier.predict's refusals). */
  async function classifyPixels(pixels) {
    const [logits] = scoreRows(await runTensor(normalize(pixels, params), 1), 1, params, params.file);
    const probabilities = toProbabilities(logits, params.output_kind, params.file); // softmax for logits only
    const best = argmax(logits);
    return { label: params.classes[best], index: best, probabilities, logits, pixels };
  }

  return {
    params,
    labels: params.classes,
    run,
    classifyPixels,
    /** ImageData | canvas | <img> -> {label, probabilities, ...}; probabilities[i] belongs to labels[i]. */
    async classify(image) {
      return classifyPixels(toMnistPixels(toImageData(image)));
    },
    release: () => session.release(),
  };
}
