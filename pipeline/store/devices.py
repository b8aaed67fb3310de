"""One recording per device: ``<run_dir>/devices/<slug>.json``, written only here (/work/notes/DEVICES.md).

A measurement is untrusted input (it came from another machine, or a file a user handed over), so
:func:`check` validates every field before anything is written: the schema, finite numbers, fractions in
[0, 1], names without control characters. :func:`record` writes atomically (temp + rename), so an interrupted
write leaves the previous recording whole, and replaces an earlier recording of the same device name.
:func:`load_all` reads them back and marks a recording ``stale`` when the run's models no longer are the ones it
measured (a rerun changed the model): its figures stay visible but are never mixed with the new ones.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from pipeline import targets
from pipeline.errors import PipelineError

from .paths import RunDir

SCHEMA = 1
SOURCES = ("ssh", "file", "browser")
TARGETS = tuple(targets.DEVICE)
_SHA = re.compile(r"[0-9a-f]{64}")
_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
MAX_NAME = 200


class MeasurementError(PipelineError):
    """A device measurement that does not match the contract (damaged, altered, or not one at all)."""


def slug(name: str) -> str:
    """The file name of a device's recording: lowercase ``[a-z0-9-]``, at most 64 characters, never empty."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")
    return s or "device"


def _name_problem(text: Any, what: str) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"{what} must be a non-empty string"
    if len(text) > MAX_NAME:
        return f"{what} is longer than {MAX_NAME} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return f"{what} holds control characters"
    return None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fraction(x: Any) -> bool:
    return _finite(x) and 0 <= x <= 1


def problems(m: Any) -> list[str]:
    """Every way ``m`` breaks the measurement contract (empty: it holds)."""
    if not isinstance(m, dict):
        return ["not a JSON object"]
    out = []
    if m.get("schema") != SCHEMA:
        out.append(f"schema must be {SCHEMA}")
    for key in ("name",):
        why = _name_problem(m.get(key), key)
        if why:
            out.append(why)
    if m.get("source") not in SOURCES:
        out.append(f"source must be one of {', '.join(SOURCES)}")
    if m.get("target") not in TARGETS:
        out.append(f"target must be one of {', '.join(TARGETS)}")
    if not isinstance(m.get("measured_at"), str) or not _DATE.fullmatch(m["measured_at"]):
        out.append("measured_at must be a UTC time like 2026-12-06T07:00:00Z")
    b = m.get("bundle")
    if not isinstance(b, dict) or not isinstance(b.get("manifest_sha256"), str) or not _SHA.fullmatch(b["manifest_sha256"]):
        out.append("bundle.manifest_sha256 must be a SHA-256 in lowercase hex")
    elif _name_problem(b.get("model"), "bundle.model"):
        out.append(_name_problem(b.get("model"), "bundle.model"))
    elif "files" in b and not (isinstance(b["files"], dict) and all(
            isinstance(k, str) and isinstance(v, str) and _SHA.fullmatch(v) for k, v in b["files"].items())):
        out.append("bundle.files must map file names to SHA-256s")
    d = m.get("device", {})
    if not isinstance(d, dict):
        out.append("device must be an object")
    else:
        for k, v in d.items():
            if k == "runtimes":
                if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b_, str) for a, b_ in v.items()):
                    out.append("device.runtimes must map names to version strings")
            elif v is not None and not isinstance(v, (str, int, float)) or (isinstance(v, float) and not math.isfinite(v)):
                out.append(f"device.{k} must be a string or a number")
    vs = m.get("variants")
    if not isinstance(vs, dict) or not vs:
        out.append("variants must be a non-empty object")
        return out
    for name, v in vs.items():
        why = _name_problem(name, "a variant name")
        if why:
            out.append(why)
            continue
        out += [f"variants.{name}: {p}" for p in _variant_problems(v)]
    return out


def _variant_problems(v: Any) -> list[str]:
    if not isinstance(v, dict):
        return ["not an object"]
    out = []
    for key in ("accuracy", "agreement"):
        if not _fraction(v.get(key)):
            out.append(f"{key} must be a finite fraction in [0, 1] (got {v.get(key)!r})")
    flips = v.get("flipped")
    if not isinstance(flips, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in flips):
        out.append("flipped must be a list of test image indices")
    diff = v.get("max_abs_logit_diff")
    if diff is not None and not (_finite(diff) and diff >= 0):
        out.append(f"max_abs_logit_diff must be a finite number >= 0 or null (got {diff!r})")
    if not isinstance(v.get("equals_report"), bool):
        out.append("equals_report must be true or false")
    lat, thr = v.get("latency_ms", {}), v.get("throughput_ips", {})
    if not isinstance(lat, dict) or not isinstance(thr, dict):
        return out + ["latency_ms and throughput_ips must be objects keyed by batch size"]
    for batch, st in lat.items():
        if not str(batch).isdigit() or not isinstance(st, dict) or not st:
            out.append(f"latency_ms[{batch!r}] must be an object keyed by a batch size")
            continue
        for q in ("p50", "p90", "p99"):
            if q in st and not (_finite(st[q]) and st[q] >= 0):
                out.append(f"latency_ms[{batch}].{q} must be a finite number of ms >= 0 (got {st[q]!r})")
    for batch, x in thr.items():
        if not str(batch).isdigit() or not (_finite(x) and x >= 0):
            out.append(f"throughput_ips[{batch!r}] must be a finite number >= 0 keyed by a batch size")
    return out


def check(m: Any, where: str = "the measurement") -> dict:
    """``m`` when it holds the contract; else a one-paragraph :class:`MeasurementError` naming every problem."""
    found = problems(m)
    if found:
        raise MeasurementError(f"{where} is not a device measurement the pipeline can record: "
                               + "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
                               + ". Nothing was recorded.")
    return m


def path_of(run_dir: Path, name: str) -> Path:
    return RunDir(Path(run_dir)).devices / f"{slug(name)}.json"


def record(run_dir: Path, measurement: dict) -> Path:
    """Validate ``measurement`` and write it as ``<run_dir>/devices/<slug>.json`` (atomically, replacing an earlier
    recording of the same device). Returns the path. Raises :class:`MeasurementError` and writes nothing when the
    measurement breaks the contract."""
    from .paths import write_json

    check(measurement)
    path = path_of(run_dir, measurement["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, measurement)
    return path


def current_models(run_dir: Path) -> dict[str, str] | None:
    """``{"models/<file>": SHA-256}`` of the run's current exported files, from its manifest (stages.json);
    None when the run records none (a folder of the user's own)."""
    from . import manifest

    try:
        record_ = manifest.load(RunDir(Path(run_dir)).stages)
    except PipelineError:
        return None
    out = {}
    for stage in record_.values():
        for rel in stage.get("outputs", {}):
            if rel.startswith("export/") and rel.endswith(".onnx"):
                sha = manifest.recorded_sha(record_, rel)
                if sha:
                    out["models/" + rel.split("/", 1)[1]] = sha
    return out or None


def is_stale(m: dict, models: dict[str, str] | None) -> bool:
    """True when the bundle ``m`` was measured from holds a model file the run no longer has (same name, other
    SHA-256, or gone): a rerun changed the model. Without file hashes (or without a run manifest) it cannot be
    told, and the recording counts as current."""
    files = (m.get("bundle") or {}).get("files")
    if not files or models is None:
        return False
    return any(models.get(rel) != sha for rel, sha in files.items())


def load_all(run_dir: Path) -> list[dict]:
    """Every recording of the run, each with ``stale`` set (see :func:`is_stale`), sorted by name. A file in
    devices/ that breaks the contract (edited by hand, damaged) is skipped with a warning, never shown."""
    import logging

    folder = RunDir(Path(run_dir)).devices
    if not folder.is_dir():
        return []
    models = current_models(run_dir)
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            m = check(json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse), str(path))
        except (OSError, ValueError, PipelineError) as e:
            logging.getLogger(__name__).warning("skipped %s: %s", path, e)
            continue
        out.append({**m, "stale": is_stale(m, models)})
    return sorted(out, key=lambda m: m["name"].lower())


def _refuse(name):
    raise ValueError(f"{name} is not a JSON number")
