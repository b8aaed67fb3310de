"""`pipeline bundle --target openvino`: the IR files with their weights, the contract in MANIFEST.json as in the IR's
rt_info, no ONNX file; and its bench.py, run from the unpacked tarball in a bare venv with only openvino and numpy
(tests/pipeline/bundle/conftest.py), equals the report, and fails, saying why, where the report does not hold."""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import pytest

from tests.helpers import invoke, one_paragraph, quick_bundle, snapshot


@pytest.fixture(scope="module")
def openvino_bundle(quick_run, data_root, tmp_path_factory):
    return quick_bundle(quick_run, data_root, tmp_path_factory.mktemp("openvino-bundles"), "openvino")


@pytest.fixture(scope="module")
def device_bundle(openvino_bundle, tmp_path_factory):
    device = tmp_path_factory.mktemp("openvino-device")
    with tarfile.open(openvino_bundle.with_name(openvino_bundle.name + ".tar.gz")) as tar:
        tar.extractall(device, filter="data")
    return device / openvino_bundle.name


def test_openvino_bundle_contents(openvino_bundle, quick_run):
    from runtime.openvino import read_metadata

    names = {str(p.relative_to(openvino_bundle)) for p in openvino_bundle.rglob("*") if p.is_file()}
    assert {"models/model-fp32.xml", "models/model-fp32.bin", "models/model-int8.xml", "models/model-int8.bin",
            "bench.py", "README.md", "report.json", "data/mnist-test.npz", "data/reference.npz",
            "data/golden.npz"} <= names
    assert not [n for n in names if n.endswith(".onnx")]  # bench.py must never need onnxruntime here
    manifest = json.loads((openvino_bundle / "MANIFEST.json").read_text())
    assert set(manifest["models"]) == {"model-fp32", "model-int8"}
    for stem, m in manifest["models"].items():  # the contract in the manifest is the IR's own
        assert m["metadata"] == read_metadata(openvino_bundle / "models" / f"{stem}.xml")
    also = manifest["models"]["model-fp32"]["also"]
    bf16 = next(v for v in quick_run["report"]["variants"] if v["name"] == "openvino-bf16")
    assert [(a["variant"], a["precision"], a["accuracy"]) for a in also] == [("openvino-bf16", "bf16", bf16["accuracy"])]
    readme = (openvino_bundle / "README.md").read_text()
    assert "pip install openvino numpy" in readme and "--device GPU" in readme and "models/model-int8.xml" in readme
    assert ".onnx" not in readme


def _bench(python, bundle, *args):
    return subprocess.run([str(python), "-I", "bench.py", "--seconds", "0.05", "--iterations", "10", "--rounds", "3",
                           "--batches", "1,8", "--json", "r.json", *args], cwd=bundle, capture_output=True, text=True,
                          timeout=600)


def _rows(bundle):
    out = json.loads((bundle / "r.json").read_text())
    (bundle / "r.json").unlink()
    return {r["variant"]: r for r in out["rows"]}, out


def test_bench_on_openvino_alone_equals_the_report(device_bundle, openvino_python, quick_run):
    probe = subprocess.run([str(openvino_python), "-c", "import importlib.util as u; print(u.find_spec('onnxruntime'), "
                            "u.find_spec('torch'))"], capture_output=True, text=True)
    assert probe.stdout.split() == ["None", "None"]  # only openvino and numpy (and their needs) here
    proc = _bench(openvino_python, device_bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows, out = _rows(device_bundle)
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}
    for name in ("openvino-fp32", "openvino-int8"):
        assert rows[name]["backend"] == "openvino-cpu" and rows[name]["hint"] == "f32"
        assert rows[name]["accuracy"] == reported[name]["accuracy"] and rows[name]["matches_report"], rows[name]
    # the bf16 row where this CPU has BF16 (OpenVINO says), else a line saying it was not run
    has_bf16 = subprocess.run([str(openvino_python), "-c", "import openvino as ov; print('BF16' in ov.Core()"
                               ".get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))"], capture_output=True,
                              text=True).stdout.strip() == "True"
    if has_bf16:
        assert rows["openvino-bf16"]["hint"] == "bf16" and rows["openvino-bf16"]["precision"] == "bf16"
        assert rows["openvino-bf16"]["accuracy"] == reported["openvino-bf16"]["accuracy"]
    else:
        assert "openvino-bf16: not run: CPU has no BF16" in proc.stdout
    assert out["device"]["runtimes"]["openvino"] and "onnxruntime" not in out["device"]["runtimes"]
    assert not list(device_bundle.rglob("__pycache__"))


def _edit_manifest(fn):
    def damage(b):
        manifest = json.loads((b / "MANIFEST.json").read_text())
        fn(manifest["models"])
        (b / "MANIFEST.json").write_text(json.dumps(manifest))
    return damage


def _another_accuracy(models):
    models["model-int8"]["accuracy"] += 0.0001


def _another_flip(models):
    models["model-fp32"]["flips"] = [7]


@pytest.mark.parametrize("damage, expected", [
    (_edit_manifest(_another_accuracy), "openvino-int8 (openvino-cpu) does not equal the report: accuracy"),
    (_edit_manifest(_another_flip), "openvino-fp32 (openvino-cpu) does not equal the report: flipped test images"),
])
def test_bench_on_openvino_fails_and_says_why(device_bundle, openvino_python, tmp_path, damage, expected):
    copy = tmp_path / device_bundle.name
    shutil.copytree(device_bundle, copy)
    damage(copy)
    proc = _bench(openvino_python, copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert expected in proc.stdout


def test_a_damaged_ir_weights_file_is_refused(quick_copy, openvino_bundle, data_root, tmp_path):
    run = quick_copy / "edgenet"
    blob = bytearray((run / "export" / "model-fp32.bin").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (run / "export" / "model-fp32.bin").write_bytes(bytes(blob))
    out = tmp_path / "out"
    shutil.copytree(openvino_bundle, out / openvino_bundle.name)
    before = snapshot(out)
    r = invoke("bundle", "--target", "openvino", "--artifacts", quick_copy, "--out", out, "--data-root", data_root)
    assert "altered (SHA-256 differs from the manifest): export/model-fp32.bin" in one_paragraph(r)
    assert snapshot(out) == before


def test_bench_without_openvino_says_what_to_install(device_bundle, numpy_python):
    proc = _bench(numpy_python, device_bundle)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "models/model-fp32.xml needs OpenVINO (pip install openvino numpy)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (device_bundle / "r.json").exists()
