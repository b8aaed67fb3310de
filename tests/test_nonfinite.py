"""No silent wrong result from NaN/inf: training, validation, the runtime and every JSON file we write.

`nan > tol` is False, so a comparison written the natural way lets a broken model pass. Each test here
feeds real NaN/inf (from a real model, or a real exported file scaled until it overflows) and checks the
run stops or fails loudly, and that what is written stays strict JSON.
"""
import json
import math

import numpy as np
import pytest

from pipeline.store.paths import sha256_file
from pipeline.store.schema import check_report, strict_loads
from tests.helpers import invoke, one_paragraph, snapshot


def poison(src, dst, factor: float) -> None:
    """Copy an exported ONNX file with its logits multiplied by ``factor`` (nan, +-inf).

    In the FP16 file the product is taken in float16, before the final cast back to float32; metadata is kept,
    so the file still describes itself.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    i, last = next((i, n) for i, n in enumerate(g.node) if "logits" in n.output)
    if last.op_type == "Cast":
        tensor, dtype = last.input[0], np.float16
        last.input[0] = "poisoned"
        mul = helper.make_node("Mul", [tensor, "poison_factor"], ["poisoned"])
        i -= 1  # before the cast
    else:
        dtype = np.float32
        last.output[0] = "unpoisoned"
        mul = helper.make_node("Mul", ["unpoisoned", "poison_factor"], ["logits"])
    g.initializer.append(numpy_helper.from_array(np.array(factor, dtype=dtype), "poison_factor"))
    g.node.insert(i + 1, mul)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def record(run, rel: str) -> None:
    """Record ``rel``'s current bytes in stages.json, as if the pipeline had written it (a foreign file)."""
    stages = run / "stages.json"
    rec = json.loads(stages.read_text())
    p = run / rel
    for entry in rec.values():
        if isinstance(entry, dict) and rel in entry.get("outputs", {}):
            entry["outputs"][rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    stages.write_text(json.dumps(rec, indent=2))


# ---------------------------------------------------------------------------------------------- training

def test_diverging_training_stops_naming_epoch_step_and_lr(tmp_path, data_root):
    art = tmp_path / "a"
    r = invoke("run", "train", "--quick", "--artifacts", art, "--data-root", data_root,
               "--model", "tests.fixtures.user_models:Diverging")
    out = one_paragraph(r)
    assert "Training diverged: the loss became nan at epoch 1 of 2, step 1 of 32" in out
    assert "lower --lr (now 0.003)" in out and "--schedule (now onecycle)" in out
    run = art / "tests.fixtures.user_models__Diverging"
    from pipeline.store import manifest

    rec = manifest.load(run / "stages.json")
    assert set(rec) == {"data"} and manifest.check(run, rec) == []  # the finished stage is kept, intact
    assert not (run / "train" / "model.pt").exists() and not (run / "train" / "history.json").exists()
    assert manifest.temp_leftovers(run) == []


# ---------------------------------------------------------------------------------------------- validate

def test_fp16_variant_with_infinite_logits_fails_validate_and_the_report_stays_strict(quick_copy, data_root):
    """The FP16 file's logits become +-inf (as an FP16 overflow makes them); it has no tolerance, only a budget,
    so before this it was merely "over budget", exit 0, and report.json held a bare Infinity."""
    run = quick_copy / "edgenet"
    fp16 = run / "export" / "model-fp16.onnx"
    poison(fp16, fp16, np.inf)
    record(run, "export/model-fp16.onnx")
    r = invoke("run", "validate", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 3, r.output
    out = " ".join(r.output.split())
    assert "onnx-fp16: 10000 test images give NaN or infinite logits" in out and "Traceback" not in out
    text = (run / "report.json").read_text()
    rep = check_report(strict_loads(text), "report.json")  # strict JSON (no bare NaN/Infinity) and the contract
    row = next(v for v in rep["variants"] if v["name"] == "onnx-fp16")
    assert row["nonfinite"] == 10000 and row["max_abs_diff"] is None
    assert row["accuracy"] == 0.0 and row["agreement"] == 0.0 and len(row["flips"]) == 10000
    assert all(r["variant"] != "onnx-fp16" for r in rep["recommended"].values())
    assert next(v for v in rep["variants"] if v["name"] == "onnx-fp32")["nonfinite"] == 0
    assert "NaN/inf logits (10000 images)" in (run / "report.md").read_text()


def test_torch_reference_with_nan_logits_stops_validate_without_a_report(quick_copy, data_root, monkeypatch):
    """The trained model gives NaN on some test images only (its golden inputs are fine): exit 2, no report."""
    from pipeline.measure.torch_runner import TorchRunner

    real = TorchRunner.infer_impl

    def nan_on_some(self, feed):
        out = real(self, feed)
        out["logits"][::97] = np.nan  # 11 images of every batch of 1,000
        return out

    monkeypatch.setattr(TorchRunner, "infer_impl", nan_on_some)
    run = quick_copy / "edgenet"
    (run / "report.json").unlink()  # so the validate stage runs again
    before = {k: v for k, v in snapshot(quick_copy).items() if not k.endswith(("stages.json", ".lock"))}
    r = invoke("run", "validate", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "gives NaN or infinite logits on 110 of 10000 test images" in out and "Traceback" not in out
    assert not (run / "report.json").exists()
    assert {k: v for k, v in snapshot(quick_copy).items() if not k.endswith(("stages.json", ".lock"))} == before


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_golden_logits_with_nan_are_never_reproduced(quick_copy, data_root, value):
    run = quick_copy / "edgenet"
    g = dict(np.load(run / "export" / "golden.npz"))
    g["logits"][3, 5] = value
    with open(run / "export" / "golden.npz", "wb") as f:
        np.savez(f, **g)
    record(run, "export/golden.npz")
    (run / "report.json").unlink()  # so the validate stage runs again
    r = invoke("run", "validate", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 2, r.output
    assert "no longer reproduces" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------------------------------- runtime

@pytest.mark.parametrize("factor", [np.nan, np.inf, -np.inf])
def test_classifier_refuses_nan_or_inf_logits_naming_the_model(quick_run, tmp_path, factor):
    from runtime.classifier import Classifier
    from runtime.errors import RuntimeInputError

    broken = tmp_path / "broken-model.onnx"
    poison(quick_run["dir"] / "export" / "model-fp32.onnx", broken, factor)
    pixels = np.zeros((5, 28, 28), np.uint8)
    pixels[:, 10:18, 12:15] = 255
    with Classifier(broken) as clf, pytest.raises(RuntimeInputError) as e:
        clf.predict(pixels)
    assert "broken-model.onnx returned NaN or infinite scores for 5 of 5 images" in str(e.value)


def test_predict_command_exits_2_on_a_nan_model(quick_run, tmp_path):
    from PIL import Image

    broken = tmp_path / "nan.onnx"
    poison(quick_run["dir"] / "export" / "model-fp32.onnx", broken, np.nan)
    img = tmp_path / "digit.png"
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 13:16] = 255
    Image.fromarray(a).save(img)
    r = invoke("predict", img, "--model", broken)
    assert r.exit_code == 2 and "nan.onnx returned NaN or infinite scores" in " ".join(r.output.split())
    assert "Traceback" not in r.output


# ---------------------------------------------------------------------------------------------- strict JSON

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan")])
@pytest.mark.parametrize("shape", ["top", "nested", "list"])
def test_write_json_refuses_nan_and_inf_and_writes_nothing(tmp_path, bad, shape):
    from pipeline.store.paths import write_json

    obj = {"top": bad} if shape == "top" else {"a": {"b": [1.0, {"c": bad}]}} if shape == "nested" else [0.5, bad]
    where = {"top": "['top']", "nested": "['a']['b'][1]['c']", "list": "[1]"}[shape]
    target = tmp_path / "out.json"
    target.write_text('{"old": true}\n')
    with pytest.raises(ValueError) as e:
        write_json(target, obj)
    assert where in str(e.value)
    assert target.read_text() == '{"old": true}\n' and list(tmp_path.iterdir()) == [target]


def test_written_report_is_checked_against_the_contract_before_writing(quick_run, tmp_path):
    """A report the pipeline builds wrongly is a bug (RuntimeError), and nothing is written."""
    from pipeline.report import assemble as report

    rep = json.loads(json.dumps(quick_run["report"]))
    rep["variants"][1]["accuracy"] = 1.5  # not a fraction
    with pytest.raises(RuntimeError, match=r"bug: .*variants\.1\.accuracy"):
        report.write_all(rep, tmp_path)
    assert list(tmp_path.iterdir()) == []
    rep["variants"][1]["accuracy"] = float("nan")
    with pytest.raises(ValueError, match=r"\['variants'\]\[1\]\['accuracy'\]"):
        report.write_all(rep, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_nan_loss_stops_qat_fine_tuning_naming_epoch_step_and_qat_lr(data_root, tmp_path, monkeypatch):
    """QAT fine-tunes with the training epoch function: a loss that turns NaN on its third step stops it the same
    way, naming QAT and --qat-lr, writing nothing."""
    import torch
    import torch.nn.functional as F

    from pipeline import models
    from pipeline.training import qat
    from pipeline.config import DataConfig, QuantConfig
    from pipeline.dataset import load_splits
    from pipeline.errors import PipelineError

    splits = load_splits(DataConfig(root=data_root, val_size=500, max_train=1000))
    real, calls = F.cross_entropy, []

    def diverges_on_step_3(*args, **kwargs):  # like a learning rate too high for the fake-quantized model
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverges_on_step_3)
    torch.manual_seed(0)
    final = tmp_path / "model-int8-qat.onnx"
    with pytest.raises(PipelineError) as e:
        qat.qat(models.build("tests.fixtures.user_models:TinyNet"), splits,
                QuantConfig(qat_max_images=512, qat_lr=0.05), final, {}, 17, batch_size=100, seed=0)
    msg = str(e.value)
    # 6 steps: 512 images at the training batch size given (100), not a batch size of QAT's own
    assert "QAT fine-tuning diverged: the loss became nan at epoch 1 of 1, step 3 of 6" in msg
    assert "lower --qat-lr (now 0.05)" in msg
    assert list(tmp_path.iterdir()) == []
