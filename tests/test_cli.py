"""End to end on real MNIST (`--quick`) and every bad input of the CLI."""
import json

import numpy as np
import onnx
import pytest

from tests.conftest import invoke, snapshot

REPORT_FIELDS = {"name", "backend", "provider", "precision", "path", "size_bytes", "accuracy", "agreement",
                 "max_abs_diff", "latency"}


def test_quick_run_writes_the_report_contract(quick_run):
    rep = quick_run["report"]
    assert rep["model"] == "edgenet"
    assert set(rep["train"]) >= {"epochs", "seconds", "val_accuracy", "test_accuracy"}
    assert set(rep["environment"]) >= {"python", "torch", "onnxruntime", "cpu", "threads"}
    names = [v["name"] for v in rep["variants"]]
    assert names[:2] == ["torch-fp32", "onnx-fp32"]
    for v in rep["variants"]:
        assert REPORT_FIELDS <= set(v)
        assert {"1", "256"} <= set(v["latency"])
        for stats in v["latency"].values():
            assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] and stats["throughput_per_s"] > 0
    onnx_row = rep["variants"][1]
    assert onnx_row["agreement"] == 1.0 and onnx_row["max_abs_diff"] <= 1e-4
    # one epoch on 2,000 images still learns: accuracy over all 10,000 test images is far above chance
    assert rep["variants"][0]["accuracy"] > 0.8
    assert abs(rep["variants"][0]["accuracy"] - rep["train"]["test_accuracy"]) < 1e-9
    md = (quick_run["dir"] / "report.md").read_text()
    assert "onnx-fp32" in md and "Test accuracy" in md


def test_quick_run_artifacts_describe_themselves(quick_run):
    d = quick_run["dir"]
    for rel in ("data/samples.png", "train/curves.png", "train/model.pt", "export/model-fp32.onnx",
                "export/golden.npz", "stages.json"):
        assert (d / rel).is_file(), rel
    model = onnx.load(str(d / "export" / "model-fp32.onnx"))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["model_name"] == "edgenet" and props["input_layout"] == "NCHW"
    assert json.loads(props["classes"]) == [str(i) for i in range(10)]
    assert len(json.loads(props["normalization_mean"])) == 1 and len(props["checkpoint_sha256"]) == 64
    from pipeline.layout import sha256_file

    assert props["checkpoint_sha256"] == sha256_file(d / "train" / "model.pt")
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")  # dynamic batch
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    golden = np.load(d / "export" / "golden.npz")
    assert golden["input"].shape == (64, 1, 28, 28) and golden["logits"].shape == (64, 10)


def test_rerun_skips_finished_stages_and_force_redoes_them(quick_copy, data_root):
    before = snapshot(quick_copy)
    r = invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    assert r.output.count("up to date, skipped") == 6  # data, train, export, quantize, engines, validate
    assert snapshot(quick_copy) == before
    r = invoke("run", "export", "--quick", "--force", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0 and "skipped" not in r.output


def test_changed_config_reruns_from_the_changed_stage(quick_copy, data_root):
    r = invoke("run", "train", "--quick", "--seed", "1", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    assert "data: up to date" in r.output and "train: up to date" not in r.output


def test_foreign_checkpoint_is_refused_with_a_paragraph(quick_copy, data_root):
    import torch

    ckpt = quick_copy / "edgenet" / "train" / "model.pt"
    torch.save({"weights": torch.zeros(3)}, ckpt)
    from pipeline.layout import sha256_file

    stages = quick_copy / "edgenet" / "stages.json"
    rec = json.loads(stages.read_text())
    rec["train"]["outputs"]["train/model.pt"] = sha256_file(ckpt)  # a foreign file recorded as ours
    stages.write_text(json.dumps(rec))
    before = snapshot(quick_copy)
    r = invoke("run", "export", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 2
    assert "not written by this pipeline" in r.output and "Traceback" not in r.output
    assert snapshot(quick_copy) == before


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet9000"], "Unknown model 'resnet9000'. Valid names: edgenet"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--optimizer", "lion"], "--optimizer must be one of adamw, adam, sgd"),
    (["--schedule", "warp"], "--schedule must be one of"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--device", "tpu"], "--device must be one of auto, cpu, cuda"),
    (["--val-size", "0"], "--val-size must be between"),
    (["--batch-size", "0"], "--batch-size must be in"),
])
def test_invalid_options_fail_before_writing_anything(tmp_path, data_root, args, message):
    r = invoke("run", "all", "--artifacts", tmp_path / "a", "--data-root", data_root, *args)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("*.onnx"))


def test_unknown_stage(tmp_path, data_root):
    r = invoke("run", "deploy", "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2 and "Unknown stage 'deploy'" in r.output


def test_type_errors_are_usage_errors_not_tracebacks(tmp_path):
    r = invoke("run", "all", "--epochs", "many", "--artifacts", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_unwritable_artifacts_directory(tmp_path, data_root):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    r = invoke("run", "all", "--quick", "--artifacts", blocker, "--data-root", data_root)
    assert r.exit_code == 2 and "is not writable" in r.output
    assert blocker.read_text() == "I am a file, not a folder"


def test_corrupted_data_is_reported(tmp_path, data_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    f = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:1000])
    r = invoke("run", "data", "--artifacts", tmp_path / "a", "--data-root", root)
    assert r.exit_code == 2 and "corrupted" in r.output and "Traceback" not in r.output


def test_user_model_runs_end_to_end(tmp_path, data_root):
    r = invoke("run", "all", "--quick", "--model", "tests.fixtures.user_models:TinyNet",
               "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "tests.fixtures.user_models__TinyNet" / "report.json").read_text())
    assert rep["variants"][1]["agreement"] == 1.0


def test_models_command_lists_params_and_macs():
    r = invoke("models")
    assert r.exit_code == 0
    for name in ("edgenet", "mlp", "mlp_small", "cnn", "cnn_bn", "lenet5"):
        assert name in r.output
    assert "61,706" in r.output  # LeNet-5's parameter count


def test_concurrent_run_is_refused_and_a_killed_holder_frees_the_lock(quick_copy, data_root):
    import os
    import signal
    import subprocess
    import sys
    import time

    lock = quick_copy / "edgenet" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open(r'{lock}', os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.pwrite(fd, str(os.getpid()).encode(), 0)\n"
        "print('locked', flush=True); time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(quick_copy)
        r = invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
        assert r.exit_code == 2 and f"(pid {holder.pid})" in r.output and "Traceback" not in r.output
        assert snapshot(quick_copy) == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a run killed without any cleanup
        holder.wait()
    time.sleep(0.1)
    r = invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0, r.output
