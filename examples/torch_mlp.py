"""Swap the nn.Linear layers of an existing PyTorch model for linear.torch.Linear, then train it as usual:
one process, or several with DistributedDataParallel (each process takes its share of the batch).

    python examples/torch_mlp.py                                # one process (CPU, or the GPU if present)
    LINEAR_BACKEND=emulate python examples/torch_mlp.py         # CPU tensors through our emulated CUDA kernels
    torchrun --nproc_per_node=2 examples/torch_mlp.py           # DDP in 2 processes (gloo on CPU, nccl on GPUs)
"""
import argparse
import gc
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import linear.torch


def spirals(points_per_class, generator, classes=3, noise=0.2):
    """2-D points on `classes` interleaved spiral arms; the label of a point is its arm."""
    t = 0.05 + 0.95 * torch.rand(classes, points_per_class, generator=generator)  # distance from the centre
    arm = torch.arange(classes)[:, None]
    angle = 2 * math.pi * arm / classes + 8.0 * t + noise * torch.randn(t.shape, generator=generator)
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=-1).reshape(-1, 2)
    return x, torch.arange(classes).repeat_interleave(points_per_class)


def train(steps=300, seed=0, hidden=64, lr=0.02, verbose=True):
    """Train on 3000 spiral points (split across the processes under DDP); return the model and its
    accuracy on 1500 held-out points."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)  # every process builds the same model and the same data
    model = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 3)).to(device)  # an existing model
    linear.torch.swap_linear(model)  # our kernels on the same parameters; Linear + ReLU now one fused layer
    if dist.is_initialized():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = (a.to(device) for a in spirals(1000, generator))
    x_test, y_test = (a.to(device) for a in spirals(500, generator))
    mine = slice(rank, None, world)  # this process's rows; DDP averages the gradients over the processes

    for step in range(steps):
        loss = F.cross_entropy(model(x_train[mine]), y_train[mine])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if verbose and rank == 0 and step % 100 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    if verbose and rank == 0:
        print(f"test accuracy after {steps} steps: {accuracy:.1%}")
    return model, accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save", help="where the first process saves the trained state_dict")
    args = parser.parse_args()
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per process
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        model, _ = train(steps=args.steps)
        if args.save and (not dist.is_initialized() or dist.get_rank() == 0):
            torch.save(getattr(model, "module", model).state_dict(), args.save)
        del model  # DDP holds the process group
    finally:
        if dist.is_initialized():
            # End gloo's threads while Python still runs: one that frees its last work object during
            # interpreter shutdown aborts the process (torch 2.13 on the CPU: about 1 exit in 10 without this).
            gc.collect()  # the DDP wrapper's reference cycles
            dist.destroy_process_group()
