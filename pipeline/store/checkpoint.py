"""Self-describing checkpoints that load without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings and lists, saved
with ``torch.save`` and read back only with ``torch.load(weights_only=True)``:
a file that would need to run code to load is refused, never executed. It
carries the model name, training config, normalization and labels, so the
export stage needs nothing else to describe the model.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

from pipeline.errors import PipelineError
from .paths import atomic_write

FORMAT = "edge-export-pipeline/checkpoint-v1"
REQUIRED = ("format", "model", "state_dict", "normalization", "classes", "input", "train_config")


def save(path: Path, payload: dict) -> Path:
    import torch

    payload = {"format": FORMAT, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, buf.getvalue())


def load(path: Path) -> dict:
    """Load and check a checkpoint; any failure is a :class:`PipelineError`, never an unpickle."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"Checkpoint {path} does not exist; run `pipeline run train` first.")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise _corrupted(path, "not a zip archive")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), "")
        raise PipelineError(
            f"Refused to load {path}: it holds objects that only an unsafe unpickle could build"
            f"{' (' + culprit + ')' if culprit else ''}. Checkpoints are loaded with weights_only=True and "
            "never executed; retrain with `pipeline run train --force` to replace it."
        ) from None
    except Exception as e:  # truncated zip, bad records...
        raise _corrupted(path, type(e).__name__) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or any(k not in ckpt for k in REQUIRED) \
            or not _valid_object_record(ckpt.get("model_object")):
        raise PipelineError(
            f"Checkpoint {path} was not written by this pipeline (no '{FORMAT}' header with "
            f"{', '.join(REQUIRED)}). Retrain with `pipeline run train --force`."
        )
    return ckpt


def _valid_object_record(record) -> bool:
    """``model_object`` (only in runs trained from an ``nn.Module`` object): its class and fingerprint, as strings."""
    return record is None or (isinstance(record, dict) and isinstance(record.get("class"), str)
                              and isinstance(record.get("fingerprint"), str))


def object_record(obj) -> dict:
    """What a checkpoint records of a model given as an object (``obj``: a :class:`pipeline.models.ModelObject`),
    so a later process knows it cannot rebuild it and says so (:func:`refuse_object_run`)."""
    return {"model_object": {"class": obj.origin, "fingerprint": obj.fingerprint}} if obj is not None else {}


def refuse_object_run(path: Path) -> None:
    """Raise the "trained from an object" paragraph when the checkpoint at ``path`` records one: a name (``--model``)
    can rebuild only registry and importable models. Return quietly otherwise (no checkpoint, a damaged one, a
    named model), leaving the caller's own error."""
    from pipeline import models

    try:
        ckpt = load(path)
    except PipelineError:
        return
    if ckpt.get("model_object"):
        raise models.object_run_refusal(f"Run folder {Path(path).parent.parent}", ckpt["model_object"]["class"])


def _corrupted(path: Path, why: str) -> PipelineError:
    return PipelineError(
        f"Checkpoint {path} is corrupted or not a PyTorch file ({why}). "
        "Retrain with `pipeline run train --force` to replace it."
    )


def restore(ckpt: dict):
    """Rebuild the model a checkpoint describes and load its weights (eval mode, CPU)."""
    from pipeline import models

    model = models.rebuild(ckpt, f"The checkpoint of model '{ckpt['model']}'")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise PipelineError(
            f"The checkpoint's weights do not fit model '{ckpt['model']}' as it is defined now: "
            f"{str(e).splitlines()[0]}. Retrain with `pipeline run train --force`."
        ) from None
    return model.eval()


def reference_logits(ckpt: dict, images):
    """The checkpoint's model's float32 logits (N, 10) on raw uint8 MNIST images (N, 28, 28), normalized with the
    mean and std it recorded: PyTorch's reference on the test set, which a Python bundle ships (``reference.npz``)
    and a phone's figures are judged against. One computation for both, so they agree to the bit."""
    import numpy as np
    import torch

    model, norm = restore(ckpt), ckpt["normalization"]
    x = torch.from_numpy(((images[:, None].astype(np.float32) / 255 - norm["mean"][0]) / norm["std"][0]).astype(np.float32))
    with torch.inference_mode():
        return torch.cat([model(x[i : i + 1000]) for i in range(0, len(x), 1000)]).numpy()

