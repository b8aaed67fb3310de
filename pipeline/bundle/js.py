"""The JavaScript bundles' own files (``pipeline bundle --target node|web``), and the golden vectors they are checked by.

A JS app that embeds the model must preprocess pictures exactly as :mod:`runtime.preprocess` does, or its labels
drift from the report's. So every JS bundle carries the JS twin of that module (``preprocess.mjs``), the
preprocessing facts read from each ONNX file's ``metadata_props`` (``preprocessing.json``; onnxruntime's JS API
does not expose them), and a golden set: 64 raw image files, seeded from the MNIST test set and made unlike MNIST
on purpose (light paper, off-centre, large, RGB, alpha, JPEG), with what the Python runtime makes of each (the
28x28 pixels of :func:`runtime.preprocess.load_image` and the logits of :class:`runtime.classifier.Classifier`).
``classify.mjs --golden`` checks the JS side against them (the llm.c habit: one reference written once, every
other implementation compared with it). :mod:`pipeline.bundle.build` writes the files every bundle shares (models,
report, manifest) and calls :func:`fill_node` or :func:`fill_web` for the rest. The web bundle is a static site
(``index.html``, the ``classifier.js`` module other pages import, onnxruntime-web's wasm build from
:mod:`pipeline.bundle.ort_web`), so it holds no test set: its golden set is what a browser test checks it by.
:func:`lay_out_web` lays that site out, for the bundle and for every page that runs the models in a browser
(the browser measurement adds its measuring page to it), so what is measured is what is shipped.
"""
from __future__ import annotations

import io
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.store.paths import atomic_write, write_json

from . import layout

JS_FILES = Path(__file__).parent / "files"
#: the files a Node bundle gets as they are: the shared preprocessing module, the decoders, the command, package.json
NODE_FILES = {"preprocess.mjs": JS_FILES / "js" / "preprocess.mjs", "decode.mjs": JS_FILES / "node" / "decode.mjs",
              "classify.mjs": JS_FILES / "node" / "classify.mjs", "package.json": JS_FILES / "node" / "package.json"}
#: the files a web bundle gets as they are: the same preprocessing module, the embeddable classifier, the demo page
WEB_FILES = {"preprocess.mjs": JS_FILES / "js" / "preprocess.mjs", "classifier.js": JS_FILES / "web" / "classifier.js",
             "app.js": JS_FILES / "web" / "app.js", "index.html": JS_FILES / "web" / "index.html"}
#: the golden set's seed (which test images, offsets, colours): fixed, so every bundle of a run gets the same set
GOLDEN_SEED = 13
#: JS pixels may differ from Python's by this many grey levels (1/255); the labels must be identical
PIXEL_TOLERANCE = 1
#: |logit diff| allowed between onnxruntime-node and Python's onnxruntime on the same FP32 model and input
LOGITS_ATOL = 1e-4


def golden_images(images: np.ndarray, labels: np.ndarray, seed: int = GOLDEN_SEED) -> list[tuple[str, bytes, str, int]]:
    """64 encoded image files made from MNIST test digits: ``(file name, bytes, kind, true label)``.

    Kinds (count): mnist (20, as they are), light (8, dark ink on white), offcentre (8, on a 96x64 field away from
    the centre), large (8, 280x280 RGB dark on white, like a drawing canvas), rgb (8, coloured ink on coloured
    paper), alpha (8, RGBA: ink over a transparent background), jpeg (4: 2 grey light-paper, 2 colour). All drawn
    from ``np.random.default_rng(seed)``, so the same test set and seed give the same bytes.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    kinds = ["mnist"] * 20 + ["light"] * 8 + ["offcentre"] * 8 + ["large"] * 8 + ["rgb"] * 8 + ["alpha"] * 8 + ["jpeg"] * 4
    picks = rng.choice(len(images), size=len(kinds), replace=False)
    out = []
    for n, (kind, i) in enumerate(zip(kinds, picks)):
        digit = images[i]
        ink = digit.astype(np.float32) / 255  # 0..1 ink coverage
        fmt = "PNG"
        if kind == "mnist":
            img = Image.fromarray(digit, "L")
        elif kind == "light":
            img = Image.fromarray(255 - digit, "L")
        elif kind == "offcentre":
            field = np.zeros((64, 96), np.uint8)
            y, x = int(rng.integers(0, 64 - 28)), int(rng.choice([rng.integers(0, 20), rng.integers(48, 96 - 28)]))
            field[y : y + 28, x : x + 28] = digit
            img = Image.fromarray(field, "L")
        elif kind == "large":
            img = Image.fromarray(255 - digit, "L").resize((280, 280), Image.BILINEAR).convert("RGB")
        elif kind == "rgb" or (kind == "jpeg" and n % 2):
            paper, pen = rng.integers(150, 256, 3), rng.integers(0, 110, 3)
            rgb = paper * (1 - ink[..., None]) + pen * ink[..., None]
            img = Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB").resize((56, 56), Image.BICUBIC)
        elif kind == "alpha":
            rgba = np.zeros((28, 28, 4), np.uint8)
            rgba[..., :3] = rng.integers(0, 80, 3)
            rgba[..., 3] = digit
            img = Image.fromarray(rgba, "RGBA")
        else:  # grey JPEG on light paper
            img = Image.fromarray(255 - digit, "L").resize((84, 84), Image.BICUBIC)
        if kind == "jpeg":
            fmt = "JPEG"
        buf = io.BytesIO()
        # 4:4:4: jpeg-js upsamples subsampled chroma (4:2:0, Pillow's default) unlike libjpeg, which moves grey
        # levels at colour edges by several levels; without subsampling the decoders differ by 1 level at most
        img.save(buf, format=fmt, **({"quality": 92, "subsampling": 0} if fmt == "JPEG" else {}))
        out.append((f"{n:02d}-{kind}-{int(labels[i])}.{'jpg' if fmt == 'JPEG' else 'png'}", buf.getvalue(), kind,
                    int(labels[i])))
    return out


def write_golden(folder: Path, model: Path, model_rel: str, images: np.ndarray, labels: np.ndarray) -> dict:
    """Write ``folder/*.png|jpg`` and ``folder/golden.json``: Python's pixels, logits and label for each file."""
    from runtime import Classifier
    from runtime.preprocess import load_image

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, data, kind, truth in golden_images(images, labels):
        atomic_write(folder / name, data)
        entries.append({"file": name, "kind": kind, "true_label": truth})
    pixels = np.stack([load_image(folder / e["file"]) for e in entries])  # the Python runtime's own file path
    with Classifier(model) as clf:
        pred = clf.predict(pixels)
    for e, px, logits, label in zip(entries, pixels, pred.logits, pred.labels):
        e.update(label=label, pixels=px.ravel().tolist(), logits=[float(v) for v in logits])
    golden = {
        "model": model_rel, "seed": GOLDEN_SEED,
        "pixels": "runtime.preprocess.load_image output: 28x28 grey levels 0..255, row-major, white digit on black, "
                  "before normalization (divide by 255 for the 0..1 tensor)",
        "logits": "runtime.classifier.Classifier(model).predict(pixels).logits (onnxruntime, Python), float32",
        "pixel_tolerance": PIXEL_TOLERANCE, "logits_atol": LOGITS_ATOL, "images": entries,
    }
    write_json(folder / "golden.json", golden)
    return golden


def preprocessing(meta: dict[str, str], file_rel: str, variant: str, accuracy: float) -> dict:
    """One model's entry of ``preprocessing.json``, from its ONNX ``metadata_props`` (:mod:`runtime.metadata`)."""
    from runtime import metadata as md

    try:
        m = md.ModelMetadata.from_props(meta)
    except (ValueError, TypeError) as e:  # the runtime's own rules (std a list of numbers...): never bundled
        raise PipelineError(f"{file_rel} has malformed preprocessing metadata ({e}); re-export it with "
                            "`pipeline run export --force`.") from None
    if m.missing():
        raise PipelineError(f"{file_rel} lacks the metadata {', '.join(m.missing())} that the JS preprocessing "
                            "reads; re-export it with `pipeline run export --force`.")
    return {"file": file_rel, "variant": variant, "accuracy": accuracy, "input_name": m.input_name,
            "output_name": meta.get(md.OUTPUT_NAME), "input_shape": list(m.input_shape), "layout": m.layout,
            "pixel_scale": m.pixel_scale, "mean": list(m.mean), "std": list(m.std), "classes": list(m.classes),
            "output_kind": m.output_kind}


def _golden_from_raw(folder: Path, models: dict, raw: Path) -> None:
    """The golden set, made with onnx-fp32 (the file every target ships, held to exact parity), else the first model."""
    from pipeline.dataset import read_test_set

    images, labels = read_test_set(raw)
    stem = next((k for k, m in models.items() if m["variant"] == "onnx-fp32"), next(iter(models)))
    write_golden(folder / "golden", folder / layout.model(f"{stem}.onnx"), layout.model(f"{stem}.onnx"), images, labels)


def _preprocessing_entries(models: dict) -> dict[str, dict]:
    """stem -> preprocessing.json entry, for a bundle's ``models`` (the MANIFEST's model entries)."""
    return {stem: preprocessing(m["metadata"], layout.model(f"{stem}.onnx"), m["variant"], m["accuracy"])
            for stem, m in models.items()}


def _preprocessing_json(folder: Path, entries: dict[str, dict]) -> None:
    write_json(folder / "preprocessing.json", {"models": entries})


def lay_out_web(folder: Path, models: dict[str, dict], extras: Mapping[str, Path | bytes | str] | None = None,
                ort_web: Path | None = None) -> None:
    """Lay out the web site in ``folder``: the one skeleton of the web bundle, the browser measurement
    (:mod:`pipeline.measure.browser`) and any page that runs the models as a web page does.

    It holds onnxruntime-web's wasm build under ``ort/`` (``ort_web``: a local ``npm pack`` tarball instead of the
    user cache), the web files (:data:`WEB_FILES`: the demo page, ``classifier.js``, ``preprocess.mjs``), the models
    and their ``preprocessing.json``. ``models``: key -> ``{"path": the ONNX file, "entry": its preprocessing.json
    entry}`` (:func:`preprocessing`), the entry's ``file`` saying where in the site it goes (a file already there is
    left as it is). ``extras``: relative name -> a file to copy (a :class:`~pathlib.Path`) or the bytes or text to
    write: what one use of the site adds, such as a measuring page and its inputs."""
    from . import ort_web as ortw

    ortw.copy_files(folder / "ort", ort_web)  # first: the step that can fail for a reason outside this run
    for dst, src in WEB_FILES.items():
        shutil.copy2(src, folder / dst)
    for m in models.values():
        dst = folder / m["entry"]["file"]
        if dst != Path(m["path"]):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(m["path"], dst)
    _preprocessing_json(folder, {key: m["entry"] for key, m in models.items()})
    for rel, what in (extras or {}).items():
        if isinstance(what, Path):
            shutil.copy2(what, folder / rel)
        else:
            atomic_write(folder / rel, what)


def fill_web(folder: Path, models: dict, raw: Path, model_name: str, ort_web: Path | None = None) -> None:
    """The web bundle's own files: the web site (:func:`lay_out_web`) over the models that :mod:`pipeline.bundle.build`
    put in place, the golden set and a README. No test set: a page has no use for it."""
    if not models:
        raise PipelineError("This run has no validated variant that the table ships to web (onnx-fp32), so there is "
                            "nothing to bundle; rerun `pipeline run all`.")
    entries = _preprocessing_entries(models)
    lay_out_web(folder, {stem: {"path": folder / entries[stem]["file"], "entry": entries[stem]} for stem in models},
                ort_web=ort_web)
    (folder / layout.DATA).rmdir()  # made for every target by pipeline.bundle.build; the web bundle has no test set
    _golden_from_raw(folder, models, raw)
    atomic_write(folder / "README.md", _web_readme(model_name, models))


def fill_node(folder: Path, models: dict, raw: Path, model_name: str) -> None:
    """The Node bundle's own files, beside the ``models/`` and ``report.json`` that :mod:`pipeline.bundle.build` writes.

    ``models``: stem -> the MANIFEST's model entry (variant, accuracy, metadata); ``raw``: the MNIST IDX folder.
    The golden set is made with the first model (onnx-fp32: the table's first row that every target ships)."""
    if not models:
        raise PipelineError("This run has no validated variant that the table ships to node (onnx-fp32), so there is "
                            "nothing to bundle; rerun `pipeline run all`.")
    from pipeline.dataset import TEST_FILES

    for dst, src in NODE_FILES.items():
        shutil.copy2(src, folder / dst)
    _preprocessing_json(folder, _preprocessing_entries(models))
    # the test set as MNIST's own IDX files: JS reads them with a Buffer, no numpy format needed
    for name in TEST_FILES:
        shutil.copy2(raw / name, folder / layout.DATA / name)
    _golden_from_raw(folder, models, raw)
    atomic_write(folder / "README.md", _node_readme(model_name, models))


def model_lines(models: dict) -> list[str]:
    """The "Models:" list of a bundle README (every target's): each file, its variant, precision and accuracy."""
    return ["Models:", ""] + [f"- `models/{stem}.onnx`: {m['variant']}, {m['precision']}, reported accuracy "
                              f"{100 * m['accuracy']:.2f} % on the 10,000 MNIST test images" for stem, m in models.items()]


def _node_readme(model_name: str, models: dict) -> str:
    pins = json.loads(NODE_FILES["package.json"].read_text())["dependencies"]
    lines = [
        f"# {model_name} bundle for Node",
        "",
        "Made by edge-export-pipeline. Needs Node 18 or newer and the packages pinned in package.json "
        f"({', '.join(f'{k} {v}' for k, v in pins.items())}).",
        "",
        "1. Check the files: `sha256sum` against MANIFEST.json, or `pipeline verify <this folder>` on the build host.",
        "2. Install: `npm install --ignore-scripts`. onnxruntime-node's install script downloads GPU binaries from",
        "   outside the npm registry (and fails offline); its package already holds the CPU build this needs.",
        "3. `node classify.mjs IMG...`: label and probability of each PNG or JPEG file (one line per file, tab-separated).",
        "   A missing file, a non-image or a blank picture stops it with a one-line message and exit status 1.",
        "4. `node classify.mjs --golden`: runs the golden set (golden/): the JS preprocessing must be within 1 grey level",
        "   (1/255) of the Python runtime's on every image and give the same label, and the model's logits on Python's",
        f"   pixels must be within {LOGITS_ATOL:g} of Python's onnxruntime. Exit 1 otherwise.",
        "5. `node classify.mjs --test-set`: classifies the 10,000 MNIST test images (data/, MNIST's IDX files) and",
        "   checks that the accuracy equals the report's exactly. Exit 1 otherwise.",
        "",
        "## Preprocessing contract",
        "",
        "`preprocess.mjs` is an ES module with no dependencies and no DOM (browsers can load the same file). It mirrors",
        "`runtime/preprocess.py` (`to_mnist_array`) step by step: `toMnistPixels({width, height, data})` takes RGBA",
        "bytes (what an `ImageData` is), composites transparency on white, converts to grey as Pillow does, inverts dark",
        "ink on light paper, crops to the ink, resizes the longer side to 20 px with Pillow's Lanczos filter and centres",
        "the digit by its centre of mass in 28x28; it returns 784 grey levels. `normalize(pixels, params)` makes the",
        "model's input, `(pixels * pixel_scale - mean) / std` in float32, NCHW [1, 1, 28, 28]; `params` is a model's",
        "entry in preprocessing.json, which the bundle generated from the ONNX file's metadata (mean, std, layout,",
        "labels). Raw MNIST 28x28 images skip `toMnistPixels` (they are already MNIST-style), as in `--test-set`.",
        "",
        "Not done here (Pillow does them in Python): EXIF orientation, and formats other than PNG and JPEG.",
        "",
    ]
    lines += model_lines(models)
    lines += ["", "MNIST is by Yann LeCun and Corinna Cortes, CC BY-SA 3.0 (data/).", ""]
    return "\n".join(lines)


def _web_readme(model_name: str, models: dict) -> str:
    from . import ort_web as ortw

    lines = [
        f"# {model_name} bundle for the web",
        "",
        f"Made by edge-export-pipeline. A static site: it needs a browser with WebAssembly and ES modules, and any static",
        f"file server (pages opened as file:// cannot fetch the model). Everything is in this folder, onnxruntime-web",
        f"{ortw.VERSION} included (ort/: its WebAssembly build), so it works offline and loads nothing from a CDN.",
        "",
        "1. Check the files: `sha256sum` against MANIFEST.json, or `pipeline verify <this folder>` on the build host.",
        "2. Serve the folder, e.g. `python3 -m http.server -d . 8000` (or `pipeline demo` on the build host), and open",
        "   index.html: draw a digit dark on white (mouse or touch), or upload an image; the page shows the top-3 labels",
        "   and the batch-1 latency it measured (p50/p99 over 300 runs, wasm). The server must send .mjs/.js as",
        "   text/javascript and .wasm as application/wasm.",
        "",
        "## Embedding: classifier.js",
        "",
        "```js",
        'import { createClassifier } from "./classifier.js";',
        "const clf = await createClassifier();            // options: {model, baseUrl, threads}",
        "const { label, probabilities } = await clf.classify(canvasOrImgOrImageData);",
        "```",
        "",
        "`createClassifier(options?)` fetches preprocessing.json (generated from the ONNX file's metadata: mean, std,",
        "layout, labels) and the model beside the module, and resolves to an object whose `classify(image)` takes an",
        "`ImageData`, a canvas or a loaded `<img>` and resolves to `{label, probabilities}` (`probabilities[i]` belongs",
        "to `clf.labels[i]`; the object also carries `logits` and the 28x28 `pixels` the model saw). An `<img>` larger",
        "than 1024 px on its longer side is downscaled first. A blank picture or a non-image rejects with a",
        "`PreprocessError` whose message is one line. `options.model` picks a key of preprocessing.json's models,",
        "`options.baseUrl` the folder the bundle is served from (default: the module's own), `options.threads` the",
        "wasm threads (default 1; more need a cross-origin-isolated page). `clf.classifyPixels(pixels)` skips the",
        "preprocessing for 784 MNIST-style grey levels.",
        "",
        "`preprocess.mjs` is the very file of the Node bundle: it mirrors `runtime/preprocess.py` (grayscale, inverting",
        "light paper, cropping to the ink, the longer side to 20 px, centring by centre of mass in 28x28), so a digit drawn",
        "dark on white on a 280x280 canvas is classified like an MNIST digit. golden/ holds 64 images with the Python",
        "runtime's pixels and logits for them: the JS side must match within 1 grey level and give the same labels.",
        "A browser decodes images itself (its canvas stores premultiplied alpha), so images with transparency may differ",
        "from Python's by a grey level.",
        "",
    ]
    lines += model_lines(models)
    lines += ["", f"onnxruntime-web {ortw.VERSION} is MIT-licensed (Microsoft). MNIST is by Yann LeCun and Corinna "
              "Cortes, CC BY-SA 3.0 (golden/).", ""]
    return "\n".join(lines)
