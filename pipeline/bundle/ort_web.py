"""onnxruntime-web's files for the web bundle: one pinned npm package, fetched once into a cache at bundle time.

The page must work offline from any static file server, so it can never load onnxruntime-web from a CDN: the
bundle carries the three files its wasm build needs. They come from the npm package pinned here (version and the
registry's sha512 integrity, so a cached or local tarball that is not that release is refused), fetched with
``npm pack`` into ``<user cache>/edge-export-pipeline/npm/`` the first time and read from there afterwards. Without
npm or the registry, ``--ort-web`` points at a tarball made by ``npm pack`` elsewhere.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError

PACKAGE = "onnxruntime-web"
#: the same release as the Node bundle's onnxruntime-node
VERSION = "1.30.0"
#: the registry's ``dist.integrity`` of that tarball (``npm view onnxruntime-web@1.30.0 dist.integrity``)
INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
#: the wasm build the page uses: the ES module API, its glue module and the SIMD+threads WebAssembly (which also runs
#: single-threaded where the page is not cross-origin isolated). No WebGPU/WebGL builds: they add ~30 MB each.
FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
TARBALL = f"{PACKAGE}-{VERSION}.tgz"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME`` (else ``~/.cache``: :func:`pipeline.config.user_cache`) ``/edge-export-pipeline/npm``."""
    from pipeline.config import user_cache

    return user_cache() / "edge-export-pipeline" / "npm"


def _integrity(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def _fetch(dest: Path) -> None:
    """``npm pack`` the pinned release into ``dest``'s folder (through a temp folder, so a failed fetch leaves nothing)."""
    npm = shutil.which("npm")
    why = None
    if npm is None:
        why = "npm is not installed"
    else:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file or a symlink loop where the cache should be: name the cache, not --out
            raise PipelineError(
                f"The npm cache folder {dest.parent} cannot be created ({e.strerror}); it lies under $XDG_CACHE_HOME "
                "(else ~/.cache). Point XDG_CACHE_HOME at a writable folder, or pass the .tgz of `npm pack "
                f"{PACKAGE}@{VERSION}` with --ort-web PATH. Nothing was written.") from None
        tmp = Path(tempfile.mkdtemp(prefix=".npm-pack.", dir=dest.parent))
        try:
            r = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(tmp)],
                               capture_output=True, text=True, timeout=600)
            got = tmp / TARBALL
            if r.returncode == 0 and got.is_file():
                os.replace(got, dest)
            else:
                tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
                why = f"`npm pack {PACKAGE}@{VERSION}` failed ({tail})"
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"`npm pack {PACKAGE}@{VERSION}` could not run ({e})"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if why:
        raise PipelineError(
            f"The web bundle needs {PACKAGE} {VERSION} (its WebAssembly build), which is not in the cache "
            f"{dest.parent} and could not be fetched: {why}. Run `npm pack {PACKAGE}@{VERSION}` on a machine that "
            f"reaches the npm registry and pass the .tgz with `--ort-web PATH`, or copy it into {dest.parent}.")


def tarball(local: Path | None = None) -> Path:
    """The pinned release's tarball: ``local`` (a ``npm pack`` .tgz) if given, else the cache, fetched if absent.

    Checked against :data:`INTEGRITY` either way; a cached file that fails is deleted so the next call refetches."""
    if local is not None:
        path = Path(local)
        if not path.is_file():
            raise PipelineError(f"--ort-web {path} is not a file; give the .tgz that `npm pack {PACKAGE}@{VERSION}` writes.")
    else:
        path = cache_dir() / TARBALL
        try:
            cached = path.is_file()
        except OSError:  # ENAMETOOLONG under a long $XDG_CACHE_HOME: fetching names the problem
            cached = False
        if not cached:
            _fetch(path)
    if _integrity(path) != INTEGRITY:
        if local is None:
            path.unlink(missing_ok=True)
        raise PipelineError(f"{path} is not {PACKAGE} {VERSION} as the npm registry publishes it (its sha512 differs "
                            f"from the pinned integrity); {'it was removed from the cache, so run the command again' if local is None else 'give the .tgz of that exact release'}.")
    return path


def copy_files(dest: Path, local: Path | None = None) -> list[str]:
    """Copy :data:`FILES` from the package's ``dist/`` into ``dest``; return their names."""
    path = tarball(local)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "r:gz") as tar:
        for name in FILES:
            try:
                member = tar.getmember(f"package/dist/{name}")
            except KeyError:
                raise PipelineError(f"{path} has no dist/{name}; it is not {PACKAGE} {VERSION}.") from None
            if not member.isreg():
                raise PipelineError(f"{path}: dist/{name} is not a regular file.")
            with tar.extractfile(member) as src, open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out)
    return list(FILES)
