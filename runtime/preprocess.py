"""Turn an arbitrary picture into a 28x28 MNIST-style digit, the way MNIST itself was made.

NIST's digits were size-normalized to fit a 20x20 box (aspect ratio kept,
anti-aliased) and then centred by their centre of mass in a 28x28 field,
white ink on black (LeCun et al.). :func:`to_mnist_array` repeats that for a
Pillow image of any size and mode (RGB, RGBA, L, LA, P, 1, I, I;16, F, CMYK...):

1. grayscale: transparent areas are composited on white paper first; 16-bit
   images are scaled to 0..255 (Pillow's own conversion would clip them);
2. auto-invert: if the median of the border pixels is above 127 the picture
   is dark ink on light paper, so it is inverted (MNIST is white on black);
3. the border's median (the paper) becomes 0 and the strongest ink 255;
4. crop to the bounding box of the ink (pixels above 1/4 of the strongest);
   a picture with no ink (less than 32 grey levels above the paper) raises
   :class:`RuntimeInputError` ("no digit found");
5. resize (Lanczos) so the longer side is 20 px, keeping the aspect ratio;
6. paste into a black 28x28 canvas so the centre of mass sits at (14, 14),
   where it sits, on average, in MNIST itself.

:func:`load_image` reads a file (PNG, JPEG, BMP, GIF, TIFF, WebP...) and
converts it; every unreadable file raises :class:`RuntimeInputError` naming it.

Pillow is imported only inside these functions, so ``runtime`` itself needs
only numpy and onnxruntime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RuntimeInputError

MAX_PIXELS = 40_000_000  # refuse larger files before decoding them (decompression bombs)
BOX = 20  # the digit's longer side, as in MNIST
FIELD = 28  # output size
MIN_INK = 32  # grey levels above the paper for a pixel to count as a digit at all
INK_FRACTION = 0.25  # pixels above this fraction of the strongest ink define the bounding box


def _grayscale(image) -> np.ndarray:
    """Any Pillow mode -> (H, W) float32 in 0..255, transparency on white paper."""
    from PIL import Image

    mode = image.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(paper, rgba).convert("L"), dtype=np.float32)
    if mode.startswith("I;16"):  # 16-bit grayscale: full range 0..65535
        return np.asarray(image, dtype=np.float32) / 257.0
    if mode == "I":  # 32-bit integers; PNG/TIFF 16-bit data often arrives this way
        a = np.asarray(image, dtype=np.float32)
        return a / 257.0 if a.max(initial=0) > 255 else np.clip(a, 0, 255)
    if mode == "F":  # floats: 0..1 if they fit, else 0..255
        a = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return a * 255.0 if a.max(initial=0) <= 1.0 else np.clip(a, 0, 255)
    if mode == "LAB":  # Pillow cannot convert LAB to L, but its first channel is the lightness
        return np.asarray(image.getchannel(0), dtype=np.float32)
    try:
        return np.asarray(image.convert("L"), dtype=np.float32)
    except (ValueError, OSError) as e:
        raise RuntimeInputError(f"cannot convert a mode {mode} image to grayscale ({e}).") from None


def to_mnist_array(image) -> np.ndarray:
    """A Pillow image of any size and mode -> (28, 28) uint8, white digit on black, MNIST-style."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise RuntimeInputError(f"to_mnist_array takes a PIL image, got {type(image).__name__}.")
    if image.width == 0 or image.height == 0:
        raise RuntimeInputError("no digit found: the image has no pixels.")
    gray = _grayscale(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # dark ink on light paper
        gray, border = 255.0 - gray, 255.0 - border
    gray = np.clip(gray - np.median(border), 0, None)  # the paper becomes black
    peak = float(gray.max())
    if peak < MIN_INK:
        raise RuntimeInputError("no digit found: the image is blank (nothing stands out from its background).")
    gray *= 255.0 / peak  # the strongest ink becomes white, as in MNIST
    ys, xs = np.nonzero(gray > 255.0 * INK_FRACTION)
    crop = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32)).resize((nw, nh), Image.LANCZOS)
    small = np.clip(np.asarray(small, dtype=np.float32), 0, 255)  # Lanczos rings below 0 and above 255
    total = float(small.sum())
    if total > 0:
        iy, ix = np.indices(small.shape)
        cy, cx = float((iy * small).sum()) / total, float((ix * small).sum()) / total
    else:
        cy, cx = (nh - 1) / 2, (nw - 1) / 2
    top = min(max(int(round(FIELD / 2 - cy)), 0), FIELD - nh)
    left = min(max(int(round(FIELD / 2 - cx)), 0), FIELD - nw)
    canvas = np.zeros((FIELD, FIELD), dtype=np.float32)
    canvas[top : top + nh, left : left + nw] = small
    return np.rint(canvas).astype(np.uint8)


def load_image(path) -> np.ndarray:
    """Read an image file and convert it with :func:`to_mnist_array` -> (28, 28) uint8.

    A missing file, a file Pillow cannot identify, a truncated or corrupt one,
    one over ``MAX_PIXELS`` (checked from the header, before decoding) and a
    blank one all raise :class:`RuntimeInputError` naming the file. EXIF
    orientation (phone photos) is applied.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from .modelfile import check_path

    path = check_path(path, "image path")
    if not path.exists():
        raise RuntimeInputError(f"{path} does not exist.")
    if not path.is_file():
        raise RuntimeInputError(f"{path} is not a file.")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise RuntimeInputError(f"{path} is {w}x{h} pixels, over the {MAX_PIXELS:,}-pixel limit; "
                                        "downscale it first.")
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block should not lose an otherwise good picture
                pass
    except RuntimeInputError:
        raise
    except PermissionError:
        raise RuntimeInputError(f"{path} cannot be read (permission denied).") from None
    except UnidentifiedImageError:
        raise RuntimeInputError(f"{path} is not an image Pillow can read (PNG, JPEG, BMP, ...).") from None
    except Image.DecompressionBombError:
        raise RuntimeInputError(f"{path} was refused as a possible decompression bomb (too many pixels).") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        raise RuntimeInputError(f"{path} is truncated or corrupted ({type(e).__name__}: {e}).") from None
    try:
        return to_mnist_array(img)
    except RuntimeInputError as e:
        raise RuntimeInputError(f"{path}: {e}") from None
