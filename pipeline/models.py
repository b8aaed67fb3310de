"""Model zoo: one table maps a name to a builder, plus users' own ``package.module:Class`` and ``nn.Module`` objects.

Every model takes a normalized ``(N, 1, 28, 28)`` float tensor and returns
``(N, 10)`` logits. The five seed networks follow ``shared/SEEDS.md`` layer
for layer; ``edgenet`` is this project's default, sized to reach about 99.6 % test
accuracy within a 2-minute CPU training budget.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import PipelineError

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def _nn():
    import torch.nn as nn

    return nn


def edgenet():
    """conv3x3+BN+ReLU blocks 16 | 32-32 | 64 | 128 with a max-pool between stages, global average pool.

    Why this shape: on a CPU, training time goes to the full-resolution (28x28) layers, whose feature maps
    are the largest to write, normalize and back-propagate; so only one cheap conv (1 to 16 channels) sees
    28x28, and the channels grow where the maps are small (14x14, 7x7, 3x3). About 108k parameters and
    4.4 M MACs per image, so it trains to about 99.6 % in about two minutes on a 2-core CPU (docs/history.md,
    "Recipes tried") and runs fast on an edge device. BatchNorm folds into the convs at export and
    quantization; every op maps onto TensorRT INT8 kernels.
    """
    nn = _nn()

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), nn.MaxPool2d(2),  # 28x28
        *block(16, 32), *block(32, 32), nn.MaxPool2d(2),  # 14x14
        *block(32, 64), nn.MaxPool2d(2),  # 7x7
        *block(64, 128),  # 3x3
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, NUM_CLASSES),
    )


def mlp():
    """Tutorial 1: 784-128-400-10 MLP with ReLU."""
    nn = _nn()
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 400), nn.ReLU(), nn.Linear(400, 10)
    )


def mlp_small():
    """Tutorial 3: 784-128-64-10 MLP.

    The tutorial ends in LogSoftmax and trains with NLLLoss; we return logits
    and train with CrossEntropyLoss, which is the same loss. The exported ONNX
    therefore outputs logits (argmax and softmax unchanged).
    """
    nn = _nn()
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def cnn():
    """Tutorial 4: three conv(3x3, pad 1)+ReLU+max-pool blocks (16/32/64), then Linear 576-256-10.

    As in the original there is no activation between the two Linear layers.
    """
    nn = _nn()

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), *block(32, 64),
        nn.Flatten(), nn.Linear(576, 256), nn.Linear(256, 10),
    )


def cnn_bn():
    """Tutorial 5 "MyCNN": conv+BN+LeakyReLU(0.2)+max-pool x3 (3/16/32 channels), Linear 288-10."""
    nn = _nn()

    def block(cin, cout, pad):
        return [nn.Conv2d(cin, cout, 3, padding=pad), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 3, 2), *block(3, 16, 1), *block(16, 32, 1), nn.Flatten(), nn.Linear(288, 10)
    )


def lenet5():
    """Classic LeNet-5: conv5x5(6, pad 2) -> pool -> conv5x5(16) -> pool -> FC 120-84-10.

    ReLU and max-pool stand in for the 1998 paper's scaled tanh and
    subsampling, as the tutorial does.
    """
    nn = _nn()
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable
    summary: str


#: The one table of built-in models; the CLI, tests and README read it.
REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("edgenet", edgenet, "default: 5x conv3x3+BN+ReLU (16-32-32-64-128), GAP, Linear 128-10"),
        ModelSpec("mlp", mlp, "tutorial 1: MLP 784-128-400-10"),
        ModelSpec("mlp_small", mlp_small, "tutorial 3: MLP 784-128-64-10 (logits; trained with CE = LogSoftmax+NLL)"),
        ModelSpec("cnn", cnn, "tutorial 4: 3x conv(16/32/64)+ReLU+pool, Linear 576-256-10"),
        ModelSpec("cnn_bn", cnn_bn, "tutorial 5: 3x conv(3/16/32)+BN+LeakyReLU(0.2)+pool, Linear 288-10"),
        ModelSpec("lenet5", lenet5, "classic LeNet-5: conv5x5 6/16, FC 120-84-10"),
    )
}


def is_user_model(name: str) -> bool:
    return ":" in name


CHECK_BATCHES = (1, 2, 3)  # batch sizes a user model is tried on: N=1 catches .squeeze(), N=3 a hard-coded 2


def _what_happened(e: BaseException) -> str:
    """An exception from user code in words; ``sys.exit()``/``exit()`` read as what they are."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r}) or exit() (SystemExit), which would end this program"
    return f"{type(e).__name__}: {e}"


OBJECT_LABEL = "model="  # how messages name an nn.Module object: ``model=MyNet(...)``, the keyword it came by


def _who(name: str) -> str:
    return name if name.startswith(OBJECT_LABEL) else f"--model {name}"


@contextlib.contextmanager
def user_code(name: str, doing: str):
    """Run a user's model code; anything it raises, ``SystemExit`` included, becomes a :class:`PipelineError`
    naming the model and what it was doing. Ctrl-C stays Ctrl-C. ``name`` is a ``--model`` value, or the
    ``model=...`` label :func:`adopt` gives an object."""
    who = _who(name)
    try:
        yield
    except (KeyboardInterrupt, PipelineError):
        raise
    except BaseException as e:  # user code can fail in any way, exit() included
        raise PipelineError(f"{who} failed while {doing}: {_what_happened(e)}.") from None


def _load_user_class(spec: str):
    """The ``nn.Module`` subclass named by ``package.module:Class``, checked before anything of it is called."""
    import torch

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PipelineError(f"--model '{spec}' must look like package.module:ClassName.")
    try:
        module = importlib.import_module(module_name)
    except (KeyboardInterrupt, PipelineError):
        raise
    except BaseException as e:  # a user's module can fail to import in any way, exit() at import included
        raise PipelineError(
            f"Could not import module '{module_name}' for --model '{spec}': {_what_happened(e)}. "
            "Make sure it is importable (on PYTHONPATH or installed)."
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PipelineError(f"Module '{module_name}' has no attribute '{attr}' (from --model '{spec}').")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
        what = (f"the class {obj.__qualname__}" if inspect.isclass(obj) else
                f"the function {getattr(obj, '__qualname__', attr)}" if callable(obj) and inspect.isroutine(obj) else
                f"an object of type {type(obj).__qualname__}")
        raise PipelineError(f"--model {spec} names {what}, not a subclass of torch.nn.Module; nothing of it was "
                            "called. Give a model class: package.module:ClassName with class ClassName(nn.Module).")
    return obj


def source_fingerprint(name: str) -> str:
    """For user models, the SHA-256 of the class's source file, so edits invalidate training."""
    if not is_user_model(name):
        return ""
    try:
        src = inspect.getsourcefile(_load_user_class(name)) or ""
        with open(src, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (TypeError, OSError):
        return ""


@dataclass(frozen=True)
class ModelObject:
    """An ``nn.Module`` object given as the model (``pipeline.run(model=MyNet())`` in a notebook).

    Its class may live in ``__main__``, where no other process can import it, so the run records it by
    fingerprint and this process keeps a private copy (``template``, never trained) to rebuild it from.
    Two objects are equal when their fingerprints are: same class, layers and initial weights.
    """

    name: str  # the run's name: the class's __name__; the run folder is <artifacts>/<name>
    origin: str  # module.qualname of the class, for messages
    fingerprint: str  # SHA-256 of architecture and initial weights (see fingerprint()); part of train's key
    template: Any = field(compare=False, repr=False)  # a private deep copy, with the initial weights


#: Objects adopted in this process, by fingerprint: how a checkpoint trained from an object finds its
#: architecture again (validate, bundle, :func:`pipeline.store.checkpoint.restore`). Per process by nature: a
#: class defined in a notebook exists nowhere else. Holds small CPU copies only, one per distinct object.
_ADOPTED: dict[str, ModelObject] = {}


def adopt(model) -> ModelObject:
    """Check, fingerprint and copy an ``nn.Module`` object given as the model; the caller's object is never
    modified (it is copied first, and the checks and training use copies).

    The same checks as ``--model package.module:Class`` apply: trainable parameters, and (N, 1, 28, 28) to
    (N, 10) float logits for N = 1, 2, 3; anything its code raises is a :class:`PipelineError`.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        if inspect.isclass(model) and issubclass(model, torch.nn.Module):
            raise PipelineError(f"model={model.__name__} is a class; give an object of it, model={model.__name__}(), "
                                "or a string 'package.module:ClassName'.")
        raise PipelineError(f"model= must be a registry name ({', '.join(REGISTRY)}), a string "
                            f"'package.module:ClassName', or a torch.nn.Module object; got an object of type "
                            f"{type(model).__qualname__}.")
    cls = type(model)
    name, origin = cls.__name__, f"{cls.__module__}.{cls.__qualname__}"
    if not name.isidentifier():  # the run folder is named after it
        raise PipelineError(f"model= is an object of class {origin!r}, whose name cannot name a run folder; give the "
                            "class a plain Python name.")
    label = f"{OBJECT_LABEL}{name}(...)"
    with user_code(label, "being copied (copy.deepcopy; the run trains a copy and leaves your object as it is)"):
        template = copy.deepcopy(model).cpu()
    with user_code(label, "being fingerprinted"):
        fp = fingerprint(template)
    _check_user_model(copy.deepcopy(template), label)  # on a copy: a forward may change buffers
    obj = ModelObject(name=name, origin=origin, fingerprint=fp, template=template)
    _ADOPTED[fp] = obj
    return obj


def _class_source(cls) -> str:
    """The class's source when Python can find it (a file, or a notebook cell IPython keeps), else ''."""
    try:
        return inspect.getsource(cls)
    except Exception:  # OSError/TypeError when there is no source; interactive shells can fail in other ways
        return ""


def fingerprint(model) -> str:
    """SHA-256 of what decides a model's training: its class (qualified name and source, when available), its
    layers (``repr``), and the name, shape, dtype, trainability and bytes of every parameter and buffer.

    So the same object twice gives the same key and its run is skipped, while one changed initial weight, an
    added layer or an edited ``forward`` retrains. Each piece is length-prefixed, so pieces cannot run together.
    """
    import torch

    h = hashlib.sha256()

    def add(piece) -> None:
        data = piece if isinstance(piece, bytes) else str(piece).encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    cls = type(model)
    add(f"{cls.__module__}.{cls.__qualname__}")
    add(_class_source(cls))
    add(repr(model))
    for kind, tensors in (("parameter", model.named_parameters(remove_duplicate=False)),
                          ("buffer", model.named_buffers(remove_duplicate=False))):
        for name, t in tensors:
            flat = t.detach().cpu().contiguous().reshape(-1)
            add(f"{kind} {name} {tuple(t.shape)} {t.dtype} {t.requires_grad}")
            add(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def object_run_refusal(where, origin: str) -> PipelineError:
    """The paragraph for a run trained from an object that this process never saw (a later CLI command, a
    restarted notebook)."""
    return PipelineError(
        f"{where} was trained from an nn.Module object (class {origin}) given to pipeline.run(model=...) in a "
        "Python session; only that object can rebuild the model, and this process was not given it (a class "
        "defined in a notebook or script cannot be imported by name from elsewhere), so the checkpoint's weights "
        "have no model to go into. The run's files need no model for `pipeline report`, "
        "`verify`, `predict` and `bench`. For anything that needs it (`pipeline bundle`, rerunning stages), either "
        "work in a Python session that defines the class: call pipeline.run(model=YourClass(...), ...) there (its "
        "stages are skipped when the object has the same initial weights) and bundle with .bundle(target) on what "
        "it returns; or move the class into a module and use --model package.module:ClassName. No file was "
        "written.")


def rebuild(ckpt: dict, where) -> Any:
    """A fresh model with the architecture a checkpoint was trained with (weights still to be loaded)."""
    recorded = ckpt.get("model_object")
    if recorded is None:
        return build(ckpt["model"])
    obj = _ADOPTED.get(recorded["fingerprint"])
    if obj is None:
        raise object_run_refusal(where, recorded["class"])
    return build(obj.name, obj)


def build(name: str, obj: "ModelObject | None" = None):
    """Build a fresh, randomly initialized model by registry name or ``package.module:Class``; with ``obj``
    (an adopted ``nn.Module`` object), a fresh copy of it, with its initial weights.

    A user model is checked here, before any stage runs: its class must be an ``nn.Module``, it must
    construct without arguments, have trainable parameters, and map (N, 1, 28, 28) to (N, 10) float
    logits for every N tried; anything its code raises (``sys.exit`` included) is a :class:`PipelineError`.
    An object was checked the same way when it was adopted.
    """
    import torch

    if obj is not None:
        return copy.deepcopy(obj.template)
    if is_user_model(name):
        cls = _load_user_class(name)
        with user_code(name, "being constructed with no arguments (user models must be constructible "
                             "without arguments)"):
            model = cls()
        if not isinstance(model, torch.nn.Module):
            raise PipelineError(f"--model {name} built a {type(model).__name__}, not a torch.nn.Module.")
        _check_user_model(model, name)
        return model
    if name not in REGISTRY:
        raise PipelineError(
            f"Unknown model '{name}'. Valid names: {', '.join(REGISTRY)}; or give your own as package.module:Class."
        )
    return REGISTRY[name].build()


def _check_user_model(model, name: str) -> None:
    """What every user's model must be: trainable, (N, 1, 28, 28) -> (N, 10) float logits, countable MACs."""
    what = _who(name)
    with user_code(name, "listing its parameters"):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not trainable:
        raise PipelineError(f"{what} has no trainable parameters, so there is nothing to train. "
                            "Give it layers with weights (nn.Linear, nn.Conv2d...).")
    _check_io(model, name)
    _check_gradient(model, name)
    macs_per_image(model, name)  # the train and validate stages count them; fail now, not after training


NO_GRADIENT = ("so training cannot change its weights: its forward must return what its layers computed, without "
               ".detach(), torch.no_grad(), .numpy() or a new tensor built from the values.")


def _check_gradient(model, name: str) -> None:
    """A model whose output carries no gradient (``.detach()`` in ``forward``) would end in a torch traceback at the
    first ``backward``; refuse it now. In eval mode, so no BatchNorm statistic moves; train.py checks every step's
    loss as well, for a model that detaches only when training."""
    import torch

    model.eval()
    with user_code(name, "running a (2, 1, 28, 28) input with gradients on"), torch.enable_grad():
        out = model(torch.zeros(2, *INPUT_SHAPE))
    if not out.requires_grad:
        raise PipelineError(f"{_who(name)}: its output carries no gradient, {NO_GRADIENT}")


def _check_io(model, name: str) -> None:
    import torch

    model.eval()
    for n in CHECK_BATCHES:
        with user_code(name, f"running a ({n}, 1, 28, 28) input (models must take normalized MNIST batches of "
                             "shape (N, 1, 28, 28))"), torch.no_grad():
            out = model(torch.zeros(n, *INPUT_SHAPE))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, NUM_CLASSES) or not out.is_floating_point():
            got = f"a {out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) \
                else f"a {type(out).__name__}"
            who = name if name.startswith(OBJECT_LABEL) else f"Model {name}"
            raise PipelineError(f"{who} must return (N, 10) logits as a float tensor; for N={n} it returned "
                                f"{got}.")


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_image(model, name: str | None = None) -> int:
    """Multiply-accumulates for one image, counted by torch's FlopCounterMode (FLOPs / 2).

    ``name`` marks a user model: then whatever its forward raises becomes a :class:`PipelineError`.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    guard = user_code(name, "counting its MACs on a (1, 1, 28, 28) input") if name else contextlib.nullcontext()
    with guard, torch.no_grad(), counter:
        model(torch.zeros(1, *INPUT_SHAPE))
    return counter.get_total_flops() // 2
