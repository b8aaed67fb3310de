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
from dataclasses import dataclass
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


def run_epoch(model, x, y, opt, sched, gen, *, batch_size: int, epoch: int, epochs: int, what: str, advice: str,
              images: int | None = None, label_smoothing: float = 0.0, background: float | None = None,
              set_train_mode=None, progress=None, label: str = "", shard: tuple[int, int] = (0, 1),
              totals=None, after_step=None) -> tuple[float, int]:
    """One epoch of minibatch SGD over ``x``/``y``: shuffle, then per batch augment, forward, loss, NaN check,
    optimizer and scheduler step. Returns (sum of batch loss x batch size, correct predictions) over the
    ``images`` seen (the first ``images`` of the shuffle; all of ``x`` when None).

    The one loop for FP32 training and QAT fine-tuning (:mod:`pipeline.training.qat`), so both draw their shuffle and
    augmentation from ``gen`` the same way and stop on a NaN loss the same way (``what``, ``advice``:
    see :func:`check_loss`; ``epoch`` is 1-based). ``background`` (the normalized value of a blank pixel)
    turns augmentation on; ``sched`` may be None. ``set_train_mode`` puts the model in training mode at the
    start (``model.train()`` unless given: a torch.export graph needs torchao's own switch). ``progress``
    (a rich ``Progress``) gets one task per epoch, described as ``<label>epoch e/E loss l``. ``after_step``, if
    given, is called after every optimizer step (the weight EMA of :class:`WeightEMA` hooks in here).

    Data-parallel (:mod:`pipeline.training.distributed`, docs/distributed.md): ``shard`` = (rank, world) takes every
    world-th image of each global batch of the shared shuffle. Every rank draws the whole global batch's
    augmentation from ``gen``, as one process does, and warps its own share; its loss is the sum over its share
    divided by the global batch and multiplied by ``world`` (DDP averages the ranks' gradients), so the step is the
    global batch's mean even when the shares differ by an image. ``totals`` turns the rank's (loss sum, logits,
    labels) into the global batch's (mean loss, images, correct), so every rank checks and counts the same values.
    A last batch with fewer images than ranks is dropped (no rank gets an empty one).
    """
    import torch
    import torch.nn.functional as F

    (set_train_mode or (lambda m: m.train()))(model)
    n = len(x) if images is None else min(images, len(x))
    rank, world = shard
    if 0 < n % batch_size < world:
        n -= n % batch_size
    steps = math.ceil(n / batch_size)
    perm = torch.randperm(len(x), generator=gen)[:n].to(x.device)
    loss_sum, correct = 0.0, 0
    task = progress.add_task(f"{label}epoch {epoch}/{epochs}", total=steps) if progress else None
    for i in range(steps):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        if world == 1:
            xb, yb = x[idx], y[idx]
            if background is not None:
                xb = augment(xb, background, gen)
            out = model(xb)
            loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
            value = float(loss.detach())  # the one host sync per step, also used for the sum and the bar
            k, hits = len(idx), None
        else:
            mine = idx[rank::world]
            xb, yb = x[mine], y[mine]
            if background is not None:  # the global batch's draws, in one process's order; this rank's share
                xb = warp(xb, affine_draws(len(idx), gen)[rank::world], background)
            out = model(xb)
            share = F.cross_entropy(out, yb, label_smoothing=label_smoothing, reduction="sum")
            loss = share * (world / len(idx))
            value, k, hits = totals(share, out, yb)
        check_loss(value, what, epoch, epochs, i + 1, steps, advice)
        if not loss.requires_grad:  # models.py refuses this before training; a forward that detaches only in train mode
            from pipeline.models import NO_GRADIENT

            raise PipelineError(f"{what} stopped: the model's output carries no gradient in training mode, {NO_GRADIENT} "
                                f"{_KEPT}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if after_step is not None:
            after_step()
        loss_sum += value * k
        correct += int((out.argmax(1) == yb).sum()) if hits is None else hits
        if progress:
            progress.update(task, advance=1, description=f"{label}epoch {epoch}/{epochs} loss {value:.4f}")
    if progress:
        progress.remove_task(task)
    return loss_sum, correct


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
    device = pick_device(cfg.device) if group is None else group.device
    lead = group is None or group.rank == 0  # the one process that validates into the log, saves and tests
    model = core = model.to(device)
    if cfg.channels_last:  # NHWC convolutions are the fast oneDNN path on CPU; a no-op for models without convs
        model = core = model.to(memory_format=torch.channels_last)
    x_train, y_train = splits.train_x.to(device), splits.train_y.to(device)
    background = (0.0 - splits.mean) / splits.std
    n = len(x_train)
    opt = _optimizer(model, cfg)
    sched = _scheduler(opt, cfg, math.ceil(n / cfg.batch_size))
    ema = WeightEMA(model, cfg.ema) if cfg.ema else None
    kept = ema.model if ema is not None else model  # the weights validated, selected and returned

    history, best, best_state, first, offset = [], (-1.0, 0), None, 1, 0.0
    state = _load_state(resume_path, resume_key) if lead else None
    if group is not None:
        state = group.start_training(state)  # rank 0's state (or None) to every rank
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        history, best, best_state = state["history"], (state["best_acc"], state["best_epoch"]), state["best_state"]
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
            ema.updates = state["ema_updates"]
        first, offset = state["epoch"] + 1, history[-1]["seconds"]
        if lead:
            log.info("resuming after epoch %d of %d (state in %s)", state["epoch"], cfg.epochs, resume_path)
    if group is not None:
        model = group.wrap(core)
    start = time.perf_counter() - offset
    for epoch in range(first, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss_sum, correct = run_epoch(
            model, x_train, y_train, opt, sched, gen, batch_size=cfg.batch_size, epoch=epoch, epochs=cfg.epochs,
            what="Training", advice=f"--lr (now {cfg.lr:g}) or another --schedule (now {cfg.schedule})",
            label_smoothing=cfg.label_smoothing, background=background if cfg.augment else None,
            progress=progress if lead else None, after_step=ema.update if ema is not None else None,
            **({} if group is None else {"shard": (group.rank, group.world), "totals": group.step_totals}))
        train_seconds = time.perf_counter() - t0
        if group is None:
            val_loss, val_acc, _ = evaluate(kept, splits.val_x, splits.val_y, device=device)
        else:
            val_loss, val_acc = _sharded_validation(kept, splits, group)
        if not math.isfinite(val_loss):
            raise PipelineError(
                f"Training stopped after epoch {epoch} of {cfg.epochs}: the training loss stayed finite but the "
                f"validation loss is {val_loss} (the model gives NaN or infinite logits in eval mode). Check the "
                "model's eval-mode forward (BatchNorm statistics, a division by zero, a branch on self.training), or "
                f"rerun with a lower --lr (now {cfg.lr:g}). {_KEPT}")
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
            "train_seconds": train_seconds,  # the training loop alone (no validation): the throughput's time
            "images": n - (n % cfg.batch_size if 0 < n % cfg.batch_size < cfg.world_size else 0),
        }
        history.append(row)
        if not lead:
            continue
        log.info(
            "epoch %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  (%.0f s)",
            epoch, cfg.epochs, row["train_loss"], 100 * row["train_accuracy"], val_loss, 100 * val_acc, row["seconds"],
        )
        if val_acc > best[0]:
            best = (val_acc, epoch)
            best_state = copy.deepcopy(kept.state_dict())
        if resume_path is not None:
            _save_state(resume_path, {
                **({"ema": ema.model.state_dict(), "ema_updates": ema.updates} if ema is not None else {}),
                "key": resume_key, "epoch": epoch, "model": core.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else {}, "generator": gen.get_state(),
                "history": history, "best_acc": best[0], "best_epoch": best[1], "best_state": best_state,
            })
    seconds = time.perf_counter() - start
    if not lead:
        return None
    model = core
    model.load_state_dict(best_state)
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    _, test_acc, _ = evaluate(model, splits.test_x, splits.test_y)
    log.info("kept epoch %d (val %.2f%%); test accuracy %.2f%%", best[1], 100 * best[0], 100 * test_acc)
    return TrainResult(model, history, best[1], best[0], test_acc, seconds, str(device))
