"""An output file option (`bench --json`) names a new file or an existing regular file; anything else (a fifo, a
device, a symlink wherever it points, a folder, a socket) is refused in one paragraph before any work, and is left
exactly as it was (a rename onto it would have replaced it with a regular file)."""
from __future__ import annotations

import os
import stat

import pytest

from pipeline.errors import PipelineError
from pipeline.store.paths import check_output_file
from tests.helpers import invoke, make_path_of_kind


def _make(kind: str, tmp_path):
    if kind == "/dev/null":
        return "/dev/null", "character device"
    p = tmp_path / "out.json"
    make_path_of_kind(p, kind)
    return p, {"fifo": "fifo", "folder": "folder", "socket": "socket"}.get(kind, "symbolic link")


KINDS = ["fifo", "symlink to stdout", "symlink to a regular file", "dangling symlink", "symlink to a folder", "folder",
         "socket", "/dev/null"]


def _state(p):
    st = os.lstat(p)
    return stat.S_IFMT(st.st_mode), st.st_ino, os.readlink(p) if stat.S_ISLNK(st.st_mode) else None


@pytest.mark.parametrize("kind", KINDS)
def test_bench_json_that_is_not_a_regular_file_is_refused_before_any_work(tmp_path, kind):
    path, says = _make(kind, tmp_path)
    before = _state(path)
    r = invoke("bench", tmp_path / "no-model-yet.onnx", "--batch", "1", "--json", path)
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and f"--json {path} is not writable: it is a" in flat and says in flat, r.output
    assert "no-model-yet" not in flat and "Timing method" not in flat and "Traceback" not in flat  # before any work
    assert _state(path) == before


@pytest.mark.parametrize("kind", KINDS)
def test_the_helper_refuses_the_same(tmp_path, kind):
    path, says = _make(kind, tmp_path)
    with pytest.raises(PipelineError, match=says):
        check_output_file(path, "--json")


def test_new_and_regular_files_and_a_symlinked_parent_folder_are_fine(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    os.symlink(tmp_path, tmp_path / "linked")
    for p in (tmp_path / "new.json", tmp_path / "old.json", tmp_path / "linked" / "new.json"):
        check_output_file(p, "--json")
    with pytest.raises(PipelineError, match="cannot be used"):
        check_output_file(tmp_path / ("x" * 300), "--json")  # ENAMETOOLONG: one paragraph, no traceback


@pytest.mark.parametrize("kind", ["fifo", "symlink to stdout", "folder"])
def test_the_bundles_bench_py_refuses_the_same_before_reading_anything(tmp_path, kind):
    """bench.py runs on the device without the pipeline, so it restates the rule; it refuses before it reads the
    bundle (here it runs from the source tree, where no MANIFEST.json exists: reaching that read would traceback)."""
    import subprocess
    import sys

    from pipeline.bundle.build import FILES

    path, _ = _make(kind, tmp_path)
    before = _state(path)
    r = subprocess.run([sys.executable, "-I", str(FILES / "bench.py"), "--json", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and f"--json {path} is " in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _state(path) == before
