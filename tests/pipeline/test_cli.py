"""pipeline/cli.py: `pipeline run` end to end on real MNIST (`--quick`), and every bad input of the CLI: options
refused before anything is written, names printed literally, outputs that cannot be written. A command's own
work is tested with the module that does it (`bundle`/`verify`: tests/pipeline/bundle/test_build.py, `report`:
test_report.py, `bench`: tests/runtime/test_bench.py, `predict`: tests/runtime/test_classifier.py, `check-qdq`:
tests/exporters/test_qdq.py); the option values' checks without the CLI: tests/pipeline/test_config.py."""
import errno
import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from tests.helpers import invoke, snapshot

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
    from pipeline.store.paths import sha256_file

    assert props["checkpoint_sha256"] == sha256_file(d / "train" / "model.pt")
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")  # dynamic batch
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    golden = np.load(d / "export" / "golden.npz")
    assert golden["input"].shape == (64, 1, 28, 28) and golden["logits"].shape == (64, 10)


def test_rerun_skips_finished_stages_and_force_redoes_them(quick_copy, data_root):
    before = snapshot(quick_copy)
    r = invoke("run", "all", "--quick", "--browser", "--artifacts", quick_copy, "--data-root", data_root)  # as made
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
    from pipeline.store.paths import sha256_file

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
    assert not (tmp_path / "a").exists()  # refused while building the config, before any folder is made


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
    from pipeline import models

    r = invoke("models")
    assert r.exit_code == 0
    assert "61,706" in r.output  # LeNet-5's parameter count, as the README states it
    for name, spec in models.REGISTRY.items():
        m = spec.build()
        row = next((line for line in r.output.splitlines() if f" {name} " in line), "")
        assert f"{models.param_count(m):,}" in row and f"{models.macs_per_image(m):,}" in row, (name, r.output)


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


# ---------------------------------------------------------------------------- user text is text, not markup
#: file and folder names that rich would read as markup (or a terminal as a colour change); the slashes of
#: "[link=file:///etc]x" make folders, "[link=file:" and "etc]x", and pathlib prints them as "[link=file:/etc]x"
MARKUP_NAMES = ["[bold]x", "[/x]", "a[red]b[/red]", "[link=file:///etc]x", "\x1b[31mred", "[/]", "x[/bold]"]


def _as_printed(name: str) -> str:
    """What the CLI prints for a name: itself, with control characters made visible (ESC as the 4 characters \\x1b)."""
    return name.replace("\x1b", "\\x1b")


def _flat(r) -> str:
    return " ".join(r.output.split())


def _printed(r, *names) -> None:
    out = _flat(r)
    assert "Traceback" not in out and "\x1b" not in r.output, r.output
    for name in names:
        assert _as_printed(name) in out, (name, r.output)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory, data_root):
    from PIL import Image

    raw = data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    im = np.frombuffer(raw.read_bytes(), np.uint8, offset=16)[:784].reshape(28, 28)
    path = tmp_path_factory.mktemp("png") / "digit.png"
    Image.fromarray(255 - im).resize((84, 84)).save(path)
    return path


@pytest.mark.parametrize("name", MARKUP_NAMES, ids=repr)
def test_missing_paths_with_markup_names_are_named_literally(tmp_path, name):
    folder = tmp_path / name
    cases = [(("verify", folder), "does not exist"),
             (("bench", tmp_path / f"{name}.onnx"), "does not exist"),
             (("predict", tmp_path / f"{name}.png"), "does not exist"),
             (("report", folder), "does not exist"),
             (("check-qdq", tmp_path / f"{name}.onnx"), "does not exist"),
             (("bundle", "--target", "cpu", "--artifacts", folder), "missing or unreadable")]
    for args, message in cases:
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert _flat(r).startswith("error: ") and message in _flat(r), r.output
        _printed(r, str(args[-1]))


@pytest.mark.parametrize("name", MARKUP_NAMES, ids=repr)
def test_predict_and_bench_print_markup_names_literally(quick_run, digit_png, tmp_path, name):
    import shutil

    model = tmp_path / f"{name}.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(quick_run["dir"] / "export" / "model-fp32.onnx", model)
    image = tmp_path / f"{name}.png"
    shutil.copy(digit_png, image)
    r = invoke("predict", image, "--model", model, "--top", "99")  # --top above the 10 classes shows them all
    assert r.exit_code == 0, r.output
    _printed(r, image.name, model.name)
    assert "top 10" in r.output
    out = tmp_path / name / "bench.json"
    r = invoke("bench", model, "--batch", "1", "--iterations", "3", "--duration", "0.05", "--warmup", "1",
               "--warmup-seconds", "0", "--json", out)
    assert r.exit_code == 0, r.output
    _printed(r, model.name)
    assert json.loads(out.read_text())["models"][0]["model"] == str(model)


@pytest.mark.parametrize("name", MARKUP_NAMES, ids=repr)
def test_report_verify_and_check_qdq_print_markup_names_literally(quick_copy, tmp_path, name):
    run = quick_copy / name
    run.parent.mkdir(parents=True, exist_ok=True)
    (quick_copy / "edgenet").rename(run)
    r = invoke("verify", run)
    assert r.exit_code == 0, r.output
    _printed(r, str(run))
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    _printed(r, str(run / "report.md"))
    qdq = run / "export" / f"{name}.onnx"
    qdq.parent.mkdir(parents=True, exist_ok=True)
    (run / "export" / "model-int8-ptq.onnx").rename(qdq)
    r = invoke("check-qdq", qdq)
    assert r.exit_code == 0, r.output
    _printed(r, str(qdq))
    r = invoke("verify", run)  # the renamed file is now missing: the failure paragraph names the folder
    assert r.exit_code == 1 and "missing: export/model-int8-ptq.onnx" in _flat(r)
    _printed(r, str(run))


def test_run_and_bundle_print_markup_folders_literally(quick_copy, data_root, tmp_path):
    name = "".join(MARKUP_NAMES)  # every kind at once: a full rerun and a bundle take seconds each
    artifacts = tmp_path / name
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    quick_copy.rename(artifacts)
    r = invoke("run", "all", "--quick", "--artifacts", artifacts, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    _printed(r, str(artifacts / "edgenet" / "report.md"))
    out = tmp_path / f"out{name}"
    r = invoke("bundle", "--target", "cpu", "--artifacts", artifacts, "--out", out, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    _printed(r, str(out / "edgenet-cpu-bundle"))


# ---------------------------------------------------------------------------- outputs that cannot be written

FAST_BENCH = ("--batch", "1", "--iterations", "3", "--duration", "0.05", "--warmup", "1", "--warmup-seconds", "0")


def _mount(*args) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here ({r.stderr.strip()}); the injected-EROFS tests cover read-only folders")


@pytest.fixture
def read_only(tmp_path):
    """``make(src=None)``: a real read-only filesystem (a tmpfs remounted ro), holding a copy of ``src``.
    Permission bits would not do: the tests run as root, which ignores them."""
    mounts = []

    def make(src=None):
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root and mount(8); the injected-EROFS tests cover read-only folders")
        mnt = tmp_path / f"ro{len(mounts)}"
        mnt.mkdir()
        _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt))
        mounts.append(mnt)
        if src is not None:
            shutil.copytree(src, mnt / src.name)
        _mount("-o", "remount,ro", str(mnt))
        return mnt

    yield make
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _says_read_only(r, *, code=2) -> str:
    out = _flat(r)
    assert r.exit_code == code and out.startswith("error: "), r.output
    assert "read-only file system (EROFS)" in out, r.output
    assert "Free some space" not in out and "training resumes" not in out and "Traceback" not in out
    return out


def test_read_only_targets_are_refused_before_any_work(quick_run, read_only, data_root):
    ro = read_only()
    model = quick_run["dir"] / "export" / "model-fp32.onnx"
    r = invoke("bench", model, *FAST_BENCH, "--json", ro / "b.json")
    out = _says_read_only(r)
    assert f"--json {ro / 'b.json'} is not writable: {ro} is on a read-only file system (EROFS)" in out
    assert "Timing method" not in out  # refused before benchmarking, not after
    r = invoke("bench", model, *FAST_BENCH, "--json", ro / "new" / "deeper" / "b.json")
    _says_read_only(r)
    r = invoke("bundle", "--target", "cpu", "--artifacts", quick_run["artifacts"], "--out", ro / "bundles",
               "--data-root", data_root)
    assert f"--out {ro / 'bundles'} is not writable" in _says_read_only(r)
    r = invoke("run", "all", "--quick", "--artifacts", ro / "a", "--data-root", data_root)
    assert f"--artifacts {ro / 'a' / 'edgenet'} is not writable" in _says_read_only(r)


def test_report_in_a_read_only_run_folder_says_so(quick_run, read_only):
    ro = read_only(quick_run["dir"])
    run = ro / "edgenet"
    before = snapshot(run)
    r = invoke("report", run)
    out = _says_read_only(r)
    assert f"Could not write {run}" in out and "it is on a read-only file system (EROFS)" in out and "Choose a writable run folder (copy it elsewhere and run " \
        "`pipeline report COPY`)" in out and "report.json is only read" in out
    assert snapshot(run) == before


@pytest.mark.parametrize("code, says", [
    (errno.EROFS, "is on a read-only file system (EROFS). Nothing half-written"),
    (errno.EACCES, "is not writable by this user: permission denied (EACCES)"),
    (errno.EPERM, "is not writable by this user: permission denied (EPERM)"),
    (errno.ENOSPC, "No space left on device (ENOSPC)"),
])
def test_refused_writes_are_worded_for_the_command(quick_copy, monkeypatch, tmp_path, code, says):
    """The write itself fails (injected into os.replace, after every check passed): report and bench --json
    say what happened and what to do for *that* command, never that training resumes."""
    run = quick_copy / "edgenet"
    model = run / "export" / "model-fp32.onnx"
    before = snapshot(run)

    def refused(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", refused)
    reports = invoke("report", run)
    benches = invoke("bench", model, *FAST_BENCH, "--json", tmp_path / "b.json")
    monkeypatch.undo()
    for r, todo in ((reports, "run folder (copy it elsewhere and run `pipeline report COPY`)"),
                    (benches, "--json path")):
        out = _flat(r)
        assert r.exit_code == 2 and "error: Could not write " in out and says in out, r.output
        assert "training resumes" not in out and "Traceback" not in out
        assert (f"Free some space (or choose another {todo})" in out) == (code == errno.ENOSPC)
        assert (f"Choose a writable {todo}" in out) == (code != errno.ENOSPC)
    assert "the results table above was printed" in _flat(benches) and "Timing method" in benches.output
    assert snapshot(run) == before and not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("under, says", [
    ("", "is a folder; give a file name such as"),
    ("b.json", "is a file, not a folder"),
    ("deeper/b.json", "is a file, not a folder"),
], ids=["a-folder", "under-a-file", "deep-under-a-file"])
def test_bench_json_that_cannot_be_a_file_is_refused_before_timing(quick_run, tmp_path, under, says):
    t = tmp_path / "t"
    if under:
        t.write_text("x")
    else:
        t.mkdir()
    target = t / under if under else t
    r = invoke("bench", quick_run["dir"] / "export" / "model-fp32.onnx", *FAST_BENCH, "--json", target)
    out = _flat(r)
    assert r.exit_code == 2 and f"--json {target} is not writable: " in out and says in out, r.output
    assert "Timing method" not in out and "Traceback" not in out


def test_bundle_out_that_is_a_file_is_refused_before_work(quick_run, tmp_path, data_root):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out_dir in (blocker, blocker / "sub"):
        r = invoke("bundle", "--target", "cpu", "--artifacts", quick_run["artifacts"], "--out", out_dir,
                   "--data-root", data_root)
        assert r.exit_code == 2 and f"--out {out_dir} is not writable" in _flat(r) and "is a file, not a folder" \
            in _flat(r), r.output
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------------------- absurd numbers
@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr must be a positive number below 10, got nan"),
    (["--lr", "inf"], "--lr must be a positive number below 10, got inf"),
    (["--lr", "-inf"], "--lr must be a positive number"),
    (["--weight-decay", "nan"], "--weight-decay must be a number from 0 to 1, got nan"),
    (["--weight-decay", "inf"], "--weight-decay must be a number from 0 to 1, got inf"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a number from 0 to 1"),
    (["--label-smoothing", "nan"], "--label-smoothing must be in [0, 1), got nan"),
    (["--label-smoothing", "inf"], "--label-smoothing must be in [0, 1)"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--qat-lr", "nan"], "--qat-lr must be in (0, 1), got nan"),
    (["--qat-lr", "inf"], "--qat-lr must be in (0, 1)"),
    (["--seed", "-1"], "--seed must be from 0 to 9223372036854775807 (2**63 - 1), got -1"),
    (["--seed", str(2**63)], "--seed must be from 0 to"),
    (["--seed", str(2**64)], "--seed must be from 0 to"),
    (["--seed", str(10**40)], "--seed must be from 0 to"),
    (["--threads", "-1"], "--threads must be from 0 (all cores) to 1024, got -1"),
    (["--threads", str(10**9)], "--threads must be from 0 (all cores) to 1024"),
    (["--calib-size", str(10**9)], "--calib-size 1000000000 is larger than the training split (4000 images)"),
    (["--calib-size", "4001"], "--calib-size 4001 is larger than the training split (4000 images)"),
    (["--val-size", str(10**12)], "--val-size must be between 1 and 30000"),
    (["--batch-size", str(10**12)], "--batch-size must be in 1..8192"),
    (["--epochs", "-5"], "--epochs must be at least 1"),
])
def test_absurd_numbers_fail_before_writing_anything(tmp_path, data_root, args, message):
    # `run data --quick`: were a check missing, only the data stage would run, never a training
    r = invoke("run", "data", "--quick", "--artifacts", tmp_path / "a", "--data-root", data_root, *args)
    out = _flat(r)
    assert r.exit_code == 2 and out.startswith("error: ") and message in out and "Traceback" not in out, r.output
    assert not (tmp_path / "a").exists()


def test_calib_size_larger_than_split_fails_cleanly(quick_copy, data_root):
    before = snapshot(quick_copy)
    r = invoke("run", "all", "--quick", "--calib-size", "100000", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 2 and "larger than the training split" in r.output and "Traceback" not in r.output
    after = snapshot(quick_copy)
    assert {k: v for k, v in after.items() if k in before} == before


def test_unknown_calibration_method_and_quant_mode(tmp_path, data_root):
    for args, msg in ((["--calib-method", "magic"], "--calib-method must be one of minmax, entropy, percentile"),
                      (["--quant", "int4"], "--quant must be one of none, ptq, qat, both")):
        r = invoke("run", "all", "--artifacts", tmp_path, "--data-root", data_root, *args)
        assert r.exit_code == 2 and msg in r.output


def test_top_must_be_positive(tmp_path):
    r = invoke("predict", tmp_path / "x.png", "--top", "0")
    assert r.exit_code == 2 and "--top must be at least 1" in r.output


@pytest.mark.parametrize("command", ["predict", "bench"])
def test_predict_and_bench_refuse_an_altered_artifact_of_a_run(quick_copy, tmp_path, command):
    """Every command that reads a run's artifact checks it against the manifest first; a file no manifest
    records (a copy elsewhere, the user's own model) is still accepted."""
    import shutil

    from PIL import Image

    model = quick_copy / "edgenet" / "export" / "model-fp32.onnx"
    digit = tmp_path / "d.png"
    pixels = np.zeros((28, 28), np.uint8)
    pixels[5:23, 12:16] = 255
    Image.fromarray(pixels).save(digit)
    args = {"predict": lambda m: ("predict", digit, "--model", m),
            "bench": lambda m: ("bench", m, "--batch", "1", "--duration", "0.05", "--warmup-seconds", "0")}[command]
    assert invoke(*args(model)).exit_code == 0  # intact: accepted
    mine = tmp_path / "mine.onnx"
    shutil.copy(model, mine)
    blob = bytearray(model.read_bytes())
    blob[-3] ^= 0x01  # the last bytes hold metadata: the model still loads and runs, but it is not what was recorded
    model.write_bytes(bytes(blob))
    before = snapshot(quick_copy)
    r = invoke(*args(model))
    assert r.exit_code == 2 and "refuses to read" in r.output and "model-fp32.onnx" in r.output, r.output
    assert snapshot(quick_copy) == before
    mine.write_bytes(bytes(blob))  # the same bytes outside any run folder: the user's own file
    r = invoke(*args(mine))
    assert r.exit_code != 2 or "refuses to read" not in r.output, r.output
