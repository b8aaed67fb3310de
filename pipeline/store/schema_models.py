"""The pydantic models behind :mod:`pipeline.store.schema`: report.json's contract and a stages.json entry.

Apart from schema.py so that ``import pipeline.store.schema`` stays free of pydantic (imported only when a
file is checked), while the models themselves are plain module-level classes that read top to bottom. The
rules (strict types, finite numbers, 64-bit integers, extra keys allowed) are the ``Strict`` base's; the field
comments say why a field may be null or absent. Checked and explained by :mod:`pipeline.store.schema`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag,
                      model_validator)

INT64 = 2**63 - 1

Count = Annotated[int, Field(ge=0, le=INT64)]
Positive = Annotated[int, Field(ge=1, le=INT64)]
Number = float  # finite: allow_inf_nan=False below
NonNeg = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def _column(name: str):
    """The values a report row's field may take: those of the variant table's column (pipeline.variants), so a
    backend, provider or precision is named in one place."""
    from pipeline.variants import VARIANTS

    return Literal[tuple(sorted({getattr(v, name) for v in VARIANTS}))]


Backend, Provider, Precision = _column("backend"), _column("provider"), _column("precision")


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")


# ---------------------------------------------------------------- report.json
class Latency(Strict):
    p50_ms: NonNeg
    p90_ms: NonNeg
    p99_ms: NonNeg
    mean_ms: NonNeg
    std_ms: NonNeg
    min_ms: NonNeg
    cv: NonNeg
    throughput_per_s: NonNeg
    iterations: Positive
    batch: Positive
    includes: Optional[str] = None  # what one timed call spans (reports written before it lack it)
    # interleaved timing (reports written before it lack these): p50_ms and throughput_per_s are then medians
    # over `rounds` rounds; round_p50_ms each round's median (ms); spread_pct = (max - min) / median of
    # round_p50_ms, in percent (runtime.bench.SPREAD); null when timed in one go
    rounds: Positive = 1
    round_p50_ms: Optional[list[NonNeg]] = None
    spread_pct: Optional[NonNeg] = None


class LayerPrecisions(Strict):
    by_precision: dict[str, Count]


class Engine(Strict):  # what a built TensorRT engine holds, from its sidecar (trt-* rows only)
    tensorrt: Optional[str] = None
    layer_precisions: Optional[LayerPrecisions] = None


class VsFp32(Strict):
    against: str
    throughput_ratio: NonNeg
    p50_ratio: NonNeg


class VariantRow(Strict):
    name: str
    backend: Backend
    provider: Provider
    precision: Precision
    path: str
    size_bytes: Count
    accuracy: Fraction
    agreement: Fraction
    max_abs_diff: Optional[NonNeg]  # null: the variant's logits were NaN/inf, so no difference exists
    nonfinite: Count = 0  # test images with a NaN/inf logit (absent in reports written before it existed)
    accuracy_delta: Number
    flips: list[Count]
    budget_pp: Optional[NonNeg] = None
    ort_optimization: Optional[Literal["all", "basic"]] = None
    latency: dict[Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,5}$")], Latency]
    engine: Optional[Engine] = None
    measured_in: Optional[str] = None  # rows measured outside this Python process (the browser's): where
    vs_fp32: Optional[VsFp32] = None  # INT8 rows: speed against the FP32 row of the same backend and provider


class Epoch(Strict):
    epoch: Positive
    train_loss: Number
    train_accuracy: Fraction
    val_loss: Number
    val_accuracy: Fraction


class TrainThroughput(Strict):
    images_per_s: NonNeg
    macs_factor: Positive
    gflops: NonNeg
    fraction_of_peak: Optional[NonNeg] = None  # null: trained on a GPU, where the CPU's peak says nothing


class Train(Strict):
    epochs: Positive
    seconds: NonNeg
    val_accuracy: Fraction
    test_accuracy: Fraction
    best_epoch: Optional[Positive] = None
    history: Optional[list[Epoch]] = None
    world_size: Optional[Positive] = None  # DDP processes (reports written before --nproc lack it)
    throughput: Optional[TrainThroughput] = None


class Speed(Strict):
    throughput_ratio: NonNeg
    p50_ratio: NonNeg


class Skipped(Strict):
    name: str
    reason: str


class Sqnr(Strict):
    layer: Count
    op: str
    sqnr_db: Optional[Number]  # null: infinite (identical outputs) or undefined (NaN/inf outputs)


class Rung(Strict):  # one step of the accuracy ladder (pipeline.report.ladder)
    step: str
    source: Optional[str]  # the variant row (or quantize/qat-torch.json) measured; null: none exists
    accuracy: Optional[Fraction]  # null: not measured here, and not_measured says why
    delta_pp: Optional[Number]  # change from the rung before that was measured
    vs_fp32_pp: Optional[Number]
    not_measured: Optional[str]


class Trial(Strict):  # a file's validation accuracy and logit SQNR against the FP32 ONNX
    accuracy: Fraction
    sqnr_db: Optional[Number]


class SensitiveLayer(Strict):  # one row of the INT8 sensitivity ranking (pipeline.measure.budget)
    rank: Positive
    module: Optional[str]  # PyTorch module path; null when the ONNX weight's name gives none
    nodes: Annotated[list[str], Field(min_length=1)]  # ONNX node names
    op: str
    fp32_only: Trial
    int8_only: Trial
    recovered_pp: Number
    alone_drop_pp: Number


class Fallback(Strict):  # one PTQ file under --int8-budget
    budget_pp: NonNeg
    int8_drop_pp: Number  # points lost with every layer INT8 (validation split)
    fp32_layers: list[str]  # PyTorch module paths (ONNX node names where a path is unknown)
    drop_pp: Optional[Number] = None  # with fp32_layers kept in FP32; absent when no file met the budget
    onnxruntime_nodes_to_exclude: Optional[list[str]] = None  # absent when no file met the budget
    tensorrt_layer_precisions: Optional[str] = None
    torch_modules: Optional[list[str]] = None


class Sensitivity(Strict):
    images: Count
    source: str
    ranking: str  # the ranking rule, in words
    variant: Optional[str]  # the file ranked (null only when no layer was)
    fp32_accuracy: Optional[Fraction] = None
    int8_accuracy: Optional[Fraction] = None
    layers: list[SensitiveLayer]
    fallback: dict[str, Fallback]


class Quantization(Strict):
    images: Count
    variants: dict[str, list[Sqnr]]
    sensitivity: Optional[Sensitivity] = None


class Confusion(Strict):
    variant: str
    classes: list[str]
    matrix: list[list[Count]]

    @model_validator(mode="after")
    def _square(self):
        n = len(self.classes)
        if len(self.matrix) != n or any(len(row) != n for row in self.matrix):
            raise ValueError(f"matrix must be {n} x {n}, one row and column per class")
        return self


class Verdict(Strict):  # runtime.bench.pick: a winner only beyond the noise, else a tie and its breaker
    winner: str
    fastest: str  # the lowest p50, which is not the winner when a tie was broken another way
    tied: list[str]  # the variants within the noise of the fastest, winner first; empty: no tie
    difference_pct: Optional[NonNeg] = None  # percent slower than the fastest (tie: the slowest tied; else the runner-up)
    spread_pct: Optional[NonNeg] = None  # percent: the noise difference_pct was held against
    broken_by: Optional[Literal["smaller file", "higher accuracy", "name"]] = None
    runner_up: Optional[str] = None
    sentence: str


class TimingSession(Strict):  # one timing session: what was timed together, and what else the machine did
    where: Literal["python", "browser"]
    variants: list[str]
    seconds: NonNeg
    cores: Positive
    load_1min: Optional[NonNeg] = None  # 1-minute load average at the end (null: the OS gives none)
    steal_pct: Optional[NonNeg] = None  # percent of all CPU time stolen by the hypervisor (null: not Linux)
    others_cpu_pct: Optional[NonNeg] = None  # percent of all cores' time used by other processes (null: unknown)
    untrusted: list[str]  # why its figures are not to be trusted; empty: nothing says so


class Timing(Strict):  # how the latency figures were taken (runtime.bench.interleave)
    method: str
    spread: str  # the definition of spread_pct
    rounds: Positive
    burst_calls: Positive  # timed calls per burst, at most
    burst_seconds: NonNeg  # a burst's length, at most
    warmup_calls: Count
    sessions: list[TimingSession]
    trusted: bool  # false: some session's figures are not to be trusted (untrusted says why)
    untrusted: list[str]


class Recommendation(Strict):  # one target's "What to ship" entry (pipeline.report.recommend)
    variant: str
    file: str
    reason: str
    measured: bool  # recommended from measurements on this target in this run (else: what to build from)
    command: Optional[str] = None  # what measures it on the device
    p50_ms: Optional[NonNeg] = None  # at p50_batch
    p50_batch: Optional[Positive] = None
    throughput: Optional[NonNeg] = None  # images/s at throughput_batch
    throughput_batch: Optional[Positive] = None
    accuracy: Optional[Fraction] = None
    spread_pct: Optional[NonNeg] = None  # the chosen variant's p50 spread over the rounds, percent
    verdict: Optional[Verdict] = None  # measured targets: how the variant was picked (reports before it lack it)


class Report(Strict):
    model: str
    params: Count
    macs_per_image: Count
    train: Train
    variants: Annotated[list[VariantRow], Field(min_length=1)]
    speedup_vs_torch: dict[str, Speed]
    # every row timed with onnx-fp32 (variants.BASELINE), against it; absent in reports made before the edge runtimes
    speedup_vs_onnx_fp32: dict[str, Speed] = {}
    skipped: list[Skipped]
    quantization: Optional[Quantization] = None
    ladder: Optional[dict[str, list[Rung]]] = None  # reports written before it lack it
    environment: dict[str, Any]
    confusion: Optional[Confusion] = None
    recommended: Optional[dict[str, Recommendation]] = None  # reports written before it lack it
    timing: Optional[Timing] = None  # reports written before interleaved timing lack it

    @model_validator(mode="after")
    def _recommended_rows_exist(self):
        names = {v.name for v in self.variants}
        for target, rec in (self.recommended or {}).items():
            if rec.measured and rec.variant not in names:
                raise ValueError(f"recommended.{target}.variant {rec.variant!r} is said to be measured here "
                                 "but names no row of variants")
        return self


# ---------------------------------------------------------------- stages.json
class Output(Strict):
    sha256: Sha256
    size: Count


def _inside(rel: str) -> str:
    """A manifest's output path must stay inside the run folder (no absolute path, no ``..``)."""
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or ".." in parts:
        raise ValueError("must be a path inside the run folder")
    return rel


RelPath = Annotated[str, AfterValidator(_inside)]


class StageEntry(Strict):
    key: Sha256
    inputs: dict[str, Any] = {}  # v1 manifests had none
    # v1 stored the bare hash; a tag picks the form, so an error names only the one that was meant
    outputs: dict[RelPath, Annotated[Union[Annotated[Output, Tag("v2")], Annotated[Sha256, Tag("v1")]],
                                     Discriminator(lambda v: "v1" if isinstance(v, str) else "v2")]]
    versions: dict[str, str] = {}
    seconds: NonNeg
    finished: str
