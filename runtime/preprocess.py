"""Turn an arbitrary picture into a 28x28 MNIST-style digit, the way MNIST itself was made.

NIST's digits were size-normalized to fit a 20x20 box (aspect ratio kept,
anti-aliased) and then centred by their centre of mass in a 28x28 field,
white ink on black. So, for a file of any size or mode:

1. convert to 8-bit grayscale (transparent areas become white paper first);
2. invert if the picture's border is light (dark ink on light paper), so the
   digit is white on black as in MNIST;
3. crop to the ink (pixels above 1/4 of the maximum);
4. resize so the longer side is 20 px (Lanczos), keeping the aspect ratio;
5. paste into a black 28x28 canvas so the centre of mass sits at the centre.

Pillow is imported only here, and only when an image is actually converted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RuntimeInputError

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding


def to_mnist_array(image) -> np.ndarray:
    """A PIL image of any size and mode -> (28, 28) uint8, white digit on black."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    if gray.size == 0:
        raise RuntimeInputError("empty image: it has no pixels")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:
        gray, border = 255 - gray, 255 - border
    gray = np.clip(gray - np.median(border), 0, None)  # background to 0, as in MNIST
    peak = gray.max()
    if peak < 32:
        raise RuntimeInputError("no digit found: the image is blank (no ink darker/lighter than its background)")
    ys, xs = np.nonzero(gray > peak / 4)
    crop = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((nw, nh), Image.LANCZOS),
                       dtype=np.float32)
    canvas = np.zeros((28, 28), dtype=np.float32)
    total = small.sum()
    cy, cx = ((np.indices(small.shape) * small).sum(axis=(1, 2)) / total) if total > 0 else (nh / 2, nw / 2)
    top = int(round(14 - cy))
    left = int(round(14 - cx))
    top, left = min(max(top, 0), 28 - nh), min(max(left, 0), 28 - nw)
    canvas[top : top + nh, left : left + nw] = small
    return np.clip(canvas, 0, 255).astype(np.uint8)


def load_image(path) -> np.ndarray:
    """Read an image file and convert it with :func:`to_mnist_array`; bad files raise RuntimeInputError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise RuntimeInputError(f"{path} does not exist or is not a file.")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise RuntimeInputError(f"{path} is {img.width}x{img.height} pixels, over the {MAX_PIXELS:,}-pixel "
                                        "limit; downscale it first.")
            img.load()
            return to_mnist_array(img)
    except RuntimeInputError:
        raise
    except UnidentifiedImageError:
        raise RuntimeInputError(f"{path} is not an image Pillow can read (PNG, JPEG, BMP, ...).") from None
    except Image.DecompressionBombError as e:
        raise RuntimeInputError(f"{path} was refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise RuntimeInputError(f"{path} is truncated or corrupted ({type(e).__name__}: {e}).") from None
