"""`pipeline device run` over a real OpenSSH server on 127.0.0.1, the device a bare venv (numpy + onnxruntime).

Every fault test checks that nothing was recorded (no devices/ folder, report.json unchanged)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import invoke
from tests.pipeline.devices import sshd as _sshd


def run_device(artifacts, ssh_args, *hosts, target="cpu", extra=()):
    return invoke("device", "run", "--target", target, "--artifacts", artifacts, *ssh_args, *extra, "--", *hosts)


def nothing_recorded(artifacts: Path, report_before: bytes) -> None:
    run = artifacts / "edgenet"
    assert not (run / "devices").exists() or not list((run / "devices").iterdir())
    assert (run / "report.json").read_bytes() == report_before


def test_device_run_cpu_records_the_devices_rows_matching_the_local_figures(quick_copy, ssh_args, data_root):
    result = run_device(quick_copy, ssh_args + ["--data-root", data_root], "dev-box", extra=["--name", "test box"])
    assert result.exit_code == 0, result.output
    assert "bundle hashes: all files match MANIFEST.json" in result.output  # checked on the device before running
    run = quick_copy / "edgenet"
    rep = json.loads((run / "report.json").read_text())
    (m,) = rep["devices"]["measurements"]
    assert m["name"] == "test box" and m["source"] == "ssh" and m["target"] == "cpu" and not m["stale"]
    assert m["device"]["host"] == "dev-box" and "onnxruntime" in m["device"]["runtimes"]
    assert "torch" not in m["device"]["runtimes"]
    rows = {r["name"]: r for r in rep["variants"]}
    assert {v["variant"] for v in m["variants"].values()} >= {"onnx-fp32", "onnx-int8-cpu"}
    for v in m["variants"].values():
        row = rows[v["variant"]]
        assert v["accuracy"] == row["accuracy"] and v["agreement"] == row["agreement"]
        assert v["flipped"] == row["flips"] and v["equals_report"] is True
        assert set(v["latency_ms"]) <= set(row["latency"]) and v["latency_ms"]["1"]["p50"] > 0
    assert rep["devices"]["recommended"]["cpu"]["device"] == "test box"
    md = (run / "report.md").read_text()
    assert "## Measured on devices" in md and "### test box (cpu, ssh," in md
    ship = md.split("## What to ship", 1)[1].split("##", 1)[0]
    assert "measured on the device test box (ssh," in ship
    assert "Measured on devices" in (run / "report.html").read_text()
    # the run stays intact (the report's new hashes are recorded), and `pipeline report` keeps the measurement
    assert invoke("verify", run).exit_code == 0
    assert invoke("report", run).exit_code == 0
    assert "### test box (cpu, ssh," in (run / "report.md").read_text()
    # a second run reuses the bundle on the device (not copied again) and replaces the recording
    again = run_device(quick_copy, ssh_args, "dev-box", extra=["--name", "test box"])
    assert again.exit_code == 0, again.output
    assert "not copied again" in again.output and "reusing" in again.output
    assert len(list((run / "devices").iterdir())) == 1


def test_a_connection_killed_mid_run_records_nothing_and_a_rerun_completes(quick_copy, ssh_args, sshd):
    before = (quick_copy / "edgenet" / "report.json").read_bytes()
    killed = []

    def kill_when_bench_runs():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for d in Path("/proc").iterdir():
                try:
                    cmd = (d / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"bench.py" in cmd and any(b"--json" == c for c in cmd):
                    for pid in sshd.session_pids():
                        os.kill(pid, 9)
                        killed.append(pid)
                    break
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_bench_runs, daemon=True)
    watcher.start()
    result = run_device(quick_copy, ssh_args, "dev-box")
    watcher.join()
    assert killed
    assert result.exit_code == 2, result.output
    assert "dropped while running bench.py" in result.output and "Nothing was recorded" in result.output
    nothing_recorded(quick_copy, before)
    again = run_device(quick_copy, ssh_args, "dev-box")
    assert again.exit_code == 0, again.output
    assert (quick_copy / "edgenet" / "devices" / "dev-box.json").is_file()


def _with_config(ssh_args, sshd, tmp_path, old, new) -> list:
    """``ssh_args`` with a copy of the test's ssh client config in which the path ``old`` is ``new`` (another
    known_hosts, another client key)."""
    config = tmp_path / "ssh_config"
    config.write_text(sshd.client_config.read_text().replace(str(old), str(new)))
    args = list(ssh_args)
    args[args.index("--ssh-config") + 1] = config
    return args


def test_a_wrong_host_key_is_refused_with_how_to_check_it(quick_copy, ssh_args, sshd, tmp_path):
    before = (quick_copy / "edgenet" / "report.json").read_bytes()
    other = _sshd.keygen(tmp_path / "other")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    args = _with_config(ssh_args, sshd, tmp_path, sshd.known_hosts, known)
    result = run_device(quick_copy, args, "dev-box")
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "host key differs from the one in your known_hosts" in out and "ssh-keygen -R dev-box" in out
    assert "never accepts or skips a host key" in out
    assert known.read_text().count("\n") == 1  # the key was not accepted behind the user's back
    nothing_recorded(quick_copy, before)
    known.write_text("")  # an unknown key: say how to accept it with ssh
    result = run_device(quick_copy, args, "dev-box")
    assert result.exit_code == 2 and "is not in your known_hosts" in " ".join(result.output.split())
    assert "Run `ssh dev-box` once" in " ".join(result.output.split()) and known.read_text() == ""


def test_a_device_without_onnxruntime_is_told_what_to_install(quick_copy, ssh_args, tmp_path):
    before = (quick_copy / "edgenet" / "report.json").read_bytes()
    py = _sshd.bare_python(tmp_path / "numpy-only", dists=("numpy",))
    args = list(ssh_args)
    args[args.index("--python") + 1] = py
    result = run_device(quick_copy, args, "dev-box")
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "dev-box lacks what `bench.py` needs for the cpu target: onnxruntime" in out
    assert f"{py} -m pip install --user onnxruntime" in out
    nothing_recorded(quick_copy, before)


@pytest.mark.parametrize("host", ["a b", "q'uo\"te", "$(touch PWNED)", "h;touch PWNED", "-oProxyCommand=touch PWNED"])
def test_host_names_reach_ssh_as_arguments_and_never_run(quick_copy, ssh_args, tmp_path, host, monkeypatch):
    """The test ssh_config's `Host *` sends every name to 127.0.0.1, so a name that reaches ssh as one argument
    logs in (and fails at the device check: this device lacks onnxruntime); none is ever run by a shell."""
    monkeypatch.chdir(tmp_path)
    py = _sshd.bare_python(tmp_path / "numpy-only", dists=("numpy",))
    args = list(ssh_args)
    args[args.index("--python") + 1] = py
    result = run_device(quick_copy, args, host)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "PWNED").exists() and not Path("/PWNED").exists()
    out = " ".join(result.output.split())
    assert f"{host} lacks what `bench.py` needs" in out or "not a host name ssh can resolve" in out


def test_several_hosts_run_in_parallel_and_one_failure_does_not_stop_the_others(quick_copy, ssh_args, tmp_path):
    """`nohost.invalid` cannot be reached (refused: port 1 of 127.0.0.1); dev-a is measured and recorded anyway."""
    config = tmp_path / "ssh_config"
    config.write_text("Host nohost.invalid\n  Port 1\n" + Path(ssh_args[1]).read_text())
    args = list(ssh_args)
    args[1] = config
    result = run_device(quick_copy, args, "dev-a", "nohost.invalid")
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "nohost.invalid refused the connection" in out
    assert (quick_copy / "edgenet" / "devices" / "dev-a.json").is_file()


#: TensorRT/Polygraphy on the "Jetson": the runner stand-ins of tests/fixtures/trt_standins.py as real modules
TRT_MODULES = {
    "tensorrt/__init__.py": '__version__ = "10.3.0.30"\n',
    "polygraphy/__init__.py": "",
    "polygraphy/backend/__init__.py": "",
    "polygraphy/backend/common.py": "def BytesFromPath(path):\n    return lambda: open(path, 'rb').read()\n",
    "polygraphy/backend/trt.py": (
        "import json\nfrom trt_standins import FakeEngine, FakeTrtRunner\n\n"
        "def EngineFromBytes(load):\n    return lambda: FakeEngine(json.loads(load()))\n\n"
        "def TrtRunner(loader):\n    return FakeTrtRunner(loader)\n"),
}

#: trtexec's stand-in: the banner build_engines.sh reads, and an "engine" file naming the ONNX it computes like
TRTEXEC = '''#!{python}
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
if "--help" in sys.argv:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help")
    sys.exit(0)
with open({log!r}, "a") as f:
    f.write(args["onnx"] + "\\n")
with open(args["saveEngine"], "w") as f:
    json.dump({{"onnx": os.path.abspath(args["onnx"]), "batches": [1, 64, 256], "ort_level": "ORT_ENABLE_ALL"}}, f)
'''


def test_jetson_target_builds_engines_on_the_device_and_records_their_figures(quick_copy, ssh_args, tmp_path,
                                                                              data_root):
    """No real Jetson was reachable: TensorRT and trtexec are stand-ins that compute with onnxruntime."""
    from tests.fixtures import trt_standins

    modules = {**TRT_MODULES, "trt_standins.py": __import__("inspect").getsource(trt_standins)}
    py = _sshd.bare_python(tmp_path / "jetson", extra=modules)
    log = tmp_path / "trtexec.log"
    trtexec = tmp_path / "trtexec"
    trtexec.write_text(TRTEXEC.format(python=py, log=str(log)))
    trtexec.chmod(0o755)
    args = list(ssh_args) + ["--data-root", data_root, "--build", "trtexec", "--trtexec", trtexec]
    args[args.index("--python") + 1] = py
    result = run_device(quick_copy, args, "orin", target="jetson")
    assert result.exit_code == 0, result.output
    assert "sh build_engines.sh" in result.output and "bench.py --engines" in result.output
    built = log.read_text().split()
    assert built and all(p.startswith("models/") for p in built)  # the engine path ran, once per TensorRT file
    rep = json.loads((quick_copy / "edgenet" / "report.json").read_text())
    (m,) = rep["devices"]["measurements"]
    assert m["target"] == "jetson" and m["engines"] is True and m["device"]["runtimes"]["tensorrt"] == "10.3.0.30"
    assert {v["backend"] for v in m["variants"].values()} == {"tensorrt"}
    assert len(m["variants"]) == len(built)
    ship = rep["devices"]["recommended"]["tensorrt"]
    assert ship["device"] == "orin" and ship["measured"] is True
    md = (quick_copy / "edgenet" / "report.md").read_text().split("## What to ship", 1)[1].split("## Variants")[0]
    assert "NVIDIA GPU or Jetson, TensorRT" in md and "measured on the device orin (ssh," in md


def test_an_authentication_failure_says_try_ssh_first(quick_copy, ssh_args, sshd, tmp_path):
    before = (quick_copy / "edgenet" / "report.json").read_bytes()
    stranger = _sshd.keygen(tmp_path / "stranger")  # a key the server does not authorize
    args = _with_config(ssh_args, sshd, tmp_path, sshd.client_key, stranger)
    result = run_device(quick_copy, args, "dev-box")
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "ssh could not log in to dev-box" in out and "Try `ssh dev-box` first" in out
    nothing_recorded(quick_copy, before)
