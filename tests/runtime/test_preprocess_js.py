"""The JS preprocessing module (preprocess.mjs, run in Node with the bundle's decoders) against runtime.preprocess.

Needs no trained model: the golden image files are made from MNIST test digits (light paper, off-centre, large,
RGB, alpha, JPEG), plus shapes whose scaled size lands on .5 (Python rounds halves to even, Math.round up) and
half-transparent ink (Pillow's integer alpha compositing); each is read by Python's ``load_image`` and by Node.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.bundle.js import NODE_FILES, PIXEL_TOLERANCE, golden_images
from runtime.preprocess import load_image
from tests.js.env import link_node_modules, require_node

DUMP = """
import { readImage } from "./decode.mjs";
import { toMnistPixels } from "./preprocess.mjs";
const out = {};
for (const f of process.argv.slice(2)) {
  try { out[f] = Array.from(toMnistPixels(readImage(f))); } catch (e) { out[f] = e.name + ": " + e.message; }
}
console.log(JSON.stringify(out));
"""


def _edge_cases() -> list[tuple[str, bytes]]:
    """Images where a sloppier port goes wrong: halves in the scaled size, partial alpha, a thin upscaled stroke."""
    from PIL import Image

    rng = np.random.default_rng(0)
    cases = []
    for h, w in ((8, 1), (8, 3), (8, 5), (8, 7), (5, 8), (3, 2), (40, 9)):  # 20/8 = 2.5: w * 2.5 ends in .5
        field = np.zeros((h + 10, w + 12), np.uint8)
        field[5 : 5 + h, 6 : 6 + w] = rng.integers(120, 256, (h, w))
        cases.append((f"half-{h}x{w}.png", Image.fromarray(field, "L")))
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[8:32, 10:20, :3] = rng.integers(0, 256, 3)
    rgba[8:32, 10:20, 3] = rng.integers(1, 255, (24, 10))  # every partial alpha value path
    cases.append(("partial-alpha.png", Image.fromarray(rgba, "RGBA")))
    wide = (np.kron(rng.integers(0, 2, (6, 5)), np.ones((4, 4), np.int64)) * 50_000 + 3_000).astype(np.uint16)
    cases.append(("grey-16bit.png", Image.fromarray(wide)))  # I;16: Python divides by 257, pngjs rescales
    la = np.zeros((30, 30, 2), np.uint8)
    la[..., 0], la[6:24, 12:18, 1] = 40, 255
    cases.append(("grey-alpha.png", Image.fromarray(la, "LA")))
    pal = Image.fromarray(np.kron(np.eye(6, dtype=np.uint8) * 200, np.ones((5, 5), np.uint8)), "L").convert("P")
    cases.append(("palette.png", pal))
    out = []
    for name, img in cases:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append((name, buf.getvalue()))
    return out


def _node_pixels(node, files, tmp_path) -> dict:
    js = tmp_path / "js"
    js.mkdir()
    for name in ("preprocess.mjs", "decode.mjs"):
        shutil.copy2(NODE_FILES[name], js / name)
    (js / "dump.mjs").write_text(DUMP)
    link_node_modules(js)
    proc = subprocess.run([node, str(js / "dump.mjs"), *map(str, files)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def mnist_test(data_root):
    raw = data_root / "MNIST" / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    return images, labels


def test_js_preprocessing_matches_python_on_golden_and_edge_images(mnist_test, tmp_path):
    node = require_node()
    golden = golden_images(*mnist_test)
    assert golden == golden_images(*mnist_test)  # seeded: every bundle of a run gets the same files
    assert len(golden) == 64 and {k for _, _, k, _ in golden} == {"mnist", "light", "offcentre", "large", "rgb",
                                                                      "alpha", "jpeg"}
    files = []
    for name, data in [(n, d) for n, d, _, _ in golden] + _edge_cases():
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    js = _node_pixels(node, files, tmp_path)
    worst, bad = 0, []
    for f in files:
        py = load_image(f).astype(int)
        got = js[str(f)]
        assert isinstance(got, list), f"{f.name}: Node refused it: {got}"
        diff = int(np.abs(np.asarray(got).reshape(28, 28) - py).max())
        worst = max(worst, diff)
        if diff > PIXEL_TOLERANCE:
            bad.append(f"{f.name}: {diff} grey levels")
    assert not bad, f"JS preprocessing differs from Python's: {bad}"
    print(f"max |JS - Python| over {len(files)} images: {worst} grey level(s)")


def test_js_preprocessing_refuses_what_python_refuses(tmp_path):
    """A blank picture and a non-image get one-line errors in both languages (never a wrong label)."""
    from PIL import Image

    from runtime.errors import RuntimeInputError

    node = require_node()
    blank, text = tmp_path / "blank.png", tmp_path / "notes.png"
    Image.fromarray(np.full((30, 30), 200, np.uint8), "L").save(blank)
    text.write_text("not an image")
    js = _node_pixels(node, [blank, text], tmp_path)
    for f, words in ((blank, "no digit found"), (text, "not a PNG or JPEG")):
        assert js[str(f)].startswith("PreprocessError") and words in js[str(f)], js[str(f)]
        with pytest.raises(RuntimeInputError):
            load_image(f)
