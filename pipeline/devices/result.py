"""A result JSON written by the bundle's ``bench.py --json`` on a device, checked and turned into a measurement.

The file came from another machine (or a user's hand), so nothing in it is trusted: it must be strict JSON
(NaN/Infinity refused), carry bench.py's format tag and a digest that matches its content (an edit or damage
shows), come from a bundle of this run's current models (the SHA-256 of each model file, and, when the caller
knows which bundle it sent, that bundle's MANIFEST.json), hold finite figures that agree with each other
(agreement = 1 - flips / images), and name only variants this run's report has. The "equals report" verdict is
then recomputed here from the report's own rows, never taken from the device: the same accuracy, the same flipped
test images, and, for a variant with a parity tolerance, agreement 1.0 and max |logit diff| within it (TensorRT
engines: accuracy within :data:`ENGINE_TOLERANCE_PP` of their ONNX row, as ``bench.py --engines`` checks).
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from .. import targets, variants
from pipeline.store.devices import SCHEMA, MeasurementError

FORMAT = "edge-export-pipeline/bench-result-v1"
ENGINE_TOLERANCE_PP = 0.1
MAX_BYTES = 32 << 20


def _refuse_constant(name):
    raise ValueError(f"it holds {name}, which is not a number (NaN or infinity)")


def parse(data: bytes, where: str) -> dict:
    """The result's JSON object, or :class:`MeasurementError` naming why it is not one."""
    if len(data) > MAX_BYTES:
        raise MeasurementError(f"{where} is larger than {MAX_BYTES >> 20} MiB, so it is not a bench.py result. "
                               "Nothing was recorded.")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise MeasurementError(f"{where} is not a valid bench.py result: malformed JSON ({e}). Nothing was "
                               "recorded.") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise MeasurementError(f"{where} is not a result of the bundle's bench.py --json (its format is not "
                               f"{FORMAT}; bundles made before `pipeline device` write none: rebuild the bundle). "
                               "Nothing was recorded.")
    return obj


def _digest(body: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
                          .encode()).hexdigest()


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def equals_report(row: dict, rep: dict) -> list[str]:
    """The checks a device row fails against the report's row ``rep`` of its variant (empty: it equals it)."""
    failed = []
    flips = set(row["flip_indices"])
    if row["backend"] == "tensorrt":
        if not 100 * abs(row["accuracy"] - rep["accuracy"]) <= ENGINE_TOLERANCE_PP:
            failed.append(f"accuracy {100 * row['accuracy']:.2f} % is more than {ENGINE_TOLERANCE_PP} pp off the "
                          f"report's {100 * rep['accuracy']:.2f} %")
        return failed
    if row["accuracy"] != rep["accuracy"]:
        failed.append(f"accuracy {100 * row['accuracy']:.2f} % differs from the report's {100 * rep['accuracy']:.2f} %")
    then = set(rep.get("flips") or [])
    if flips != then:
        new, gone = sorted(flips - then), sorted(then - flips)
        failed.append(f"flipped test images differ from the report: {len(new)} newly flipped"
                      + (f" ({', '.join(map(str, new[:10]))}{', ...' if len(new) > 10 else ''})" if new else "")
                      + f", {len(gone)} no longer flipped"
                      + (f" ({', '.join(map(str, gone[:10]))}{', ...' if len(gone) > 10 else ''})" if gone else ""))
    v = variants.BY_NAME.get(row["variant"])
    if v is not None and v.atol is not None:
        diff = row["max_abs_diff"]
        if row["agreement"] != 1.0:
            failed.append(f"agreement {row['agreement']:.4f} (needs 1.0)")
        if diff is None or not diff <= v.atol:
            failed.append(f"max |logit diff| {diff!r} (needs <= {v.atol:g})")
    return failed


def to_measurement(data: bytes, where: str, *, report: dict, models: dict[str, str] | None, name: str, source: str,
                   target: str | None = None, host: str | None = None, manifest_sha256: str | None = None) -> dict:
    """The measurement dict of :mod:`.record` from bench.py's JSON ``data`` (``where`` names it in errors).

    ``report``: the run's report.json; ``models``: the run's current ``{"models/<file>": SHA-256}``;
    ``manifest_sha256``: the bundle that was sent (ssh), else any bundle of these models is accepted (a file)."""
    res = parse(data, where)

    def refuse(why: str) -> MeasurementError:
        return MeasurementError(f"{where} was refused: {why}. Nothing was recorded.")

    body = {k: v for k, v in res.items() if k != "digest"}
    if res.get("digest") != _digest(body):
        raise refuse("it was altered or damaged after bench.py wrote it (its digest does not match its content)")
    b = res.get("bundle")
    if not isinstance(b, dict) or not isinstance(b.get("files"), dict):
        raise refuse("it does not say which bundle it measured")
    if b.get("model") != report["model"]:
        raise refuse(f"it measured a bundle of model {b.get('model')!r}, not of this run's {report['model']!r}")
    if manifest_sha256 is not None and b.get("manifest_sha256") != manifest_sha256:
        raise refuse("it comes from another bundle than the one sent (MANIFEST.json's SHA-256 differs)")
    if models is not None:
        other = [rel for rel, sha in b["files"].items() if models.get(rel) != sha]
        if other or not b["files"]:
            raise refuse("it comes from another bundle or model: "
                         + (", ".join(other[:5]) if other else "no model file") + " is not this run's current file")
    if res.get("reference_failed_checks"):
        raise refuse("the device's copy of the reference logits failed its check: "
                     + "; ".join(map(str, res["reference_failed_checks"])))
    images = res.get("images")
    rows = res.get("rows")
    if not isinstance(images, int) or images <= 0 or not isinstance(rows, list) or not rows:
        raise refuse("it holds no measured rows")
    report_rows = {r["name"]: r for r in report["variants"]}
    out_variants, disagree = {}, {}
    for row in rows:
        why = _row_problem(row, images, report_rows)
        if why:
            raise refuse(why)
        failed = equals_report(row, report_rows[row["variant"]])
        key = row["variant"] + (" (TensorRT)" if row["backend"] == "tensorrt" else "")
        lat = {b_: {"p50": st["p50_ms"], "p90": st["p90_ms"], "p99": st["p99_ms"],
                    **({"spread_pct": st["spread_pct"]} if _num(st.get("spread_pct")) else {}),
                    **({"round_p50": st["round_p50_ms"]} if isinstance(st.get("round_p50_ms"), list) else {})}
               for b_, st in row["latency"].items() if st is not None}
        out_variants[key] = {
            "variant": row["variant"], "backend": row["backend"], "precision": str(row.get("precision", "?")),
            "accuracy": row["accuracy"], "agreement": row["agreement"], "flipped": list(row["flip_indices"]),
            "max_abs_logit_diff": row["max_abs_diff"], "latency_ms": lat,
            "throughput_ips": {b_: st["throughput_per_s"] for b_, st in row["latency"].items() if st is not None},
            "equals_report": not failed, "failed_checks": failed,
            **({"size_bytes": row["size_bytes"]} if _num(row.get("size_bytes")) else {}),
        }
        if failed:
            disagree[key] = failed
    dev = res.get("device") if isinstance(res.get("device"), dict) else {}
    device = {k: str(dev[k])[:2000] for k in ("os", "cpu", "gpu", "jetpack", "nvpmodel", "jetson_clocks", "platform",
                                              "python") if dev.get(k) not in (None, "")}
    if isinstance(dev.get("runtimes"), dict):
        device["runtimes"] = {str(k)[:50]: str(v)[:50] for k, v in dev["runtimes"].items()}
    device["host"] = str(host if host is not None else dev.get("host", "?"))[:200]
    if _num(dev.get("cores")):
        device["cores"] = int(dev["cores"])
    when = res.get("finished_at")
    try:
        datetime.strptime(str(when), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    tgt = target or b.get("target")
    measured = [t.name for t in targets.BUNDLES if t.runner == "python"]
    if tgt not in measured:
        raise refuse(f"its bundle's target {tgt!r} is not one bench.py measures ({', '.join(measured)})")
    untrusted = (res.get("contention") or {}).get("untrusted") or []
    return {"schema": SCHEMA, "name": name, "source": source, "target": tgt, "measured_at": when,
            "bundle": {"manifest_sha256": b.get("manifest_sha256"), "model": b["model"], "target": b.get("target"),
                       "files": dict(b["files"])},
            "device": device, "variants": out_variants, "engines": bool(res.get("engines")),
            "timing_untrusted": [str(u)[:300] for u in untrusted][:10], "disagreements": disagree}


def _row_problem(row: Any, images: int, report_rows: dict) -> str | None:
    if not isinstance(row, dict):
        return "a row is not an object"
    name = row.get("variant")
    if name not in report_rows:
        return f"it names a variant {name!r} that this run's report does not have"
    if row.get("backend") not in ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"):
        return f"{name}: unknown backend {row.get('backend')!r}"
    if row.get("nonfinite"):
        return f"{name}: {row['nonfinite']} test images gave NaN or infinite logits on the device"
    for key in ("accuracy", "agreement"):
        if not (_num(row.get(key)) and 0 <= row[key] <= 1):
            return f"{name}: {key} is {row.get(key)!r}, not a finite fraction (NaN or damaged)"
    flips = row.get("flip_indices")
    if not isinstance(flips, list) or not all(isinstance(i, int) and 0 <= i < images for i in flips):
        return f"{name}: its flipped images are not test image indices"
    if len(set(flips)) != len(flips) or row.get("flips") != len(flips):
        return f"{name}: its flip count does not match its flipped images"
    if abs(row["agreement"] - (1 - len(flips) / images)) > 1e-9:
        return f"{name}: agreement {row['agreement']!r} does not match its {len(flips)} flipped images"
    diff = row.get("max_abs_diff")
    if not (_num(diff) and diff >= 0):
        return f"{name}: max |logit diff| is {diff!r}, not a finite number (NaN or damaged)"
    lat = row.get("latency")
    if not isinstance(lat, dict):
        return f"{name}: no latency figures"
    for b_, st in lat.items():
        if not str(b_).isdigit():
            return f"{name}: latency keyed by {b_!r}, not a batch size"
        if st is None:
            continue
        if not isinstance(st, dict) or not all(_num(st.get(k)) and st[k] >= 0 for k in
                                               ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s")):
            return f"{name}: latency at batch {b_} is not finite figures (NaN or damaged)"
    return None
