"""Frozen, validated configuration objects, one per stage, and the one place that knows their defaults.

They are built once at the edge (the CLI or :func:`pipeline.run`), checked there, and passed down
explicitly; no stage reads globals or the environment. ``stamp()`` gives the
dict that is hashed to decide whether a finished stage can be skipped.

Three tables live here and nowhere else: the defaults (the dataclass fields), the ``--quick`` budget
(:data:`QUICK`) and the options of ``pipeline run`` (:data:`OPTIONS`: each one's name, the fields it sets, type,
help, flags and choices; :data:`RUN_OPTIONS` is read from it). The CLI's signature and help and
:func:`pipeline.run`'s keywords are read from them, and both build their config through :func:`build_config`,
so a default or an option changed here changes every entry point at once.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PipelineError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "step", "none")
DEVICES = ("auto", "cpu", "cuda")
MNIST_TRAIN_IMAGES = 60_000  # the training split before the validation images are held out
MAX_SEED = 2**63 - 1  # torch.manual_seed takes any 64-bit value; a non-negative int64 is what every RNG here accepts
MAX_THREADS = 1024  # more intra-op threads than this is a typo (torch and onnxruntime would try to start them)
MAX_NPROC = 256  # more local worker processes than this is a typo, not a machine (each one loads torch)


def user_cache() -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache``. Set but empty, or relative, it counts as unset (the XDG Base
    Directory spec: "If $XDG_CACHE_HOME is either not set or empty, a default equal to $HOME/.cache should be used";
    relative paths are invalid), so an empty variable never writes MNIST into the current folder."""
    env = os.environ.get("XDG_CACHE_HOME", "")
    return Path(env) if env and os.path.isabs(env) else Path.home() / ".cache"


#: which variable (or default) named the data root, for errors about it: a cache problem must not blame --out
def data_root_source() -> str:
    if os.environ.get("PIPELINE_DATA"):
        return "$PIPELINE_DATA"
    env = os.environ.get("XDG_CACHE_HOME", "")
    return "$XDG_CACHE_HOME" if env and os.path.isabs(env) else "the default user cache (~/.cache)"


def default_data_root() -> Path:
    """Shared across checkouts, outside the repo: ``$PIPELINE_DATA`` or the user cache."""
    env = os.environ.get("PIPELINE_DATA")
    if env:
        return Path(env)
    return user_cache() / "edge-export-pipeline"


def stamp(cfg) -> dict:
    """The config as plain JSON types (paths as strings), for hashing and reports. A field marked
    ``stamp=False`` is left out; one marked ``"unless-default"`` only when it differs from its default, so adding
    such a field keeps the keys of the runs made before it."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.metadata.get("stamp") is False or (f.metadata.get("stamp") == "unless-default" and v == f.default):
            continue
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise PipelineError(msg)


#: What each kind of field accepts, and how a message names it. ``int`` is a whole number and never a bool (True is
#: not 1 epoch); ``float`` any real number; ``str`` text; ``bool`` a switch.
KINDS = {
    "int": ("a whole number", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "str": ("text", lambda v: isinstance(v, str)),
    "bool": ("True or False", lambda v: isinstance(v, bool)),
}
def _field_name(target: str) -> str:
    """How a message names a field: the keyword and the option (``epochs (--epochs)``), else ``section.field``."""
    option = next((o for o, ts in RUN_OPTIONS.items() if target in ts), None)
    return f"{option} (--{option.replace('_', '-')})" if option else target


def check_types(config, section: str) -> None:
    """Refuse, naming all of them at once, the fields of ``config`` whose type is not :data:`FIELD_TYPES`' (the
    value shown as its repr and type, so ``lr='0.01'`` is not reported as "got 0.01"). Checked before any range
    check and so before any work: ``run(epochs=2.5)`` would otherwise train, then fail in ``range``."""
    problems = []
    for target, kind in FIELD_TYPES.items():
        sec, _, name = target.partition(".")
        if sec != section:
            continue
        value = getattr(config, name)
        if kind.endswith("?") and value is None:
            continue
        words, ok = KINDS[kind.rstrip("?")]
        if not ok(value):
            problems.append(f"{_field_name(target)} must be {words}, got {value!r} ({type(value).__name__})")
    if problems:
        raise PipelineError("; ".join(problems) + ". Nothing was run.")


def _finite(x: float) -> bool:
    """NaN and inf slip through one-sided comparisons (``inf >= 0`` is True), so floats are checked first."""
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass(frozen=True)
class DataConfig:
    root: Path = field(default_factory=default_data_root)  # holds MNIST/raw
    val_size: int = 5000  # images held out of the 60,000 training images for model selection
    split_seed: int = 0  # fixes which images are held out
    max_train: int | None = None  # cap on training images (--quick); None = all

    def __post_init__(self):
        check_types(self, "data")
        _check(1 <= self.val_size <= 30000, f"--val-size must be between 1 and 30000, got {self.val_size}.")
        _check(self.max_train is None or self.max_train >= 100, "max_train must be at least 100 images.")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6  # full passes over the training split (docs/history.md, "Recipes tried")
    batch_size: int = 128
    optimizer: str = "adamw"  # adamw | adam | sgd (momentum 0.9, Nesterov)
    lr: float = 3e-3  # peak learning rate for onecycle, initial otherwise
    weight_decay: float = 1e-4
    schedule: str = "onecycle"  # onecycle | cosine | step (x0.1 at 2/3) | none
    label_smoothing: float = 0.05
    augment: bool = True  # small random affine (rotation, scale, shift) on each batch
    ema: float = 0.998  # decay of the weight EMA that is validated and kept (0 = off: the raw weights)
    channels_last: bool = True  # train convs in NHWC memory layout (faster on CPU; same arithmetic)
    seed: int = 0
    device: str = "auto"  # auto picks cuda when available
    threads: int = 0  # torch intra-op threads; 0 = torch's default (all cores; with --nproc, each rank's share)
    # processes that share each global batch (DDP). Not an option: the launcher sets it (--nproc, or torchrun's
    # WORLD_SIZE). Stamped when above 1, so part of the train stage's key (a 2-process result equals the 1-process
    # one only up to the order of float additions, not bit for bit), while a 1-process run keeps the key it had.
    world_size: int = field(default=1, metadata={"stamp": "unless-default"})

    def __post_init__(self):
        check_types(self, "train")
        _check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}.")
        _check(1 <= self.batch_size <= 8192, f"--batch-size must be in 1..8192, got {self.batch_size}.")
        _check(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got '{self.optimizer}'.")
        _check(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}; got '{self.schedule}'.")
        _check(_finite(self.lr) and 0 < self.lr < 10, f"--lr must be a positive number below 10, got {self.lr}.")
        _check(_finite(self.weight_decay) and 0 <= self.weight_decay <= 1,
               f"--weight-decay must be a number from 0 to 1, got {self.weight_decay}.")
        _check(_finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
               f"--label-smoothing must be in [0, 1), got {self.label_smoothing}.")
        _check(_finite(self.ema) and 0 <= self.ema < 1, f"--ema must be in [0, 1) (0 = off), got {self.ema}.")
        _check(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}; got '{self.device}'.")
        _check(0 <= self.threads <= MAX_THREADS, f"--threads must be from 0 (all cores) to {MAX_THREADS}, "
                                                 f"got {self.threads}.")
        _check(0 <= self.seed <= MAX_SEED, f"--seed must be from 0 to {MAX_SEED} (2**63 - 1), got {self.seed}.")
        _check(self.world_size >= 1, f"the world size must be at least 1, got {self.world_size}.")
        _check(self.batch_size >= self.world_size,
               f"--batch-size {self.batch_size} is the global batch, split over {self.world_size} processes: "
               f"it must be at least {self.world_size}.")


@dataclass(frozen=True)
class LaunchConfig:
    """How ``--nproc`` local workers are started and watched (:mod:`pipeline.training.distributed`).

    Not a sub-config of :class:`RunConfig` and never stamped: it changes how processes start and how soon a
    stuck one is given up on, not what is trained (the world size, which is, lives in :class:`TrainConfig`).
    """

    nproc: int = 1  # local worker processes; 1 = today's single process, no process group
    timeout_s: int = 600  # a collective (or the wait for rank 0's earlier stages) longer than this fails the run
    monitor_s: float = 0.5  # how often the launcher looks at its workers; one that died stops the others

    def __post_init__(self):
        _check(1 <= self.nproc <= MAX_NPROC, f"--nproc must be a whole number from 1 to {MAX_NPROC}, got {self.nproc}.")
        _check(self.timeout_s >= 1 and _finite(self.monitor_s) and self.monitor_s > 0,
               "the launch timeout and monitor interval must be positive.")


def parse_nproc(text: str | int | None) -> int:
    """``--nproc`` as given on the command line (text, so that ``two`` gets this paragraph and not a usage error):
    a whole number of at least 1; ``None`` (not given) is 1."""
    if text is None:
        return 1
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    _check(value is not None and 1 <= value <= MAX_NPROC,
           f"--nproc must be a whole number of local worker processes from 1 to {MAX_NPROC} (1 = one process, no "
           f"DDP; more than the machine's cores is allowed, but slow); got '{text}'. Nothing was written.")
    return value


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18  # ONNX opset; TensorRT 10 and 11 parse 18
    golden_count: int = 64  # test images whose PyTorch logits are stored in golden.npz


@dataclass(frozen=True)
class ValidateConfig:
    batches: tuple[int, ...] = (1, 8, 64, 256)  # batch sizes timed (first and last appear in the summary)
    warmup: int = 10  # untimed runs per variant and batch size before the first round
    # every variant of a run is timed together, in rounds (runtime.bench.interleave): each round gives each variant
    # a burst at each batch size, the order rotated; figures are medians over rounds, with their spread (percent)
    rounds: int = 7
    iterations: int = 100  # timed runs per burst (at most): a burst of fast calls ends here, of slow ones at max_seconds
    max_seconds: float = 0.15  # a burst's length in seconds (at most; at least 3 runs)
    golden_atol: float = 1e-5  # the checkpoint must reproduce golden.npz's logits within this (max |diff|)
    threads: int = 0  # intra-op threads for both torch and onnxruntime; 0 = all cores
    # also measure the web-wasm-* rows in headless Chromium (when it is installed): all test images and the first and
    # last batch size, through the web bundle's classifier.js on onnxruntime-web's wasm build
    browser: bool = True

    def __post_init__(self):
        check_types(self, "validate")
        _check(all(b >= 1 for b in self.batches), "batch sizes must be >= 1.")
        from runtime.bench import check_rounds
        from runtime.errors import RuntimeInputError

        try:
            check_rounds(rounds=self.rounds, burst_calls=self.iterations, burst_seconds=self.max_seconds,
                         warmup=self.warmup, names=("validate rounds", "validate iterations (timed runs per burst)",
                                                    "validate max_seconds (per burst)", "validate warmup", "-"))
        except RuntimeInputError as e:
            raise PipelineError(f"Timing settings: {e}") from None
        _check(_finite(self.golden_atol) and self.golden_atol >= 0, "the golden tolerance must be a number >= 0.")


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``pipeline run`` needs.

    A sub-config that is not given (``None``) is built from its defaults, or from the :data:`QUICK` budget when
    ``quick`` is true, so ``RunConfig(quick=True)`` is exactly what ``pipeline run --quick`` builds. A sub-config
    that is given is used as it is: ``RunConfig(quick=True, train=TrainConfig(lr=0.01))`` trains 6 epochs; to
    override single fields on top of the budget, use :func:`build_config` (``epochs=3``), as the CLI does.

    ``model`` is a registry name, ``package.module:Class``, or an ``nn.Module`` object; an object is checked,
    fingerprinted and copied (:func:`pipeline.models.adopt`): ``model`` then holds its run name (the class's name)
    and ``model_object`` the copy.
    """

    model: str = "edgenet"
    artifacts: Path = Path("artifacts")
    data: DataConfig | None = None  # never None once built: see the class docstring
    train: TrainConfig | None = None
    export: ExportConfig | None = None
    validate: ValidateConfig | None = None
    quant: QuantConfig | None = None
    force: bool = False
    quick: bool = False
    model_object: object = field(default=None, repr=False)  # a pipeline.models.ModelObject for an nn.Module object

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            given = getattr(self, name)
            if given is None:
                object.__setattr__(self, name, cls(**(QUICK.get(name, {}) if self.quick else {})))
            elif not isinstance(given, cls):
                raise PipelineError(f"RunConfig's {name} must be a {cls.__name__}, got {type(given).__name__}.")
        if not isinstance(self.model, str):  # an nn.Module object (pipeline.run(model=MyNet()) in a notebook)
            from .models import adopt

            obj = adopt(self.model)
            object.__setattr__(self, "model", obj.name)
            object.__setattr__(self, "model_object", obj)
        # checked here, not only in the quantize stage, so a too-large --calib-size fails before training
        train = MNIST_TRAIN_IMAGES - self.data.val_size
        if self.data.max_train is not None:
            train = min(train, self.data.max_train)
        _check(self.quant.mode == "none" or self.quant.calib_size <= train,
               f"--calib-size {self.quant.calib_size} is larger than the training split ({train} images); "
               f"use at most {train} (512 to 2,048 is plenty for MNIST).")


QUANT_MODES = ("none", "ptq", "qat", "both")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantConfig:
    mode: str = "both"  # none | ptq | qat | both
    calib_size: int = 512  # training-split images used to calibrate PTQ (never test images)
    calib_method: str = "minmax"  # minmax | entropy | percentile (onnxruntime's calibrators)
    calib_seed: int = 0  # picks the PTQ calibration images only (QAT shuffles with the training seed)
    # The QAT recipe (docs/qat.md has the seeds table and what else was tried): a short, gentle fine-tuning. On the
    # default model PTQ already loses almost nothing, so what QAT must not do is drift: every SGD step at a
    # learning rate that moves the model re-decides a few borderline test images both ways (the old recipe, a
    # whole epoch at 1e-4, flipped 8-14 test images and ended below PTQ). 128 steps at 3e-5, observers frozen
    # after 32 and the weights averaged, fit the weights to the INT8 grids and stop there.
    qat_epochs: int = 1  # fine-tuning epochs with fake quantization, from the FP32 checkpoint (kept weights: its EMA)
    qat_lr: float = 3e-5  # SGD (momentum 0.9) learning rate, cosine to zero over all QAT steps
    qat_max_images: int = 16384  # training images per QAT epoch, the first of its shuffle (0 = whole split): 128 steps
    # the fake-quant observers learn the activation and weight ranges for this many optimizer steps, then freeze
    # (0 = never), so the remaining steps fit the weights to fixed grids, the grids that ship
    qat_observer_steps: int = 32
    qat_ema: float = 0.98  # decay of an EMA of the QAT weights, the copy converted and exported (0 = off)
    qat_augment: bool = False  # fine-tune on the training run's random affine augmentation (clean images if off)
    cpu_variant: bool = True  # also write onnx-int8-cpu (uint8 activations, fused by onnxruntime CPU)
    sqnr_images: int = 256  # calibration images used to measure per-layer SQNR
    sensitivity: bool = True  # rank the PTQ file's layers by validation accuracy (pipeline.measure.budget)
    # validation accuracy drop (percentage points vs the FP32 ONNX) a PTQ file may lose before layers are kept in
    # FP32 (greedy by sensitivity, measured). None = no fallback: every layer stays INT8 and the report still ranks
    # them. Opt-in, because a layer kept in FP32 changes what ships: TensorRT runs it in float, and onnxruntime's
    # CPU integer kernels cannot fuse it; and the variants' budget_pp (0.15 pp) is 7 images of the validation split,
    # near its noise, so applying it by default would make files mixed on the strength of a few images.
    int8_budget: float | None = None

    def __post_init__(self):
        check_types(self, "quant")
        object.__setattr__(self, "int8_budget", parse_budget(self.int8_budget))
        _check(self.mode in QUANT_MODES, f"--quant must be one of {', '.join(QUANT_MODES)}; got '{self.mode}'.")
        _check(self.calib_method in CALIB_METHODS,
               f"--calib-method must be one of {', '.join(CALIB_METHODS)}; got '{self.calib_method}'.")
        _check(self.calib_size >= 1, f"--calib-size must be at least 1, got {self.calib_size}.")
        _check(self.qat_epochs >= 1, f"--qat-epochs must be at least 1, got {self.qat_epochs}.")
        _check(_finite(self.qat_lr) and 0 < self.qat_lr < 1, f"--qat-lr must be in (0, 1), got {self.qat_lr}.")
        _check(self.qat_observer_steps >= 0, f"qat_observer_steps must be 0 (never frozen) or more, got "
                                             f"{self.qat_observer_steps}.")
        _check(_finite(self.qat_ema) and 0 <= self.qat_ema < 1, f"qat_ema must be in [0, 1) (0 = off), got {self.qat_ema}.")

    def builds(self, switch: str | None) -> bool:
        """Whether this config builds the variant tagged ``switch`` (ptq | qat | cpu | None)."""
        return {None: True, "ptq": self.ptq, "qat": self.qat, "cpu": self.cpu_variant and self.mode != "none"}[switch]

    @property
    def ptq(self) -> bool:
        return self.mode in ("ptq", "both")

    @property
    def qat(self) -> bool:
        return self.mode in ("qat", "both")


def parse_budget(value) -> float | None:
    """``--int8-budget`` as a number of percentage points >= 0 (the CLI passes text, :func:`pipeline.run` a number)."""
    if value is None:
        return None
    number = None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    _check(number is not None and math.isfinite(number),
           f"--int8-budget must be a number of percentage points of validation accuracy (e.g. 0.5), got {value!r}.")
    _check(number >= 0, f"--int8-budget must be 0 or more percentage points (the accuracy drop allowed), got "
                        f"{value!r}; a negative budget would ask INT8 to be more accurate than FP32.")
    return number


#: The ``--quick`` budget (``RunConfig(quick=True)``, ``pipeline.run(quick=True)``): per sub-config, the fields it
#: changes. A smoke test of every stage in about a minute; validation still runs on all 10,000 test images.
QUICK: dict[str, dict] = {
    "data": {"val_size": 1000, "max_train": 4000},
    "train": {"epochs": 2},
    "validate": {"warmup": 3, "rounds": 3, "iterations": 10, "max_seconds": 0.02, "browser": False},
    "quant": {"calib_size": 128, "qat_max_images": 1024, "sqnr_images": 64},
}

#: Every tuning option of ``pipeline run`` (``--epochs``...) and keyword of :func:`pipeline.run`, with the
#: ``sub-config.field`` it sets; ``--threads`` sets two. ``None`` (an option not given) leaves the default, or
#: the quick budget under ``--quick``. Read from :data:`OPTIONS`, the one table.
RUN_OPTIONS: dict[str, tuple[str, ...]] = {}  # filled below OPTIONS


#: The sub-configs of :class:`RunConfig`, by field name.
SECTIONS: dict[str, type] = {"data": DataConfig, "train": TrainConfig, "export": ExportConfig,
                             "validate": ValidateConfig, "quant": QuantConfig}

#: Fields whose annotation is not what they accept: ``int8_budget`` takes a number or the CLI's text
#: (:func:`parse_budget` checks it).
UNTYPED = frozenset({"quant.int8_budget"})


def _field_types() -> dict[str, str]:
    """``section.field`` -> its kind in :data:`KINDS` (``?``: None allowed), read from the config dataclasses' own
    annotations, so a field added to a config is type-checked without being listed a second time."""
    out = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            base, _, rest = f.type.partition(" | ")
            target = f"{section}.{f.name}"
            if base in KINDS and rest in ("", "None") and target not in UNTYPED:
                out[target] = base + ("?" if rest else "")
    return out


#: The type of every tuning field (derived, see :func:`_field_types`): one table for the CLI, :func:`pipeline.run`
#: and the dataclasses.
FIELD_TYPES: dict[str, str] = _field_types()


def build_config(*, model="edgenet", artifacts: Path | str = "artifacts", data_root: Path | str | None = None,
                 force: bool = False, quick: bool = False, world_size: int = 1, **options) -> RunConfig:
    """The config of one run: defaults, then the quick budget, then the options given (explicit always wins).

    ``world_size`` is the number of DDP processes (set by the CLI from ``--nproc`` or torchrun's environment).

    The CLI and :func:`pipeline.run` both build through here. ``options`` are the keys of :data:`RUN_OPTIONS`;
    ``None`` means "not given". ``model`` may also be an ``nn.Module`` object (see :class:`RunConfig`).
    """
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise PipelineError(f"Unknown option(s): {', '.join(unknown)}. Valid options: {', '.join(RUN_OPTIONS)}.")
    wrong = [f"{n} must be True or False, got {v!r} ({type(v).__name__})" for n, v in (("force", force), ("quick", quick))
             if not isinstance(v, bool)]
    wrong += [f"{n} must be a path (str or os.PathLike), got {v!r} ({type(v).__name__})"
              for n, v in (("artifacts", artifacts), ("data_root", data_root))
              if v is not None and not isinstance(v, (str, os.PathLike))]
    if wrong:
        raise PipelineError("; ".join(wrong) + ". Nothing was run.")
    from runtime.modelfile import path_problem

    for n, v in (("artifacts", artifacts), ("data_root", data_root)):
        if v is not None and (problem := path_problem(v)):
            raise PipelineError(f"The {n} path {problem}. Nothing was run.")
    fields = {name: dict(QUICK.get(name, {})) if quick else {} for name in SECTIONS}
    if data_root is not None:
        fields["data"]["root"] = Path(data_root)
    if world_size != 1:
        fields["train"]["world_size"] = world_size
    for option, value in options.items():
        if value is not None:
            for target in RUN_OPTIONS[option]:
                section, name = target.split(".")
                fields[section][name] = value
    return RunConfig(model=model, artifacts=Path(artifacts), force=force, quick=quick,
                     **{name: cls(**fields[name]) for name, cls in SECTIONS.items()})


def default_of(target: str):
    """The default of ``sub-config.field`` (``"train.epochs"``), or of a :class:`RunConfig` field (``"model"``)."""
    section, _, name = target.rpartition(".")
    cls = SECTIONS[section] if section else RunConfig
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def shown(value) -> str:
    """A default as the help shows it: ``0.003``, ``0.0001``, ``on``/``off`` for switches."""
    if isinstance(value, bool) or value is None:  # None: an opt-in option not given (--int8-budget)
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Option:
    """One option of ``pipeline run`` and keyword of :func:`pipeline.run` (Ultralytics' ``export_formats()``
    habit: one row says everything the command line, the Python API and their checks need).

    ``targets`` are the ``sub-config.field`` it sets (a tuning option; its help then ends with ``[default: ...]``
    read from the config, so no row restates a number); none for the run's own fields (``model``...), which
    :func:`build_config` takes by name, and for the command line's process options. ``type`` is what the command
    line parses (an option whose ``default`` is None is optional); ``api_type``, where it differs, what
    :func:`pipeline.run` takes. ``help`` may name ``{choices}`` (``choices`` joined by `` | ``) and ``{quick}``
    (the :data:`QUICK` budget); ``flags`` are the command line's names when not just ``--name``.
    """

    name: str
    type: type
    help: str | None = None
    targets: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    default: object = None
    metavar: str | None = None
    api_type: object = None
    command_only: str = ""  # why it is not a keyword of pipeline.run (it concerns the command's own process)
    argument: bool = False  # a positional argument of the command (STAGE)

    def text(self) -> str | None:
        """The help, with its choices and the quick budget filled in (when asked: :data:`QUICK` may change)."""
        if self.help is None:
            return None
        quick = ", ".join(f"{name} {shown(value)}" for section in QUICK.values() for name, value in section.items())
        return self.help.format(choices=" | ".join(self.choices), quick=quick)


def _tuning(name: str, type_: type, help: str, *targets: str, **more) -> Option:
    """A tuning option: it sets ``targets`` (``train.<name>`` when none is given), and is None when not given."""
    return Option(name, type_, help, targets or (f"train.{name}",), **more)


#: ``pipeline run``'s argument and options, in the help's order; all but the ``command_only`` ones are also
#: :func:`pipeline.run`'s keywords.
OPTIONS: tuple[Option, ...] = (
    Option("stage", str, "Stage to run up to: data, train, export, quantize, engines, validate, or all (= every stage).",
           default="all", argument=True),
    Option("model", str, "Registry name (see `pipeline models`) or package.module:Class.", flags=("--model", "-m"),
           default=default_of("model"), api_type="str | torch.nn.Module"),
    Option("artifacts", Path, "Output folder; each model gets <artifacts>/<model>/.", flags=("--artifacts",),
           default=default_of("artifacts"), api_type=Path | str),
    Option("data_root", Path, "Folder holding MNIST/raw (default $PIPELINE_DATA or ~/.cache/edge-export-pipeline).",
           flags=("--data-root",), api_type=Path | str | None),
    Option("force", bool, "Redo every stage even if its inputs and config are unchanged.", flags=("--force",),
           default=False),
    Option("quick", bool, "Smoke test in about a minute: {quick}; options given explicitly win. Still validates on "
           "all 10,000 test images.", flags=("--quick",), default=False),
    _tuning("epochs", int, "Training epochs."),
    _tuning("batch_size", int, "Training batch size."),
    _tuning("optimizer", str, "{choices}.", choices=OPTIMIZERS),
    _tuning("lr", float, "(Peak) learning rate."),
    _tuning("weight_decay", float, "Weight decay."),
    _tuning("schedule", str, "{choices}.", choices=SCHEDULES),
    _tuning("label_smoothing", float, "Label smoothing."),
    _tuning("augment", bool, "Random affine augmentation.", flags=("--augment/--no-augment",)),
    _tuning("ema", float, "Decay of the weight moving average that is validated and kept (0 = off)."),
    _tuning("channels_last", bool, "Train convolutions in NHWC memory layout (faster on CPU, but PyTorch's CPU "
            "BatchNorm rounds more: docs/distributed.md).", flags=("--channels-last/--no-channels-last",)),
    _tuning("seed", int, "Seed of training and QAT fine-tuning (shuffling, augmentation, initial weights)."),
    _tuning("device", str, "{choices}.", choices=DEVICES),
    _tuning("val_size", int, "Validation images held out of the 60,000 training images.", "data.val_size"),
    _tuning("quant", str, "INT8 variants: {choices}.", "quant.mode", flags=("--quant",), choices=QUANT_MODES),
    _tuning("calib_size", int, "PTQ calibration images from the training split.", "quant.calib_size"),
    _tuning("calib_method", str, "PTQ calibration: {choices}.", "quant.calib_method", choices=CALIB_METHODS),
    _tuning("qat_epochs", int, "QAT fine-tuning epochs.", "quant.qat_epochs"),
    _tuning("qat_lr", float, "QAT fine-tuning learning rate.", "quant.qat_lr"),
    # text on the command line (parse_budget reads it), a number in Python
    _tuning("int8_budget", str, "Validation accuracy drop (percentage points) a PTQ INT8 file may lose; beyond it, "
            "the fewest layers (by sensitivity) are kept in FP32. Off: all layers INT8.", "quant.int8_budget",
            flags=("--int8-budget",), metavar="PP", api_type=float | None),
    _tuning("threads", int, "Intra-op threads for training and timing (0 = all cores).", "train.threads",
            "validate.threads"),
    _tuning("browser", bool, "Also measure the web-wasm rows in headless Chromium, when installed (off under "
            "--quick).", "validate.browser", flags=("--browser/--no-browser",)),
    Option("nproc", str, "Train with N local DDP worker processes (torchrun's launcher; gloo on CPU, NCCL with one "
           "GPU each). --batch-size stays the global batch. Rank 0 writes every file and runs the later stages. Not "
           "given: one process, no DDP.", flags=("--nproc",),
           command_only="it starts worker processes, which a library call inside your process should not do; run "
           "`pipeline run --nproc N` or torchrun"),
    Option("verbose", bool, flags=("--verbose", "-v"), default=False,
           command_only="it sets up the command's terminal logging; in Python, logging.basicConfig(level=logging.INFO) "
           "shows the stages' progress"),
)
RUN_OPTIONS.update({o.name: o.targets for o in OPTIONS if o.targets})
