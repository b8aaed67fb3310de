"""BatchNorm over the global batch of a data-parallel run, so that N processes train the single process's model.

Why: each DDP rank sees only its share of every global batch (rank r takes every N-th image). A plain
``nn.BatchNorm`` layer would normalize over that share, so N ranks would train another model than one process
(batch statistics from half the images, running statistics from rank 0's half). With the layers below every
rank normalizes with the statistics of the whole global batch and updates its running statistics exactly as
``nn.BatchNorm`` does with the global batch, so the only difference left is the order of float additions.

- On CUDA (NCCL) the layers are PyTorch's own ``nn.SyncBatchNorm``.
- On CPU (gloo) ``nn.SyncBatchNorm`` refuses the input ("expected input tensor to be on GPU"), so
  :class:`GlobalBatchNorm` does the same arithmetic with a differentiable all-reduce: each rank's (count, mean,
  variance) per channel goes into its own row of a small (world, 3, C) tensor, one all-reduce of that tensor
  gives every rank every row, and the rows are combined with Chan's parallel-variance formula (no
  E[x^2] - E[x]^2 cancellation). Autograd carries the gradient back through the all-reduce, so every rank's
  weights get the gradient of the global batch's loss, as ``nn.SyncBatchNorm`` does.

:func:`training_view` builds a module tree for training that shares every parameter and buffer with the model it
was made from and swaps only its BatchNorm layers: the model itself (its class, state dict, checkpoint and export)
never changes, and the running statistics the view updates are the model's own tensors.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from pipeline.errors import PipelineError

# Imported only by a data-parallel training run (pipeline.training.fit), so torch at the top costs the CLI nothing.


def training_view(model, backend: str, group=None):
    """A tree for DDP training that shares ``model``'s parameters and buffers, its BatchNorm layers normalizing over
    the global batch (``nn.SyncBatchNorm`` with NCCL, :class:`GlobalBatchNorm` otherwise). ``model`` is returned as
    it is when it has no BatchNorm layer; only the containers on the path to one are copied (shallowly)."""
    if backend == "nccl":
        def make(bn):
            return nn.SyncBatchNorm.convert_sync_batchnorm(bn, group)  # a new layer sharing bn's tensors
    else:
        def make(bn):
            return GlobalBatchNorm(bn, group)
    return _swapped(model, make)


def _swapped(module, make):
    if isinstance(module, _BatchNorm):
        return make(module)
    children = {name: _swapped(child, make) for name, child in module.named_children()}
    if all(children[name] is child for name, child in module.named_children()):
        return module
    clone = copy.copy(module)  # the same parameters, buffers and hooks; its own table of children
    clone._modules = {**module._modules, **children}
    return clone


class GlobalBatchNorm(nn.Module):
    """``GlobalBatchNorm(bn, group)``: in training mode, ``bn`` (an ``nn.BatchNorm1d/2d/3d``) with the statistics of
    the global batch of ``group`` (default: the whole world); in eval mode, ``bn`` itself. Shares ``bn``'s weight,
    bias and running statistics, which it updates in place as ``nn.BatchNorm`` does (momentum, or the cumulative
    average when momentum is None; the global batch's unbiased variance)."""

    def __init__(self, bn, group=None):
        super().__init__()
        self.bn = bn
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)

    def forward(self, x):
        bn = self.bn
        if not self.training:
            return bn(x)
        channels, dims = x.shape[1], [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dims, correction=0)  # this rank's share, numerically stable
        mine = torch.stack([torch.full_like(mean, x.numel() / channels), mean, var])
        rows = torch.stack([mine if r == self.rank else torch.zeros_like(mine) for r in range(self.world)])
        rows = fc.all_reduce(rows, "sum", self.group).wait()  # differentiable: every rank's row on every rank
        n_r, mean_r, var_r = rows[:, 0].detach(), rows[:, 1], rows[:, 2]
        n = n_r.sum(0)
        g_mean = (n_r * mean_r).sum(0) / n
        g_var = (n_r * (var_r + (mean_r - g_mean) ** 2)).sum(0) / n  # Chan et al.: within + between the ranks
        self._update_running(g_mean.detach(), g_var.detach(), float(n[0]))
        scale = torch.rsqrt(g_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -g_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        shape = [1, channels] + [1] * (x.dim() - 2)
        return torch.addcmul(shift.view(shape), x, scale.view(shape))

    @torch.no_grad()
    def _update_running(self, mean, var, n: float) -> None:
        bn = self.bn
        if n <= 1:
            raise PipelineError(f"BatchNorm needs more than 1 value per channel in a global batch, got {n:g}: use a "
                                "larger --batch-size.")
        if bn.running_mean is None:  # track_running_stats=False: batch statistics only
            return
        factor = bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if factor is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean, factor)
        bn.running_var.lerp_(var * (n / (n - 1)), factor)
