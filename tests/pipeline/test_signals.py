"""SIGTERM and SIGHUP (docker stop, systemd, a CI timeout, a closed terminal) during `pipeline bundle` clean up like
Ctrl-C: no `.…tmp` folder is left, the message is one paragraph, the exit is 128 + the signal. What no handler can
catch (SIGKILL) leaves its temp folder, which the next build sweeps, but never while another build is running."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.bundle import build as bundle_mod
from tests.helpers import invoke
from tests.servers import REPO


def _temps(out):
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) if out.exists() else []


def _bundle_child(quick_run, data_root, out):
    return subprocess.Popen([sys.executable, "-m", "pipeline", "bundle", "--target", "cpu", "--artifacts",
                             str(quick_run["artifacts"]), "--out", str(out), "--data-root", str(data_root)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_once_staging_exists(proc, out, sig) -> None:
    deadline = time.monotonic() + 600
    while not _temps(out):
        assert proc.poll() is None, f"the build ended before a temp folder was seen: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_remove_the_temp_folder_and_say_so(quick_run, data_root, tmp_path, sig):
    out = tmp_path / "out"
    proc = _bundle_child(quick_run, data_root, out)
    _signal_once_staging_exists(proc, out, sig)
    stdout, stderr = proc.communicate(timeout=300)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, stderr
    assert f"terminated by {name}:" in stderr and "temp files were removed" in " ".join(stderr.split())
    assert "Traceback" not in stdout + stderr
    assert len([line for line in stderr.splitlines() if line.strip()]) <= 3  # one paragraph (wrapped at most)
    assert _temps(out) == []
    assert not (out / "edgenet-cpu-bundle").exists()  # nothing half-made was put in place


def test_a_sigkill_leftover_is_swept_by_the_next_build_but_never_a_live_one(quick_run, data_root, tmp_path):
    out = tmp_path / "out"
    proc = _bundle_child(quick_run, data_root, out)
    _signal_once_staging_exists(proc, out, signal.SIGKILL)
    proc.communicate(timeout=60)
    left = _temps(out)
    assert left and all(bundle_mod.LEFTOVER.fullmatch(n) for n in left)  # a SIGKILL runs no cleanup
    mine = out / "keep-me.tmp"  # not a name a build makes: never swept
    mine.mkdir()
    # a concurrent build (here: this process holding the folder as a build does) keeps its own temp folder alive
    live = out / ".edgenet-cpu-bundle.live01.tmp"
    live.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        r = invoke("bundle", "--target", "cpu", "--artifacts", quick_run["artifacts"], "--out", out,
                   "--data-root", data_root)
        assert r.exit_code == 0, r.output
        assert live.is_dir() and all((out / n).exists() for n in left)  # nothing swept while a build is live
    finally:
        os.close(fd)
    r = invoke("bundle", "--target", "cpu", "--artifacts", quick_run["artifacts"], "--out", out,
               "--data-root", data_root)
    assert r.exit_code == 0, r.output
    assert _temps(out) == ["keep-me.tmp"]  # the stale ones (killed build, dead "live" one) are gone, ours only
    assert invoke("verify", out / "edgenet-cpu-bundle").exit_code == 0
