"""pipeline/bundle/build.py: `pipeline bundle` (it reads only what the run's manifest vouches for, and a failed rebuild
keeps the old bundle), `pipeline verify` (bundles, archives and run folders are untrusted), and the trtexec script
a jetson or gpu bundle carries. The bundle's bench.py: tests/pipeline/bundle/files/test_bench.py; its
build_engines.py is exporters/tensorrt.py, copied: tests/exporters/test_tensorrt.py."""
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

from exporters import tensorrt as trtx
from tests.helpers import ROOT, invoke, one_paragraph, snapshot


def test_bundle_contents(bundle):
    names = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert {"MANIFEST.json", "README.md", "bench.py", "build_engines.py", "build_engines.sh", "report.json",
            "data/mnist-test.npz", "data/reference.npz", "data/golden.npz", "models/model-fp32.onnx",
            "models/model-int8-ptq.onnx", "models/model-int8-qat.onnx", "models/model-fp16.onnx"} <= names
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == names - {"MANIFEST.json"}
    assert manifest["models"]["model-int8-qat"]["tensorrt"] and not manifest["models"]["model-int8-cpu"]["tensorrt"]
    assert "nvpmodel" in (bundle / "README.md").read_text()
    assert "--stronglyTyped" in (bundle / "build_engines.sh").read_text()
    # the build script is the exporter itself, so there is one implementation of engine building
    assert (bundle / "build_engines.py").read_text() == open(trtx.__file__).read()
    # bench.py times with the pipeline's own runtime/bench.py (rounds, spread, contention), shipped beside it
    for name in ("__init__.py", "bench.py", "errors.py"):
        assert (bundle / "runtime" / name).read_bytes() == (ROOT / "runtime" / name).read_bytes(), name


def test_verify_passes_then_catches_one_altered_byte(bundle, tmp_path):
    import shutil

    assert invoke("verify", bundle).exit_code == 0
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    model = copy / "models" / "model-int8-ptq.onnx"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    model.write_bytes(bytes(blob))
    r = invoke("verify", copy)
    assert r.exit_code == 1 and "altered: models/model-int8-ptq.onnx" in r.output
    (copy / "data" / "golden.npz").unlink()
    r = invoke("verify", copy)
    assert r.exit_code == 1 and "missing: data/golden.npz" in r.output


def test_verify_tarball_and_tampered_tarball(bundle, tmp_path):
    tar = bundle.with_name(bundle.name + ".tar.gz")
    assert invoke("verify", tar).exit_code == 0
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(tar) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("-bundle/bench.py"):  # the bundle's script, not the runtime/bench.py it ships
                data = data.replace(b"def main(", b"def main(*_, ")  # still valid Python, other bytes
                m.size = len(data)
            import io

            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    r = invoke("verify", bad)
    assert r.exit_code == 1 and "altered: bench.py" in r.output


def test_verify_run_folder_and_bad_paths(quick_copy, tmp_path):
    run = quick_copy / "edgenet"
    assert invoke("verify", run).exit_code == 0
    f = run / "export" / "golden.npz"
    f.write_bytes(f.read_bytes()[:100])
    r = invoke("verify", run)
    assert r.exit_code == 1 and "truncated (shorter than recorded): export/golden.npz" in r.output
    r = invoke("verify", tmp_path / "nothing")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("verify", tmp_path)
    assert r.exit_code == 2 and "neither a bundle" in r.output


def test_bundle_bad_input(tmp_path, data_root):
    r = invoke("bundle", "--target", "fpga", "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2 and "--target must be one of jetson, gpu, cpu, openvino, android, node, web; got 'fpga'" in r.output
    r = invoke("bundle", "--target", "gpu", "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2 and "run `pipeline run all` first" in r.output


# ---------------------------------------------------------------- bundle reads only what the run's manifest vouches for
def _edit_report(run):
    report = json.loads((run / "report.json").read_text())
    row = next(v for v in report["variants"] if v["name"] == "onnx-int8-ptq")
    row["accuracy"] += 0.0001  # a "nicer" figure, still valid JSON
    (run / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def _foreign_checkpoint(run):
    import torch

    from pipeline.store import checkpoint

    ckpt = checkpoint.load(run / "train" / "model.pt")  # a valid checkpoint whose weights are not this run's
    first = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][first] = ckpt["state_dict"][first] + 0.01
    torch.save(ckpt, run / "train" / "model.pt")


def _unrecord(rel):
    def damage(run):
        from pipeline.store import manifest

        record = manifest.load(run / "stages.json")
        for info in record.values():
            info["outputs"].pop(rel, None)
        manifest.save(run / "stages.json", record)
    return damage


def _flip_bit(rel):
    def damage(run):
        blob = bytearray((run / rel).read_bytes())
        blob[len(blob) // 2] ^= 0x01
        (run / rel).write_bytes(bytes(blob))
    return damage


DAMAGE = {
    "report.json edited by hand": (_edit_report, "altered (SHA-256 differs from the manifest): report.json"),
    "report.json cut off": (lambda run: (run / "report.json").write_bytes((run / "report.json").read_bytes()[:200]),
                            "truncated (shorter than recorded): report.json"),
    # altered, or truncated when the foreign file happens to be shorter
    "model.pt from another run": (_foreign_checkpoint, ": train/model.pt (written by stage train)"),
    "golden.npz one bit flipped": (_flip_bit("export/golden.npz"), "altered (SHA-256 differs from the manifest): "
                                                                   "export/golden.npz"),
    "int8-qat ONNX one bit flipped": (_flip_bit("export/model-int8-qat.onnx"), "altered (SHA-256 differs from the "
                                                                                "manifest): export/model-int8-qat.onnx"),
    "fp32 ONNX deleted": (lambda run: (run / "export" / "model-fp32.onnx").unlink(),
                          "missing: export/model-fp32.onnx"),
    "golden.npz not in the record": (_unrecord("export/golden.npz"),
                                     "not recorded by any finished stage: export/golden.npz"),
    "stages.json deleted": (lambda run: (run / "stages.json").unlink(), "run `pipeline run all` first"),
}


@pytest.fixture
def old_bundle(bundle, tmp_path):
    """An --out folder holding a previous bundle (folder and tarball), to prove a failed rebuild keeps it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(bundle, out / bundle.name)
    shutil.copy2(bundle.with_name(bundle.name + ".tar.gz"), out)
    return out


def _bundle(artifacts, out, data_root, *extra):
    return invoke("bundle", "--target", "jetson", "--artifacts", artifacts, "--out", out, "--data-root", data_root, *extra)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_bundle_refuses_damaged_or_foreign_artifacts_and_writes_nothing(case, quick_copy, old_bundle, data_root):
    damage, expected = DAMAGE[case]
    damage(quick_copy / "edgenet")
    before = snapshot(old_bundle)
    r = _bundle(quick_copy, old_bundle, data_root)
    one_paragraph(r)
    assert expected in " ".join(r.output.split()), r.output
    assert snapshot(old_bundle) == before  # the previous bundle, byte for byte, and nothing else
    # and into an empty --out nothing at all is written
    empty = old_bundle.parent / "empty"
    assert _bundle(quick_copy, empty, data_root).exit_code == 2
    assert not empty.exists() or not any(empty.iterdir())


def test_bundle_refuses_a_reference_that_does_not_reproduce_the_report(quick_copy, old_bundle, data_root):
    """A report.json consistent with the manifest (re-recorded) whose torch-fp32 accuracy the checkpoint does not
    reproduce: the bundle's reference would make bench.py compare against the wrong thing, so nothing is written."""
    from pipeline.store import manifest
    from pipeline.store.paths import sha256_file

    run = quick_copy / "edgenet"
    report = json.loads((run / "report.json").read_text())
    report["variants"][0]["accuracy"] = round(report["variants"][0]["accuracy"] - 0.0001, 4)
    (run / "report.json").write_text(json.dumps(report))
    record = manifest.load(run / "stages.json")
    record["validate"]["outputs"]["report.json"] = {"sha256": sha256_file(run / "report.json"),
                                                    "size": (run / "report.json").stat().st_size}
    manifest.save(run / "stages.json", record)
    before = snapshot(old_bundle)
    r = _bundle(quick_copy, old_bundle, data_root)
    one_paragraph(r)
    assert "reference would not reproduce the report" in " ".join(r.output.split())
    assert snapshot(old_bundle) == before


def _corrupt_data_root(data_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    f = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-1] + b"\x07")
    return root, "is corrupted"


def _file_as_data_root(data_root, tmp_path):
    (tmp_path / "not-a-folder").write_text("x")
    return tmp_path / "not-a-folder", "a file stands where a folder of that path should be"


def _interrupt(name, when=lambda *a, **k: True):
    """Replace ``pipeline.bundle.build.<name>`` by one that raises KeyboardInterrupt (Ctrl-C) when ``when(*args)``."""
    def setup(monkeypatch):
        from pipeline.bundle import build as bundle

        real = getattr(bundle, name)

        def fake(*args, **kwargs):
            if when(*args, **kwargs):
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        monkeypatch.setattr(bundle, name, fake)
    return setup


FAILURES = {
    "corrupted --data-root": (_corrupt_data_root, None, 2),
    "--data-root is a file": (_file_as_data_root, None, 2),
    "Ctrl-C while writing the reference": (None, _interrupt("_savez"), 130),
    "Ctrl-C while writing MANIFEST.json": (None, _interrupt("write_json"), 130),
    "Ctrl-C while swapping the folders": (None, _interrupt("_swap_in"), 130),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_rebuild_keeps_the_old_bundle_and_no_temp_folder(case, quick_run, old_bundle, data_root, tmp_path,
                                                                monkeypatch):
    make_root, patch, code = FAILURES[case]
    root, message = make_root(data_root, tmp_path) if make_root else (data_root, "interrupted")
    if patch:
        patch(monkeypatch)
    before = snapshot(old_bundle)
    r = _bundle(quick_run["artifacts"], old_bundle, root)
    assert r.exit_code == code and message in r.output and "Traceback" not in r.output, r.output
    assert snapshot(old_bundle) == before
    assert sorted(p.name for p in old_bundle.iterdir()) == ["edgenet-jetson-bundle", "edgenet-jetson-bundle.tar.gz"]


def test_ctrl_c_between_the_two_renames_puts_the_old_folder_back(quick_run, old_bundle, data_root, monkeypatch):
    import os

    from pipeline.bundle import build as bundle_mod

    real = os.rename

    def rename(src, dst):  # the old folder is already aside when the new one is to be renamed into place
        if str(dst).endswith("edgenet-jetson-bundle") and ".tmp" in str(src) and ".old." not in str(src):
            raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(bundle_mod.os, "rename", rename)
    before = snapshot(old_bundle)
    r = _bundle(quick_run["artifacts"], old_bundle, data_root)
    assert r.exit_code == 130, r.output
    assert snapshot(old_bundle) == before
    assert sorted(p.name for p in old_bundle.iterdir()) == ["edgenet-jetson-bundle", "edgenet-jetson-bundle.tar.gz"]


def test_rebuild_replaces_the_old_bundle_whole(quick_run, old_bundle, data_root):
    stale = old_bundle / "edgenet-jetson-bundle" / "models" / "stale.onnx"
    stale.write_bytes(b"from an older bundle")
    r = _bundle(quick_run["artifacts"], old_bundle, data_root)
    assert r.exit_code == 0, r.output
    assert not stale.exists()
    assert sorted(p.name for p in old_bundle.iterdir()) == ["edgenet-jetson-bundle", "edgenet-jetson-bundle.tar.gz"]
    assert oct((old_bundle / "edgenet-jetson-bundle").stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's mode
    assert invoke("verify", old_bundle / "edgenet-jetson-bundle").exit_code == 0
    assert invoke("verify", old_bundle / "edgenet-jetson-bundle.tar.gz").exit_code == 0


# ---------------------------------------------------------------- verify: archives and folders are untrusted
MANIFEST_TOP = "edgenet-cpu-bundle"
BENCH = b"print('bench')\n"


def _member(name, kind=tarfile.REGTYPE, data=b"", size=None, **attrs):
    """(TarInfo, bytes or a file object) for ``tar.addfile``; special members carry no data."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = (len(data) if size is None else size) if kind == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, data if kind == tarfile.REGTYPE else None


def _bundle_tar(path, extra=(), files=None, compresslevel=9):
    """A minimal well-formed bundle archive (top folder, MANIFEST.json, bench.py), plus ``extra`` members."""
    import hashlib
    import io

    from pipeline.bundle.build import FORMAT

    files = files or {"bench.py": hashlib.sha256(BENCH).hexdigest()}
    manifest = json.dumps({"format": FORMAT, "files": files}).encode()
    members = [_member(MANIFEST_TOP, tarfile.DIRTYPE), _member(f"{MANIFEST_TOP}/MANIFEST.json", data=manifest),
               _member(f"{MANIFEST_TOP}/bench.py", data=BENCH), *extra]
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=compresslevel) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else data)
    return path


T = MANIFEST_TOP
MALICIOUS = {
    "symlink to /etc/passwd": [_member(f"{T}/passwd", tarfile.SYMTYPE, linkname="/etc/passwd")],
    "symlink to a folder outside": [_member(f"{T}/models", tarfile.SYMTYPE, linkname="../../..")],
    "hard link to /etc/passwd": [_member(f"{T}/passwd", tarfile.LNKTYPE, linkname="/etc/passwd")],
    "hard link inside": [_member(f"{T}/copy.py", tarfile.LNKTYPE, linkname=f"{T}/bench.py")],
    "character device": [_member(f"{T}/null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "block device": [_member(f"{T}/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)],
    "fifo": [_member(f"{T}/pipe", tarfile.FIFOTYPE)],
    "../ escape": [_member("../evil.sh", data=b"rm -rf ~\n")],
    "../ inside the top folder": [_member(f"{T}/../../evil.sh", data=b"x")],
    "absolute path": [_member("/tmp/evil.sh", data=b"x")],
    "empty component": [_member(f"{T}//evil.sh", data=b"x")],
    "dot component": [_member(f"{T}/./evil.sh", data=b"x")],
    "backslash": [_member(f"{T}\\..\\evil.sh", data=b"x")],
    # a ustar name field ends at the first NUL, so the NUL travels in a pax "path" record, which overrides it
    "NUL in the name": [_member(f"{T}/ev", data=b"x", pax_headers={"path": f"{T}/ev\0il.sh"})],
    "second top folder": [_member("other/evil.sh", data=b"x")],
    "bench.py again, as a symlink": [_member(f"{T}/bench.py", tarfile.SYMTYPE, linkname="/etc/passwd")],
    "bench.py again, as a regular file": [_member(f"{T}/bench.py", data=BENCH)],
    "a file and a folder of one name": [_member(f"{T}/models", data=b"x"), _member(f"{T}/models", tarfile.DIRTYPE)],
}


def test_minimal_bundle_archive_passes(tmp_path):
    r = invoke("verify", _bundle_tar(tmp_path / "ok.tar.gz"))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_verify_refuses_unsafe_archive_members_naming_each(case, tmp_path):
    extra = MALICIOUS[case]
    path = _bundle_tar(tmp_path / "bad.tar.gz", extra)
    with tarfile.open(path) as tar:  # the archive really holds what the case says (tarfile wrote it as given)
        names = [m.name for m in tar.getmembers()]
    assert names[3:] == [info.pax_headers.get("path", info.name) for info, _ in extra]
    r = invoke("verify", path)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    out = " ".join(r.output.split())
    for name in names[3:]:
        shown = name if name.isprintable() else ascii(name)
        assert f"unsafe member: {shown} (" in out, out


def test_verify_names_with_markup_are_printed_not_parsed(tmp_path):
    path = _bundle_tar(tmp_path / "bad.tar.gz", [_member(f"{T}/[/x] [bold]", tarfile.SYMTYPE, linkname="/")])
    r = invoke("verify", path)
    assert r.exit_code == 1 and f"unsafe member: {T}/[/x] [bold] (symbolic link to /;" in r.output, r.output


def test_verify_streams_a_large_member(tmp_path):
    """200 MiB of zeros in one member (about 200 KiB compressed): verify hashes it in chunks, so Python's peak
    allocation stays far below the member's size (the old verify read every member whole)."""
    import hashlib
    import io

    size = 200 << 20

    class Zeros(io.RawIOBase):
        def __init__(self):
            self.left = size

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    h = hashlib.sha256()
    for _ in range(size >> 20):
        h.update(bytes(1 << 20))
    path = _bundle_tar(tmp_path / "big.tar.gz", compresslevel=1,
                       files={"bench.py": hashlib.sha256(BENCH).hexdigest(), "models/big.onnx": h.hexdigest()},
                       extra=[_member(f"{T}/models/big.onnx", data=io.BufferedReader(Zeros(), 1 << 20), size=size)])
    assert path.stat().st_size < 2 << 20
    code = ("import sys, tracemalloc; from pipeline.bundle.build import verify; tracemalloc.start(); "
            "problems = verify(sys.argv[1]); print(tracemalloc.get_traced_memory()[1], problems)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak, problems = proc.stdout.split(" ", 1)
    assert problems.strip() == "[]"
    assert int(peak) < 16 << 20, f"peak Python allocation {int(peak) >> 20} MiB for a {size >> 20} MiB member"


def _symlink_file(copy):
    (copy / "bench.py").rename(copy / "real-bench.py")
    (copy / "bench.py").symlink_to(copy / "real-bench.py")  # same bytes through the link: the hash alone would pass


FOLDER_DAMAGE = {
    "bench.py is a symlink": (_symlink_file, "symbolic link (only regular files and folders are allowed): bench.py"),
    "symlink to /etc/passwd": (lambda c: (c / "data" / "passwd").symlink_to("/etc/passwd"),
                               "symbolic link (only regular files and folders are allowed): data/passwd"),
    "symlinked folder": (lambda c: (c / "engines").symlink_to("/etc"),
                         "symbolic link (only regular files and folders are allowed): engines"),
    "fifo": (lambda c: os.mkfifo(c / "models" / "pipe"), "not a regular file (fifo): models/pipe"),
}


@pytest.mark.parametrize("case", list(FOLDER_DAMAGE))
def test_verify_folder_refuses_links_and_special_files(case, bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    make, expected = FOLDER_DAMAGE[case]
    make(copy)
    r = invoke("verify", copy)  # a fifo must be reported, never opened (that would block forever)
    assert r.exit_code == 1 and expected in " ".join(r.output.split()), r.output


# ---------------------------------------------------------------- the trtexec script (build_engines.sh)
BANNERS = {  # the first line trtexec prints, as the real 8.6, 10.3 and 11.1 print it
    "8.6": "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help",
    "10.3": "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b30] # trtexec --help",
    "11.1": "&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b7] # trtexec --help",
}


def _fake_trtexec(folder, banner):
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "trtexec"
    exe.write_text(f'#!/bin/sh\necho "$@" >> "$TRTEXEC_LOG"\necho "{banner}"\necho "=== Model Options ==="\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def _run_script(bundle, tmp_path, env, name="b"):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy2(bundle / "build_engines.sh", folder / "build_engines.sh")
    log = tmp_path / f"{name}.log"
    full = {"PATH": "/usr/bin:/bin", "TRTEXEC_LOG": str(log), **env}
    proc = subprocess.run(["sh", str(folder / "build_engines.sh")], capture_output=True, text=True, env=full)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


@pytest.mark.parametrize("version, typed", [("10.3", True), ("11.1", False)])
def test_trtexec_script_flags_from_the_real_banner(bundle, tmp_path, version, typed):
    """Bug 4: the banner's v100300 is TensorRT 10, so 10.x builds get --stronglyTyped; 11.x has no other mode."""
    fakebin = tmp_path / "bin"
    _fake_trtexec(fakebin, BANNERS[version])
    proc, calls = _run_script(bundle, tmp_path, {"PATH": f"{fakebin}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    builds = [c for c in calls if "--onnx=" in c]
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert {c.split("--onnx=models/")[1].split(".onnx")[0] for c in builds} == \
        {s for s, m in manifest["models"].items() if m["tensorrt"]}
    for c in builds:
        assert ("--stronglyTyped" in c.split()) is typed
        assert "--maxShapes=input:256x1x28x28" in c and "--minShapes=input:1x1x28x28" in c
    assert f"TensorRT {version.split('.')[0]}.x" in proc.stdout


def test_trtexec_script_refuses_tensorrt_8(bundle, tmp_path):
    fakebin = tmp_path / "bin"
    _fake_trtexec(fakebin, BANNERS["8.6"])
    proc, calls = _run_script(bundle, tmp_path, {"PATH": f"{fakebin}:/usr/bin:/bin"})
    assert proc.returncode == 2 and "TensorRT 8.x (banner v8601); use 10.x or 11.x" in proc.stderr
    assert not [c for c in calls if "--onnx=" in c]


def test_trtexec_script_finds_jetpacks_trtexec_off_the_path(bundle, tmp_path):
    """Bug 4: on a Jetson trtexec lives in /usr/src/tensorrt/bin, not on the PATH."""
    assert "/usr/src/tensorrt/bin" in (bundle / "build_engines.sh").read_text()
    jetson = tmp_path / "usr" / "src" / "tensorrt" / "bin"
    _fake_trtexec(jetson, BANNERS["10.3"])
    proc, calls = _run_script(bundle, tmp_path, {"TENSORRT_BIN": str(jetson)})
    assert proc.returncode == 0, proc.stderr
    assert str(jetson / "trtexec") in proc.stdout and all("--stronglyTyped" in c for c in calls if "--onnx=" in c)
    proc, calls = _run_script(bundle, tmp_path, {"TENSORRT_BIN": str(tmp_path / "nowhere")}, name="c")
    assert proc.returncode == 2 and "trtexec is neither on the PATH nor in" in proc.stderr and not calls
