"""runtime/preprocess.py alone: an MNIST digit survives the conversion, and every unreadable, empty or oversized
picture is refused naming the file. (Pictures through the classifier: tests/runtime/test_classifier.py; random
and damaged files: tests/runtime/test_fuzz.py.)"""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from runtime.errors import RuntimeInputError
from runtime.preprocess import MAX_PIXELS, load_image, to_mnist_array
from tests.helpers import mnist_test_images


def _png_with_size(path, width, height):
    """A 1x1 PNG whose header claims width x height: Pillow reads the size without decoding anything."""
    Image.new("L", (1, 1)).save(path)
    b = bytearray(path.read_bytes())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    path.write_bytes(bytes(b))
    return path


def test_an_mnist_digit_survives_the_conversion(data_root):
    x, _ = mnist_test_images(data_root, 20)
    back = np.stack([to_mnist_array(Image.fromarray(im)) for im in x])
    assert np.abs(back.astype(int) - x).mean() < 2  # already 20x20-in-28x28, centred: nearly unchanged


def test_bad_files_are_refused_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    good = tmp_path / "d.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    trunc = tmp_path / "t.png"
    trunc.write_bytes(good.read_bytes()[:200])
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(clear)
    cases = [
        (text, "notes.png is not an image"),
        (trunc, "t.png is truncated or corrupted"),
        (blank, "blank.png: no digit found"),
        (clear, "clear.png: no digit found"),
        (tmp_path / "missing.png", "missing.png does not exist"),
        (tmp_path, "is not a file"),
        (_png_with_size(tmp_path / "big.png", 8000, 6000), f"big.png is 8000x6000 pixels, over the {MAX_PIXELS:,}"),
        # Pillow itself may refuse at open (its own bomb check) or our pixel limit may: either way, named as such
        (_png_with_size(tmp_path / "bomb.png", 20000, 10000),
         r"bomb\.png (was refused as a possible decompression bomb|is 20000x10000 pixels, over the)"),
    ]
    for path, message in cases:
        with pytest.raises(RuntimeInputError, match=message):
            load_image(path)
    with pytest.raises(RuntimeInputError, match="no digit found"):
        to_mnist_array(Image.new("RGB", (30, 30), (90, 90, 90)))
    with pytest.raises(RuntimeInputError, match="PIL image"):
        to_mnist_array(np.zeros((28, 28), np.uint8))
