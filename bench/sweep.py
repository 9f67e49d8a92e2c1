"""Tile sweep: every tile configuration x product x shape, checked, then timed beside cuBLAS.

    python -m bench.sweep                               # on a GPU: about 4 minutes, TF32 off
    python -m bench.sweep --budget-s 120 --out DIR      # stops starting cases after 120 s
    python -m bench.sweep --backend emulate --tiny      # the plumbing on the CPU (what CI runs)
    python -m bench.sweep --winners DIR/sweep.json      # the winners and what the plan should change

Cases, float32 only, for each layer shape (B, F, D) and the GEMM each product runs:
    NN   Y  = X·W + b     M, N, K = B, D, F   (our bias epilogue; cuBLAS does the product only)
    NT   dX = dY·Wᵀ       M, N, K = B, F, D
    TN   dW = Xᵀ·dY       M, N, K = F, D, B
each with every tile configuration of linear/backends/tiles.py (candidates included) and with the
plan's own choice ("heuristic"); and with split-K (each count in SPLITS that leaves slices of at least
MIN_K_PER_SLICE) wherever the configuration's tiles do not fill the card twice: that is at
(256, 1024, 1024) and (32, 784, 256), where K allows; at the large shapes every configuration has
waves of tiles to spare, and splitting K would only add the workspace's traffic.

Every case is first checked: the output is filled with NaN, one call, then its relative error
against a float64 product (cupy.matmul in float64; numpy on the emulator) must be within 1e-5; only
then is it timed. cuBLAS (cupy.matmul into float32, CUPY_TF32=0, which this script sets) is timed at
the start and at the end of each (product, shape) group, and the ratio ours / cuBLAS uses the mean
of the two. Timing: CUDA events (cupyx.profiler.benchmark, median) on the
GPU; one call by the wall clock on the emulator, which says nothing about speed.

The run starts no case past its --budget-s (a case still running finishes, its timing cut short) and
rewrites OUT/sweep.json after every case, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import timers
from .machine import machine_info
from linear import testing
from linear.backends import cost, plan, tiles
from linear.backends.device import H100
from linear.testing import relative_error
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning

TOLERANCE = testing.TOLERANCE["float32"]  # ||ours - ref|| / ||ref|| against the float64 product
SHAPES = [(4096, 4096, 4096), (8192, 4096, 11008), (256, 1024, 1024), (32, 784, 256)]  # (B, F, D)
TINY_SHAPES = [(33, 70, 45), (20, 36, 130)]
TINY_CONFIGS = ["small", "large", "warp", "warp_wide"]
SPLITS = (2, 4, 8)
MIN_K_PER_SLICE = 128
TINY_MIN_K_PER_SLICE = 8
COPY_BYTES = 2**30  # the device-to-device copy that measures the memory ceiling
TINY_COPY_BYTES = 2**23
HEURISTIC = "heuristic"  # the pseudo-config: whatever the plan chooses


@dataclass(frozen=True)
class Product:
    name: str
    trans_a: bool
    trans_b: bool
    bias: bool

    def mnk(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The GEMM's M, N, K for the layer shape (B, F, D)."""
        b, f, d = shape
        return {"NN": (b, d, f), "NT": (b, f, d), "TN": (f, d, b)}[self.name]


PRODUCTS = {p.name: p for p in [Product("NN", False, False, True), Product("NT", False, True, False),
                                  Product("TN", True, False, False)]}


@dataclass(frozen=True)
class Case:
    product: str
    shape: tuple[int, int, int]  # (B, F, D)
    config: str  # a tiles.TILE_CONFIGS name or HEURISTIC
    splits: int | None  # None: the plan's choice

    @property
    def tuning(self) -> Tuning:
        return Tuning(config=None if self.config == HEURISTIC else self.config, splits=self.splits)

    def as_json(self) -> dict:
        return {"product": self.product, "shape": list(self.shape), "config": self.config,
                "splits_requested": self.splits}


def sweep_cases(shapes: list[tuple[int, int, int]], configs: list[str], min_k_per_slice: int) -> list[list[Case]]:
    """The cases, one list per (product, shape) group, in the order they run (the most telling first)."""
    groups = []
    for shape in shapes:
        for product in PRODUCTS.values():
            m, n, k = product.mnk(shape)
            group = [Case(product.name, shape, config, None if config == HEURISTIC else 1) for config in configs]
            group += [Case(product.name, shape, config, splits) for splits in SPLITS if k // splits >= min_k_per_slice
                      for config in configs if config != HEURISTIC and
                      tiles.CONFIGS_BY_NAME[config].tiles(m, n) < 2 * H100.sms]
            groups.append(group)
    return groups


# ----------------------------------------------------------------------------------------------------
# One group: inputs, the float64 reference, cuBLAS, and every case
# ----------------------------------------------------------------------------------------------------


@dataclass
class Operands:
    a: Any
    b: Any
    bias: Any
    reference: Any  # float64
    m: int
    n: int
    k: int


def make_operands(xp, product: Product, shape: tuple[int, int, int], seed: int) -> Operands:
    """Fresh standard-normal float32 operands for one product (drawn on the host, the same on every
    backend), and their float64 product."""
    m, n, k = product.mnk(shape)
    rng = np.random.default_rng(seed)

    def normal(*size: int):
        return xp.asarray(rng.standard_normal(size, dtype=np.float32))

    a = normal(k, m) if product.trans_a else normal(m, k)
    b = normal(n, k) if product.trans_b else normal(k, n)
    bias = normal(n) if product.bias else None
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    reference = xp.matmul(a64.T if product.trans_a else a64, b64.T if product.trans_b else b64)
    if bias is not None:
        reference += bias.astype(np.float64)
    del a64, b64
    return Operands(a, b, bias, reference, m, n, k)


@dataclass
class Timer:
    """Median milliseconds of a call: CUDA events on the GPU, one wall-clock call on the emulator."""
    gpu: bool
    repeats: int
    warmup: int

    def __call__(self, call: Callable[[], None], max_seconds: float) -> tuple[float, int]:
        entry = (timers.Entry([call], timers.gpu_ms, self.repeats, self.warmup, max_seconds) if self.gpu
                 else timers.Entry([call], timers.cpu_ms, repeats=1, warmup=0, max_seconds=max_seconds))
        timers.time_interleaved([entry])
        return float(np.median(entry.times_ms)), len(entry.times_ms)

    @property
    def description(self) -> str:
        if self.gpu:
            return (f"cupyx.profiler.benchmark (CUDA events), median of up to {self.repeats} runs after "
                    f"{self.warmup} warm-up runs; the inputs are not rotated (ours and cuBLAS alike)")
        return "wall clock (time.perf_counter) of one call: the CPU emulator, not a speed"


def run_case(backend_for: Callable[[Tuning], Any], case: Case, ops: Operands, timer: Timer,
             max_seconds: float) -> dict:
    """One case: the plan's launches, a NaN-poisoned correctness call, then the timing if it passed."""
    product = PRODUCTS[case.product]
    row: dict[str, Any] = dict(case.as_json(), m=ops.m, n=ops.n, k=ops.k)
    try:
        backend = backend_for(case.tuning)
        xp = backend.xp
        c = xp.full((ops.m, ops.n), np.nan, np.float32)
        op_a, op_b = ops.a.T if product.trans_a else ops.a, ops.b.T if product.trans_b else ops.b
        launches = plan.plan_gemm(xp, op_a, op_b, c, alpha=1.0, beta=0.0, bias=ops.bias, tuning=case.tuning)
        gemm = launches[0]
        row.update(chosen=_config_of(gemm.name), splits=gemm.grid[2], kernels=[launch.name for launch in launches],
                   grid=list(gemm.grid), threads=gemm.block[0], shared_bytes=gemm.shared_mem)

        def call() -> None:
            backend.gemm(op_a, op_b, c, alpha=1.0, beta=0.0, bias=ops.bias)

        call()
        row["rel_err"] = relative_error(c, ops.reference)
        if not row["rel_err"] <= TOLERANCE:
            row["status"] = "wrong"
            return row
        row["ms"], row["timed_runs"] = timer(call, max_seconds)
        row["tflops"] = 2.0 * ops.m * ops.n * ops.k / (row["ms"] * 1e-3) / 1e12
        row["status"] = "ok"
    except Exception as e:  # one failing configuration must not end the sweep
        row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def _config_of(kernel_name: str) -> str:
    """The TILE_CONFIGS name of a linear_gemm instantiation."""
    numbers = [int(v) for v in kernel_name.split(",")[4:11]]
    for config in tiles.TILE_CONFIGS:
        if numbers == [config.bm, config.bn, config.bk, config.wm, config.wn, config.tm, config.tn]:
            return config.name
    raise ValueError(f"no tile config matches {kernel_name}")


def time_baseline(xp, product: Product, ops: Operands, timer: Timer, max_seconds: float) -> dict:
    """cupy.matmul (numpy.matmul on the emulator) into float32: its error against float64, and its time."""
    op_a = ops.a.T if product.trans_a else ops.a
    op_b = ops.b.T if product.trans_b else ops.b
    out = xp.full((ops.m, ops.n), np.nan, np.float32)

    def call() -> None:
        xp.matmul(op_a, op_b, out=out)

    call()
    reference = ops.reference - ops.bias.astype(np.float64) if ops.bias is not None else ops.reference
    ms, runs = timer(call, max_seconds)
    return {"ms": ms, "timed_runs": runs, "rel_err": relative_error(out, reference)}


# ----------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------


def measure_copy(xp, nbytes: int, timer: Timer) -> dict:
    """The memory ceiling: a device-to-device copy of nbytes (read + write)."""
    source = xp.ones(nbytes // 4, np.float32)
    target = xp.empty_like(source)
    ms, runs = timer(lambda: xp.copyto(target, source), max_seconds=5.0)
    return {"bytes": nbytes, "ms": ms, "timed_runs": runs, "gb_per_s": 2 * nbytes / (ms * 1e-3) / 1e9}


def kernels_launched(cases: list[Case]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(source, name, compiler options) of every kernel the cases launch on 16-byte aligned operands, from the plan itself
    (on numpy arrays that are never touched, so even the large shapes cost no memory)."""
    found = set()
    for case in cases:
        product = PRODUCTS[case.product]
        m, n, k = product.mnk(case.shape)
        a = np.zeros((k, m) if product.trans_a else (m, k), np.float32)
        b = np.zeros((n, k) if product.trans_b else (k, n), np.float32)
        bias = np.zeros(n, np.float32) if product.bias else None
        launches = plan.plan_gemm(np, a.T if product.trans_a else a, b.T if product.trans_b else b,
                                  np.zeros((m, n), np.float32), alpha=1.0, beta=0.0, bias=bias, tuning=case.tuning)
        found.update((launch.source, launch.name, launch.options) for launch in launches)
    return sorted(found)


def run_sweep(backend_for: Callable[[Tuning], Any], xp, groups: list[list[Case]], timer: Timer, *,
              budget_s: float, out: Path, header: dict, copy_bytes: int, log: Callable[[str], None] = print) -> dict:
    """Runs the groups until the budget is spent; rewrites `out` after every case. Returns the result."""
    start = time.monotonic()
    deadline = start + budget_s
    result = dict(header, ceilings={"copy": measure_copy(xp, copy_bytes, timer)}, baselines=[], rows=[],
                  not_run=[])
    log(f"copy: {result['ceilings']['copy']['gb_per_s']:.1f} GB/s")
    for group in groups:
        first = group[0]
        product = PRODUCTS[first.product]
        if time.monotonic() >= deadline:
            result["not_run"] += [case.as_json() for case in group]
            continue
        ops = make_operands(xp, product, first.shape, seed=len(result["rows"]))
        baseline = time_baseline(xp, product, ops, timer, max_seconds=max(1.0, deadline - time.monotonic()))
        rows = []
        for case in group:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result["not_run"].append(case.as_json())
                continue
            row = run_case(backend_for, case, ops, timer, max_seconds=remaining)
            rows.append(row)
            result["rows"].append(row)
            log(format_row(row, baseline["ms"]))
            _write(out, result)
        again = time_baseline(xp, product, ops, timer, max_seconds=max(1.0, deadline - time.monotonic()))
        baseline_ms = (baseline["ms"] + again["ms"]) / 2
        result["baselines"].append({"product": product.name, "shape": list(first.shape), "ms": baseline_ms,
                                    "ms_start": baseline["ms"], "ms_end": again["ms"],
                                    "rel_err": baseline["rel_err"], "tflops": 2.0 * ops.m * ops.n * ops.k /
                                    (baseline_ms * 1e-3) / 1e12})
        for row in rows:
            if row.get("ms") is not None:
                row["baseline_ms"] = baseline_ms
                row["ratio"] = row["ms"] / baseline_ms  # ours / cuBLAS: below 1 is faster
        del ops
        _write(out, result)
    result["seconds"] = round(time.monotonic() - start, 1)
    _write(out, result)
    return result


def format_row(row: dict, baseline_ms: float) -> str:
    shape = "x".join(map(str, row["shape"]))
    chosen = f"{row.get('chosen', '?'):>11} x{row.get('splits', '?')}"
    what = f"{row['product']:2} {shape:>15} {row['config']:>11} -> {chosen}"
    if row["status"] != "ok":
        return f"{what}  {row['status']} (rel_err {row.get('rel_err', float('nan')):.1e})"
    return (f"{what}  rel_err {row['rel_err']:.1e}  {row['ms']:9.3f} ms  {row['tflops']:6.2f} TFLOP/s  "
            f"{row['ms'] / baseline_ms:5.2f}x baseline")


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(out)


# ----------------------------------------------------------------------------------------------------
# Winners: what the measurements say the plan should choose
# ----------------------------------------------------------------------------------------------------


def shape_class(m: int, n: int, k: int) -> str:
    """The shapes the plan treats alike: its config, and whether it splits K."""
    best = cost.choose(m, n, k)
    return best.config.name + ("+split-K" if best.splits > 1 else "")


def winners(result: dict) -> list[dict]:
    """Per (product, shape class): the heuristic's and the fastest variant's geometric-mean ratio to the
    baseline over the class's shapes. A variant is a config with a split count; only variants that
    passed and were timed on every shape of the class compete."""
    classes: dict[tuple[str, str], dict[tuple[str, str], dict[tuple[int, ...], float]]] = {}
    for row in result["rows"]:
        if row.get("ratio") is None:
            continue
        variant = (HEURISTIC, "") if row["config"] == HEURISTIC else (row["config"], f"x{row['splits']}")
        key = (row["product"], shape_class(row["m"], row["n"], row["k"]))
        classes.setdefault(key, {}).setdefault(variant, {})[tuple(row["shape"])] = row["ratio"]
    found = []
    for (product, klass), variants in sorted(classes.items()):
        shapes = set().union(*variants.values())
        complete = {v: math.exp(sum(map(math.log, r.values())) / len(r))
                    for v, r in variants.items() if set(r) == shapes}
        named = {v: score for v, score in complete.items() if v[0] != HEURISTIC}
        if not named:
            continue
        best = min(named, key=named.get)
        heuristic_rows = [row for row in result["rows"] if row["config"] == HEURISTIC and row["product"] == product
                          and shape_class(row["m"], row["n"], row["k"]) == klass and "chosen" in row]
        found.append({"product": product, "class": klass, "shapes": sorted(map(list, shapes)),
                      "best": best[0], "best_splits": int(best[1][1:]), "best_ratio": named[best],
                      "heuristic": sorted({(r["chosen"], r["splits"]) for r in heuristic_rows}),
                      "heuristic_ratio": complete.get((HEURISTIC, "")),
                      "ranking": [(f"{v[0]} {v[1]}", s) for v, s in sorted(named.items(), key=lambda item: item[1])]})
    return found


def recommend(result: dict) -> str:
    """A readable account of the winners and the change to the plan (tiles.py, cost.py) each one argues for."""
    backend = result.get("backend")
    lines = [f"Sweep of {result.get('date')} on {_card(result)} (backend {backend}); ratio = our time / "
             f"{result.get('baseline')} time, geometric mean over the class's shapes; below 1 is faster."]
    if backend != "cuda":
        lines.append("NOT A GPU MEASUREMENT: the timings are the CPU emulator's; do not tune the plan from them.")
    found = winners(result)
    if not found:
        lines.append("No complete class: nothing was timed on every shape of any class.")
    for w in found:
        heuristic = ", ".join(f"{name} x{splits}" for name, splits in w["heuristic"]) or "not measured"
        h_ratio = f"{w['heuristic_ratio']:.3f}" if w["heuristic_ratio"] is not None else "n/a"
        lines.append(f"{w['product']} where the plan picks {w['class']} (layer shapes B,F,D {w['shapes']}): "
                     f"heuristic [{heuristic}] {h_ratio}; fastest {w['best']} x{w['best_splits']} "
                     f"{w['best_ratio']:.3f}")
        lines.append("    ranking: " + ", ".join(f"{name} {score:.3f}" for name, score in w["ranking"][:6]))
        lines.append("    " + _advice(w))
    by_class: dict[str, set[str]] = {}
    for w in found:
        by_class.setdefault(w["class"], set()).add(w["best"])
    for klass, best in sorted(by_class.items()):
        if len(best) > 1:
            lines.append(f"Class {klass}: the products disagree ({', '.join(sorted(best))}); the heuristic "
                         "would need the transpose flags to follow them all.")
    return "\n".join(lines)


def _advice(w: dict) -> str:
    chosen = {name for name, _ in w["heuristic"]}
    heuristic_splits = {splits for _, splits in w["heuristic"]}
    best = tiles.CONFIGS_BY_NAME[w["best"]]
    advice = []
    if w["best"] in chosen:
        advice.append(f"keep {w['best']} for this class")
    elif best.candidate:
        advice.append(f"promote candidate {best.name}: candidate=False, and put it where the heuristic's "
                      f"{'/'.join(sorted(chosen)) or 'choice'} is in TILE_CONFIGS for these shapes")
    else:
        advice.append(f"the cost model (GemmConfig.efficiency, WARPS_TO_HIDE_LATENCY) picks {'/'.join(sorted(chosen))}, "
                      f"but {best.name} is faster here")
    if w["best_splits"] not in heuristic_splits:
        advice.append(f"split K into {w['best_splits']} (the heuristic uses {sorted(heuristic_splits)}): "
                      "revisit MIN_K_PER_SPLIT / the split-K cost in cost.estimate")
    if w["best_ratio"] > 1.05:
        advice.append(f"no variant is within 5% of the baseline (best {w['best_ratio']:.3f})")
    return "suggest: " + "; ".join(advice)


def _card(result: dict) -> str:
    gpu = (result.get("machine") or {}).get("gpu")
    return gpu["name"] if gpu else "no GPU"


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["cuda", "emulate"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help=f"shapes {TINY_SHAPES}, configs {TINY_CONFIGS}")
    parser.add_argument("--configs", help="comma-separated TILE_CONFIGS names (and 'heuristic'); default: all")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no case after this many seconds")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case on the GPU")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs per case on the GPU")
    parser.add_argument("--jobs", type=int, default=8, help="compiler processes before the sweep (GPU)")
    parser.add_argument("--out", type=Path, help="directory for sweep.json (default bench/out/sweep-<date>)")
    parser.add_argument("--winners", type=Path, metavar="SWEEP_JSON", help="only print the winners of a sweep")
    args = parser.parse_args(argv)
    if args.winners:
        print(recommend(json.loads(args.winners.read_text())))
        return 0

    if args.backend == "emulate" and not args.tiny:
        parser.error("the emulator runs only the --tiny shapes (a 4096³ GEMM would take hours on the CPU)")
    os.environ["CUPY_TF32"] = "0"  # cuBLAS in true float32, as our kernels compute (read when CuPy loads)
    from linear.backends import BackendUnavailable, get_backend
    try:
        runtime = get_backend(args.backend).runtime
    except BackendUnavailable as e:
        print(f"sweep: the {args.backend} backend is unavailable: {e}", file=sys.stderr)
        return 2
    float32_configs = [c.name for c in tiles.TILE_CONFIGS if "float32" in c.dtypes]
    default = [HEURISTIC] + (TINY_CONFIGS if args.tiny else float32_configs)
    configs = args.configs.split(",") if args.configs else default
    unknown = set(configs) - set(float32_configs) - {HEURISTIC}
    if unknown:
        parser.error(f"--configs: unknown or not float32: {sorted(unknown)}; choose from {float32_configs}")
    groups = sweep_cases(TINY_SHAPES if args.tiny else SHAPES, configs,
                         TINY_MIN_K_PER_SLICE if args.tiny else MIN_K_PER_SLICE)
    gpu = args.backend == "cuda"
    stamp = datetime.datetime.now(datetime.timezone.utc)
    out = (args.out or Path("bench/out") / f"sweep-{stamp:%Y-%m-%dT%H%M%S}-{args.backend}") / "sweep.json"
    start = time.monotonic()
    if gpu:
        from .gpu_sanitize import compile_all
        compile_all("cuda", args.jobs, kernels_launched([case for group in groups for case in group]))
        print(f"kernels compiled in {time.monotonic() - start:.0f} s")
    timer = Timer(gpu, args.repeats, args.warmup)
    header = {"date": stamp.isoformat(timespec="seconds"), "command": " ".join([sys.executable, "-m", "bench.sweep",
              *(argv if argv is not None else sys.argv[1:])]), "backend": args.backend, "tiny": args.tiny,
              "dtype": "float32", "tf32": False, "tolerance": TOLERANCE, "budget_s": args.budget_s,
              "baseline": "cupy.matmul (cuBLAS)" if gpu else "numpy.matmul", "timer": timer.description,
              "machine": dict(machine_info(None), cupy_tf32=os.environ["CUPY_TF32"]), "configs": {c.name: asdict(c) for c in tiles.TILE_CONFIGS},
              "num_sms_assumed": H100.sms}
    result = run_sweep(lambda tuning: KernelBackend(runtime, tuning), runtime.xp, groups, timer,
                       budget_s=max(0.0, args.budget_s - (time.monotonic() - start)), out=out, header=header,
                       copy_bytes=COPY_BYTES if gpu else TINY_COPY_BYTES)
    wrong = [row for row in result["rows"] if row["status"] != "ok"]
    print(f"\n{len(result['rows'])} cases run, {len(wrong)} not ok, {len(result['not_run'])} not run "
          f"(budget); {out}\n")
    print(recommend(result))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
