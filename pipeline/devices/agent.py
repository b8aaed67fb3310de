"""The device side of ``pipeline device run``: sent to the device over ssh's stdin (``python3 - STEP ...``) and
run there with the standard library alone, so the checks run before numpy or onnxruntime are imported and the
device needs no copy of this repository. Never imported by the pipeline.

Steps (each prints ``EDGE-<WORD> <json>`` lines the build host reads; everything else is progress, streamed):

- ``probe``: Python version, the modules the target needs that do not import, free bytes where the bundle goes,
  whether the bundle is already unpacked and intact there;
- ``run``: unpack ``<sha>.tar.gz.part`` (uploaded by scp) when the bundle is not yet there: the archive's own
  SHA-256 first, then only regular files and folders with safe names, into a temp folder renamed into place
  once every file matches MANIFEST.json; then check every file's SHA-256 again, build engines (engine targets)
  and run ``bench.py --json`` into a temp file renamed to ``<nonce>.json`` only when bench.py finished, so a
  dropped connection or a kill never leaves a result the build host could take for a whole one.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile


def say(word, obj):
    print(f"EDGE-{word} {json.dumps(obj)}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_problems(folder, manifest_sha):
    """Why ``folder`` is not the intact bundle whose MANIFEST.json has SHA-256 ``manifest_sha`` ([] when it is)."""
    mpath = os.path.join(folder, "MANIFEST.json")
    if not os.path.isfile(mpath):
        return ["no MANIFEST.json"]
    if sha256_file(mpath) != manifest_sha:
        return ["MANIFEST.json is not the one sent (SHA-256 differs)"]
    with open(mpath, "rb") as f:
        files = json.load(f)["files"]
    problems = []
    for rel, sha in files.items():
        p = os.path.join(folder, rel)
        if os.path.islink(p) or not os.path.isfile(p):
            problems.append(f"missing: {rel}")
        elif sha256_file(p) != sha:
            problems.append(f"altered: {rel}")
    return problems


def free_bytes(path):
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return shutil.disk_usage(p).free


def probe(args):
    missing = []
    for mod in args.need:
        try:
            __import__(mod)
        except Exception:  # ImportError, or a broken install: the device cannot run it either way
            missing.append(mod)
    folder = os.path.join(args.dir, args.sha)
    have = os.path.isdir(folder) and not bundle_problems(folder, args.sha)
    trtexec = None
    if args.trtexec_check:
        trtexec = (args.trtexec or shutil.which("trtexec")
                   or next((p for p in ["/usr/src/tensorrt/bin/trtexec"] if os.access(p, os.X_OK)), None))
    say("PROBE", {"python": sys.version.split()[0], "missing": missing, "free_bytes": free_bytes(args.dir),
                  "have_bundle": have, "trtexec": trtexec})
    return 0


def _safe(name):
    parts = name.split("/")
    return name and not name.startswith("/") and "\\" not in name and "\0" not in name and all(
        p not in ("", ".", "..") for p in parts)


def unpack(args, folder):
    part = os.path.join(args.dir, args.sha + ".tar.gz.part")
    if not os.path.isfile(part):
        say("FAIL", {"kind": "copy", "why": "the bundle archive was not uploaded"})
        return False
    if sha256_file(part) != args.tar_sha:
        say("FAIL", {"kind": "copy", "why": "the uploaded archive is incomplete or altered (SHA-256 differs)"})
        os.unlink(part)
        return False
    tmp = os.path.join(args.dir, "." + args.sha + ".unpack.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(part, "r:gz") as tar:
        members = tar.getmembers()
        bad = [m.name for m in members if not (m.isreg() or m.isdir()) or not _safe(m.name.rstrip("/"))]
        if bad:
            say("FAIL", {"kind": "bundle", "why": "unsafe archive members: " + ", ".join(bad[:5])})
            return False
        top = {m.name.split("/", 1)[0] for m in members}
        if len(top) != 1:
            say("FAIL", {"kind": "bundle", "why": "the archive does not hold one bundle folder"})
            return False
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, members=members, filter="data")
        else:  # Python before 3.8.17/3.9.17/3.10.12/3.11.4: the members were checked above
            tar.extractall(tmp, members=members)
    inner = os.path.join(tmp, top.pop())
    problems = bundle_problems(inner, args.sha)
    if problems:
        say("FAIL", {"kind": "bundle", "why": "; ".join(problems[:5])})
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(inner, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    os.unlink(part)
    return True


def step(cmd, cwd, env=None):
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env).returncode


def run(args):
    folder = os.path.join(args.dir, args.sha)
    if not (os.path.isdir(folder) and not bundle_problems(folder, args.sha)):
        print("unpacking the bundle", flush=True)
        if not unpack(args, folder):
            return 3
    problems = bundle_problems(folder, args.sha)  # checked again right before it runs
    if problems:
        say("FAIL", {"kind": "bundle", "why": "; ".join(problems[:5])})
        return 3
    print("bundle hashes: all files match MANIFEST.json", flush=True)
    env = dict(os.environ)
    bench = [sys.executable, "bench.py"]
    if args.build:
        if args.build == "trtexec":
            if args.trtexec:
                env["TRTEXEC"] = args.trtexec
            rc = step(["sh", "build_engines.sh"], folder, env)
        else:
            rc = step([sys.executable, "build_engines.py"], folder, env)
        if rc:
            say("FAIL", {"kind": "engines", "why": f"building the engines failed (exit {rc})"})
            return 3
        bench.append("--engines")
    if args.provider != "cpu":
        bench += ["--provider", args.provider]
    tmp = os.path.join(args.dir, "." + args.nonce + ".json.tmp")
    rc = step(bench + ["--json", tmp, *args.bench_args], folder, env)
    if not os.path.isfile(tmp):
        say("FAIL", {"kind": "bench", "why": f"bench.py wrote no result (exit {rc})"})
        return 3
    os.replace(tmp, os.path.join(args.dir, args.nonce + ".json"))
    say("RESULT", {"file": args.nonce + ".json", "bench_exit": rc})
    return 0


def clean(args):
    for name in (args.nonce + ".json", "." + args.nonce + ".json.tmp"):
        try:
            os.unlink(os.path.join(args.dir, name))
        except OSError:
            pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["probe", "run", "clean"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--sha", default="")
    ap.add_argument("--tar-sha", default="")
    ap.add_argument("--nonce", default="")
    ap.add_argument("--need", nargs="*", default=[])
    ap.add_argument("--build", choices=["", "python", "trtexec"], default="")
    ap.add_argument("--trtexec", default="")
    ap.add_argument("--trtexec-check", action="store_true")
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--bench-args", nargs=argparse.REMAINDER, default=[])
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    try:
        return {"probe": probe, "run": run, "clean": clean}[args.step](args)
    except OSError as e:
        import errno

        kind = "disk" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "os"
        say("FAIL", {"kind": kind, "why": str(e)})
        return 3


if __name__ == "__main__":
    sys.exit(main())
