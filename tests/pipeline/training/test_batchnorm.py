"""pipeline/training/batchnorm.py: GlobalBatchNorm in 2 real gloo processes against nn.BatchNorm on the whole batch.

Each rank feeds its share of one batch (rank r: every 2nd image, so 4 and 3 images: uneven), runs forward and
backward of a loss summed over its images, and all-reduces the weight and bias gradients; the whole batch through
a plain ``nn.BatchNorm2d`` in one process is the reference. Outputs, input gradients, parameter gradients and the
running statistics must agree to float32 rounding (1e-5 relative: a few ulps of sums of a few hundred terms);
with per-rank statistics (plain BatchNorm on each share) they differ by about 1e-1.
"""
from __future__ import annotations

import os
import socket

import pytest

torch = pytest.importorskip("torch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 3, 5, 5, generator=g) * 2 + 1).to(memory_format=torch.channels_last)
    w = torch.randn(7, 3, 5, 5, generator=g)  # the loss's weights, so every output gets its own gradient
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(3, generator=g))
        bn.bias.copy_(torch.randn(3, generator=g))
        bn.running_var.fill_(2.0)
    return x, w, bn


def _rank(rank: int, port: int, out: str, per_rank: bool) -> None:
    import torch.distributed as dist

    from pipeline.training.batchnorm import GlobalBatchNorm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x, w, bn = _case()
        layer = bn if per_rank else GlobalBatchNorm(bn)
        layer.train()
        xs = x[rank::2].clone().requires_grad_(True)
        for _ in range(2):  # twice: the running statistics blend two batches
            xs.grad = None
            bn.zero_grad()
            y = layer(xs)
            (y * w[rank::2] ** 2).sum().backward()
        grads = torch.cat([bn.weight.grad, bn.bias.grad])
        dist.all_reduce(grads)
        torch.save({"y": y.detach(), "dx": xs.grad, "grads": grads, "mean": bn.running_mean,
                    "var": bn.running_var, "tracked": bn.num_batches_tracked}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _worker(rank, port, out, per_rank):
    _rank(rank, port, out, per_rank)


def _reference():
    x, w, bn = _case()
    bn.train()
    x = x.clone().requires_grad_(True)
    for _ in range(2):
        x.grad = None
        bn.zero_grad()
        y = bn(x)
        (y * w ** 2).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "grads": torch.cat([bn.weight.grad, bn.bias.grad]),
            "mean": bn.running_mean, "var": bn.running_var, "tracked": bn.num_batches_tracked}


def _worst(tmp_path, per_rank: bool) -> float:
    """The largest relative difference (to the reference's largest magnitude) over every compared tensor."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path), per_rank), nprocs=2)
    ref = _reference()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    worst = 0.0
    for key in ("y", "dx"):
        for r in range(2):
            a, b = ranks[r][key], ref[key][r::2]
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    for key in ("grads", "mean", "var"):
        for r in range(2):
            a, b = ranks[r][key], ref[key]
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    assert all(int(r["tracked"]) == int(ref["tracked"]) == 2 for r in ranks)
    return worst


def test_global_batchnorm_on_two_ranks_is_batchnorm_on_the_whole_batch(tmp_path):
    worst = _worst(tmp_path, per_rank=False)
    assert worst <= 1e-5, worst


def test_per_rank_statistics_would_fail_the_same_check(tmp_path):
    """The check above can fail: plain BatchNorm on each rank's share differs far beyond its tolerance."""
    worst = _worst(tmp_path, per_rank=True)
    assert worst > 1e-2, worst
