// The JS twin of runtime/preprocess.py (to_mnist_array) and of Classifier._normalize (runtime/classifier.py).
//
// An ES module with no DOM and no dependencies, so Node and browsers run the very same bytes. It takes what
// an ImageData is, {width, height, data: RGBA bytes (Uint8ClampedArray or Uint8Array)}, and repeats the
// Python steps one by one, with the same arithmetic: Pillow's fixed-point grayscale and alpha compositing,
// numpy's float32 rounding, Pillow's antialiased Lanczos resampling, Python's round-half-to-even. Every step
// names its Python counterpart. The golden vectors in each JS bundle (golden/golden.json) check this file
// against Python: at most 1 grey level (1/255) per pixel and the same label.
//
// Why so literal: the commonest embedding bug is preprocessing that differs between the training code and the
// app; a "close enough" resize or a rounding that differs by half a pixel moves the digit and changes labels.

export const BOX = 20; // preprocess.BOX: the digit's longer side, as in MNIST
export const FIELD = 28; // preprocess.FIELD: output size
export const MIN_INK = 32; // preprocess.MIN_INK: grey levels above the paper for a pixel to count as ink
export const INK_FRACTION = 0.25; // preprocess.INK_FRACTION: bounding box threshold, fraction of the strongest ink
export const MAX_PIXELS = 40_000_000; // preprocess.MAX_PIXELS: larger images are refused

/** A user-facing problem with one input (runtime.errors.RuntimeInputError's twin): one line, no stack needed. */
export class PreprocessError extends Error {
  constructor(message) {
    super(message);
    this.name = "PreprocessError";
  }
}

const f32 = Math.fround;

/** Python's round() and numpy's rint(): halves go to the even neighbour (Math.round sends them up). */
export function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** numpy's pairwise summation (loops_utils.h, PW_BLOCKSIZE 128), with `round` applied after every addition:
 * Math.fround for a float32 array, the identity for float64. Used where Python sums an array. */
function pairwiseSum(a, lo, n, round) {
  if (n < 8) {
    let res = round(0);
    for (let i = 0; i < n; i++) res = round(res + a[lo + i]);
    return res;
  }
  if (n <= 128) {
    const r = [];
    for (let j = 0; j < 8; j++) r.push(round(a[lo + j]));
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] = round(r[j] + a[lo + i + j]);
    let res = round(round(round(r[0] + r[1]) + round(r[2] + r[3])) + round(round(r[4] + r[5]) + round(r[6] + r[7])));
    for (; i < n; i++) res = round(res + a[lo + i]);
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return round(pairwiseSum(a, lo, n2, round) + pairwiseSum(a, lo + n2, n - n2, round));
}

/** np.median of a float array (the mean of the two middle values when the count is even). */
function median(values) {
  const s = Float64Array.from(values).sort();
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** preprocess._grayscale for an RGBA image: Image.alpha_composite onto white paper, then convert("L").
 * Pillow's integer arithmetic (AlphaComposite.c with PRECISION_BITS 7; Convert.c's L24 luma
 * 19595 R + 38470 G + 7471 B, rounded), so the grey levels are the very same integers. Fully opaque
 * pixels come out unchanged, so RGB, grey and palette images (which the decoders expand to opaque RGBA)
 * get exactly Pillow's convert("L") too. */
function grayscale({ width, height, data }) {
  const gray = new Float32Array(width * height);
  for (let i = 0, p = 0; i < gray.length; i++, p += 4) {
    let r = data[p], g = data[p + 1], b = data[p + 2];
    const a = data[p + 3];
    if (a === 0) {
      r = g = b = 255; // the paper shows through
    } else if (a !== 255) {
      // paper (255, alpha 255) under the pixel: coef1 = a*128, coef2 = (255 - a)*128 in Pillow's terms
      const coef1 = a * 128, coef2 = (255 - a) * 128;
      const blend = (c) => {
        const t = c * coef1 + 255 * coef2 + (0x80 << 7);
        return (((t >>> 8) + t) >>> 8) >>> 7; // SHIFTFORDIV255, then drop the 7 precision bits
      };
      r = blend(r); g = blend(g); b = blend(b);
    }
    gray[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16;
  }
  return gray;
}

/** Pillow's precompute_coeffs (Resample.c) for the Lanczos filter (support 3, widened by the scale when
 * shrinking: that is the antialiasing): per output pixel, the first input index, the count, and the weights. */
function lanczosCoeffs(inSize, outSize) {
  const sinc = (x) => (x === 0 ? 1 : Math.sin(x * Math.PI) / (x * Math.PI));
  const lanczos = (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0);
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 3 * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = new Float64Array(Math.max(xmax, 0));
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = lanczos((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    if (ww !== 0) for (let x = 0; x < xmax; x++) k[x] /= ww;
    out.push({ xmin, k });
  }
  return out;
}

/** Image.fromarray(float32).resize((nw, nh), Image.LANCZOS): Pillow's two passes (horizontal first, each
 * only when that side changes), accumulated in double and stored as float32 (mode "F"). */
function resizeLanczos(src, w, h, nw, nh) {
  let cur = src, cw = w;
  if (nw !== w) {
    const cs = lanczosCoeffs(w, nw);
    const tmp = new Float32Array(nw * h);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < nw; xx++) {
        const { xmin, k } = cs[xx];
        let ss = 0;
        for (let x = 0; x < k.length; x++) ss += cur[y * cw + xmin + x] * k[x];
        tmp[y * nw + xx] = ss;
      }
    }
    cur = tmp; cw = nw;
  }
  if (nh !== h) {
    const cs = lanczosCoeffs(h, nh);
    const tmp = new Float32Array(cw * nh);
    for (let yy = 0; yy < nh; yy++) {
      const { xmin: ymin, k } = cs[yy];
      for (let x = 0; x < cw; x++) {
        let ss = 0;
        for (let y = 0; y < k.length; y++) ss += cur[(ymin + y) * cw + x] * k[y];
        tmp[yy * cw + x] = ss;
      }
    }
    cur = tmp;
  }
  return cur === src ? Float32Array.from(src) : cur;
}

/**
 * preprocess.to_mnist_array: an RGBA image of any size -> 784 grey levels (Uint8Array, row-major 28x28),
 * a white digit on black, MNIST-style. Throws PreprocessError ("no digit found: ...") like Python does.
 */
export function toMnistPixels(image) {
  const { width, height, data } = image ?? {};
  if (!Number.isInteger(width) || !Number.isInteger(height) || !data || data.length !== width * height * 4) {
    throw new PreprocessError("expected {width, height, data} with 4 bytes (RGBA) per pixel, as in ImageData.");
  }
  if (width === 0 || height === 0) throw new PreprocessError("no digit found: the image has no pixels.");
  if (width * height > MAX_PIXELS) {
    throw new PreprocessError(`the image is ${width}x${height} pixels, over the ${MAX_PIXELS}-pixel limit; downscale it first.`);
  }
  let gray = grayscale(image); // step 1
  // step 2: the border's median (rows 0 and -1, then columns 0 and -1, corners twice, as numpy concatenates them)
  const border = [];
  for (let x = 0; x < width; x++) border.push(gray[x]);
  for (let x = 0; x < width; x++) border.push(gray[(height - 1) * width + x]);
  for (let y = 0; y < height; y++) border.push(gray[y * width]);
  for (let y = 0; y < height; y++) border.push(gray[y * width + width - 1]);
  let paper = median(border);
  if (paper > 127) { // dark ink on light paper: invert (gray and border are whole numbers, so this is exact)
    for (let i = 0; i < gray.length; i++) gray[i] = 255 - gray[i];
    paper = 255 - paper;
  }
  // step 3: np.clip(gray - median, 0, None); the strongest ink becomes 255 (float32 in-place multiply)
  let peak = 0;
  for (let i = 0; i < gray.length; i++) {
    gray[i] = Math.max(gray[i] - paper, 0);
    if (gray[i] > peak) peak = gray[i];
  }
  if (peak < MIN_INK) throw new PreprocessError("no digit found: the image is blank (nothing stands out from its background).");
  const factor = f32(255 / peak);
  for (let i = 0; i < gray.length; i++) gray[i] = f32(gray[i] * factor);
  // step 4: crop to the bounding box of the pixels above 255 * INK_FRACTION
  const thr = 255 * INK_FRACTION;
  let y0 = height, y1 = -1, x0 = width, x1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (gray[y * width + x] > thr) {
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
      }
    }
  }
  const h = y1 - y0 + 1, w = x1 - x0 + 1;
  const crop = new Float32Array(h * w);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) crop[y * w + x] = gray[(y0 + y) * width + x0 + x];
  // step 5: the longer side becomes BOX (Python's round: half to even), Lanczos, clipped to 0..255
  const scale = BOX / Math.max(h, w);
  const nh = Math.max(1, roundHalfEven(h * scale)), nw = Math.max(1, roundHalfEven(w * scale));
  const small = resizeLanczos(crop, w, h, nw, nh);
  for (let i = 0; i < small.length; i++) small[i] = Math.min(Math.max(small[i], 0), 255);
  // step 6: centre of mass at (14, 14); numpy sums small in float32 and index * value in float64
  const total = pairwiseSum(small, 0, small.length, f32);
  let cy = (nh - 1) / 2, cx = (nw - 1) / 2;
  if (total > 0) {
    const wy = new Float64Array(small.length), wx = new Float64Array(small.length);
    for (let y = 0; y < nh; y++) for (let x = 0; x < nw; x++) { wy[y * nw + x] = y * small[y * nw + x]; wx[y * nw + x] = x * small[y * nw + x]; }
    cy = pairwiseSum(wy, 0, wy.length, (v) => v) / total;
    cx = pairwiseSum(wx, 0, wx.length, (v) => v) / total;
  }
  const top = Math.min(Math.max(roundHalfEven(FIELD / 2 - cy), 0), FIELD - nh);
  const left = Math.min(Math.max(roundHalfEven(FIELD / 2 - cx), 0), FIELD - nw);
  const out = new Uint8Array(FIELD * FIELD); // np.rint(canvas).astype(np.uint8)
  for (let y = 0; y < nh; y++) for (let x = 0; x < nw; x++) out[(top + y) * FIELD + left + x] = roundHalfEven(small[y * nw + x]);
  return out;
}

/**
 * Classifier._normalize: (pixels * pixel_scale - mean) / std in float32, one channel, NCHW ([1, 1, 28, 28]).
 * `params` is the bundle's preprocessing.json (generated from the ONNX metadata_props).
 */
export function normalize(pixels, params) {
  const { pixel_scale: scale, mean, std, input_shape: shape, layout } = params;
  if (layout !== "NCHW" || shape.length !== 3 || shape[0] !== 1 || shape[1] !== FIELD || shape[2] !== FIELD) {
    throw new PreprocessError(`this module makes 1x${FIELD}x${FIELD} NCHW inputs; the model takes ${JSON.stringify(shape)} ${layout}.`);
  }
  const s = f32(scale), m = f32(mean[0]), d = f32(std[0]);
  const x = new Float32Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) x[i] = f32(f32(f32(pixels[i] * s) - m) / d);
  return x;
}

/** runtime.classifier.softmax: stable softmax of one row of logits (max subtracted, in double). */
export function softmax(logits) {
  const mx = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - mx));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** A problem with the model or its preprocessing contract (runtime.errors.RuntimeInputError's twin, raised by
 * Classifier and predict for the same cases): the model must not be used, whatever the input. */
export class ModelError extends Error {
  constructor(message) {
    super(message);
    this.name = "ModelError";
  }
}

/** runtime.metadata.OUTPUT_KINDS: what the scores output holds; softmax is applied to logits only. */
export const OUTPUT_KINDS = ["logits", "probabilities", "log_probabilities"];
/** runtime.classifier.PROBABILITY_TOL: a row of probabilities sums to 1 within this, each in 0..1. */
export const PROBABILITY_TOL = 1e-2;

const show = (v) => { try { return JSON.stringify(v)?.slice(0, 80) ?? String(v); } catch { return String(v); } };
const finiteNumber = (v) => typeof v === "number" && Number.isFinite(v);

/**
 * One model's preprocessing.json entry, checked by Python's rules (runtime.metadata.number_list and label_list,
 * Classifier._configure): mean and std non-empty lists of finite numbers with 1 or C values, every std above 0,
 * pixel_scale a finite number above 0, classes a non-empty list of labels, a known output_kind (absent: logits).
 * Throws ModelError naming every problem; returns the entry with output_kind filled in.
 */
export function checkParams(params, key = "model") {
  const problems = [];
  if (params === null || typeof params !== "object" || Array.isArray(params)) throw new ModelError(`${key}: its preprocessing entry is ${show(params)}, not an object.`);
  const shape = params.input_shape;
  const channels = Array.isArray(shape) && shape.length === 3 && shape.every((d) => Number.isInteger(d) && d > 0) ? shape[0] : null;
  if (channels === null) problems.push(`input_shape must be 3 positive whole numbers (C, H, W), got ${show(shape)}`);
  for (const name of ["mean", "std"]) {
    const v = params[name];
    if (!Array.isArray(v) || v.length === 0 || !v.every(finiteNumber)) problems.push(`${name} must be a non-empty list of finite numbers, got ${show(v)}`);
    else if (channels !== null && v.length !== 1 && v.length !== channels) problems.push(`${name} has ${v.length} values but the model takes ${channels} channel(s)`);
    else if (name === "std" && v.some((x) => x <= 0)) problems.push(`std must be positive, got ${show(v)}`);
  }
  if (!finiteNumber(params.pixel_scale) || params.pixel_scale <= 0) problems.push(`pixel_scale must be a positive number, got ${show(params.pixel_scale)}`);
  const c = params.classes;
  if (!Array.isArray(c) || c.length === 0 || !c.every((x) => typeof x === "string" || finiteNumber(x))) problems.push(`classes must be a non-empty list of labels, got ${show(c)}`);
  const kind = params.output_kind ?? "logits";
  if (!OUTPUT_KINDS.includes(kind)) problems.push(`output_kind must be one of ${OUTPUT_KINDS.join(", ")}, got ${show(kind)}`);
  if (problems.length) throw new ModelError(`${key}: its preprocessing contract is refused (${problems.join("; ")}); rebuild the bundle from a pipeline export.`);
  return { ...params, classes: c.map(String), output_kind: kind };
}

/**
 * The scores of n images as rows (Classifier.predict's checks): the output must be [n, classes] and every score
 * finite, or ModelError: a label from NaN scores, or from a row cut to fit a shorter label list, is never given.
 * `output`: an onnxruntime Tensor ({data, dims}).
 */
export function scoreRows(output, n, params, file = "the model") {
  const c = params.classes.length, dims = Array.from(output?.dims ?? []);
  if (dims.length !== 2 || dims[0] !== n || dims[1] !== c) {
    throw new ModelError(`${file} returned scores of shape ${show(dims)} for ${n} image(s) but there are ${c} classes: the label list does not match the model's outputs.`);
  }
  const rows = [];
  let broken = 0;
  for (let i = 0; i < n; i++) {
    const row = Array.from(output.data.subarray(i * c, (i + 1) * c), Number);
    if (!row.every(Number.isFinite)) broken++;
    rows.push(row);
  }
  if (broken) throw new ModelError(`${file} returned NaN or infinite scores for ${broken} of ${n} image(s), so no label can be given: the model file is broken (its input was finite). Re-export it, or use another model.`);
  return rows;
}

/** runtime.classifier.to_probabilities: softmax of logits, exp of log-probabilities, probabilities as they are;
 * a row that is not what output_kind says throws ModelError. */
export function toProbabilities(row, kind, file = "the model") {
  if (kind === "logits") return softmax(row);
  if (!OUTPUT_KINDS.includes(kind)) throw new ModelError(`output_kind must be one of ${OUTPUT_KINDS.join(", ")}, got ${show(kind)}.`);
  const p = kind === "log_probabilities" ? row.map(Math.exp) : row.slice();
  const sum = p.reduce((a, b) => a + b, 0);
  if (Math.min(...p) < -PROBABILITY_TOL || Math.max(...p) > 1 + PROBABILITY_TOL || !(Math.abs(sum - 1) <= PROBABILITY_TOL)) {
    throw new ModelError(`${file} says its output holds ${kind.replace("_", "-")}, but they sum to ${sum.toPrecision(4)}: its output_kind metadata is wrong.`);
  }
  return p;
}

/** Image -> {pixels (28x28 grey levels), tensor (what the model sees)}. */
export function preprocess(image, params) {
  const pixels = toMnistPixels(image);
  return { pixels, tensor: normalize(pixels, params) };
}
