"""What BatchNorm over the global batch costs on CPU: GlobalBatchNorm against per-rank nn.BatchNorm2d, interleaved.

Why interleaved: on a shared machine the load changes from minute to minute, so the two modes are timed in
alternating short rounds in the same pair of processes and compared round by round (docs/distributed.md).
2 gloo ranks, edgenet channels-last, global batch 128 (64 per rank, random images), 1 thread per rank, DDP with
SGD; each round times 4 training steps of each mode (the order alternating), the first 2 rounds are dropped.

    python -m benchmarks.ddp_batchnorm_cost [ROUNDS]     (default 30)
"""
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

def _rank(rank, port, rounds):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from pipeline import models
    from pipeline.training.batchnorm import training_view
    from torch.nn.parallel import DistributedDataParallel as DDP
    nets = {}
    for mode in ("global", "perrank"):
        torch.manual_seed(0); core = models.build("edgenet").to(memory_format=torch.channels_last)
        view = training_view(core, "gloo", dist.new_group(backend="gloo")) if mode == "global" else core
        nets[mode] = (DDP(view), torch.optim.SGD(core.parameters(), lr=1e-3, momentum=0.9))
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(64, 1, 28, 28, generator=g).to(memory_format=torch.channels_last); y = torch.randint(0, 10, (64,), generator=g)
    times = {m: [] for m in nets}
    for r in range(rounds):
        order = list(nets) if r % 2 == 0 else list(reversed(list(nets)))
        for m in order:
            net, opt = nets[m]; net.train()
            dist.barrier(); t = time.perf_counter()
            for _ in range(4):
                opt.zero_grad(); F.cross_entropy(net(x), y).backward(); opt.step()
            dist.barrier(); times[m].append((time.perf_counter() - t) / 4)
    if rank == 0:
        med = {m: statistics.median(v[2:]) for m, v in times.items()}  # first 2 rounds: warm-up
        ratios = [a / b for a, b in zip(times["global"][2:], times["perrank"][2:])]
        q = statistics.quantiles(ratios, n=4)
        print(f"load average {open('/proc/loadavg').read().split()[0]}; median step: global {med['global']*1e3:.1f} ms, per-rank {med['perrank']*1e3:.1f} ms; "
              f"ratio of medians {med['global']/med['perrank']:.3f}; per-round ratio median {statistics.median(ratios):.3f} "
              f"(quartiles {q[0]:.3f}-{q[2]:.3f}, {len(ratios)} rounds)")
    dist.destroy_process_group()
if __name__ == "__main__":
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    mp.spawn(_rank, args=(port, int(sys.argv[1]) if len(sys.argv) > 1 else 30), nprocs=2)
