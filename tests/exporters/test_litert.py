"""exporters/litert.py + runtime/litert.py: LiteRT FP32 .tflite equal to torch and INT8 (PT2E, int8 input and
output tensors) within the INT8 budget, both through litert-torch in the LiteRT venv and run by the torch-free
runner's worker process; the sidecar round trip; converter failures and bad files as one paragraph naming LiteRT.

The LiteRT converter venv (runtime/litert_venv.py, layered over the project's environment) is created once per
machine, on first use or by `make setup` (under a minute and about 0.9 GB here); where it cannot be created the
tests skip with the reason."""
import json

import numpy as np
import pytest

from runtime.errors import BackendUnavailable, RuntimeInputError
from tests.edge_helpers import check_fp32, check_int8, run_all


@pytest.fixture(scope="session")
def litert_python():
    from exporters.litert import LitertExportError, venv_python

    try:
        return venv_python(create=True)
    except LitertExportError as e:
        pytest.skip(f"no LiteRT venv: {e}")


@pytest.fixture(scope="module")
def tflite_files(litert_python, edge_model, tmp_path_factory):
    from exporters import litert as elt

    d, m = tmp_path_factory.mktemp("litert"), edge_model
    return {"fp32": elt.export_fp32(m["model"], d / "model-fp32.tflite", m["meta"], example=m["test_x"][:2]),
            "int8": elt.export_int8(m["model"], d / "model-int8.tflite", m["meta"], m["calib"],
                                    example=m["test_x"][:2])}


def test_fp32_tflite_equals_torch(tflite_files, edge_model):
    from runtime.litert import LitertRunner

    with LitertRunner(tflite_files["fp32"], mode="worker") as r:
        assert r.proc is not None and "pipe" in r.latency_includes
        check_fp32(run_all(r, edge_model["test_x"]), edge_model["model"], edge_model["ref"])


def test_int8_tflite_within_budget_with_int8_io(tflite_files, edge_model):
    from runtime.litert import LitertRunner, read_sidecar

    with LitertRunner(tflite_files["int8"], mode="worker") as r:
        assert r.info["input"]["dtype"] == "int8" and r.info["output"]["dtype"] == "int8"
        assert r.info["input"]["scale"] > 0
        logits = run_all(r, edge_model["test_x"])
        scale = r.info["output"]["scale"]
    check_int8(logits, edge_model["ref"], edge_model["test_y"])
    # dequantized: the logits sit on the output's int8 grid, a few steps from torch on average (raw int8 codes,
    # or a wrong scale, would be tens of steps off)
    assert np.abs(logits - edge_model["ref"]).mean() <= 4 * scale
    assert read_sidecar(tflite_files["int8"])["io_dtype"] == "int8"


def test_sidecar_round_trips_the_contract(tflite_files, edge_model):
    from runtime.litert import read_sidecar

    side = read_sidecar(tflite_files["fp32"])
    for key, value in edge_model["meta"].items():
        if key != "precision":
            assert side[key] == value, key
    # nn.Flatten defeats the dynamic batch: the file is fixed-batch and says so
    assert side["batch"] == "dynamic" or (isinstance(side["batch"], int) and "dynamic_batch_error" in side)


def test_bad_files_and_converter_failures_are_one_paragraph(litert_python, tmp_path):
    from exporters import litert as elt
    from runtime.litert import LitertRunner
    from tests.fixtures.user_models import DataDependent

    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(RuntimeInputError, match="not a .tflite file"):
        LitertRunner(junk).activate()
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"\0\0\0\0TFL3" + b"\0" * 64)  # the right identifier, nothing behind it
    with pytest.raises(RuntimeInputError, match="LiteRT could not load"):
        LitertRunner(fake, mode="worker").activate()
    with pytest.raises(elt.LitertExportError, match=r"^LiteRT: torch.export failed") as e:
        elt.export_fp32(DataDependent().eval(), tmp_path / "dd.tflite", {})
    assert "\n" not in str(e.value) and not (tmp_path / "dd.tflite").exists()
    with pytest.raises(BackendUnavailable, match="no LiteRT venv"):
        LitertRunner(fake, mode="worker", venv=tmp_path / "none").activate()


def test_worker_frames_round_trip():
    import io

    from runtime.litert_worker import recv_array, send_array

    buf = io.BytesIO()
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    send_array(buf, a)
    send_array(buf, a[:0])
    buf.seek(0)
    assert np.array_equal(recv_array(buf), a) and recv_array(buf).shape == (0, 3, 4)
    with pytest.raises(EOFError):
        recv_array(buf)
    with pytest.raises(ValueError, match="bad array header"):
        recv_array(io.BytesIO(json.dumps({"dtype": "object", "shape": [1]}).encode() + b"\n"))
