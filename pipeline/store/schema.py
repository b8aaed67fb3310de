"""Declared schemas of the JSON files a user may edit or damage: ``report.json`` and ``stages.json``.

Both files are read back by the pipeline (``pipeline report`` renders the
report from its JSON alone; every run trusts the manifest to say which files
are intact), so "valid JSON" is not enough: a string where a number belongs, a
missing key or a ``null`` would otherwise surface as a traceback deep inside
rendering, or worse as a wrong result. pydantic v2 checks them once, at the
edge, before anything is rendered or rewritten.

The models are strict (no ``"0.98"`` for 0.98, no ``true`` for 1), reject
NaN/Infinity, bound integers to 64 bits (so ``size / 1024`` cannot overflow),
and allow extra keys: docs/report.md's "Report contract" is the set of keys
others may rely on, not a ban on adding more. The models are module-level classes in
:mod:`pipeline.store.schema_models`, imported lazily (with pydantic) when a file is checked. A report is read
back only through :func:`load_report`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

MAX_ERRORS = 4  # validation errors named in the one-paragraph message; the rest are counted


class SchemaError(PipelineError):
    """A JSON file that parses but does not match its declared schema (a user's edit or damage)."""


def _models():
    """The pydantic models, imported on first use (keeps ``import pipeline.store.schema`` free of pydantic)."""
    from . import schema_models

    return {"report": schema_models.Report, "stage": schema_models.StageEntry}


MANIFEST_FORMATS = ("edge-export-pipeline/run-manifest-v2",)


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses what Python's json module accepts by default but strict JSON lacks: the
    NaN/Infinity literals, and numbers too large for a float (``1e999`` would silently become infinity)."""
    def refuse(name):
        raise ValueError(f"{name} is not a JSON number (strict JSON has no NaN or Infinity)")

    def finite(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:30]} is too large for a float")
        return value

    return json.loads(text, parse_constant=refuse, parse_float=finite)


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"] if p not in ("v1", "v2")) or "(top level)"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:] if msg else msg
    if err["type"] not in ("missing",) and "input" in err:
        got = err["input"]
        shown = json.dumps(got)[:40] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
        msg += f" (got {shown})"
    return f"{where}: {msg}"


def _explain(exc) -> str:
    errors = exc.errors(include_url=False)
    named = "; ".join(_describe(e) for e in errors[:MAX_ERRORS])
    more = len(errors) - MAX_ERRORS
    return named + (f"; and {more} more problem{'s' if more > 1 else ''}" if more > 0 else "")


def check_report(data: Any, where) -> dict:
    """Return ``data`` if it matches the report contract; else :class:`SchemaError` naming the problems."""
    from pydantic import ValidationError

    try:
        _models()["report"].model_validate(data)
    except ValidationError as e:
        raise SchemaError(f"{where} is not a pipeline report: it does not match the report contract (docs/report.md, "
                          f"\"Report contract\"): {_explain(e)}.") from None
    return data


def parse_report(text: str, where) -> dict:
    """The report in ``text`` (strict JSON, :func:`strict_loads`), checked against the contract (:func:`check_report`);
    else :class:`SchemaError` naming ``where`` and the problems."""
    try:
        data = strict_loads(text)
    except ValueError as e:
        raise SchemaError(f"{where} is not a pipeline report (invalid JSON: {e}).") from None
    return check_report(data, where)


def load_report(path: Path, then: str = "") -> dict:
    """report.json at ``path``, read, strict-parsed and checked against the contract: the one way the pipeline reads
    a report back (``pipeline report``, ``pipeline bundle``, the Python API), so each refuses the same files
    with the same words.

    Anything else (missing, unreadable, not UTF-8, invalid or non-strict JSON, off the contract) is one
    paragraph, a :class:`~pipeline.errors.PipelineError`, ending with ``then``: what the caller's user should do,
    or what was left untouched."""
    tail = f" {then}" if then else ""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise PipelineError(f"{path} could not be read ({e.strerror or e}).{tail}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError(f"{path} is not a pipeline report (invalid JSON: {e}).{tail}") from None
    try:
        return parse_report(text, path)
    except SchemaError as e:
        raise SchemaError(f"{e}{tail}") from None


def manifest_problems(data: Any) -> str | None:
    """Plain-words description of why ``data`` is not a run manifest, or None when it is one."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        return f"the top level must be a JSON object of stage entries, got {type(data).__name__}"
    fmt = data.get("format", MANIFEST_FORMATS[0])
    if fmt not in MANIFEST_FORMATS:
        return f"format: unknown manifest format {json.dumps(fmt)[:60]}"
    entry = _models()["stage"]
    problems = []
    for name, info in data.items():
        if name == "format":
            continue
        try:
            entry.model_validate(info)
        except ValidationError as e:
            problems += [f"{name}.{_describe(err)}" if err["loc"] else f"{name}: {_describe(err).split(': ', 1)[1]}"
                         for err in e.errors(include_url=False)]
    if not problems:
        return None
    more = len(problems) - MAX_ERRORS
    return "; ".join(problems[:MAX_ERRORS]) + (f"; and {more} more problem{'s' if more > 1 else ''}" if more > 0 else "")
