"""Quantization-aware training: fine-tune the FP32 model with fake quantization, then write INT8 QDQ ONNX.

A library module, used by the quantize stage (:mod:`pipeline.stages.quantize`). QAT is a torch
fine-tuning, so it lives with training, not with the ONNX -> ONNX transforms of
:mod:`exporters.precision` (PTQ, CPU INT8, FP16, SQNR), which it reuses only to check and write its file.

It uses torchao's pt2e flow (``prepare_qat_pt2e`` -> fine-tune -> ``convert_pt2e``) with a symmetric-int8
quantizer config, then the dynamo ONNX exporter, which turns the quantize/dequantize ops into Q/DQ nodes;
the result follows the same TensorRT QDQ rules as PTQ's (see :mod:`exporters.precision`). The fine-tuning
loop is :func:`pipeline.training.fit.run_epoch`, the one FP32 training uses, at the training batch size and
shuffled by the training seed (not the calibration seed, which only picks PTQ's calibration images).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from pipeline.config import QuantConfig
from pipeline.errors import PipelineError


def symmetric_int8_quantizer(is_qat: bool):
    """torchao's x86 quantizer with TensorRT's scheme: int8, zero point 0, per-channel weights (axis 0).

    The stock x86 config uses uint8 asymmetric activations, which TensorRT rejects.
    """
    import torch
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver,
                                           MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    eps = {"eps": 2**-12}
    if is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **eps)
        w_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, **eps)
    else:
        act_ctr, w_ctr = HistogramObserver.with_args(**eps), PerChannelMinMaxObserver.with_args(**eps)
    act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                           is_dynamic=False, observer_or_fake_quant_ctr=act_ctr)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=w_ctr)
    return X86InductorQuantizer().set_global(QuantizationConfig(act, act, weight, None, is_qat))


def fold_batchnorm(model):
    """Fold every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` into the conv.

    QAT then fine-tunes exactly the weights that get deployed, and torchao's
    convert skips its conv-BN re-folding pass (about 20 s of pattern tracing on
    a 2-core CPU). BatchNorms elsewhere (custom user models) are left to torchao.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = model.eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = torch.nn.Identity()
    return model


def prepare(model, example):
    """The model with BatchNorm folded (:func:`fold_batchnorm`), traced by torch.export and prepared for QAT
    (fake quantization with observers, :func:`symmetric_int8_quantizer`); a model it cannot trace is a
    :class:`PipelineError`."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    model = fold_batchnorm(model)
    try:
        graph = torch.export.export(model.train(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
        return prepare_qat_pt2e(graph, symmetric_int8_quantizer(is_qat=True))
    except Exception as e:  # torch.export / the quantizer reject some user models
        raise PipelineError(
            f"QAT could not prepare this model ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            "torchao's pt2e quantizer needs a model torch.export can trace; use --quant ptq or --quant none."
        ) from None


def qat(model, splits, cfg: QuantConfig, final: Path, metadata: dict, opset: int, *, batch_size: int, seed: int,
        tensorrt_rules: bool = True, progress=None, simulated_json: Path | None = None) -> Path:
    """Quantization-aware fine-tuning from the FP32 weights, then QDQ ONNX written to ``final``.

    ``batch_size`` and ``seed`` are the training run's (``--batch-size``, ``--seed``): QAT is more training,
    so the options that shape training shape it too. ``cfg`` gives the recipe: epochs, learning rate (SGD with
    momentum 0.9, cosine to zero over all steps), images per epoch, the step after which the observers freeze,
    the weight EMA that is exported, augmentation (:class:`Recipe`; docs/qat.md says why the defaults are a
    short, gentle fine-tuning). The model starts from the checkpoint's weights, which are the training run's EMA
    (:class:`pipeline.training.fit.WeightEMA` is what training keeps). ``tensorrt_rules`` (the variant table's
    ``tensorrt`` column) checks TensorRT's Q/DQ placement rules before the file is written.
    ``simulated_json``, when given, receives the converted model's test accuracy in torch before export (its
    quantize/dequantize ops simulate INT8 in float): the accuracy ladder's rung between torch FP32 and the
    QDQ ONNX, which only exists here, where the model does.
    """
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from exporters.onnx import ExportError, torch_to_onnx_proto
    from exporters.precision import QuantizationError, write_int8

    from pipeline.store.paths import refused_writes
    from .fit import Trainer, run_epoch

    torch.manual_seed(seed)
    prepared = prepare(model, splits.train_x[:2])
    x, y = splits.train_x, splits.train_y
    n = min(len(x), cfg.qat_max_images) if cfg.qat_max_images else len(x)
    steps = cfg.qat_epochs * math.ceil(n / batch_size)
    opt = torch.optim.SGD(prepared.parameters(), lr=cfg.qat_lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    recipe = Recipe(prepared, cfg)
    background = float((0.0 - splits.mean) / splits.std) if cfg.qat_augment else None
    loop = Trainer(prepared, opt, sched, gen, x, y, batch_size=batch_size, epochs=cfg.qat_epochs,
                   what="QAT fine-tuning", advice=f"--qat-lr (now {cfg.qat_lr:g})", images=n, background=background,
                   set_train_mode=move_exported_model_to_train, after_step=recipe.step, progress=progress, label="QAT ")
    for epoch in range(1, cfg.qat_epochs + 1):
        run_epoch(loop, epoch)
    recipe.finish()
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    if simulated_json is not None:
        from pipeline.store.paths import write_json

        with refused_writes(simulated_json):
            write_json(simulated_json, {"test_accuracy": simulated_accuracy(converted, splits.test_x, splits.test_y),
                                        "images": len(splits.test_y),
                                        "what": "the QAT model after convert_pt2e, before ONNX export, in torch"})
    try:
        with warnings.catch_warnings():  # the converted graph keeps training=True; its ops are already eval-mode
            warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
            proto = torch_to_onnx_proto(converted, opset, example=splits.train_x[:2])
    except ExportError as e:
        raise PipelineError(f"Could not export the QAT model to ONNX: {e}") from None
    try:
        with refused_writes(final):
            return write_int8(proto, final, metadata, tensorrt_rules=tensorrt_rules)
    except QuantizationError as e:
        raise PipelineError(str(e)) from None


class Recipe:
    """The per-step parts of the QAT recipe (:class:`pipeline.config.QuantConfig`), hooked in after each optimizer
    step: observers frozen after ``qat_observer_steps`` steps, and an EMA of the weights (``qat_ema``).

    Why freeze: while the observers run, every step moves the activation and weight grids a little, so the
    weights chase a target that the export then fixes at whatever it was on the last batch. Frozen after a
    warm-up, the remaining steps fit the weights to the grids that ship. Why an EMA of the weights: the raw
    SGD weights of the last step carry that step's batch noise, which flips test images both ways; their
    average over the last few hundred steps is the smoother fit (as :class:`pipeline.training.fit.WeightEMA` is for
    FP32 training). Only parameters are averaged: the observers' buffers (the grids) stay the live ones, so
    the averaged weights are quantized on the frozen grids they were fitted to. The averaged weights replace
    the live ones in :meth:`finish`, before convert.
    """

    def __init__(self, prepared, cfg: QuantConfig):
        self.model, self.freeze_at, self.decay, self.steps = prepared, cfg.qat_observer_steps, cfg.qat_ema, 0
        self.frozen = False
        self.average = ({k: p.detach().clone() for k, p in prepared.named_parameters()} if self.decay else None)

    def step(self) -> None:
        import torch

        self.steps += 1
        if self.freeze_at and self.steps == self.freeze_at:
            self.freeze()
        if self.average is not None:
            d = min(self.decay, (1 + self.steps) / (10 + self.steps))  # warm-up as WeightEMA's
            with torch.no_grad():
                for k, p in self.model.named_parameters():
                    self.average[k].lerp_(p.detach(), 1 - d)

    def freeze(self) -> None:
        """Stop every observer of the prepared graph: the fake quantization keeps its current scales."""
        from torchao.quantization.pt2e import disable_observer

        self.model.apply(disable_observer)
        self.frozen = True

    def finish(self) -> None:
        import torch

        if self.average is not None:
            with torch.no_grad():
                for k, p in self.model.named_parameters():
                    p.copy_(self.average[k])


def simulated_accuracy(converted, x, y, batch: int = 1000) -> float:
    """Accuracy of the converted (fake-quantized) torch model on ``x``/``y``, in batches, without gradients."""
    import torch

    right = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            right += int((converted(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return right / len(y)
