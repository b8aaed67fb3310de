"""Data-parallel training over several processes: PyTorch DDP, started and watched by torchrun's own engine.

Why this shape:

- ``--nproc N`` hands the processes to ``torch.distributed.launcher.elastic_launch`` (what ``torchrun`` runs),
  so starting, the rendezvous, watching and stopping workers are PyTorch's, not ours. A multi-node run is
  ``torchrun --nnodes ... -m pipeline run ...``: each worker then finds ``RANK``/``WORLD_SIZE`` in its
  environment and joins the group directly (:func:`from_env`).
- Rank 0 is the only writer. It runs the stages exactly as a single process does (manifest, skip keys, run
  lock, checkpoints, the later stages); the other ranks write nothing: they wait for rank 0's word
  (:meth:`Group.wait`), train beside it if the train stage runs, and end when training ends, or at once when it
  is skipped or rank 0 stopped before it.
- Every decision that could split the ranks is taken on values all of them share: the shuffle, split and
  augmentation come from one seeded generator, the NaN check reads the loss summed over ranks, the best epoch
  the validation accuracy summed over ranks. So a user error (a diverged loss) stops every rank at the same step with the
  same paragraph, and a crashed rank is found by the launcher's monitor or a collective's timeout
  (:class:`pipeline.config.LaunchConfig`) rather than left hanging.

``--batch-size`` stays the *global* batch, and N processes take the single process's optimizer steps, up to
the order of float additions (docs/distributed.md says how that is tested): each step takes one batch of the
same shuffled order as a single process and splits it over the ranks (rank r takes every N-th image of it); every
rank draws the whole batch's augmentation from the shared generator, as one process does, and warps its share;
BatchNorm layers normalize over the global batch (:mod:`pipeline.training.batchnorm`); the loss is the global batch's
mean even when the shares differ by an image. So the learning rate and schedule need no change.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

from pipeline.config import LaunchConfig, RunConfig
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

#: The environment a torchrun worker finds (set by torchrun, and by elastic_launch for ``--nproc``).
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Place:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int
    local_world: int


def from_env() -> Place | None:
    """This process's place when a torchrun-style launcher started it (``RANK`` and ``WORLD_SIZE`` set), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise PipelineError(f"RANK/WORLD_SIZE in the environment are not whole numbers ("
                            f"{', '.join(f'{k}={os.environ.get(k)!r}' for k in ENV)}); start distributed runs "
                            "with `pipeline run --nproc N` or torchrun.") from None
    return Place(rank, world, local, local_world)


def warn_if_oversubscribed(nproc: int) -> None:
    """More workers than cores is allowed (a test of the DDP path on a small machine) but slow: say so."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nproc > cores:
        log.warning("--nproc %d starts more workers than this machine has cores (%d): they share the cores, so "
                    "training will be slower than with fewer workers", nproc, cores)


class Group:
    """The process group of one run, and rank 0's word to the others (one broadcast: train, or done)."""

    def __init__(self, place: Place, backend: str, device, timeout_s: int = 600):
        self.place = place
        self.backend = backend
        self.device = device  # this rank's device: cuda:<local rank> with NCCL, else cpu
        self.timeout_s = timeout_s
        self._spoken = False
        self.state = None  # the training state rank 0 resumed from (followers: as received)

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def world(self) -> int:
        return self.place.world

    @property
    def threads(self) -> int:
        """Intra-op threads for one rank's training when ``--threads`` is not given: this node's cores shared
        between its local ranks (N ranks each using every core would fight over them)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.place.local_world)

    def _broadcast(self, message):
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def start_training(self, state):
        """Rank 0: tell the others to train, from ``state`` (the resumed training state, or None). Followers:
        the state rank 0 sent (already received by :meth:`wait`). Every rank then starts from the same state."""
        if self.rank == 0:
            self._spoken = True
            self._broadcast(("train", state))
            self.state = state
        return self.state

    def release(self) -> None:
        """Rank 0, when it is done or failed without training: let the waiting ranks end (once)."""
        if self.rank == 0 and not self._spoken:
            self._spoken = True
            self._broadcast(("done", None))

    def wait(self) -> bool:
        """Followers: block until rank 0 speaks; True when the train stage runs (the state is kept in ``state``)."""
        word, self.state = self._broadcast(None)
        return word == "train"

    def totals(self, *values: float) -> list[float]:
        """Each value summed over the ranks (one all-reduce)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def step_totals(self, share, out, yb) -> tuple[float, int, int]:
        """(mean loss, images, correct) of one global batch from this rank's ``share`` (its loss summed over its
        images), logits and labels: the one host sync per step, so every rank checks the same loss for NaN and
        stops at the same step."""
        import torch
        import torch.distributed as dist

        t = torch.stack([share.detach().double(), (out.argmax(1) == yb).sum().double(),
                         torch.tensor(float(len(yb)), dtype=torch.float64, device=share.device)])
        dist.all_reduce(t)
        s, hits, n = t.tolist()
        return s / n, int(n), int(hits)

    def wrap(self, model):
        """``model`` for training in DistributedDataParallel: gradients averaged over the ranks at every step;
        rank 0's initial weights and BatchNorm buffers are broadcast to the others. Its BatchNorm layers normalize
        over the global batch (:func:`pipeline.training.batchnorm.training_view`: a tree that shares ``model``'s tensors,
        so ``model`` itself keeps its class and state dict). On CPU their all-reduces go through a process group
        of their own, so they never interleave with DDP's gradient buckets."""
        from datetime import timedelta

        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        from .batchnorm import training_view

        if self.backend == "nccl":  # PyTorch's recipe: nn.SyncBatchNorm on the default group
            return DistributedDataParallel(training_view(model, "nccl"), device_ids=[self.device.index],
                                           output_device=self.device.index)
        bn_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.timeout_s))
        return DistributedDataParallel(training_view(model, "gloo", bn_group))

    def share_buffers(self, model) -> None:
        """Rank 0's BatchNorm running statistics to every rank (each rank updated its own copy from its own
        share of the batches), so a validation sharded over ranks judges rank 0's model, the one that is kept."""
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b.data, src=0)


def _backend_and_device(cfg: RunConfig, place: Place):
    """gloo on CPU; NCCL with one GPU per local rank when training runs on CUDA. (The NCCL path is built by
    construction from PyTorch's documented recipe; this project's CI has no GPU to run it.)"""
    import torch

    from .fit import pick_device

    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        if place.local_rank >= torch.cuda.device_count():
            raise PipelineError(f"Local rank {place.local_rank} has no GPU of its own: this node has "
                                f"{torch.cuda.device_count()} CUDA device(s) for {place.local_world} local worker(s); "
                                "use --nproc (or torchrun's --nproc-per-node) of at most the GPU count.")
        torch.cuda.set_device(place.local_rank)
        return "nccl", torch.device("cuda", place.local_rank)
    return "gloo", torch.device("cpu")


def run_rank(cfg: RunConfig, until: str, launch: LaunchConfig, body) -> None:
    """One rank of a distributed run, in a process a launcher started (``RANK`` etc. in its environment).

    Rank 0 runs ``body(cfg, until, group)`` (the stages, as one process would, with the group for training);
    the others wait for rank 0 and train beside it when the train stage runs. A user error raises the same
    :class:`PipelineError` as one process would, on rank 0; followers end quietly.
    """
    import torch.distributed as dist

    place = from_env()
    if place.world != cfg.train.world_size:  # bug guard: the config was built from the same environment
        raise RuntimeError(f"bug: world size {place.world} but config says {cfg.train.world_size}")
    backend, device = _backend_and_device(cfg, place)
    dist.init_process_group(backend, timeout=timedelta(seconds=launch.timeout_s),
                            device_id=device if backend == "nccl" else None)
    group = Group(place, backend, device, launch.timeout_s)
    try:
        if place.rank == 0:
            try:
                body(cfg, until, group)
            finally:
                group.release()
        else:
            _follow(cfg, group)
    finally:
        dist.destroy_process_group()


def _follow(cfg: RunConfig, group: Group) -> None:
    """A rank other than 0: train when rank 0 trains, then end. Writes nothing."""
    import torch

    from pipeline import models
    from pipeline.dataset import load_splits
    from .fit import train

    if not group.wait():
        return
    torch.manual_seed(cfg.train.seed)  # as the train stage does; DDP then copies rank 0's weights anyway
    model = models.build(cfg.model, cfg.model_object)
    train(model, load_splits(cfg.data), cfg.train, group=group)


# ------------------------------------------------------------------------------------------------ --nproc N


def launch(cfg: RunConfig, until: str, launch_cfg: LaunchConfig, body, verbose: bool) -> None:
    """Start ``launch_cfg.nproc`` local workers with torchrun's engine and wait for them; raise one
    :class:`PipelineError` paragraph if any of them failed (the launcher stops the others at once)."""
    import tempfile
    import uuid
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig as ElasticConfig, elastic_launch

    n = launch_cfg.nproc
    warn_if_oversubscribed(n)
    elastic = ElasticConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=f"pipeline-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", rdzv_timeout=launch_cfg.timeout_s,
        max_restarts=0,  # a failed rank fails the run: a restart would redo the epoch anyway, and rerunning resumes
        monitor_interval=launch_cfg.monitor_s, start_method="spawn", logs_specs=DefaultLogsSpecs(),
    )
    log.info("starting %d worker processes (DDP, torchrun's launcher; --batch-size %d is the global batch, %s "
             "images per worker per step)", n, cfg.train.batch_size, _share(cfg.train.batch_size, n))
    with tempfile.TemporaryDirectory(prefix="pipeline-ddp-") as tmp, _quiet_launcher(verbose):
        said = Path(tmp) / "rank0.json"  # rank 0's own error, if it stopped with one (see _worker)
        try:
            results = elastic_launch(elastic, _worker)(cfg, until, launch_cfg, body, verbose, os.getpid(), str(said))
        except ChildFailedError as e:
            _raise_rank0_error(said)  # rank 0 stopped first, and another rank failed because it left
            raise PipelineError(_failure_paragraph(e, n)) from None
        except SignalException as e:
            if e.sigval.name == "SIGINT":
                raise KeyboardInterrupt from None
            raise PipelineError(f"The run was stopped by {e.sigval.name}; its {n} workers were stopped with it. "
                                f"{_RERUN}") from None
        _raise_rank0_error(said)
    if (results.get(0) or {}).get("interrupted"):
        raise KeyboardInterrupt


def _raise_rank0_error(path) -> None:
    import json

    if path.is_file():
        said = json.loads(path.read_text())
        err = PipelineError(said["error"])
        err.exit_code = said["exit_code"]
        raise err from None


class _quiet_launcher:
    """torchelastic logs each worker failure with the launcher's own traceback; the user gets our one paragraph
    instead (``--verbose`` keeps torch's log)."""

    NAMES = ("torch.distributed.elastic", "torch.multiprocessing")

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def __enter__(self):
        self.levels = [logging.getLogger(n).level for n in self.NAMES]
        if not self.verbose:
            for n in self.NAMES:
                logging.getLogger(n).setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        for n, level in zip(self.NAMES, self.levels):
            logging.getLogger(n).setLevel(level)


_RERUN = ("Finished stages and the last complete training epoch are kept: rerun the same command to resume "
          "from there.")


def _share(batch: int, n: int) -> str:
    return str(batch // n) if batch % n == 0 else f"{batch // n}-{batch // n + 1}"


def _failure_paragraph(e, n: int) -> str:
    """One paragraph from torchelastic's failure record: which rank died, how, and its own last words."""
    rank, failure = e.get_first_failure()
    how = (f"was killed by signal {failure.signal_name()}" if failure.exitcode < 0
           else f"exited with status {failure.exitcode}")
    said = ""
    message = failure.message if isinstance(failure.message, str) else (failure.message or {}).get("message", "")
    if message and message != "<N/A>":
        said = " It said: " + " ".join(str(message).split())[:500].rstrip(".") + "."
    return (f"Distributed training failed: worker rank {rank} of {n} (pid {failure.pid}) {how}, and the launcher "
            f"stopped the other workers.{said} {_RERUN}")


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive the ``pipeline`` process that started it (killed with SIGKILL, its workers
    would go on training and hold the run folder's lock): ask Linux to kill this process when it dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent and parent not in _ancestors():
        os._exit(1)


def _ancestors() -> set[int]:
    """The pids above this process (the launcher may sit between the pipeline process and its workers)."""
    out, pid = set(), os.getppid()
    while pid > 1 and len(out) < 8:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _worker(cfg: RunConfig, until: str, launch_cfg: LaunchConfig, body, verbose: bool, parent: int,
            said: str) -> dict:
    """One ``--nproc`` worker (a spawned process). Rank 0's known error is written to ``said`` (a file of the
    launching process's, outside the run folder) for the launcher's caller to print as the one paragraph, even if
    another rank then failed because rank 0 left; anything else fails the worker, and the launcher reports it
    (:func:`_failure_paragraph`)."""
    import json

    _die_with_parent(parent)
    place = from_env()
    _worker_logging(place, verbose)
    try:
        run_rank(cfg, until, launch_cfg, body)
    except PipelineError as e:
        if place.rank == 0:
            with open(said, "w") as f:
                json.dump({"error": str(e), "exit_code": e.exit_code}, f)
        return {}
    except KeyboardInterrupt:
        return {"interrupted": True}
    return {}


def _worker_logging(place: Place, verbose: bool) -> None:
    """Rank 0 logs as the single process does; the others only warnings, prefixed with their rank."""
    if place.rank == 0:
        from ..console import setup_logging

        setup_logging(verbose)
    else:
        logging.basicConfig(level=logging.WARNING, format=f"[rank {place.rank}] %(levelname)s %(message)s",
                            force=True)
