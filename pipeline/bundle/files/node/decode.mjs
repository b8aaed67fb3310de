// Image files -> {width, height, data: RGBA bytes}, what preprocess.mjs takes (the same shape as ImageData).
//
// Pure-JS decoders (pngjs, jpeg-js: no native code, no install scripts), chosen by the file's first bytes,
// not its name. The size is checked from the header before decoding, as runtime.preprocess.load_image does.
// Not done here, unlike Pillow: EXIF orientation (phone photos arrive rotated), GIF, BMP, TIFF, WebP.
import { readFileSync, statSync } from "node:fs";
import jpeg from "jpeg-js";
import pngjs from "pngjs";

import { MAX_PIXELS, PreprocessError } from "./preprocess.mjs";

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Read and decode one PNG or JPEG file; every problem is a PreprocessError naming the file. */
export function readImage(path) {
  let buf;
  try {
    if (!statSync(path).isFile()) throw new PreprocessError(`${path} is not a file.`);
    buf = readFileSync(path);
  } catch (e) {
    if (e instanceof PreprocessError) throw e;
    throw new PreprocessError(e.code === "ENOENT" ? `${path} does not exist.` : `${path} cannot be read (${e.code ?? e.message}).`);
  }
  return decodeImage(buf, path);
}

export function decodeImage(buf, name = "image") {
  try {
    if (buf.length >= 24 && buf.subarray(0, 8).equals(PNG_MAGIC)) {
      const w = buf.readUInt32BE(16), h = buf.readUInt32BE(20); // IHDR, always the first chunk
      if (w * h > MAX_PIXELS) throw new PreprocessError(`${name} is ${w}x${h} pixels, over the ${MAX_PIXELS}-pixel limit; downscale it first.`);
      const png = pngjs.PNG.sync.read(buf); // palette, grey, 16-bit and alpha PNGs all come out as 8-bit RGBA
      return { width: png.width, height: png.height, data: png.data };
    }
    if (buf.length >= 3 && buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff) {
      const info = jpegInfo(buf);
      const ycc = info?.components === 3 && !info.adobe; // a JFIF colour JPEG: convert YCbCr ourselves, as libjpeg does
      const img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: true, colorTransform: ycc ? false : undefined,
                                     maxResolutionInMP: MAX_PIXELS / 1e6, maxMemoryUsageInMB: 1024 });
      if (ycc) yccToRgb(img.data);
      return { width: img.width, height: img.height, data: img.data };
    }
  } catch (e) {
    if (e instanceof PreprocessError) throw e;
    throw new PreprocessError(`${name} is truncated or corrupted (${String(e.message ?? e).split("\n")[0]}).`);
  }
  throw new PreprocessError(`${name} is not a PNG or JPEG image.`);
}

/** The JPEG's component count (from its SOF marker) and whether it has an Adobe APP14 marker (null if unreadable). */
function jpegInfo(buf) {
  let i = 2, adobe = false;
  while (i + 9 < buf.length) {
    if (buf[i] !== 0xff) return null;
    const m = buf[i + 1];
    if (m === 0xff) { i++; continue; } // fill byte
    if (m === 0xee && buf.toString("latin1", i + 4, i + 9) === "Adobe") adobe = true;
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) return { components: buf[i + 9], adobe };
    i += 2 + buf.readUInt16BE(i + 2);
  }
  return null;
}

/** YCbCr -> RGB in place with libjpeg's fixed-point tables (jdcolor.c: SCALEBITS 16, rounded), which Pillow's
 * decoder uses; jpeg-js's own conversion truncates floats, one grey level off on about half the pixels, which the
 * contrast stretch of a pale picture then doubles. */
function yccToRgb(data) {
  const FIX = (x) => Math.floor(x * 65536 + 0.5), HALF = 1 << 15;
  const clamp = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);
  for (let p = 0; p < data.length; p += 4) {
    const y = data[p], cb = data[p + 1] - 128, cr = data[p + 2] - 128;
    data[p] = clamp(y + ((FIX(1.402) * cr + HALF) >> 16));
    data[p + 1] = clamp(y + ((-FIX(0.34414) * cb + HALF - FIX(0.71414) * cr) >> 16));
    data[p + 2] = clamp(y + ((FIX(1.772) * cb + HALF) >> 16));
  }
}
