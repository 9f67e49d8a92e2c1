"""nn.Linear against linear.torch.Linear: one training step (forward, then backward into x, weight and bias).

    PYTHONPATH=. python bench/torch_linear.py [OUT.json] [--shape B,F,D ...] [--dtype float32] [--repeats 200]
                                              [--threads N] [--busy N] [--activation relu|gelu|gelu_tanh|silu]

On CUDA tensors when torch sees a GPU (TF32 off, so that cuBLAS computes in true float32 as we do), else on
the CPU. Each shape is first checked: both layers' output and gradients against a float64 nn.Linear (and
activation; relative error, within linear.testing.TOLERANCE); then both steps are timed in --repeats
interleaved rounds (each round one step of each, in alternating order) after a warm-up (CUDA events on the
GPU, perf_counter on the CPU). speed = nn.Linear's median time / ours (1 = as fast, 0.5 = twice as slow), with the quartiles of
the rounds' own ratios as its spread. --threads calls torch.set_num_threads; --busy N runs N processes that
spin on the CPU for the whole run, as another job on the machine would (the load average is reported).
--activation: nn.Linear followed by that activation module (nn.ReLU, nn.GELU, nn.SiLU) against the
one fused linear.torch.Linear that swap_linear makes of the pair. Prints a table; writes JSON when OUT is
given.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

import linear.torch
from bench.report import write_atomic
from linear.testing import TOLERANCE, relative_error


def step_timer(device: torch.device):
    """A function that times fn() in milliseconds on `device`."""
    def time_it(fn) -> float:
        if device.type != "cuda":
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return time_it


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU}


def model(features: int, outputs: int, activation: str | None, **where) -> nn.Sequential:
    """nn.Linear, followed by the activation module when one is named."""
    return nn.Sequential(nn.Linear(features, outputs, **where), *([ACTIVATIONS[activation]()] if activation else []))


def run_shape(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, repeats: int,
              activation: str | None = None) -> dict:
    batch, features, outputs = shape
    generator = torch.Generator().manual_seed(0)
    reference = model(features, outputs, activation, dtype=torch.float64)
    x64 = torch.randn(batch, features, dtype=torch.float64, generator=generator)
    dy64 = torch.randn(batch, outputs, dtype=torch.float64, generator=generator)
    theirs = model(features, outputs, activation, device=device, dtype=dtype)
    theirs.load_state_dict(reference.state_dict())
    ours = linear.torch.swap_linear(model(features, outputs, activation, device=device, dtype=dtype))
    ours.load_state_dict(reference.state_dict())
    x = x64.to(device, dtype).requires_grad_()
    dy = dy64.to(device, dtype)

    def step(layer):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(dy)

    x_ref = x.detach().double().cpu().requires_grad_()
    y_ref = reference(x_ref)
    y_ref.backward(dy.double().cpu())
    refs = {"y": y_ref, "dx": x_ref.grad, "dweight": reference[0].weight.grad, "dbias": reference[0].bias.grad}
    result = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "device": str(device),
              "activation": activation}
    layers = {"nn.Linear": theirs, "linear.torch.Linear": ours}
    for name, layer in layers.items():
        step(layer)
        outs = {"y": layer(x), "dx": x.grad, "dweight": layer[0].weight.grad, "dbias": layer[0].bias.grad}
        errors = {k: relative_error(v.detach().double().cpu().numpy(), refs[k].detach().numpy())
                  for k, v in outs.items()}
        result[name] = {"max_relative_error": max(errors.values()), "errors": errors,
                        "ok": max(errors.values()) <= TOLERANCE[result["dtype"]], "times_ms": []}
    time_it = step_timer(device)
    for _ in range(max(3, repeats // 10)):  # warm-up: caches, allocator, BLAS thread pools
        for layer in layers.values():
            step(layer)
    for i in range(repeats):
        for name in (list(layers) if i % 2 == 0 else list(layers)[::-1]):
            result[name]["times_ms"].append(time_it(lambda: step(layers[name])))
    theirs_ms, ours_ms = result["nn.Linear"]["times_ms"], result["linear.torch.Linear"]["times_ms"]
    for name in layers:
        result[name]["median_ms"] = statistics.median(result[name]["times_ms"])
    ratios = statistics.quantiles([a / b for a, b in zip(theirs_ms, ours_ms)], n=4) if repeats > 1 else [0] * 3
    result["speed"] = result["nn.Linear"]["median_ms"] / result["linear.torch.Linear"]["median_ms"]
    result["speed_quartiles"] = [ratios[0], ratios[2]]
    return result


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[int]]:
    """`count` processes that spin on the CPU until the block ends (then terminated, by their ids)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield [p.pid for p in spinners]
    finally:
        for p in spinners:
            p.terminate()
        for p in spinners:
            p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="JSON file for the results")
    parser.add_argument("--shape", action="append", help="B,F,D (repeatable); default 4096³ on a GPU, "
                                                          "256x1024x1024 on the CPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=200, help="interleaved rounds (one step of each layer)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(THREADS) first")
    parser.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU during the run")
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS),
                        help="each layer followed by this activation (fused into ours by swap_linear)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    default = ["4096,4096,4096", "8192,1024,4096"] if device.type == "cuda" else ["256,1024,1024"]
    shapes = [tuple(int(n) for n in s.split(",")) for s in (args.shape or default)]
    with busy_processes(args.busy) as spinners:
        load_before = os.getloadavg()
        results = [run_shape(shape, getattr(torch, args.dtype), device, args.repeats, args.activation)
                   for shape in shapes]
        load_after = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {args.busy} busy processes, "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} CPUs"
          + (f"; each layer followed by {args.activation} (fused into ours)" if args.activation else ""))
    print(f"{'B×F×D':>16} {'dtype':>9} {'device':>6}  {'nn.Linear ms':>12}  {'ours ms':>9}  {'speed':>6}  "
          f"{'quartiles':>11}  error")
    for r in results:
        theirs, ours = r["nn.Linear"], r["linear.torch.Linear"]
        low, high = r["speed_quartiles"]
        print(f"{'×'.join(map(str, r['shape'])):>16} {r['dtype']:>9} {r['device']:>6}  {theirs['median_ms']:12.4f}  "
              f"{ours['median_ms']:9.4f}  {r['speed']:5.2f}×  {low:4.2f}-{high:4.2f}×  "
              f"{ours['max_relative_error']:.1e}{'' if ours['ok'] else ' WRONG'}")
    if args.out:
        write_atomic(Path(args.out), json.dumps(
            {"torch": torch.__version__, "threads": torch.get_num_threads(), "busy": args.busy,
             "busy_pids": spinners, "load_average": [load_before, load_after], "cpus": os.cpu_count(),
             "activation": args.activation, "results": results}, indent=1))
    return 0 if all(r[name]["ok"] for r in results for name in ("nn.Linear", "linear.torch.Linear")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
