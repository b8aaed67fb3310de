"""`pipeline bundle` / `pipeline verify`, and the TensorRT exporter's logic that needs no GPU."""
import json
import subprocess
import sys
import tarfile

import pytest

from exporters import tensorrt as trtx
from tests.conftest import invoke


@pytest.fixture(scope="module")
def bundle(quick_run, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    r = invoke("bundle", "--target", "jetson", "--artifacts", quick_run["artifacts"], "--out", out,
               "--data-root", data_root)
    assert r.exit_code == 0, r.output
    return out / "edgenet-jetson-bundle"


def test_bundle_contents(bundle):
    names = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert {"MANIFEST.json", "README.md", "bench.py", "build_engines.py", "build_engines.sh", "report.json",
            "data/mnist-test.npz", "data/reference.npz", "data/golden.npz", "models/model-fp32.onnx",
            "models/model-int8-ptq.onnx", "models/model-int8-qat.onnx", "models/model-fp16.onnx"} <= names
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == names - {"MANIFEST.json"}
    assert manifest["models"]["model-int8-qat"]["tensorrt"] and not manifest["models"]["model-int8-cpu"]["tensorrt"]
    assert "nvpmodel" in (bundle / "README.md").read_text()
    assert "--stronglyTyped" in (bundle / "build_engines.sh").read_text()
    # the build script is the exporter itself, so there is one implementation of engine building
    assert (bundle / "build_engines.py").read_text() == open(trtx.__file__).read()


def test_bench_script_reproduces_the_report_without_the_repo(bundle, quick_run, tmp_path):
    # run from a copy outside the repo, with the repo off sys.path; numpy + onnxruntime are all it imports
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-I", str(bundle / "bench.py"), "--seconds", "0.1", "--iterations", "10",
                           "--batches", "1,8", "--json", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}
    for name in ("onnx-fp32", "onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu", "onnx-fp16"):
        assert rows[name]["accuracy"] == reported[name]["accuracy"], name
        assert rows[name]["agreement"] == reported[name]["agreement"], name
    assert "| onnx-fp32 |" in proc.stdout and "equals report" in proc.stdout


def test_verify_passes_then_catches_one_altered_byte(bundle, tmp_path):
    import shutil

    assert invoke("verify", bundle).exit_code == 0
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    model = copy / "models" / "model-int8-ptq.onnx"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    model.write_bytes(bytes(blob))
    r = invoke("verify", copy)
    assert r.exit_code == 1 and "altered: models/model-int8-ptq.onnx" in r.output
    (copy / "data" / "golden.npz").unlink()
    r = invoke("verify", copy)
    assert "missing: data/golden.npz" in r.output


def test_verify_tarball_and_tampered_tarball(bundle, tmp_path):
    tar = bundle.with_name(bundle.name + ".tar.gz")
    assert invoke("verify", tar).exit_code == 0
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(tar) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("bench.py"):
                data = data.replace(b"np.percentile", b"np.nanpercentile")
                m.size = len(data)
            import io

            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    r = invoke("verify", bad)
    assert r.exit_code == 1 and "altered: bench.py" in r.output


def test_verify_run_folder_and_bad_paths(quick_copy, tmp_path):
    run = quick_copy / "edgenet"
    assert invoke("verify", run).exit_code == 0
    f = run / "export" / "golden.npz"
    f.write_bytes(f.read_bytes()[:100])
    r = invoke("verify", run)
    assert r.exit_code == 1 and "truncated (shorter than recorded): export/golden.npz" in r.output
    r = invoke("verify", tmp_path / "nothing")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("verify", tmp_path)
    assert r.exit_code == 2 and "neither a bundle" in r.output


def test_bundle_bad_input(tmp_path, data_root):
    r = invoke("bundle", "--target", "fpga", "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2
    r = invoke("bundle", "--target", "gpu", "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2 and "run `pipeline run all` first" in r.output

# The TensorRT exporter's tests (no GPU needed, and the gpu-marked one) are in tests/test_tensorrt.py.
