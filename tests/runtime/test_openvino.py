"""runtime/openvino.py: the runner sets the inference precision explicitly (FP32 rows never run bf16 on a BF16
CPU), offers bf16 only where the CPU has it, and refuses what it cannot load with a clear error."""
import numpy as np
import pytest

from runtime.errors import BackendUnavailable, RuntimeInputError
from tests.edge_helpers import fp32_atol, run_all

pytest.importorskip("openvino", reason="OpenVINO is not installed: `pip install -e .[openvino]`")


@pytest.fixture(scope="module")
def fp32_ir(edge_model, tmp_path_factory):
    from exporters import openvino as eov

    return eov.export_fp32(edge_model["model"], tmp_path_factory.mktemp("ov") / "m.xml", edge_model["meta"])


def test_bf16_hint_only_where_the_cpu_has_it(fp32_ir, edge_model):
    from runtime.openvino import OpenvinoRunner, cpu_has_bf16

    runner = OpenvinoRunner(fp32_ir, precision="bf16")
    if not cpu_has_bf16():
        with pytest.raises(BackendUnavailable, match="no BF16"):
            runner.activate()
        return
    with runner:
        logits = run_all(runner, edge_model["test_x"][:500])
    # bf16 is a real precision change: far outside the FP32 tolerance (the probe's trap, made visible),
    # and still the same answers nearly everywhere
    assert np.abs(logits - edge_model["ref"][:500]).max() > fp32_atol(edge_model["model"], edge_model["ref"])
    assert (logits.argmax(1) == edge_model["ref"][:500].argmax(1)).mean() >= 0.99


def test_fp32_runner_pins_f32_and_any_batch(fp32_ir, edge_model):
    from runtime.openvino import OpenvinoRunner

    with OpenvinoRunner(fp32_ir, threads=1) as r:
        assert "float32" in str(r.compiled.get_property("INFERENCE_PRECISION_HINT"))
        one = r.infer({"input": edge_model["test_x"][:1]})["logits"]
        many = r.infer({"input": edge_model["test_x"][:257]})["logits"]
    assert one.shape == (1, 10) and many.shape == (257, 10)
    assert np.abs(many - edge_model["ref"][:257]).max() <= fp32_atol(edge_model["model"], edge_model["ref"])


def test_runner_errors(fp32_ir, tmp_path):
    from runtime.openvino import OpenvinoRunner

    with pytest.raises(RuntimeInputError, match="precision"):
        OpenvinoRunner(fp32_ir, precision="fp16")
    with pytest.raises(RuntimeInputError, match="missing or empty"):
        OpenvinoRunner(tmp_path / "none.xml").activate()
    (tmp_path / "junk.xml").write_text("<net>")
    (tmp_path / "junk.bin").write_bytes(b"\0")
    with pytest.raises(RuntimeInputError, match="could not load"):
        OpenvinoRunner(tmp_path / "junk.xml").activate()
    with OpenvinoRunner(fp32_ir) as r:
        with pytest.raises(RuntimeInputError, match="takes inputs"):
            r.infer({"x": np.zeros((1, 1, 28, 28), np.float32)})
        with pytest.raises(RuntimeInputError, match="could not run"):
            r.infer({"input": np.zeros((1, 3, 28, 28), np.float32)})


def test_runners_are_torch_free(fp32_ir, edge_model, tmp_path):
    """runtime/openvino.py runs an IR, and the LiteRT runner modules import, in a process that never loads torch
    (they ship to devices; ExecuTorch's runner is in pipeline/ because its Python runtime needs torch)."""
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", edge_model["test_x"][:8])
    code = ("import sys, numpy as np; import runtime.openvino, runtime.litert, runtime.litert_venv, "
            "runtime.litert_worker; from runtime.openvino import OpenvinoRunner\n"
            f"with OpenvinoRunner({str(fp32_ir)!r}) as r: y = r.infer({{'input': np.load({str(tmp_path / 'x.npy')!r})}})\n"
            "assert y['logits'].shape == (8, 10)\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)
