"""Run by test_torch.py under torchrun (2 processes, gloo): an MLP of linear.torch.Linear layers, each
wrapped with FSDP2's fully_shard, trained for a few SGD steps on halves of the batch. Rank 0 checks the
gathered parameters against the same training in one process on the whole batch and exits non-zero when
they differ by more than float32 rounding (or when one step fewer would pass: the negative control)."""
import gc
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard

import linear.torch

STEPS = 3


def model():
    torch.manual_seed(0)
    return linear.torch.swap_linear(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)))


def train(net, x, target, steps):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(net(x), target).backward()
        optimizer.step()
    return net


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    target = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    sharded = model()
    for layer in (sharded[0], sharded[2]):
        fully_shard(layer)  # each process keeps half of each weight; the forward gathers it
    fully_shard(sharded)
    assert isinstance(sharded[0], linear.torch.Linear)
    train(sharded, x[rank::world], target[rank::world], STEPS)
    gathered = {name: p.full_tensor() for name, p in sharded.state_dict().items()}
    status = 0
    if rank == 0:
        for steps, should_match in ((STEPS, True), (STEPS - 1, False)):
            reference = train(model(), x, target, steps).state_dict()
            errors = {n: ((gathered[n] - p).norm() / p.norm()).item() for n, p in reference.items()}
            print(f"FSDP vs one process, {steps} steps: relative errors {errors}")
            if (max(errors.values()) <= 1e-6) != should_match:
                status = 1
    status = torch.tensor(status)
    dist.all_reduce(status, op=dist.ReduceOp.MAX)  # every rank exits with rank 0's verdict
    # Free what holds the process group and end it while Python runs (as examples/torch_mlp.py does): a gloo
    # thread that frees a finished work object during interpreter shutdown aborts the process ("terminate
    # called without an active exception"; 10 exits in 78 before, 0 in 40 since).
    del sharded, gathered
    gc.collect()
    dist.destroy_process_group()
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
