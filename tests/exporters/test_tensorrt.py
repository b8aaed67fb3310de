"""exporters/tensorrt.py without a GPU: our code against TensorRT's documented behaviour.

No GPU and no TensorRT here, so TensorRT is replaced by stand-ins that behave as its documentation says
(TensorRT 10.3/11.1 Python API) and build from the real ONNX files of the quick run; they live in
``tests/fixtures/trt_standins.py`` and sit in ``sys.modules`` for one test at a time, never in the package.
The bundle's ``build_engines.py`` is this module, copied, so its ``main()`` is tested here too; the bundle's
trtexec script is tested with the bundle (``tests/pipeline/bundle/test_build.py``), the runner with the runtime
(``tests/runtime/test_tensorrt.py``). What only a GPU can confirm is listed in docs/deploy.md ("TensorRT"); the
gpu-marked test at the end confirms the build on such a machine.
"""
import json
import shutil
import sys
import types

import numpy as np
import pytest

from exporters import tensorrt as trtx
from tests.fixtures.trt_standins import GPU, FakeTRT, default_build, fake_module
from tests.helpers import load_module

ENGINE_STEMS = {"model-fp32": "fp32", "model-fp16": "fp16", "model-int8-ptq": "int8", "model-int8-qat": "int8"}


# ---------------------------------------------------------------- version: module, not distribution
@pytest.mark.parametrize("version", ["10.3.0.30", "11.1.0.7", "10.0.1.6"])
def test_tensorrt_version_comes_from_the_module_not_the_distribution(monkeypatch, version):
    """Bug 5: with only tensorrt-cu12/-cu13 or JetPack's apt package there is no distribution "tensorrt"
    (true here); the engines stage, the validate stage and the run manifest read tensorrt.__version__."""
    from importlib import metadata

    from pipeline.store import manifest
    from pipeline.stages import engines

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_module("tensorrt", __version__=version))
    monkeypatch.setattr(trtx, "gpu_identity", lambda: GPU)
    assert trtx.installed_version() == version
    assert engines._trt_identity() == {"tensorrt": version, **GPU}
    assert manifest.versions()["tensorrt"] == version


# ---------------------------------------------------------------- staleness covers every build parameter
CHANGED = {"precision": dict(precision="int8"), "profile": dict(max_batch=128), "workspace_mib": dict(workspace_mib=2048),
           "dla_core": dict(precision="fp16", dla_core=0, min_batch=64, opt_batch=64, max_batch=64)}


def test_every_build_parameter_has_a_staleness_case():
    assert set(CHANGED) == set(trtx.BUILD_PARAMS)
    assert trtx.build_params("fp16") == default_build("fp16")


@pytest.mark.parametrize("param", sorted(CHANGED))
def test_staleness_check_covers_every_recorded_build_parameter(param, tmp_path, quick_run):
    """Bug 6: an engine built with other build parameters than those asked for is stale; so is one whose
    sidecar predates the parameter."""
    onnx_path = quick_run["dir"] / "export" / "model-fp16.onnx"
    engine = tmp_path / "model-fp16.engine"
    engine.write_bytes(b"serialized-engine-bytes")
    built = {"onnx_sha256": trtx.sha256_file(onnx_path), "tensorrt": "10.3.0", **GPU, **default_build("fp16")}
    (tmp_path / "model-fp16.engine.json").write_text(json.dumps(built))
    asked = trtx.build_params(**{"precision": "fp16", **CHANGED[param]})
    assert trtx.check_engine(engine, onnx_path, "10.3.0", GPU, trtx.build_params("fp16")) == []
    problems = trtx.check_engine(engine, onnx_path, "10.3.0", GPU, asked)
    assert any(f"built with {param} " in p for p in problems), problems
    del built[param]
    (tmp_path / "model-fp16.engine.json").write_text(json.dumps(built))
    assert f"does not record its {param}" in " ".join(trtx.check_engine(engine, onnx_path, "10.3.0", GPU,
                                                                         trtx.build_params("fp16")))


@pytest.fixture
def bundle_builder(quick_run, tmp_path, monkeypatch):
    """A bundle-shaped folder (MANIFEST.json, models/, engines/ with fp16/int8 engines and sidecars built
    with the defaults) and its build_engines.py loaded from there, with build_engine recorded, not run."""
    export = quick_run["dir"] / "export"
    (tmp_path / "models").mkdir()
    (tmp_path / "engines").mkdir()
    models = {}
    for stem in ("model-fp16", "model-int8-ptq"):
        shutil.copy2(export / f"{stem}.onnx", tmp_path / "models" / f"{stem}.onnx")
        models[stem] = {"precision": ENGINE_STEMS[stem], "tensorrt": True, "image_shape": [1, 28, 28], "metadata": {}}
        (tmp_path / "engines" / f"{stem}.engine").write_bytes(b"engine")
        side = {"onnx_sha256": trtx.sha256_file(export / f"{stem}.onnx"), "tensorrt": "10.3.0.30", **GPU,
                **default_build(ENGINE_STEMS[stem])}
        (tmp_path / "engines" / f"{stem}.engine.json").write_text(json.dumps(side))
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"models": models}))
    shutil.copy2(trtx.__file__, tmp_path / "build_engines.py")
    mod = load_module(tmp_path / "build_engines.py", "bundle_build_engines")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_module("tensorrt", __version__="10.3.0.30"))
    monkeypatch.setattr(mod, "gpu_identity", lambda: GPU)
    calls = []

    def build(onnx_path, engine_path, precision, **kw):
        calls.append({"engine": engine_path.name, "precision": precision, **kw})
        return {"build_seconds": 0.1, "tensorrt": "10.3.0.30", "gpu": GPU["gpu"],
                "layer_precisions": {"by_precision": {precision: 1}}}

    monkeypatch.setattr(mod, "build_engine", build)
    return mod, calls


@pytest.mark.parametrize("argv, rebuilt", [
    ([], set()),
    (["--max-batch", "128"], {"model-fp16.engine", "model-int8-ptq.engine"}),
    (["--opt-batch", "32"], {"model-fp16.engine", "model-int8-ptq.engine"}),
    (["--workspace-mib", "512"], {"model-fp16.engine", "model-int8-ptq.engine"}),
    (["--dla-core", "0"], {"model-fp16.engine", "model-int8-ptq.engine"}),
    (["--dla-core", "1", "--precisions", "int8"], {"model-int8-ptq.engine"}),
])
def test_build_script_rebuilds_when_any_build_parameter_changes(bundle_builder, capsys, argv, rebuilt):
    """Bug 6, end to end in the bundle's build_engines.py: a new --max-batch or --dla-core is not "up to date"."""
    mod, calls = bundle_builder
    assert mod.main(argv) == 0
    assert {c["engine"] for c in calls} == rebuilt
    out = capsys.readouterr().out
    assert out.count("up to date") == 2 - len(rebuilt) - ("--precisions" in argv)
    for c in calls:
        if "--dla-core" in argv:  # DLA: static profile at --max-batch
            assert c["min_batch"] == c["opt_batch"] == c["max_batch"] == 256 and c["dla_core"] in (0, 1)


@pytest.mark.parametrize("core", ["-1", "-2", "-100"])
def test_negative_dla_core_is_refused(bundle_builder, capsys, core):
    mod, calls = bundle_builder
    with pytest.raises(SystemExit) as e:
        mod.main(["--dla-core", core])
    assert e.value.code == 2 and "a DLA core is 0, 1" in capsys.readouterr().err and not calls
    with pytest.raises(trtx.TensorRTError, match="--dla-core must be a DLA core number"):
        trtx.build_engine("x.onnx", "x.engine", "fp16", dla_core=int(core), min_batch=8, opt_batch=8, max_batch=8)


# ---------------------------------------------------------------- building, against the TensorRT 10.3 / 11.1 stand-in
@pytest.fixture
def fake_builder(monkeypatch):
    def install(**kw):
        fake = FakeTRT(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr(trtx, "gpu_identity", lambda: GPU)
        return fake

    return install


@pytest.mark.parametrize("version", ["10.3.0.30", "11.1.0.7"])
@pytest.mark.parametrize("stem", ["model-fp16", "model-int8-ptq", "model-int8-qat"])
def test_build_reads_layer_precisions_from_the_built_engine(fake_builder, quick_run, tmp_path, stem, version):
    """Bug 7: the sidecar records the per-layer precisions the engine inspector reports (detailed verbosity,
    JSON), and an fp16/int8 engine holds layers of that precision."""
    fake_builder(version=version)
    precision = ENGINE_STEMS[stem]
    side = trtx.build_engine(quick_run["dir"] / "export" / f"{stem}.onnx", tmp_path / f"{stem}.engine", precision,
                             log=lambda m: None)
    assert side["layer_precisions"]["by_precision"].get(precision, 0) >= 1
    assert side["layer_precisions"]["layers"] == len(side["layers"]) >= 2
    assert json.loads((tmp_path / f"{stem}.engine.json").read_text())["layer_precisions"] == side["layer_precisions"]
    assert (tmp_path / f"{stem}.engine").is_file()


@pytest.mark.parametrize("stem", ["model-fp16", "model-int8-ptq", "model-int8-qat"])
def test_engine_without_a_layer_in_its_precision_fails_the_build(fake_builder, quick_run, tmp_path, stem):
    """Bug 7: a weakly typed build that came out all FP32 while fp16/int8 was asked for is refused, and no
    engine file is written."""
    fake_builder(weak=True)
    with pytest.raises(trtx.TensorRTError, match=f"with no {ENGINE_STEMS[stem]} layer"):
        trtx.build_engine(quick_run["dir"] / "export" / f"{stem}.onnx", tmp_path / f"{stem}.engine",
                          ENGINE_STEMS[stem], log=lambda m: None)
    assert not list(tmp_path.iterdir())


def test_dla_placement_is_read_from_the_built_engine(fake_builder, quick_run, tmp_path):
    """Bug 6: the GPU-fallback list comes from the built engine, not from can_run_on_DLA before the build
    (which says every layer can run on the DLA); the DLA build gets a static profile."""
    onnx_path = quick_run["dir"] / "export" / "model-fp16.onnx"
    import onnx

    convs = [n.name for n in onnx.load(onnx_path).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    fake = fake_builder(dla_layers=set(convs[:-1]))  # the last layer falls back to the GPU
    side = trtx.build_engine(onnx_path, tmp_path / "m.engine", "fp16", dla_core=1, min_batch=32, opt_batch=32,
                             max_batch=32, log=lambda m: None)
    assert side["gpu_fallback_layers"] == [convs[-1]]
    assert side["layer_precisions"]["on_dla"] == len(convs) - 1
    assert fake.config.DLA_core == 1 and fake.config.default_device_type == "DLA" and "GPU_FALLBACK" in fake.config.flags
    assert fake.shapes == ((32, 1, 28, 28),) * 3 and side["dla_core"] == 1


@pytest.mark.parametrize("kw, match", [
    (dict(precision="fp32"), "only in FP16 or INT8"),
    (dict(precision="fp16"), "no dynamic dimensions"),  # the default 1/64/256 profile
    (dict(precision="int8", min_batch=1, opt_batch=8, max_batch=8), "no dynamic dimensions"),
    (dict(precision="int8", min_batch=8, opt_batch=8, max_batch=16), "no dynamic dimensions"),
])
def test_dla_build_needs_a_static_profile_and_fp16_or_int8(fake_builder, quick_run, tmp_path, kw, match):
    fake_builder()
    with pytest.raises(trtx.TensorRTError, match=match):
        trtx.build_engine(quick_run["dir"] / "export" / "model-fp16.onnx", tmp_path / "m.engine", dla_core=0,
                          log=lambda m: None, **kw)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- versions, profiles and stale engines
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
    assert trtx.installed_version() is None


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
    from exporters.onnx import read_metadata
    from pipeline.measure.compare import run_logits
    from runtime.tensorrt import TensorRTRunner

    d = quick_run["dir"] / "export"
    rows = {v["name"]: v for v in quick_run["report"]["variants"]}
    raw = data_root / "MNIST" / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    meta = read_metadata(d / "model-fp32.onnx")
    x = ((images / 255.0 - json.loads(meta["normalization_mean"])[0]) / json.loads(meta["normalization_std"])[0]).astype(np.float32)
    version = trtx.installed_version()

    for stem, precision, onnx_variant in (("model-fp32", "fp32", "onnx-fp32"), ("model-fp16", "fp16", "onnx-fp32"),
                                          ("model-int8-ptq", "int8", "onnx-int8-ptq")):
        engine = tmp_path / f"{stem}.engine"
        side = trtx.build_engine(d / f"{stem}.onnx", engine, precision)
        assert precision == "fp32" or side["layer_precisions"]["by_precision"].get(precision)
        trtx.require_fresh(engine, d / f"{stem}.onnx", version, trtx.gpu_identity(), trtx.build_params(precision))
        with TensorRTRunner(engine) as r:
            assert r.batch_range == (1, 256)
            logits = run_logits(r, x)
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
        trtx.require_fresh(tmp_path / "model-fp32.engine", d / "model-fp32.onnx", version, trtx.gpu_identity())
