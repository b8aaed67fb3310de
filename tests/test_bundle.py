"""`pipeline bundle` / `pipeline verify`, and the TensorRT exporter's logic that needs no GPU."""
import json
import subprocess
import sys
import tarfile
import types

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


# ---------------------------------------------------------------- TensorRT logic, no GPU needed
def fake_trt(version, strongly_typed=True):
    flags = types.SimpleNamespace(**({"STRONGLY_TYPED": 1} if strongly_typed else {}))
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)


def test_version_branching():
    assert trtx.version_major("10.3.0.30") == 10 and trtx.version_major("11.0.1") == 11
    assert trtx.network_flags(fake_trt("10.3.0")) == 1 << 1
    assert trtx.network_flags(fake_trt("11.0.0", strongly_typed=False)) == 0
    assert trtx.network_flags(fake_trt("11.0.0")) == 1 << 1
    with pytest.raises(trtx.TensorRTError, match="lacks strongly typed"):
        trtx.network_flags(fake_trt("10.0.0", strongly_typed=False))


def test_unsupported_or_missing_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(trtx.TensorRTError, match="8.6.1 is not supported"):
        trtx.import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(trtx.TensorRTError, match="TensorRT is not installed"):
        trtx.import_tensorrt()


def test_profile_shapes():
    assert trtx.profile_shapes((1, 28, 28), 1, 64, 256) == {"min": (1, 1, 28, 28), "opt": (64, 1, 28, 28),
                                                            "max": (256, 1, 28, 28)}
    with pytest.raises(trtx.TensorRTError, match="min <= opt <= max"):
        trtx.profile_shapes((1, 28, 28), 8, 4, 256)


def test_stale_or_foreign_engine_is_refused(tmp_path, quick_run):
    onnx_path = quick_run["dir"] / "export" / "model-fp32.onnx"
    engine = tmp_path / "model-fp32.engine"
    engine.write_bytes(b"serialized-engine-bytes")
    gpu = {"gpu": "NVIDIA H100", "compute_capability": "9.0"}
    assert ".engine.json is missing" in trtx.check_engine(engine, onnx_path, "10.3.0", gpu)[0]
    side = {"onnx_sha256": trtx.sha256_file(onnx_path), "tensorrt": "10.3.0", **gpu}
    (tmp_path / "model-fp32.engine.json").write_text(json.dumps(side))
    assert trtx.check_engine(engine, onnx_path, "10.3.0", gpu) == []
    problems = trtx.check_engine(engine, onnx_path, "11.0.0", {"gpu": "Orin", "compute_capability": "8.7"})
    assert len(problems) == 3 and "TensorRT 10.3.0" in problems[0]
    other = quick_run["dir"] / "export" / "model-fp16.onnx"
    assert "another version" in trtx.check_engine(engine, other, "10.3.0", gpu)[0]
    with pytest.raises(trtx.TensorRTError, match="Refusing"):
        trtx.require_fresh(engine, other, "10.3.0", gpu)


def test_timing_cache_key_names_version_and_gpu():
    key = trtx.timing_cache_key("10.3.0", {"gpu": "Orin", "compute_capability": "8.7"})
    assert key == "tensorrt-10.3.0|Orin|sm8.7"


@pytest.mark.gpu
def test_engines_build_match_onnx_and_refuse_when_stale(quick_run, data_root, tmp_path):
    """On a GPU host with TensorRT: build fp32/fp16/int8 engines and check them on all 10,000 test images."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU hosts: pip install tensorrt; Jetson: JetPack 6)")
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install -e .[trt])")
    import numpy as np

    from exporters.onnx import read_metadata
    from runtime.tensorrt import TensorRTRunner

    d = quick_run["dir"] / "export"
    rows = {v["name"]: v for v in quick_run["report"]["variants"]}
    raw = data_root / "MNIST" / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    meta = read_metadata(d / "model-fp32.onnx")
    x = ((images / 255.0 - json.loads(meta["normalization_mean"])[0]) / json.loads(meta["normalization_std"])[0]).astype(np.float32)
    import tensorrt

    for stem, precision, onnx_variant in (("model-fp32", "fp32", "onnx-fp32"), ("model-fp16", "fp16", "onnx-fp32"),
                                          ("model-int8-ptq", "int8", "onnx-int8-ptq")):
        engine = tmp_path / f"{stem}.engine"
        trtx.build_engine(d / f"{stem}.onnx", engine, precision)
        trtx.require_fresh(engine, d / f"{stem}.onnx", tensorrt.__version__, trtx.gpu_identity())
        with TensorRTRunner(engine) as r:
            logits = np.concatenate([r.infer({"input": x[i:i + 256]})["logits"] for i in range(0, len(x), 256)])
        acc = float((logits.argmax(1) == labels).mean())
        ref = rows[onnx_variant]["accuracy"]
        if precision == "fp32":
            assert acc == rows["torch-fp32"]["accuracy"]
        elif precision == "fp16":
            assert 100 * (ref - acc) <= 0.05
        else:
            assert abs(100 * (acc - ref)) <= 0.1
    side = json.loads((tmp_path / "model-fp32.engine.json").read_text())
    side["tensorrt"] = "0.0.0"
    (tmp_path / "model-fp32.engine.json").write_text(json.dumps(side))
    with pytest.raises(trtx.TensorRTError, match="Refusing"):
        trtx.require_fresh(tmp_path / "model-fp32.engine", d / "model-fp32.onnx", tensorrt.__version__, trtx.gpu_identity())
