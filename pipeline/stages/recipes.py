"""The recipe registry: how each variant's file is made, one handler per ``recipe`` of :mod:`pipeline.variants`.

A row of the variant table names its ``recipe`` ("fp32", "fp16", "ptq", "qat", "ptq-cpu", "qat-cpu"); the stage
that owns a recipe registers one handler for it (``@recipe("ptq")`` in :mod:`pipeline.stages.quantize`), and the
stage loops over the table's rows whose recipe it owns (:func:`rows`) through one wrapper (:func:`build`), which
times the handler, logs the file and its size, and names the variant when it fails. So a variant made the way an
existing one is (another file, another placement) is one row, and a new way of making one is one registration,
never an ``if`` in the stage (Ultralytics' ``export_formats()`` plus ``@try_export``; torchao's and onnxruntime's
registries of quantization recipes).

What recipes share within one stage run (the checkpoint, the calibration images, the file another recipe made,
such as the QAT model the qat-cpu recipe converts) is the stage's ``shared`` object, never a row name. Every
stage module is imported with :mod:`pipeline.stages` (its ``__init__`` lists them), so the registry is complete
whenever a stage runs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import variants
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.variants import Variant
    from .context import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    name: str  # the value of the variant table's ``recipe`` column
    stage: str  # the stage that runs it
    make: Callable  # (ctx, variant row, the stage's shared object) -> the file written (the row's file)
    # what the log line says the file is; formatted with q (the QuantConfig), e (the ExportConfig) and v (the row)
    says: str


#: recipe name -> :class:`Recipe`, filled by the stage modules' ``@recipe`` registrations at import
RECIPES: dict[str, Recipe] = {}


def registrar(stage: str) -> Callable[..., Callable]:
    """The ``@recipe(name, says)`` decorator of one stage: registers a handler as the maker of ``name``'s files."""

    def recipe(name: str, says: str) -> Callable[[Callable], Callable]:
        def register(make: Callable) -> Callable:
            if name in RECIPES and RECIPES[name].make is not make:
                raise ValueError(f"recipe {name!r} is registered twice ({RECIPES[name].stage} and {stage})")
            RECIPES[name] = Recipe(name, stage, make, says)
            return make
        return register

    return recipe


def rows(ctx: Context, stage: str) -> list[Variant]:
    """The rows ``stage`` makes a file for, in table order: their recipe is one of the stage's, the config builds
    them (``QuantConfig.builds`` of their ``quant`` switch), and no earlier row's file is the same file (a row that
    measures a file another way, such as the browser or CUDA rows, names no recipe and makes nothing).

    A recipe no stage registers is refused here, before anything is written, rather than leaving a row without
    its file."""
    unknown = [v for v in variants.VARIANTS if v.recipe is not None and v.recipe not in RECIPES]
    if unknown:
        raise PipelineError(
            f"Variant {unknown[0].name} names recipe '{unknown[0].recipe}', which no stage makes; known recipes: "
            f"{', '.join(RECIPES)}. Use one of them in its row of pipeline/variants.py, or register a handler "
            "for it (@recipe in pipeline/stages/export.py or quantize.py).")
    from pipeline.measure.runners import optional, unavailable

    out, files = [], set()
    for v in variants.VARIANTS:
        if v.recipe is None or v.file in files:
            continue
        files.add(v.file)
        if RECIPES[v.recipe].stage != stage or not ctx.cfg.quant.builds(v.quant):
            continue
        why = unavailable(v, build=True) if optional(v) else None
        if why:  # an edge runtime not installed here: its rows are skipped (the validate stage says why)
            log.info("%s: %s skipped: %s", stage, v.name, why)
            continue
        out.append(v)
    return out


def key(ctx: Context, stage: str) -> list[list]:
    """What of the table a stage's key depends on: each row it makes (name, recipe, file, TensorRT placement),
    so adding or changing such a row, or installing an edge runtime (its rows join), reruns the stage."""
    return [[v.name, v.recipe, v.file, v.tensorrt] for v in rows(ctx, stage)]


def todo(ctx: Context, stage: str) -> list[Variant]:
    """:func:`rows` for a stage about to run, after removing the files of the optional rows it will not make this time
    (their runtime or converter is missing here now): a file an earlier run made would otherwise be measured by the
    validate stage as if this run had made it (from another checkpoint, perhaps). Only the stage's ``run`` calls it;
    :func:`rows` itself changes nothing, as the stage's key reads it."""
    from pipeline.measure.runners import optional

    made = rows(ctx, stage)
    for v in variants.VARIANTS:
        if (v.recipe in RECIPES and RECIPES[v.recipe].stage == stage and optional(v) and v not in made
                and ctx.cfg.quant.builds(v.quant)):
            for name in variants.files_of(v):
                ctx.rd.export_file(name).unlink(missing_ok=True)
            ctx.rd.unbuilt(v.file).unlink(missing_ok=True)
    return made


def outputs(ctx: Context, made: list[tuple[Variant, Path | None]]) -> list[Path]:
    """The files a stage wrote for the rows it made (:func:`build`'s results): each file with those that travel with it
    (``Variant.extra``: an IR's weights, a sidecar), or the note of a row that was not made."""
    out = []
    for v, path in made:
        out += [ctx.rd.export_file(name) for name in variants.files_of(v)] if path else [ctx.rd.unbuilt(v.file)]
    return out


def build(ctx: Context, v: Variant, shared) -> Path | None:
    """Make ``v``'s file with its recipe's handler: timed, logged with its size, and a failure named.

    A :class:`PipelineError` (a refusal worded for users) comes back with its paragraph prefixed by the variant
    when it names neither the variant nor its file (its subclasses, such as a refused write, already name the
    file and keep their class); anything else is a bug and keeps its traceback (the log says which variant it
    struck). An optional row (an edge runtime's: :func:`pipeline.measure.runners.optional`) whose converter refuses
    the model is not fatal: the paragraph is logged and kept in ``RunDir.unbuilt`` for the validate stage to report,
    any file of an earlier run is removed, and None comes back so the other rows go on."""
    from pipeline.measure.runners import optional
    from pipeline.store.paths import write_json

    r = RECIPES[v.recipe]
    t0 = time.perf_counter()
    note = ctx.rd.unbuilt(v.file)
    note.unlink(missing_ok=True)
    try:
        path = r.make(ctx, v, shared)
    except PipelineError as e:
        text = str(e)
        if type(e) is PipelineError and optional(v):
            log.warning("%s: %s skipped: %s", r.stage, v.name, text)
            for name in variants.files_of(v):
                ctx.rd.export_file(name).unlink(missing_ok=True)
            write_json(note, {"variant": v.name, "recipe": r.name, "reason": text})
            return None
        if type(e) is not PipelineError or v.name in text or v.file in text:
            raise
        raise PipelineError(f"{v.name} ({v.file}, recipe {r.name}): {text}") from None
    except BaseException:
        log.error("%s: %s (recipe %s) failed after %.1f s", r.stage, v.name, r.name, time.perf_counter() - t0)
        raise
    shared.made[r.name] = path
    says = r.says.format(q=ctx.cfg.quant, e=ctx.cfg.export, v=v)
    log.info("%s: %s -> %s (%s bytes, %.1f s)", r.stage, says, path, f"{path.stat().st_size:,}",
             time.perf_counter() - t0)
    return path
