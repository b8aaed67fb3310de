"""One recording per device in a run: ``<run_dir>/devices/<slug>.json``.

STAND-IN written on the ``wt-phone`` branch so the phone path (:mod:`pipeline.devices.phone`) can record; the
``wt-ssh`` branch owns this module and its version (with ``load_all`` and staleness) replaces this one at merge.
Same signature and behaviour as that contract: :func:`record` checks the measurement dict, slugs the device
name and writes the file atomically (temp file + rename: an interrupted run leaves nothing half-written),
replacing an earlier recording of the same device.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import PipelineError
from pipeline.store.paths import write_json

SCHEMA = 1
SOURCES = ("ssh", "file", "browser")
TARGETS = ("cpu", "gpu", "jetson", "browser")
#: what a device's name may hold (it is shown in the report and slugged into a file name)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()-]{0,99}")


def slug(name: str) -> str:
    """``Chrome 131 on Android`` -> ``chrome-131-on-android``: lowercase [a-z0-9-], at most 64 characters."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")
    if not s:
        raise PipelineError(f"The device name {name!r} has no letter or digit to name its recording by; "
                            "give it a name with letters or digits.")
    return s


def _fraction(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 1


def problems(m: dict) -> list[str]:
    """Every way ``m`` breaks the measurement schema (empty when it is well formed)."""
    if not isinstance(m, dict):
        return ["the measurement is not an object"]
    out = []
    if m.get("schema") != SCHEMA:
        out.append(f"schema must be {SCHEMA}")
    if not isinstance(m.get("name"), str) or not NAME.fullmatch(m["name"]):
        out.append("name must be 1 to 100 letters, digits, spaces or ._()-")
    if m.get("source") not in SOURCES:
        out.append(f"source must be one of {', '.join(SOURCES)}")
    if m.get("target") not in TARGETS:
        out.append(f"target must be one of {', '.join(TARGETS)}")
    if not isinstance(m.get("measured_at"), str):
        out.append("measured_at must be an ISO 8601 time")
    b = m.get("bundle")
    if not isinstance(b, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(b.get("manifest_sha256"))):
        out.append("bundle.manifest_sha256 must be a SHA-256 in hex")
    if not isinstance(m.get("device", {}), dict):
        out.append("device must be an object")
    variants = m.get("variants")
    if not isinstance(variants, dict) or not variants:
        return out + ["variants must be a non-empty object"]
    for name, v in variants.items():
        if not isinstance(v, dict):
            out.append(f"{name}: not an object")
            continue
        if not (_fraction(v.get("accuracy")) and _fraction(v.get("agreement"))):
            out.append(f"{name}: accuracy and agreement must be finite fractions in [0, 1]")
        if not isinstance(v.get("flipped"), list) or not all(type(i) is int and i >= 0 for i in v["flipped"]):
            out.append(f"{name}: flipped must list test-image indices")
        d = v.get("max_abs_logit_diff")
        if not (type(d) in (int, float) and math.isfinite(d) and d >= 0):
            out.append(f"{name}: max_abs_logit_diff must be a finite number >= 0")
        nums = [x for by in ("latency_ms",) for st in (v.get(by) or {}).values() for x in (st or {}).values()]
        nums += list((v.get("throughput_ips") or {}).values())
        if not all(type(x) in (int, float) and math.isfinite(x) and x >= 0 for x in nums):
            out.append(f"{name}: latencies and throughputs must be finite numbers >= 0")
        if not isinstance(v.get("equals_report"), bool):
            out.append(f"{name}: equals_report must be true or false")
    return out


def record(run_dir: Path, measurement: dict) -> Path:
    """Check ``measurement`` and write it to ``<run_dir>/devices/<slug of its name>.json`` atomically, replacing
    an earlier recording of the same device; return the path. A malformed one is refused, naming every problem,
    and nothing is written."""
    bad = problems(measurement)
    if bad:
        raise PipelineError(f"The device measurement was not recorded: {'; '.join(bad)}.")
    path = Path(run_dir) / "devices" / f"{slug(measurement['name'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, measurement)
