"""exporters/executorch.py + pipeline/measure/executorch_runner.py: FP32 .pte equal to torch, INT8 (PT2E,
XNNPACKQuantizer) within the INT8 budget, the sidecar round trip, the batch bound the file holds (not 15:
the example-batch trap) enforced with a clear error, and a failure as one paragraph naming ExecuTorch."""
import json

import numpy as np
import pytest

from runtime.errors import RuntimeInputError
from tests.edge_helpers import check_fp32, check_int8, run_all

pytest.importorskip("executorch", reason="ExecuTorch is not installed: `pip install -e .[executorch]`")


@pytest.fixture(scope="module")
def pte_files(edge_model, tmp_path_factory):
    from exporters import executorch as eet

    d, m = tmp_path_factory.mktemp("executorch"), edge_model
    return {"fp32": eet.export_fp32(m["model"], d / "model-fp32.pte", m["meta"], example=m["test_x"][:2]),
            "int8": eet.export_int8(m["model"], d / "model-int8.pte", m["meta"], m["calib"], example=m["test_x"][:2])}


def test_fp32_pte_equals_torch(pte_files, edge_model):
    from pipeline.measure.executorch_runner import ExecutorchRunner

    with ExecutorchRunner(pte_files["fp32"]) as r:
        check_fp32(run_all(r, edge_model["test_x"]), edge_model["model"], edge_model["ref"])


def test_int8_pte_within_budget(pte_files, edge_model):
    from pipeline.measure.executorch_runner import ExecutorchRunner

    with ExecutorchRunner(pte_files["int8"]) as r:
        check_int8(run_all(r, edge_model["test_x"]), edge_model["ref"], edge_model["test_y"])


def test_sidecar_round_trips_the_contract_and_the_bound(pte_files, edge_model):
    from exporters.executorch import EXAMPLE_BATCH, read_sidecar

    side = read_sidecar(pte_files["fp32"])
    for key, value in edge_model["meta"].items():
        if key != "precision":
            assert side[key] == value, key
    assert side["precision"] == "fp32" and read_sidecar(pte_files["int8"])["precision"] == "int8"
    # an example batch of 2 was given: the export pads it to EXAMPLE_BATCH, so the bound is not the trap's 15
    assert side["example_batch"] == EXAMPLE_BATCH and side["max_batch"] >= EXAMPLE_BATCH


def test_batch_over_the_bound_is_a_clear_error(pte_files, edge_model):
    from exporters.executorch import read_sidecar
    from pipeline.measure.executorch_runner import ExecutorchRunner

    bound = read_sidecar(pte_files["fp32"])["max_batch"]
    with ExecutorchRunner(pte_files["fp32"]) as r:
        assert r.batch_range == (1, bound)
        x = np.repeat(edge_model["test_x"][:1], bound, axis=0)
        assert r.infer({"input": x})["logits"].shape == (bound, 10)
        with pytest.raises(RuntimeInputError, match=rf"accepts batches of 1 to {bound} .*got {bound + 1}"):
            r.infer({"input": np.repeat(x[:1], bound + 1, axis=0)})


def test_failures_are_one_paragraph_naming_executorch(tmp_path, edge_model):
    from exporters import executorch as eet
    from pipeline.measure.executorch_runner import ExecutorchRunner
    from tests.fixtures.user_models import DataDependent

    with pytest.raises(eet.ExecutorchExportError, match=r"^ExecuTorch (torch\.export|lowering)") as e:
        eet.export_fp32(DataDependent().eval(), tmp_path / "dd.pte", {})
    assert "\n" not in str(e.value) and not (tmp_path / "dd.pte").exists()
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(RuntimeInputError, match="ExecuTorch could not load"):
        ExecutorchRunner(junk).activate()
    with pytest.raises(eet.ExecutorchExportError, match="calibration"):
        eet.export_int8(edge_model["model"], tmp_path / "q.pte", {}, np.zeros((0, 1, 28, 28), np.float32))
    (tmp_path / "x.pte.json").write_text(json.dumps({"max_batch": "16"}))
    with pytest.raises(ValueError, match="max_batch"):
        eet.read_sidecar(tmp_path / "x.pte")


def test_an_operator_without_a_kernel_is_refused_before_loading_naming_it(tmp_path):
    """``torch.sort`` passes torch.export and lowering, but XNNPACK does not take it and this build's portable kernels
    lack ``aten::sort.values``: refused naming it, nothing written (loading it failed with a bare error code)."""
    from exporters import executorch as eet
    from tests.fixtures.user_models import SortsRows

    with pytest.raises(eet.ExecutorchExportError, match=r"operator aten::sort\.values") as e:
        eet.export_fp32(SortsRows().eval(), tmp_path / "m.pte", {})
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_int8_keeps_the_modules_asked_for_in_fp32_in_the_written_file(tmp_path, edge_model):
    """``fp32_modules`` (the --int8-budget fallback): TinyNet's ``head`` stays FP32 in the .pte's XNNPACK graph, the
    conv INT8; the sidecar names it; an unknown module is refused."""
    from exporters import executorch as eet

    m = edge_model
    pte = eet.export_int8(m["model"], tmp_path / "q.pte", m["meta"], m["calib"], fp32_modules=("head",))
    assert eet.layer_precisions(pte) == ["int8", "fp32"]
    assert eet.read_sidecar(pte)["int8_fp32_modules"] == ["head"]
    assert eet.layer_precisions(eet.export_int8(m["model"], tmp_path / "all.pte", m["meta"], m["calib"])) == \
        ["int8", "int8"]
    with pytest.raises(eet.ExecutorchExportError, match="no module nothere"):
        eet.export_int8(m["model"], tmp_path / "x.pte", m["meta"], m["calib"], fp32_modules=("nothere",))
