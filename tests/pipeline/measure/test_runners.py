"""pipeline/measure/runners.py: the runner factories of the variant table; the TensorRT one refuses a stale engine
before the validate stage times it (TensorRT and Polygraphy are the stand-ins of tests/fixtures/trt_standins.py)."""
import json
import types

import pytest

from exporters import tensorrt as trtx
from tests.fixtures.trt_standins import GPU, default_build, fake_engine_file


def test_validate_stage_checks_engines_with_the_module_version(monkeypatch, quick_copy, fake_polygraphy):
    """Bug 5 (validate stage) and bug 6: the engine is refused or accepted by tensorrt.__version__ and
    by every build parameter the engines stage uses."""
    from pipeline.errors import PipelineError
    from pipeline.measure import runners
    from pipeline.variants import BY_NAME
    from runtime.tensorrt import TensorRTRunner

    export = quick_copy / "edgenet" / "export"
    ctx = types.SimpleNamespace(rd=types.SimpleNamespace(export_file=lambda name: export / name))
    monkeypatch.setattr(trtx, "gpu_identity", lambda: GPU)
    engine = fake_engine_file(export / "model-fp16.engine", export / "model-fp16.onnx")
    side = {"onnx_sha256": trtx.sha256_file(export / "model-fp16.onnx"), "tensorrt": "10.3.0.30", **GPU,
            **default_build("fp16")}
    (export / "model-fp16.engine.json").write_text(json.dumps(side))
    assert isinstance(runners.build(BY_NAME["trt-fp16"], ctx.rd), TensorRTRunner)
    side["profile"]["max"] = [128, 1, 28, 28]
    (export / "model-fp16.engine.json").write_text(json.dumps(side))
    with pytest.raises(PipelineError, match="profile"):
        runners.build(BY_NAME["trt-fp16"], ctx.rd)
    assert engine.is_file()
