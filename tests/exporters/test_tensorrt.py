"""The TensorRT path without a GPU: our code against TensorRT's and Polygraphy's documented behaviour.

No GPU and no TensorRT here, so TensorRT, Polygraphy and trtexec are replaced by stand-ins that behave as
their documentation says (TensorRT 10.3/11.1 Python API, Polygraphy 0.49, trtexec's banner) and compute on
the real ONNX files of the quick run with onnxruntime. The stand-ins live here, in ``sys.modules`` for one
test at a time, never in the package. What only a GPU can confirm is listed in the README ("TensorRT").
"""
import importlib.machinery
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters import tensorrt as trtx
from tests.helpers import invoke

GPU = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7"}
ENGINE_STEMS = {"model-fp32": "fp32", "model-fp16": "fp16", "model-int8-ptq": "int8", "model-int8-qat": "int8"}


def default_build(precision):
    """What a default build records (written out, so the tests do not trust build_params to say it)."""
    return {"precision": precision, "profile": {"min": [1, 1, 28, 28], "opt": [64, 1, 28, 28], "max": [256, 1, 28, 28]},
            "workspace_mib": 1024, "dla_core": None}


def _module(name, **attrs):
    """A module object importlib accepts (``find_spec`` reads ``__spec__`` of what is in sys.modules)."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- stand-in: running engines (Polygraphy 0.49)
class FakeEngine:
    """ICudaEngine as TrtRunner sees it; the "engine file" is JSON naming the ONNX it computes like."""

    def __init__(self, spec):
        self.spec = spec
        self.lo, self.opt, self.hi = spec["batches"]

    num_io_tensors = 2

    def get_tensor_name(self, i):
        return ("input", "logits")[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "input" else "OUTPUT"

    def get_tensor_profile_shape(self, name, profile):
        assert name == "input" and profile == 0
        return tuple((b, 1, 28, 28) for b in (self.lo, self.opt, self.hi))


class FakeTrtRunner:
    """Polygraphy 0.49's ``TrtRunner`` as documented: ``set_input_shape`` outside the profile fails, and the
    host output buffer is allocated once and reused, so every returned array is a view of it."""

    def __init__(self, loader):
        self.loader = loader
        self.calls = []

    def activate(self):
        import onnxruntime as ort

        self.engine = self.loader()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.engine.spec["ort_level"])
        self.session = ort.InferenceSession(self.engine.spec["onnx"], opts, providers=["CPUExecutionProvider"])
        self.host_output = np.full((self.engine.hi, 10), np.nan, np.float32)  # one buffer, reused by every call

    def infer(self, feed_dict):
        x = feed_dict["input"]
        self.calls.append(len(x))
        if not self.engine.lo <= len(x) <= self.engine.hi:
            raise RuntimeError(f"set_input_shape failed: input {x.shape} is outside the profile "
                               f"[{self.engine.lo}, {self.engine.hi}]")
        out = self.session.run(None, {"input": x})[0]
        view = self.host_output[: len(x)]
        view[...] = out
        return {"logits": view}

    def last_inference_time(self):
        return 1e-4

    def deactivate(self):
        self.session = None


@pytest.fixture
def fake_polygraphy(monkeypatch):
    """tensorrt + polygraphy stand-ins in sys.modules; returns the list of runners created."""
    runners = []

    def trt_runner(loader):
        runners.append(FakeTrtRunner(loader))
        return runners[-1]

    def bytes_from_path(path):
        return lambda: open(path, "rb").read()

    def engine_from_bytes(load_bytes):
        return lambda: FakeEngine(json.loads(load_bytes()))

    trt = _module("tensorrt", __version__="10.3.0.30", TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "polygraphy", _module("polygraphy"))
    monkeypatch.setitem(sys.modules, "polygraphy.backend", _module("polygraphy.backend"))
    monkeypatch.setitem(sys.modules, "polygraphy.backend.common", _module("polygraphy.backend.common",
                                                                          BytesFromPath=bytes_from_path))
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", _module("polygraphy.backend.trt",
                                                                       EngineFromBytes=engine_from_bytes,
                                                                       TrtRunner=trt_runner))
    return runners


def fake_engine_file(path, onnx_path, batches=(1, 64, 256), ort_level="ORT_ENABLE_ALL"):
    path.write_text(json.dumps({"onnx": str(onnx_path), "batches": list(batches), "ort_level": ort_level}))
    return path


@pytest.fixture(scope="module")
def test_images(data_root):
    """The 10,000 real MNIST test images (uint8) and labels."""
    raw = data_root / "MNIST" / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    return images, labels


def _normalized(quick_run, images):
    from exporters.onnx import read_metadata

    meta = read_metadata(quick_run["dir"] / "export" / "model-fp32.onnx")
    mean, std = json.loads(meta["normalization_mean"])[0], json.loads(meta["normalization_std"])[0]
    return ((images / 255.0 - mean) / std).astype(np.float32)


def test_trt_runner_batches_within_the_engine_profile_and_owns_its_outputs(fake_polygraphy, quick_run, test_images,
                                                                             tmp_path):
    """Bugs 1 and 2: run_logits batches to the profile maximum read from the engine, and the logits of every
    batch survive Polygraphy's reused output buffer: accuracy equals onnxruntime's on the same ONNX exactly."""
    from pipeline.validate import run_logits
    from runtime.onnxrt import OnnxrtRunner
    from runtime.tensorrt import TensorRTRunner

    onnx_path = quick_run["dir"] / "export" / "model-fp32.onnx"
    x = _normalized(quick_run, test_images[0])
    engine = fake_engine_file(tmp_path / "model-fp32.engine", onnx_path)
    with TensorRTRunner(engine) as trt_runner:
        assert trt_runner.batch_range == (1, 256)
        logits = run_logits(trt_runner, x)
    assert max(fake_polygraphy[0].calls) == 256 and sum(fake_polygraphy[0].calls) == len(x)
    with OnnxrtRunner(onnx_path) as ort_runner:
        expected = run_logits(ort_runner, x)
    np.testing.assert_array_equal(logits, expected)
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}["onnx-fp32"]["accuracy"]
    assert float((logits.argmax(1) == test_images[1]).mean()) == reported


class ReusingRunner:
    """A minimal runner whose backend reuses one output buffer (as Polygraphy's TrtRunner does) and
    refuses batches outside its profile; logits are a fixed linear map of the real images."""

    def __new__(cls, lo, hi):
        from runtime.base import BaseRunner

        class _Runner(BaseRunner):
            name = "reusing"
            batch_range = (lo, hi)
            weights = np.random.default_rng(0).standard_normal((784, 10)).astype(np.float32)

            def activate_impl(self):
                self.buffer, self.batches = np.empty((hi, 10), np.float32), []

            def infer_impl(self, feed):
                x = feed["input"]
                if not lo <= len(x) <= hi:
                    raise RuntimeError(f"batch {len(x)} outside the profile {lo}..{hi}")
                self.batches.append(len(x))
                view = self.buffer[: len(x)]
                view[...] = x.reshape(len(x), -1) @ self.weights
                return {"logits": view}

        return _Runner()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 700), lo=st.integers(1, 64), span=st.integers(0, 300), static=st.booleans())
def test_collected_logits_stay_correct_for_any_profile(n, lo, span, static, data_root):
    """Bugs 1 and 2 for every runner: any profile (dynamic or static, as DLA builds need), any image count;
    the runner's buffer is reused, yet every collected logit equals the direct computation."""
    from pipeline.validate import run_logits

    raw = data_root / "MNIST" / "raw"
    images = (np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16, count=n * 784)
              .reshape(n, 1, 28, 28) / 255.0).astype(np.float32)
    hi = lo if static else lo + span
    with ReusingRunner(lo, hi) as runner:
        logits = run_logits(runner, images)
        assert all(lo <= b <= hi for b in runner.batches)
    np.testing.assert_allclose(logits, images.reshape(n, -1) @ runner.weights, rtol=1e-5, atol=1e-5)


def test_latency_is_labelled_with_what_it_includes_and_stays_in_the_profile(fake_polygraphy, quick_run, tmp_path):
    """Bug 3: no "copies excluded" figure (Polygraphy's own time spans the copies too); every figure says
    what one call spans; a batch outside the engine profile is refused, not fed to set_input_shape."""
    from pipeline.config import ValidateConfig
    from pipeline.errors import PipelineError
    from pipeline.validate import latency
    from runtime.tensorrt import TensorRTRunner

    engine = fake_engine_file(tmp_path / "m.engine", quick_run["dir"] / "export" / "model-fp32.onnx")
    images = np.zeros((300, 1, 28, 28), np.float32)
    cfg = ValidateConfig(batches=(1, 256), warmup=1, iterations=3, max_seconds=0.01)
    with TensorRTRunner(engine) as runner:
        lat = latency(runner, images, cfg)
        assert set(lat) == {"1", "256"}
        for stats in lat.values():
            assert "copies_excluded" not in stats
            assert "H2D" in stats["includes"] and "D2H" in stats["includes"] and "GPU compute" in stats["includes"]
        assert not hasattr(runner, "device_time_ms")
        with pytest.raises(PipelineError, match="accepts batches 1 to 256"):
            latency(runner, images, ValidateConfig(batches=(1, 257), warmup=0, iterations=1, max_seconds=0.01))


# ---------------------------------------------------------------- version: module, not distribution
@pytest.mark.parametrize("version", ["10.3.0.30", "11.1.0.7", "10.0.1.6"])
def test_tensorrt_version_comes_from_the_module_not_the_distribution(monkeypatch, version):
    """Bug 5: with only tensorrt-cu12/-cu13 or JetPack's apt package there is no distribution "tensorrt"
    (true here); the engines stage, the validate stage and the run manifest read tensorrt.__version__."""
    from importlib import metadata

    from pipeline import manifest
    from pipeline.stages import engines

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt", __version__=version))
    monkeypatch.setattr(trtx, "gpu_identity", lambda: GPU)
    assert trtx.installed_version() == version
    assert engines._trt_identity() == {"tensorrt": version, **GPU}
    assert manifest.versions()["tensorrt"] == version


def test_manifest_finds_tensorrt_under_its_cuda_specific_distribution(monkeypatch):
    from importlib import metadata

    from pipeline import manifest

    real = metadata.version

    def only_cu12(name):
        if name == "tensorrt-cu12":
            return "10.3.0"
        if name.startswith("tensorrt"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not imported: fall back to the distributions
    monkeypatch.setattr(metadata, "version", only_cu12)
    assert manifest.versions()["tensorrt"] == "10.3.0"


def test_validate_stage_checks_engines_with_the_module_version(monkeypatch, quick_copy, fake_polygraphy):
    """Bug 5 (validate stage) and bug 6: the engine is refused or accepted by tensorrt.__version__ and
    by every build parameter the engines stage uses."""
    from pipeline.errors import PipelineError
    from pipeline.variants import BY_NAME
    from runtime.tensorrt import TensorRTRunner

    export = quick_copy / "edgenet" / "export"
    ctx = types.SimpleNamespace(rd=types.SimpleNamespace(export_file=lambda name: export / name))
    monkeypatch.setattr(trtx, "gpu_identity", lambda: GPU)
    engine = fake_engine_file(export / "model-fp16.engine", export / "model-fp16.onnx")
    side = {"onnx_sha256": trtx.sha256_file(export / "model-fp16.onnx"), "tensorrt": "10.3.0.30", **GPU,
            **default_build("fp16")}
    (export / "model-fp16.engine.json").write_text(json.dumps(side))
    assert isinstance(BY_NAME["trt-fp16"].runner(ctx.rd), TensorRTRunner)
    side["profile"]["max"] = [128, 1, 28, 28]
    (export / "model-fp16.engine.json").write_text(json.dumps(side))
    with pytest.raises(PipelineError, match="profile"):
        BY_NAME["trt-fp16"].runner(ctx.rd)
    assert engine.is_file()


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
    mod = _load(tmp_path / "build_engines.py", "bundle_build_engines")
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt", __version__="10.3.0.30"))
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


# ---------------------------------------------------------------- stand-in: building (TensorRT 10.3 / 11.1 API)
class FakeTRT:
    """The TensorRT builder API build_engine uses, in the shape of 10.3/11.1's Python API. The "engine" is
    what a strongly typed build of the real ONNX gives: each Conv/Gemm computes in its weights' type (int8
    when fed by DequantizeLinear). ``weak=True`` builds everything in FP32 (a weakly typed build that
    ignored the file's types); ``dla_layers`` are the layers the built engine runs on the DLA."""

    def __init__(self, version="10.3.0.30", weak=False, dla_layers=None, dla_cores=2):
        import onnx

        self.__version__ = version
        self.weak, self.dla_layers, self.dla_cores = weak, dla_layers, dla_cores
        ns = types.SimpleNamespace
        self.NetworkDefinitionCreationFlag = ns(STRONGLY_TYPED=1)
        self.MemoryPoolType = ns(WORKSPACE="WORKSPACE")
        self.BuilderFlag = ns(TF32="TF32", GPU_FALLBACK="GPU_FALLBACK")
        self.ProfilingVerbosity = ns(LAYER_NAMES_ONLY="LAYER_NAMES_ONLY", DETAILED="DETAILED")
        self.DeviceType = ns(GPU="GPU", DLA="DLA")
        self.LayerInformationFormat = ns(ONELINE="ONELINE", JSON="JSON")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.onnx = onnx
        fake = self

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return types.SimpleNamespace(get_input=lambda i: types.SimpleNamespace(name="input"),
                                             num_layers=0, flags=flags)

            def create_builder_config(self):
                fake.config = types.SimpleNamespace(
                    profiling_verbosity="LAYER_NAMES_ONLY", default_device_type="GPU", DLA_core=-1, flags=set(),
                    set_memory_pool_limit=lambda pool, size: None, clear_flag=lambda f: None,
                    set_flag=lambda f: fake.config.flags.add(f), add_optimization_profile=lambda p: 0,
                    can_run_on_DLA=lambda layer: True)
                return fake.config

            def create_optimization_profile(self):
                return types.SimpleNamespace(set_shape=lambda name, mn, opt, mx: setattr(fake, "shapes", (mn, opt, mx)))

            def build_serialized_network(self, network, config):
                return fake.engine_json(config).encode()

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse(self, data, path):
                fake.model = onnx.load_from_string(data)
                return True

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, blob):
                info = blob.decode()
                inspector = types.SimpleNamespace(
                    get_engine_information=lambda fmt: info if fmt == "JSON" else "not JSON")
                return types.SimpleNamespace(create_engine_inspector=lambda: inspector)

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    def engine_json(self, config) -> str:
        """The inspector's JSON for the parsed model, as TensorRT 10.x documents it."""
        graph = self.model.graph
        inits = {i.name: i.data_type for i in graph.initializer}
        producers = {o: n for n in graph.node for o in n.output}
        names = {1: "FP32", 10: "FP16", 3: "Int8"}
        layers = []
        for node in graph.node:
            if node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            w = producers.get(node.input[1])
            dtype = "Int8" if w is not None and w.op_type == "DequantizeLinear" else names.get(inits.get(node.input[1]), "FP32")
            if self.weak:
                dtype = "FP32"
            layer = {"Name": node.name, "LayerType": "CaskConvolution" if node.op_type == "Conv" else "CaskGemm",
                     "Inputs": [{"Name": node.input[0], "Format/Datatype": f"Row major linear {dtype}"}],
                     "Outputs": [{"Name": node.output[0], "Format/Datatype": f"Row major linear {dtype}"}]}
            if config.default_device_type == "DLA" and self.dla_layers is not None and node.name in self.dla_layers:
                layer["LayerType"] = "DLA"
            layers.append(layer)
        if config.profiling_verbosity != "DETAILED":  # without detailed verbosity the inspector gives names only
            layers = [layer["Name"] for layer in layers]
        return json.dumps({"Layers": layers, "Bindings": ["input", "logits"]})


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


# ---------------------------------------------------------------- the trtexec script
BANNERS = {  # the first line trtexec prints, as the real 8.6, 10.3 and 11.1 print it
    "8.6": "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help",
    "10.3": "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b30] # trtexec --help",
    "11.1": "&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b7] # trtexec --help",
}


def _fake_trtexec(folder, banner):
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "trtexec"
    exe.write_text(f'#!/bin/sh\necho "$@" >> "$TRTEXEC_LOG"\necho "{banner}"\necho "=== Model Options ==="\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.fixture(scope="module")
def bundle(quick_run, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt-bundles")
    r = invoke("bundle", "--target", "jetson", "--artifacts", quick_run["artifacts"], "--out", out,
               "--data-root", data_root)
    assert r.exit_code == 0, r.output
    return out / "edgenet-jetson-bundle"


def _run_script(bundle, tmp_path, env, name="b"):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy2(bundle / "build_engines.sh", folder / "build_engines.sh")
    log = tmp_path / f"{name}.log"
    full = {"PATH": "/usr/bin:/bin", "TRTEXEC_LOG": str(log), **env}
    proc = subprocess.run(["sh", str(folder / "build_engines.sh")], capture_output=True, text=True, env=full)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


@pytest.mark.parametrize("version, typed", [("10.3", True), ("11.1", False)])
def test_trtexec_script_flags_from_the_real_banner(bundle, tmp_path, version, typed):
    """Bug 4: the banner's v100300 is TensorRT 10, so 10.x builds get --stronglyTyped; 11.x has no other mode."""
    fakebin = tmp_path / "bin"
    _fake_trtexec(fakebin, BANNERS[version])
    proc, calls = _run_script(bundle, tmp_path, {"PATH": f"{fakebin}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    builds = [c for c in calls if "--onnx=" in c]
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert {c.split("--onnx=models/")[1].split(".onnx")[0] for c in builds} == \
        {s for s, m in manifest["models"].items() if m["tensorrt"]}
    for c in builds:
        assert ("--stronglyTyped" in c.split()) is typed
        assert "--maxShapes=input:256x1x28x28" in c and "--minShapes=input:1x1x28x28" in c
    assert f"TensorRT {version.split('.')[0]}.x" in proc.stdout


def test_trtexec_script_refuses_tensorrt_8(bundle, tmp_path):
    fakebin = tmp_path / "bin"
    _fake_trtexec(fakebin, BANNERS["8.6"])
    proc, calls = _run_script(bundle, tmp_path, {"PATH": f"{fakebin}:/usr/bin:/bin"})
    assert proc.returncode == 2 and "TensorRT 8.x (banner v8601); use 10.x or 11.x" in proc.stderr
    assert not [c for c in calls if "--onnx=" in c]


def test_trtexec_script_finds_jetpacks_trtexec_off_the_path(bundle, tmp_path):
    """Bug 4: on a Jetson trtexec lives in /usr/src/tensorrt/bin, not on the PATH."""
    assert "/usr/src/tensorrt/bin" in (bundle / "build_engines.sh").read_text()
    jetson = tmp_path / "usr" / "src" / "tensorrt" / "bin"
    _fake_trtexec(jetson, BANNERS["10.3"])
    proc, calls = _run_script(bundle, tmp_path, {"TENSORRT_BIN": str(jetson)})
    assert proc.returncode == 0, proc.stderr
    assert str(jetson / "trtexec") in proc.stdout and all("--stronglyTyped" in c for c in calls if "--onnx=" in c)
    proc, calls = _run_script(bundle, tmp_path, {"TENSORRT_BIN": str(tmp_path / "nowhere")}, name="c")
    assert proc.returncode == 2 and "trtexec is neither on the PATH nor in" in proc.stderr and not calls


# ---------------------------------------------------------------- bench.py --engines without a sidecar
def test_bench_runs_trtexec_engines_without_a_sidecar_and_says_what_it_could_not_check(
        bundle, quick_run, tmp_path, fake_polygraphy, capsys):
    """Bug 4 (sidecar), 1 and 2 in the bundle's bench.py: engines built by trtexec have no sidecar; bench.py
    runs them with the manifest's metadata, batches within the profile, copies Polygraphy's reused outputs,
    and lists what it could not check. Accuracy equals the report's for the same ONNX."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    (folder / "engines").mkdir()
    for stem, m in manifest["models"].items():
        if m["tensorrt"]:
            level = "ORT_ENABLE_BASIC" if m["ort_optimization"] == "basic" else "ORT_ENABLE_ALL"
            fake_engine_file(folder / "engines" / f"{stem}.engine", folder / "models" / f"{stem}.onnx", ort_level=level)
    bench = _load(folder / "bench.py", "bundle_bench")
    out = tmp_path / "r.json"
    assert bench.main(["--engines", "--batches", "1,8,512", "--iterations", "3", "--seconds", "0.01",
                       "--json", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}
    assert set(rows) == {m["variant"] for m in manifest["models"].values() if m["tensorrt"]}
    for name, r in rows.items():
        assert r["accuracy"] == reported[name]["accuracy"] and r["agreement"] == reported[name]["agreement"], name
        assert "source ONNX (SHA-256)" in r["unchecked"] and "per-layer precisions" in r["unchecked"]
        assert r["latency"]["512"] is None and r["latency"]["8"]["p50_ms"] > 0 and r["batch_range"] == [1, 256]
        assert "H2D" in r["latency_includes"]
    assert all(max(runner.calls) <= 256 for runner in fake_polygraphy)
    text = capsys.readouterr().out
    assert "no sidecar (trtexec writes none), so not checked" in text and "batch 512 not timed" in text
    # a sidecar from another ONNX file: still run, but reported and the exit code says so
    info = manifest["models"]["model-fp16"]
    (folder / "engines" / "model-fp16.engine.json").write_text(json.dumps(
        {"onnx_sha256": "0" * 64, "tensorrt": "10.3.0.30", "metadata": info["metadata"]}))
    assert bench.main(["--engines", "--batches", "1", "--iterations", "2", "--seconds", "0.01"]) == 1
    text = capsys.readouterr().out
    assert "onnx-fp16: WARNING: built from another ONNX file" in text and "engines FAILED: onnx-fp16" in text


# ---------------------------------------------------------------- moved from test_bundle.py
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
    from pipeline.validate import run_logits
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
