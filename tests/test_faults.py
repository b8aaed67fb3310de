"""Fault injection: kills in every stage, full disks, damaged artifacts, leftovers of killed writes.

Each test asserts the exit code, the message, and that what was written before is intact. The kills are real
signals to a real ``pipeline run all --quick`` process on real MNIST; the full disks are a file-size limit
(``RLIMIT_FSIZE``: works anywhere), a 1 MiB tmpfs (where this process may mount one) and an injected ENOSPC.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.store import manifest
from tests.helpers import Child, invoke, snapshot

ROOT = Path(__file__).resolve().parents[1]


def started(stage: str) -> str:
    """The line a stage logs when it starts working, read from the stage table (not restated here)."""
    from pipeline.stages import STAGES

    return next(f"{s.name}: {s.doc}" for s in STAGES if s.name == stage)


def _recorded(run: Path) -> dict[str, bytes]:
    """The bytes of every file the manifest lists: what a later run must never change or lose."""
    rec = manifest.load(run / "stages.json")
    return {rel: (run / rel).read_bytes() for info in rec.values() for rel in info["outputs"]}


def _accuracies(report: dict) -> dict[str, float]:
    return {v["name"]: v["accuracy"] for v in report["variants"]}


def test_killed_in_each_working_stage_resumes_to_the_same_result(tmp_path, data_root, quick_run):
    """SIGKILL in data, train (after epoch 1 was saved), export, quantize and validate, SIGINT in train; each
    rerun keeps what was finished, and the last one ends with the uninterrupted run's accuracies. (``engines``
    does no work without TensorRT, so there is nothing to kill there on this machine.)"""
    art = tmp_path / "artifacts"
    run = art / "edgenet"
    args = ("run", "all", "--quick", "--artifacts", art, "--data-root", data_root)
    kills = [  # (what to wait for, extra delay, signal)
        ("data", lambda p: started("data") in p.output, 0.0, signal.SIGKILL),
        ("train", lambda p: (run / "train" / "resume.pt").is_file(), 0.0, signal.SIGKILL),
        ("train", lambda p: "resuming after epoch 1" in p.output, 0.0, signal.SIGINT),
        ("export", lambda p: started("export") in p.output, 0.5, signal.SIGKILL),
        ("quantize", lambda p: started("quantize") in p.output, 1.0, signal.SIGKILL),
        ("validate", lambda p: started("validate") in p.output, 1.0, signal.SIGKILL),
    ]
    for i, (stage, cond, delay, sig) in enumerate(kills):
        before = _recorded(run) if run.exists() else {}
        p = Child(*args)
        p.wait_for(lambda: cond(p))
        if i == 1:  # a second run on the same folder meanwhile is refused and changes nothing
            r = invoke(*args)
            assert r.exit_code == 2 and "Another `pipeline run`" in r.output, r.output
        time.sleep(delay)
        p.proc.send_signal(sig)
        rc = p.finish()
        if sig == signal.SIGINT:
            assert rc == 130 and "interrupted:" in p.output and "Traceback" not in p.output, p.output
        else:
            assert rc == -signal.SIGKILL, p.output
        assert not (run / "stages.json").is_file() or stage not in manifest.load(run / "stages.json"), \
            f"the kill came after {stage} had finished, so it proves nothing about {stage}"
        after = {rel: (run / rel).read_bytes() for rel in before if (run / rel).is_file()}
        assert after == before, f"a file recorded before the kill in {stage} changed or vanished"
        if (run / "stages.json").is_file():
            problems = manifest.check(run, manifest.load(run / "stages.json"))
            assert problems == [], [str(x) for x in problems]
    p = Child(*args)
    assert p.finish() == 0, p.output
    for stage in ("data", "train", "export", "quantize"):
        assert f"{stage}: up to date, skipped" in p.output, p.output
    report = json.loads((run / "report.json").read_text())
    # the quick run also measured the browser rows (--browser); this run, under the --quick budget, did not
    assert _accuracies(report) == {k: v for k, v in _accuracies(quick_run["report"]).items() if not k.startswith("web-")}
    assert report["train"]["test_accuracy"] == quick_run["report"]["train"]["test_accuracy"]
    assert not (run / "train" / "resume.pt").exists() and manifest.temp_leftovers(run) == []
    r = invoke("verify", run)
    assert r.exit_code == 0, r.output


def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_file_size_limit_fails_cleanly_and_keeps_everything(quick_copy, data_root):
    """Like a full disk: the FP32 ONNX (~600 kB) cannot be written under a 64 kB limit per file."""
    run = quick_copy / "edgenet"
    (run / "export" / "model-fp16.onnx").unlink()  # the export stage must run again
    before = snapshot(quick_copy)
    p = Child("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root,
                 preexec_fn=_limit_file_size(64 * 1024))
    assert p.finish() == 2, p.output
    out = " ".join(p.output.split())
    assert "Could not write" in out and "model-fp32.onnx" in out and "EFBIG" in out and "Traceback" not in out
    after = snapshot(quick_copy)
    skip = ("edgenet/stages.json", "edgenet/.lock")  # the lock holds the last run's pid
    assert {k: v for k, v in after.items() if k not in skip} == {k: v for k, v in before.items() if k not in skip}
    assert manifest.check(run, manifest.load(run / "stages.json")) == []  # export's entry was withdrawn first
    assert "export" not in manifest.load(run / "stages.json")


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where this process is allowed to mount one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8); the RLIMIT_FSIZE and ENOSPC tests cover this")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the RLIMIT_FSIZE and ENOSPC tests cover this")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_filesystem_stops_in_train_and_keeps_the_data_stage(tiny_fs, data_root):
    p = Child("run", "all", "--quick", "--artifacts", tiny_fs, "--data-root", data_root)
    assert p.finish() == 2, p.output
    out = " ".join(p.output.split())
    assert "Could not write" in out and "No space left on device (ENOSPC)" in out and "Traceback" not in out
    run = tiny_fs / "edgenet"
    rec = manifest.load(run / "stages.json")
    assert list(rec) == ["data"] and manifest.check(run, rec) == []
    assert manifest.temp_leftovers(run) == []  # the failed write's temp file was removed


def test_injected_enospc_keeps_the_old_report(quick_copy, monkeypatch):
    run = quick_copy / "edgenet"
    # the old pages differ from what a rebuild writes, so "kept" cannot pass by rewriting identical bytes
    (run / "report.md").write_text("the old report\n")
    (run / "report.html").write_text("<p>the old report</p>\n")
    before = snapshot(quick_copy)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    r = invoke("report", run)
    assert r.exit_code == 2 and "No space left on device (ENOSPC)" in " ".join(r.output.split()), r.output
    assert snapshot(quick_copy) == before  # no temp file, no half-written report


@pytest.mark.parametrize("damage, kind", [
    ("flip", "altered"), ("truncate", "truncated"), ("append", "altered"), ("empty", "truncated")])
@pytest.mark.parametrize("rel", ["train/model.pt", "export/model-fp32.onnx", "quantize/sqnr.json"])
def test_damaged_artifact_is_refused_and_nothing_changes(quick_copy, data_root, rel, damage, kind):
    run = quick_copy / "edgenet"
    f = run / rel
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # one bit
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "append":
        data += b"\0"
    else:
        data = b""
    f.write_bytes(bytes(data))
    before = snapshot(quick_copy)
    r = invoke("verify", run)
    assert r.exit_code == 1 and f"{kind}" in r.output and rel in r.output, r.output
    r = invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and rel in out and kind in out and "Nothing was changed" in out, r.output
    assert "Traceback" not in r.output
    assert snapshot(quick_copy) == before


def test_deleted_artifact_is_rebuilt_by_its_stage(quick_copy, data_root):
    run = quick_copy / "edgenet"
    (run / "export" / "golden.npz").unlink()
    r = invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    assert "export: redone, missing: export/golden.npz" in " ".join(r.output.split())
    assert (run / "export" / "golden.npz").is_file()
    assert invoke("verify", run).exit_code == 0


def test_tampered_report_json_is_not_rebuilt_into_a_report(quick_copy):
    run = quick_copy / "edgenet"
    rep = json.loads((run / "report.json").read_text())
    rep["variants"][1]["accuracy"] = 1.0  # a nicer number than was measured
    (run / "report.json").write_text(json.dumps(rep))
    before = snapshot(quick_copy)
    r = invoke("report", run)
    assert r.exit_code == 2 and "report.json" in r.output and "Nothing was changed" in r.output, r.output
    assert snapshot(quick_copy) == before


def test_leftover_temp_files_of_a_killed_write_are_removed(quick_copy, data_root):
    run = quick_copy / "edgenet"
    junk = [run / "train" / ".model.pt.k2j3.tmp", run / "export" / ".model-fp32.onnx.x9.tmp", run / ".stages.json.a.tmp"]
    for j in junk:
        j.write_bytes(b"half a file")
    assert invoke("verify", run).exit_code == 0  # not artifacts: verify ignores them
    r = invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0 and "removed 3 partial file(s)" in r.output, r.output
    assert not any(j.exists() for j in junk)


@pytest.mark.parametrize("content", [b"", b"{\"data\": ", b"[1, 2]", b"\x00\xff garbage", b"{\"data\": 3}"])
def test_damaged_manifest_is_refused_and_nothing_changes(quick_copy, data_root, content):
    run = quick_copy / "edgenet"
    (run / "stages.json").write_bytes(content)
    before = snapshot(quick_copy)
    r = invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "stages.json is unreadable" in out and "Nothing was changed" in out, r.output
    r = invoke("verify", run)
    assert r.exit_code == 2 and "unreadable" in r.output
    assert snapshot(quick_copy) == before


def test_force_replaces_a_damaged_manifest(quick_copy, data_root):
    run = quick_copy / "edgenet"
    (run / "stages.json").write_bytes(b"\x00garbage")
    r = invoke("run", "data", "--quick", "--force", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0 and "unreadable manifest" in r.output, r.output
    assert list(manifest.load(run / "stages.json")) == ["data"]
