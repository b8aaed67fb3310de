"""`pipeline bench` on any ONNX classifier, and the MACs count from the graph."""
import json

import onnx

from pipeline.efficiency import onnx_macs_per_image
from pipeline.models import build, macs_per_image
from tests.conftest import invoke


def test_bench_sweeps_batches_and_writes_json(quick_run, tmp_path):
    out = tmp_path / "b.json"
    r = invoke("bench", quick_run["dir"] / "export" / "model-fp32.onnx", "--batch", "1,8", "--iterations", "20",
               "--duration", "0.2", "--warmup-seconds", "0", "--json", out)
    assert r.exit_code == 0, r.output
    assert "Timing method" in r.output and "MACs per image" in r.output
    data = json.loads(out.read_text())
    assert [row["batch"] for row in data["results"]] == [1, 8]
    assert all(row["p50_ms"] > 0 and row["throughput_per_s"] > 0 for row in data["results"])
    assert data["macs_per_image"] == macs_per_image(build("edgenet"))


def test_bench_asks_for_shape_when_the_model_does_not_say(quick_run, tmp_path):
    m = onnx.load(str(quick_run["dir"] / "export" / "model-fp32.onnx"))
    for d in m.graph.input[0].type.tensor_type.shape.dim[1:]:
        d.Clear()
        d.dim_param = "unknown"
    path = tmp_path / "anon.onnx"
    onnx.save(m, str(path))
    r = invoke("bench", path, "--batch", "1", "--iterations", "5", "--duration", "0.1")
    assert r.exit_code == 2 and "--shape" in r.output
    r = invoke("bench", path, "--batch", "1", "--iterations", "5", "--duration", "0.1", "--warmup-seconds", "0",
               "--shape", "1,28,28")
    assert r.exit_code == 0, r.output


def test_bench_bad_arguments(tmp_path):
    r = invoke("bench", tmp_path / "missing.onnx")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("bench", tmp_path / "missing.onnx", "--batch", "0,x")
    assert r.exit_code == 2 and "--batch must be" in r.output


def test_macs_from_onnx_match_torch_for_every_zoo_model(quick_run):
    assert onnx_macs_per_image(quick_run["dir"] / "export" / "model-int8-ptq.onnx") == macs_per_image(build("edgenet"))
