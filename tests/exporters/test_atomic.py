"""The one atomic write (exporters/atomic.py) and how the pipeline words a refused one (pipeline/store/paths.py)."""
import contextlib
import errno
import os

import pytest

from exporters.atomic import atomic_path, scratch_path
from pipeline.store.paths import DiskError
from pipeline.store.paths import atomic_path as pipeline_atomic_path


def _full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", [atomic_path, pipeline_atomic_path])
def test_a_write_lands_whole_with_normal_permissions(tmp_path, writer):
    target = tmp_path / "sub" / "m.onnx"
    with writer(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".m.onnx.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["m.onnx"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_a_refused_write_keeps_the_old_file_and_the_error_type_says_who_asked(tmp_path, monkeypatch):
    """Exporters raise the plain OSError (they know nothing of the CLI); the pipeline's wrapper makes it a
    DiskError naming the file. Either way the old file stays and no temp file is left."""
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", _full)
    with pytest.raises(OSError) as plain:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert type(plain.value) is OSError and plain.value.errno == errno.ENOSPC
    with pytest.raises(DiskError, match=r"Could not write .*m\.onnx: No space left on device \(ENOSPC\)"):
        with pipeline_atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and target.read_bytes() == b"old"


def test_a_failing_block_renames_nothing(tmp_path):
    target = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the exporter failed")
    assert list(tmp_path.iterdir()) == []


def test_a_scratch_file_never_stays(tmp_path):
    for fail in (False, True):
        with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
            with scratch_path(tmp_path / "m.raw.onnx") as tmp:
                tmp.write_bytes(b"intermediate")
                if fail:
                    raise RuntimeError
        assert list(tmp_path.iterdir()) == []
