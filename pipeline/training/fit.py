"""FP32 training: fit a model on the training split and keep the epoch with the best validation accuracy.

A library module: the train stage (:mod:`pipeline.stages.train`) builds the model, calls :func:`train` and
writes the checkpoint; QAT (:mod:`pipeline.training.qat`) fine-tunes with the same :func:`run_epoch`. The whole split
lives in memory as one normalized tensor and augmentation is a batched random affine warp (``affine_grid``
+ ``grid_sample``), so a CPU epoch costs the model's arithmetic and little else: no per-image PIL
transforms, no worker processes.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import TrainConfig
from pipeline.dataset import Splits
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


_KEPT = ("Finished stages and their files are kept and nothing half-written was left (the saved state of the last "
         "complete training epoch, if any, is ignored by a rerun with other settings).")


def check_loss(value: float, what: str, epoch: int, epochs: int, step: int, steps: int, advice: str) -> None:
    """Stop with one paragraph when a batch loss is NaN or infinite; ``epoch`` and ``step`` are 1-based.

    Checked before the backward pass, so no NaN update ever reaches the weights or a saved state. ``advice``
    names the options to lower, with their current values.
    """
    if not math.isfinite(value):
        raise PipelineError(
            f"{what} diverged: the loss became {value} at epoch {epoch} of {epochs}, step {step} of {steps}. "
            f"The learning rate is probably too high for this model: rerun with a lower {advice}. {_KEPT}")


def pick_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment(x, background: float, gen):
    """Random affine per image: rotation +-10 deg, scale 0.9-1.1, shift +-2 px; fills with the background."""
    return warp(x, affine_draws(x.shape[0], gen), background)


def affine_draws(n: int, gen):
    """The random affine matrices (n, 2, 3) of :func:`augment` for a batch of ``n`` images, drawn from ``gen``.

    Apart from :func:`warp` so that data-parallel ranks can draw a global batch's matrices exactly as one process
    does (same draws, same order: the shared generator stays in step on every rank) and warp only their share.
    """
    import torch

    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(n, generator=gen) * 0.2
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 / 14)  # normalized coords: 14 px = 1.0
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def warp(x, theta, background: float):
    """Each image of ``x`` warped by its matrix of ``theta`` (see :func:`affine_draws`), filled with ``background``."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def evaluate(model, x, y, batch_size: int = 1000, device=None):
    """(mean cross-entropy loss, accuracy fraction, logits on CPU) over a whole split."""
    import torch
    import torch.nn.functional as F

    device = device or next(model.parameters()).device
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i : i + batch_size].to(device)).float().cpu())
    logits = torch.cat(outs)
    loss = float(F.cross_entropy(logits, y))
    acc = int((logits.argmax(1) == y).sum()) / len(y)
    return loss, acc, logits


def usable(n: int, batch_size: int, world: int) -> int:
    """How many of ``n`` images an epoch trains: all, except that a last batch with fewer images than ranks is
    dropped (no rank gets an empty one). Always ``n`` in one process."""
    return n - n % batch_size if 0 < n % batch_size < world else n


@dataclass(frozen=True)
class Ranks:
    """Where this process trains, decided once at the start of a run (nanoGPT's ``ddp_rank``, ``ddp_world_size``,
    ``device`` and ``master_process``): rank ``rank`` of ``world`` on ``device``. ``group`` is the
    :class:`pipeline.training.distributed.Group` of a data-parallel run (its collectives) and None in one process.

    Why one object: every place where one process and DDP differ (the batch's share, the step's totals, wrapping
    the model, the validation, who logs and saves) reads it, so the loop and its callers pass no shard, totals or
    group arguments of their own. ``Ranks()`` is one process with the data already on its device (QAT)."""

    rank: int = 0
    world: int = 1
    device: object = None  # a torch.device
    group: object = None

    @classmethod
    def of(cls, group, device: str) -> "Ranks":
        """One process on ``--device`` (:func:`pick_device`), or this rank of ``group`` on the group's device."""
        if group is None:
            return cls(device=pick_device(device))
        return cls(group.rank, group.world, group.device, group)

    @property
    def lead(self) -> bool:
        """The one process that logs, saves the training state and tests (rank 0; the only one without DDP)."""
        return self.rank == 0

    def start(self, state):
        """Rank 0's resumed training state (or None) on every rank; in one process, ``state`` itself."""
        return state if self.group is None else self.group.start_training(state)

    def wrap(self, model):
        """``model`` as it trains: itself in one process, in DistributedDataParallel over the group."""
        return model if self.group is None else self.group.wrap(model)

    def validate(self, model, splits: Splits) -> tuple[float, float]:
        """(loss, accuracy) of ``model`` over the validation split; the same figures on every rank."""
        if self.group is None:
            return evaluate(model, splits.val_x, splits.val_y, device=self.device)[:2]
        return _sharded_validation(model, splits, self.group)


@dataclass
class Trainer:
    """One training loop: the parts :func:`run_epoch` steps and how it steps them, built once per run.

    The one loop for FP32 training and QAT fine-tuning (:mod:`pipeline.training.qat`), so both draw their shuffle
    and augmentation from ``gen`` the same way and stop on a NaN loss the same way (``what`` names the loop and
    ``advice`` the options to lower, with their values: see :func:`check_loss`).
    """

    model: object  # what steps: the model, its DDP wrapper, or a prepared QAT graph
    opt: object
    sched: object  # a learning-rate scheduler stepped after every optimizer step, or None
    gen: object  # the torch.Generator of the shuffle and the augmentation draws (the same on every rank)
    x: object  # the training images (N, 1, 28, 28), normalized, on the training device
    y: object
    batch_size: int  # the global batch
    epochs: int  # for the progress bar and messages
    what: str
    advice: str
    images: int | None = None  # images per epoch: the first of each shuffle (None: all of x)
    label_smoothing: float = 0.0
    background: float | None = None  # a blank pixel's normalized value; turns augmentation on
    set_train_mode: object = None  # puts the model in training mode (model.train() unless given: torchao's switch)
    after_step: object = None  # called after every optimizer step (the weight EMAs hook in here)
    progress: object = None  # a rich Progress: one task per epoch, "<label>epoch e/E loss l"
    label: str = ""
    ranks: Ranks = Ranks()


def run_epoch(t: Trainer, epoch: int) -> tuple[float, int]:
    """One epoch (``epoch`` 1-based) of minibatch SGD: shuffle, then per batch augment, forward, loss, NaN check,
    optimizer and scheduler step. Returns (sum of batch loss x batch size, correct predictions) over the
    images seen.

    Data-parallel (:class:`Ranks`, docs/distributed.md): each rank takes every world-th image of each global
    batch of the shared shuffle. Every rank draws the whole global batch's augmentation from ``gen``, as one
    process does, and warps its own share; its loss is the sum over its share divided by the global batch and
    multiplied by ``world`` (DDP averages the ranks' gradients), so the step is the global batch's mean even when
    the shares differ by an image. The step's (mean loss, images, correct) are the global batch's
    (:meth:`Group.step_totals <pipeline.training.distributed.Group.step_totals>`), so every rank checks and counts
    the same values.
    """
    import torch

    (t.set_train_mode or (lambda m: m.train()))(t.model)
    n = usable(len(t.x) if t.images is None else min(t.images, len(t.x)), t.batch_size, t.ranks.world)
    steps = math.ceil(n / t.batch_size)
    perm = torch.randperm(len(t.x), generator=t.gen)[:n].to(t.x.device)
    loss_sum, correct = 0.0, 0
    task = t.progress.add_task(f"{t.label}epoch {epoch}/{t.epochs}", total=steps) if t.progress else None
    for i in range(steps):
        loss, value, images, hits = _forward(t, perm[i * t.batch_size : (i + 1) * t.batch_size])
        check_loss(value, t.what, epoch, t.epochs, i + 1, steps, t.advice)
        _step(t, loss)
        loss_sum += value * images
        correct += hits
        if t.progress:
            t.progress.update(task, advance=1, description=f"{t.label}epoch {epoch}/{t.epochs} loss {value:.4f}")
    if t.progress:
        t.progress.remove_task(task)
    return loss_sum, correct


def _forward(t: Trainer, idx):
    """(loss to step on, the batch's mean loss as a float, its images, its correct predictions) of the global
    batch ``idx``: the whole batch in one process, this rank's share under DDP."""
    import torch.nn.functional as F

    world = t.ranks.world
    if world == 1:
        xb, yb = t.x[idx], t.y[idx]
        if t.background is not None:
            xb = augment(xb, t.background, t.gen)
        out = t.model(xb)
        loss = F.cross_entropy(out, yb, label_smoothing=t.label_smoothing)
        value = float(loss.detach())  # the one host sync per step, also used for the sum and the bar
        return loss, value, len(idx), int((out.argmax(1) == yb).sum())
    mine = idx[t.ranks.rank::world]
    xb, yb = t.x[mine], t.y[mine]
    if t.background is not None:  # the global batch's draws, in one process's order; this rank's share
        xb = warp(xb, affine_draws(len(idx), t.gen)[t.ranks.rank::world], t.background)
    out = t.model(xb)
    share = F.cross_entropy(out, yb, label_smoothing=t.label_smoothing, reduction="sum")
    value, images, hits = t.ranks.group.step_totals(share, out, yb)
    return share * (world / len(idx)), value, images, hits


def _step(t: Trainer, loss) -> None:
    """Backward and one optimizer (and scheduler) step, after the loss was found finite."""
    if not loss.requires_grad:  # models.py refuses this before training; a forward that detaches only in train mode
        from pipeline.models import NO_GRADIENT

        raise PipelineError(f"{t.what} stopped: the model's output carries no gradient in training mode, {NO_GRADIENT} "
                            f"{_KEPT}")
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    t.opt.step()
    if t.sched is not None:
        t.sched.step()
    if t.after_step is not None:
        t.after_step()


class WeightEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics, the copy that is evaluated
    and kept.

    Why: late in a short one-cycle run the raw weights still jitter from batch to batch; their average over
    the last few hundred steps generalizes better (about +0.05 pp test accuracy on MNIST at no inference
    cost). The decay warms up as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates, so the average is
    not dominated by the random initial weights in a run of only a few thousand steps. Integer buffers
    (BatchNorm's batch counter) are copied, not averaged.
    """

    def __init__(self, model, decay: float):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.updates, self._source = decay, 0, model

    def update(self) -> None:
        import torch

        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            src = self._source.state_dict()
            for name, avg in self.model.state_dict().items():
                if avg.is_floating_point():
                    avg.lerp_(src[name], 1 - d)
                else:
                    avg.copy_(src[name])


def _optimizer(model, cfg: TrainConfig):
    import torch

    params = model.parameters()
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def _scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    import torch

    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        if total < 5:  # OneCycleLR's warm-up (25 % of the steps) must span more than one step, or it divides by zero
            raise PipelineError(
                f"--schedule onecycle needs at least 5 optimizer steps, and this run has {total} (--epochs "
                f"{cfg.epochs} x {steps_per_epoch} batches of --batch-size {cfg.batch_size}): use more --epochs, a "
                f"smaller --batch-size, or --schedule cosine, step or none. {_KEPT}")
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, (2 * total) // 3), gamma=0.1)
    return None


def _save_state(path, state: dict) -> None:
    import io

    import torch

    from pipeline.store.paths import atomic_write

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(path), buf.getvalue())


def _load_state(path, key: str):
    """The saved training state if it exists, loads safely (weights_only) and matches ``key``."""
    import torch

    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted or foreign: start over rather than trust it
        log.warning("ignoring unreadable training state %s (%s); starting from epoch 1", path, type(e).__name__)
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        log.info("training state %s is for another config; starting from epoch 1", path)
        return None
    return state


def _sharded_validation(model, splits: Splits, group) -> tuple[float, float]:
    """(loss, accuracy) over the validation split, each rank scoring every world-th image with rank 0's weights
    and BatchNorm statistics, summed over ranks: every rank gets the same figures (and the same best epoch)."""
    group.share_buffers(model)
    x, y = splits.val_x[group.rank::group.world], splits.val_y[group.rank::group.world]
    loss, acc = evaluate(model, x, y, device=group.device)[:2] if len(y) else (0.0, 0.0)  # fewer images than ranks
    loss_sum, hits, count = group.totals(loss * len(y), acc * len(y), len(y))
    return loss_sum / count, hits / count


@dataclass
class TrainResult:
    model: object  # best-epoch weights loaded, in eval mode, on CPU
    history: list  # one dict per epoch
    best_epoch: int
    val_accuracy: float
    test_accuracy: float
    seconds: float  # wall time of the epochs (training + validation), excluding the final test pass
    device: str


def train(model, splits: Splits, cfg: TrainConfig, progress=None, resume_path=None, resume_key: str = "",
          group=None) -> TrainResult | None:
    """Train ``model``; return it with the weights of the best validation epoch.

    ``progress`` is an optional rich ``Progress``; each epoch is a task on it.
    With ``resume_path``, the full training state (weights, optimizer,
    scheduler, RNG, history, best epoch) is written atomically after every
    epoch, and a run interrupted at any moment continues from the last complete
    epoch if ``resume_key`` (the hash of data + model + config) is unchanged.
    The caller removes the file once the trained model is safely written.

    With ``group`` (a :class:`pipeline.training.distributed.Group`), this is one rank of a data-parallel run: rank 0
    passes ``resume_path`` and gets the result; the other ranks pass none, train beside it and get None.
    """
    import torch

    before = torch.get_num_threads()
    threads = cfg.threads or (group.threads if group is not None else 0)
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(model, splits, cfg, progress, resume_path, resume_key, group)
    finally:
        torch.set_num_threads(before)  # a thread count is process-wide: don't leak it to later work


def _train(model, splits: Splits, cfg: TrainConfig, progress, resume_path, resume_key: str,
           group=None) -> TrainResult | None:
    import torch

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # the shuffle: the same on every rank
    fit = _Fit.build(model, cfg, Ranks.of(group, cfg.device), gen)
    loop = fit.trainer(splits, progress)
    first, offset = fit.resume(_load_state(resume_path, resume_key) if fit.ranks.lead else None, resume_path)
    loop.model = fit.ranks.wrap(fit.core)  # after resuming: DDP sends rank 0's (resumed) weights to every rank
    start = time.perf_counter() - offset
    for epoch in range(first, cfg.epochs + 1):
        fit.record(_epoch(fit, loop, splits, epoch, start))
        if fit.ranks.lead and resume_path is not None:
            _save_state(resume_path, fit.state(resume_key, epoch))
    seconds = time.perf_counter() - start
    return _result(fit, splits, seconds) if fit.ranks.lead else None


@dataclass
class _Fit:
    """One FP32 training run's state: the model, its optimizer, scheduler, shuffle generator and weight EMA, and
    the epochs so far (history and best). What the resumable state file holds, and what :func:`_train` steps."""

    cfg: TrainConfig
    ranks: Ranks
    core: object  # the model itself (the loop steps its DDP wrapper in a data-parallel run)
    opt: object
    sched: object
    gen: object
    ema: WeightEMA | None
    history: list = field(default_factory=list)  # one dict per epoch
    best: tuple = (-1.0, 0)  # (validation accuracy, epoch)
    best_state: dict | None = None  # the kept weights of the best epoch

    @classmethod
    def build(cls, model, cfg: TrainConfig, ranks: Ranks, gen) -> "_Fit":
        import torch

        core = model.to(ranks.device)
        if cfg.channels_last:  # NHWC convolutions are the fast oneDNN path on CPU; a no-op for models without convs
            core = core.to(memory_format=torch.channels_last)
        opt = _optimizer(core, cfg)
        return cls(cfg, ranks, core, opt, None, gen, WeightEMA(core, cfg.ema) if cfg.ema else None)

    @property
    def kept(self):
        """The weights validated, selected and returned: the EMA's, else the model's own."""
        return self.ema.model if self.ema is not None else self.core

    def trainer(self, splits: Splits, progress) -> Trainer:
        """The loop over the training split (and the scheduler, which needs its steps per epoch)."""
        cfg, x = self.cfg, splits.train_x.to(self.ranks.device)
        self.sched = _scheduler(self.opt, cfg, math.ceil(len(x) / cfg.batch_size))
        return Trainer(
            self.core, self.opt, self.sched, self.gen, x, splits.train_y.to(self.ranks.device),
            batch_size=cfg.batch_size, epochs=cfg.epochs, what="Training",
            advice=f"--lr (now {cfg.lr:g}) or another --schedule (now {cfg.schedule})",
            label_smoothing=cfg.label_smoothing, background=(0.0 - splits.mean) / splits.std if cfg.augment else None,
            progress=progress if self.ranks.lead else None, after_step=self.ema.update if self.ema is not None else None,
            ranks=self.ranks)

    def resume(self, state, path) -> tuple[int, float]:
        """Continue from ``state`` (rank 0's, sent to every rank; None: from the start). Returns the first epoch
        to train and the seconds already spent."""
        state = self.ranks.start(state)
        if state is None:
            return 1, 0.0
        self.core.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        self.history, self.best = state["history"], (state["best_acc"], state["best_epoch"])
        self.best_state = state["best_state"]
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
            self.ema.updates = state["ema_updates"]
        if self.ranks.lead:
            log.info("resuming after epoch %d of %d (state in %s)", state["epoch"], self.cfg.epochs, path)
        return state["epoch"] + 1, self.history[-1]["seconds"]

    def record(self, row: dict) -> None:
        """Add an epoch's row; rank 0 logs it and keeps the kept weights when validation improved."""
        self.history.append(row)
        if not self.ranks.lead:
            return
        log.info("epoch %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  (%.0f s)", row["epoch"],
                 self.cfg.epochs, row["train_loss"], 100 * row["train_accuracy"], row["val_loss"],
                 100 * row["val_accuracy"], row["seconds"])
        if row["val_accuracy"] > self.best[0]:
            self.best = (row["val_accuracy"], row["epoch"])
            self.best_state = copy.deepcopy(self.kept.state_dict())

    def state(self, key: str, epoch: int) -> dict:
        """The resumable training state after ``epoch`` (see :func:`_load_state`)."""
        ema = {"ema": self.ema.model.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {}
        return {**ema, "key": key, "epoch": epoch, "model": self.core.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else {},
                "generator": self.gen.get_state(), "history": self.history, "best_acc": self.best[0],
                "best_epoch": self.best[1], "best_state": self.best_state}


def _epoch(fit: _Fit, loop: Trainer, splits: Splits, epoch: int, start: float) -> dict:
    """Train one epoch and validate the kept weights: the epoch's history row (every rank gets the same one)."""
    cfg, n = fit.cfg, len(loop.x)
    t0 = time.perf_counter()
    loss_sum, correct = run_epoch(loop, epoch)
    train_seconds = time.perf_counter() - t0
    val_loss, val_acc = fit.ranks.validate(fit.kept, splits)
    if not math.isfinite(val_loss):
        raise PipelineError(
            f"Training stopped after epoch {epoch} of {cfg.epochs}: the training loss stayed finite but the "
            f"validation loss is {val_loss} (the model gives NaN or infinite logits in eval mode). Check the "
            "model's eval-mode forward (BatchNorm statistics, a division by zero, a branch on self.training), or "
            f"rerun with a lower --lr (now {cfg.lr:g}). {_KEPT}")
    return {
        "epoch": epoch,
        "train_loss": loss_sum / n,
        "train_accuracy": correct / n,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": fit.opt.param_groups[0]["lr"],
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,  # the training loop alone (no validation): the throughput's time
        "images": usable(n, cfg.batch_size, fit.ranks.world),
    }


def _result(fit: _Fit, splits: Splits, seconds: float) -> TrainResult:
    """Rank 0's result: the best epoch's kept weights, on CPU in eval mode, and their test accuracy."""
    import torch

    model = fit.core
    model.load_state_dict(fit.best_state)
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    _, test_acc, _ = evaluate(model, splits.test_x, splits.test_y)
    acc, epoch = fit.best
    log.info("kept epoch %d (val %.2f%%); test accuracy %.2f%%", epoch, 100 * acc, 100 * test_acc)
    return TrainResult(model, fit.history, epoch, acc, test_acc, seconds, str(fit.ranks.device))
