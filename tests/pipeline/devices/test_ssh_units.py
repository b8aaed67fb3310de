"""The recording contract (pipeline/devices/record.py) and ssh's argv and fault classes (pipeline/devices/ssh.py),
without a server or a run."""
from __future__ import annotations

import json
import shlex

import pytest

from pipeline.devices import ssh
from pipeline.store import devices as record
from pipeline.errors import PipelineError


def measurement(name="jetson-orin", **over):
    m = {"schema": 1, "name": name, "source": "ssh", "target": "jetson", "measured_at": "2026-12-06T07:00:00Z",
         "bundle": {"manifest_sha256": "a" * 64, "model": "edgenet", "files": {"models/model-fp32.onnx": "b" * 64}},
         "device": {"host": "orin", "runtimes": {"onnxruntime": "1.20"}},
         "variants": {"onnx-fp32": {"accuracy": 0.99, "agreement": 1.0, "flipped": [], "max_abs_logit_diff": 1e-6,
                                    "latency_ms": {"1": {"p50": 0.1, "p90": 0.2, "p99": 0.3}},
                                    "throughput_ips": {"1": 9000.0}, "equals_report": True}}}
    m.update(over)
    return m


def test_record_writes_one_file_per_device_and_replaces_it(tmp_path):
    p = record.record(tmp_path, measurement("Chrome 131 on Android!"))
    assert p == tmp_path / "devices" / "chrome-131-on-android.json"
    record.record(tmp_path, measurement("Chrome 131 on Android!", target="browser"))
    assert [m["target"] for m in record.load_all(tmp_path)] == ["browser"]
    assert record.slug("../../x") == "x" and record.slug("$$$") == "device" and len(record.slug("a" * 99)) == 64


@pytest.mark.parametrize("bad, why", [
    ({"variants": {"v": {"accuracy": float("nan"), "agreement": 1.0, "flipped": [], "equals_report": True}}},
     "accuracy must be a finite fraction"),
    ({"variants": {"v": {"accuracy": 1.5, "agreement": 1.0, "flipped": [], "equals_report": True}}}, "accuracy"),
    ({"name": "bad\x1b[2Jname"}, "control characters"),
    ({"bundle": {"manifest_sha256": "xyz", "model": "edgenet"}}, "manifest_sha256"),
    ({"source": "carrier pigeon"}, "source must be"),
    ({"measured_at": "yesterday"}, "measured_at"),
])
def test_record_refuses_a_measurement_that_breaks_the_contract_and_writes_nothing(tmp_path, bad, why):
    with pytest.raises(record.MeasurementError, match=why):
        record.record(tmp_path, measurement(**bad))
    assert not (tmp_path / "devices").exists()


def test_load_all_skips_a_damaged_recording_and_marks_a_changed_model_stale(tmp_path):
    record.record(tmp_path, measurement("good"))
    (tmp_path / "devices" / "bad.json").write_text('{"schema": 1, "accuracy": NaN}')
    assert [m["name"] for m in record.load_all(tmp_path)] == ["good"]
    assert record.is_stale(measurement(), {"models/model-fp32.onnx": "b" * 64}) is False
    assert record.is_stale(measurement(), {"models/model-fp32.onnx": "c" * 64}) is True
    assert record.is_stale(measurement(), {}) is True  # the file is gone from the run


@pytest.mark.parametrize("host", ["a b", "q'uo\"te", "$(touch x)", "h;touch x", "-oProxyCommand=touch x"])
def test_the_host_is_one_argument_after_double_dash_and_the_remote_command_is_quoted(host):
    argv = ssh.ssh_argv(ssh.SshConfig(), host, ["python3", "-", "probe", "--dir", "a dir;rm -rf ~"])
    assert argv[argv.index("--") + 1] == host and argv[0] == "ssh"
    assert shlex.split(argv[-1]) == ["python3", "-", "probe", "--dir", "a dir;rm -rf ~"]
    assert "BatchMode=yes" in argv


@pytest.mark.parametrize("opt", ["StrictHostKeyChecking=no", "stricthostkeychecking = accept-new",
                                 "UserKnownHostsFile=/dev/null"])
def test_options_that_turn_host_key_checking_off_are_refused(opt):
    with pytest.raises(PipelineError, match="never does"):
        ssh.SshConfig(options=(opt,)).common()


@pytest.mark.parametrize("path", ["a b", "$(x)", "../up", "-rf", "x;y"])
def test_unsafe_remote_dirs_are_refused(path):
    with pytest.raises(PipelineError, match="--remote-dir"):
        ssh.check_remote_dir(path)


@pytest.mark.parametrize("stderr, kind", [
    ("ssh: connect to host 10.0.0.9 port 22: Connection timed out", "timeout"),
    ("ssh: connect to host 127.0.0.1 port 1: Connection refused", "refused"),
    ("ssh: Could not resolve hostname nohost: Name or service not known", "resolve"),
    ("root@127.0.0.1: Permission denied (publickey).", "auth"),
    ("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\n"
     "Host key verification failed.", "unknown_key"),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.", "changed_key"),
    ("Connection to 127.0.0.1 closed by remote host.", "dropped"),
    ("scp: write remote \"x\": No space left on device", "disk"),
])
def test_ssh_failures_are_classified_and_each_gets_its_paragraph(stderr, kind):
    assert ssh.classify(stderr) == kind
    err = ssh.fault("box", "copying the bundle", ssh.Outcome(255, [], stderr), ssh.SshConfig())
    assert err.kind == kind and "Nothing was recorded" in str(err) and "box" in str(err)
    assert "\n" not in str(err)
