"""pipeline.bundle.js.lay_out_web: the one web-site skeleton the web bundle is and the browser measurement serves."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np

from pipeline.bundle import js as bundle_js, layout, ort_web
from pipeline.measure import browser


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _models(quick_run) -> dict:
    from exporters.onnx import read_metadata

    path = quick_run["dir"] / "export" / "model-fp32.onnx"
    entry = bundle_js.preprocessing(read_metadata(path), layout.model("model-fp32.onnx"), "onnx-fp32", None)
    return {"model-fp32": {"path": path, "entry": entry}}


def test_the_skeleton_holds_onnxruntime_web_the_web_files_the_models_and_the_extras(quick_run, tmp_path):
    models = _models(quick_run)
    page = tmp_path / "page.html"
    page.write_text("<!doctype html>")
    site = tmp_path / "site"
    site.mkdir()
    bundle_js.lay_out_web(site, models, {"page.html": page, "in.bin": b"\x00\x01", "in.json": "{}"})
    assert _files(site) == ({f"ort/{f}" for f in ort_web.FILES} | set(bundle_js.WEB_FILES)
                            | {"models/model-fp32.onnx", "preprocessing.json", "page.html", "in.bin", "in.json"})
    assert all(filecmp.cmp(src, site / dst, shallow=False) for dst, src in bundle_js.WEB_FILES.items())
    assert (site / "models/model-fp32.onnx").read_bytes() == models["model-fp32"]["path"].read_bytes()
    assert json.loads((site / "preprocessing.json").read_text()) == {
        "models": {"model-fp32": models["model-fp32"]["entry"]}}
    assert (site / "in.bin").read_bytes() == b"\x00\x01" and (site / "page.html").read_text() == "<!doctype html>"


def test_the_browser_measurement_serves_the_skeleton_plus_its_page(quick_run, tmp_path):
    """The measuring folder is the skeleton, file for file, plus the page files: what is measured is what ships."""
    models = _models(quick_run)
    pixels = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    spec = {"batches": [1, 3], "warmup": 1, "rounds": 3, "iterations": 2, "max_ms": 10.0, "chunk": 32}
    measured, skeleton = tmp_path / "measured", tmp_path / "skeleton"
    measured.mkdir()
    skeleton.mkdir()
    browser._stage(measured, models, pixels, spec)
    bundle_js.lay_out_web(skeleton, models)
    extras = browser.page_files(models, pixels, spec)
    assert _files(measured) == _files(skeleton) | set(extras) and not set(extras) & _files(skeleton)
    assert all(filecmp.cmp(skeleton / f, measured / f, shallow=False) for f in _files(skeleton))
    assert (measured / "test-images.u8").read_bytes() == pixels.tobytes()
    assert json.loads((measured / "bench.json").read_text()) == {**spec, "models": ["model-fp32"]}
    assert (measured / "bench.html").read_bytes() == (browser.PAGE_FILES / "bench.html").read_bytes()
