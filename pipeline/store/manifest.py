"""The run manifest (``<run>/stages.json``): what each finished stage wrote, and checks against it.

One entry per finished stage: ``key`` (SHA-256 of the stage's config and of
the files it read), ``inputs`` (that config and those hashes, readable),
``outputs`` (SHA-256 and size of every file it wrote, relative to the run
folder), ``versions`` of the software that wrote them, and timing.

The entry is removed *before* a stage starts and written back only after all
its outputs are renamed into place, so at every instant an entry describes
files as they are: a killed stage has no entry (it is redone), and a file that
differs from its entry was changed by someone else (it is refused, never
consumed or overwritten). Only this module knows the format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from pipeline.errors import PipelineError
from .paths import RunDir, sha256_file, write_json

FORMAT = "edge-export-pipeline/run-manifest-v2"
PACKAGES = ("torch", "torchvision", "torchao", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "numpy",
            "tensorrt")
#: other pip distributions that provide a package's module: TensorRT's wheels are ``tensorrt`` (a meta
#: package), ``tensorrt-cu12`` or ``tensorrt-cu13``; JetPack's apt package has none (its module is the truth)
DISTRIBUTIONS = {"tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12")}


def load(path: Path) -> dict[str, dict]:
    """Stage name -> entry. An absent manifest is an empty one (a new run folder); one that is present but
    unreadable, or valid JSON that does not match the declared schema (:mod:`pipeline.store.schema`: wrong types,
    missing keys, NaN), is refused: it is only ever replaced whole (atomic rename), so damage came from
    outside, and without it nobody can tell which files are intact."""
    from .schema import manifest_problems, strict_loads

    path = Path(path)
    if not path.exists():
        return {}
    try:
        rec = strict_loads(path.read_text())
        problems = manifest_problems(rec)
        if problems:
            raise ValueError(f"not a run manifest: {problems}")
    except (OSError, ValueError) as e:
        raise PipelineError(
            f"The run manifest {path} is unreadable ({type(e).__name__}: {e}), so no file in {path.parent} can be "
            "checked. It is only ever replaced whole, so it was damaged from outside. Nothing was changed. Rerun with "
            "--force (or delete it) to have every stage redone and their files rewritten, or restore it from a backup.") from None
    rec.pop("format", None)
    return rec


def save(path: Path, record: dict[str, dict]) -> None:
    write_json(path, {"format": FORMAT, **record})


def versions() -> dict[str, str]:
    import platform
    import sys

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        module = sys.modules.get(pkg) if pkg in DISTRIBUTIONS else None  # imported: its __version__ is what ran
        if getattr(module, "__version__", None):
            out[pkg] = str(module.__version__)
            continue
        for dist in DISTRIBUTIONS.get(pkg, (pkg,)):
            try:
                out[pkg] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                pass
    return out


def entry(root: Path, key: str, inputs: dict, outputs: list[Path], seconds: float) -> dict:
    return {
        "key": key,
        "inputs": inputs,
        "outputs": {str(Path(p).relative_to(root)): {"sha256": sha256_file(p), "size": Path(p).stat().st_size}
                    for p in outputs},
        "versions": versions(),
        "seconds": round(seconds, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _expected(value) -> tuple[str, int | None]:
    """(sha256, size) of an output entry; manifests of v1 stored the bare hash."""
    if isinstance(value, str):
        return value, None
    return value.get("sha256", ""), value.get("size")


def recorded_sha(record: dict[str, dict], rel: str) -> str | None:
    for info in record.values():
        if rel in info.get("outputs", {}):
            return _expected(info["outputs"][rel])[0]
    return None


@dataclass(frozen=True)
class Problem:
    stage: str | None  # None: no stage recorded the file
    path: str  # relative to the run folder
    kind: str  # missing | truncated | altered | unrecorded

    def __str__(self) -> str:
        if self.kind == "unrecorded":
            return f"not recorded by any finished stage: {self.path}"
        what = {"missing": "missing", "truncated": "truncated (shorter than recorded)",
                "altered": "altered (SHA-256 differs from the manifest)"}[self.kind]
        return f"{what}: {self.path} (written by stage {self.stage})"


def _check_file(root: Path, stage: str, rel: str, value) -> Problem | None:
    sha, size = _expected(value)
    p = Path(root) / rel
    if not p.is_file():
        return Problem(stage, rel, "missing")
    if size is not None and p.stat().st_size < size:
        return Problem(stage, rel, "truncated")
    if sha256_file(p) != sha:
        return Problem(stage, rel, "altered")
    return None


def check_stage(root: Path, stage: str, info: dict) -> list[Problem]:
    problems = [_check_file(root, stage, rel, value) for rel, value in info.get("outputs", {}).items()]
    return [p for p in problems if p is not None]


def check_files(root: Path, record: dict[str, dict], rels) -> list[Problem]:
    """The problems of just the files ``rels`` (relative to ``root``): not recorded, missing, truncated or altered."""
    owners = {rel: (stage, value) for stage, info in record.items() for rel, value in info.get("outputs", {}).items()}
    problems = []
    for rel in rels:
        if rel not in owners:
            problems.append(Problem(None, rel, "unrecorded"))
        elif (problem := _check_file(root, owners[rel][0], rel, owners[rel][1])) is not None:
            problems.append(problem)
    return problems


def require_intact(root: Path, rels, command: str) -> dict[str, dict]:
    """Before ``command`` reads the files ``rels`` of a run: each must be recorded in the manifest and still be
    what its stage wrote. Raises one :class:`PipelineError` naming every file that is not (so a hand-edited
    report or a checkpoint from another run is never consumed); returns the record.

    This hashes every file named, so call it once, with everything the command is about to read."""
    root = Path(root)
    record = load(RunDir(root).stages)
    if not record:
        raise PipelineError(f"{root} has no finished stages recorded ({RunDir(root).stages} is absent or empty), so "
                            f"`{command}` has nothing it can trust; run `pipeline run all` first. Nothing was written.")
    _refuse_for(command, root, check_files(root, record, rels))
    return record


def _refuse_for(command: str, root: Path, problems: list[Problem]) -> None:
    if problems:
        raise PipelineError(
            f"`{command}` refuses to read {root}: " + "; ".join(str(p) for p in problems) + ". These files are not "
            "what the pipeline wrote and recorded in stages.json (edited by hand, copied from another run, cut off, or "
            "never produced), so nothing was read or written. Rerun `pipeline run all` to rebuild missing files; "
            "delete altered ones to have their stage rebuild them, or rerun with --force to redo every stage.")


def require_intact_if_recorded(path: Path, command: str, levels: int = 3) -> None:
    """For commands that take any file (``predict``, ``bench``): when ``path`` lies in a run folder whose
    manifest records it (an artifact such as ``artifacts/edgenet/export/model-fp32.onnx``), it must still be what
    its stage wrote; a file no manifest records (the user's own model) is the user's to vouch for."""
    given = Path(path).absolute()
    try:  # a symlink (or a symlinked folder) to a run's artifact: what is really read is checked too
        real = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: opening it fails later, with its own message
        real = given
    for path in dict.fromkeys((given, real)):
        for root in list(path.parents)[:levels]:
            run = RunDir(root)
            if run.stages.is_file():
                rel = run.relpath(path)
                record = load(run.stages)  # read once: the same record says whether and how to check
                if recorded_sha(record, rel) is not None:
                    _refuse_for(command, root, check_files(root, record, [rel]))
                break


def check(root: Path, record: dict[str, dict]) -> list[Problem]:
    """Every recorded output that is missing, truncated or altered."""
    return [p for stage, info in record.items() for p in check_stage(root, stage, info)]


def refuse_damaged(root: Path, problems: list[Problem]) -> None:
    """Stop before a damaged file is read or overwritten; missing files are simply rebuilt."""
    damaged = [p for p in problems if p.kind != "missing"]
    if damaged:
        listing = "; ".join(str(p) for p in damaged)
        raise PipelineError(
            f"{root} holds files that no longer match what the pipeline wrote: {listing}. They were changed after "
            "they were written (by hand, another program, or disk corruption), so they are neither used nor "
            "overwritten. Delete them to have their stage rebuild them, or rerun with --force to redo every stage. "
            "Nothing was changed.")


def temp_leftovers(root: Path) -> list[Path]:
    """Temp files of writes that a killed process never renamed into place: ``.<name>[.<random>].tmp``, as
    written by ``layout.atomic_path`` and ``exporters.tensorrt._write_atomic``."""
    import stat

    from .paths import walk_tree

    if not Path(root).is_dir():
        return []
    return sorted(p for p, mode in walk_tree(root) if stat.S_ISREG(mode) and p.name.startswith(".")
                  and p.name.endswith(".tmp"))
