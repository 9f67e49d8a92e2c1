"""`python -m bench`: the command line. See `python -m bench --help` and bench/README.md."""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import signal
import sys
from pathlib import Path

from .cases import DTYPES, OPS, PRESETS, parse_shape
from .contenders import Unavailable, all_contenders
from .machine import PEAK_TFLOPS, describe_load, load_check, machine_info, machine_label
from .timers import stop_requested

EXIT_OK, EXIT_WRONG, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Benchmark linear's forward and backward passes against cuBLAS (through CuPy), torch and numpy.

Every case is checked first (relative error against a float64 reference), then timed: on the GPU
with CUDA events (cupyx.profiler.benchmark), on the CPU with the wall clock. The contenders of a case
are timed interleaved (A B A B ...), so that other work on the machine hits them alike; min, median
and spread are reported, and the ratio to the baseline is taken repeat by repeat and flagged where
its spread is too wide to mean anything. BLAS and OpenMP run on --threads threads (default 1).
It checks how busy the machine is before it starts, and says so first.
Without a GPU it benchmarks the CPU backends and says which GPU backends it skipped and why.
Writes a table to the terminal and results.json, results.md and results.png to --out."""

EPILOG = """\
presets (shapes, dtypes, timed repeats GPU/CPU, time budget per case GPU/CPU):
  --quick    squares 256..8192 (powers of 2) + training shapes; float32; 20/10 repeats; 10 s/2 s
             (about a minute on a 2-core CPU)
  (default)  squares 256..8192 (10 sizes) + training shapes; float32; 100/20 repeats; 30 s/10 s
  --full     squares 256..8192 every 256 + more training shapes; all dtypes; 200/30 repeats; 60 s/60 s
training shapes (B,F,D): 32,784,256  256,1024,1024  4096,4096,4096  8192,4096,11008
  (--full adds 2048,768,3072  2048,3072,768  8192,11008,4096)

operations: forward, dx, dw (with db), step (all three, gradients accumulated); backends: see --backends
and bench/README.md, which says what each computes.
exit status: 0 the run finished (skipped or unsupported cases included); 1 some case gave a wrong
  result or failed; 2 bad arguments or a requested backend is not available here; 130 interrupted
  (Ctrl-C or SIGTERM; the run stops after the call in flight, a second signal stops it at once): the
  cases done so far are still written (results.json is rewritten after every case group anyway)."""


def _split(values: list[str] | None) -> list[str]:
    """Repeatable, comma-separated option values, flattened and de-duplicated in order."""
    return list(dict.fromkeys(v.strip() for value in values or [] for v in value.split(",") if v.strip()))


def build_parser() -> argparse.ArgumentParser:
    names = [c.name for c in all_contenders()]
    prog = "linear-bench" if Path(sys.argv[0]).name == "linear-bench" else "python -m bench"
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the quick preset (about a minute)")
    preset.add_argument("--full", action="store_true", help="the full preset (long: all dtypes, many sizes)")
    parser.add_argument("--shape", action="append", metavar="B,F,D",
                        help="a layer shape X (B×F) · W (F×D); repeatable. With --quick or --full it is "
                             "added to the preset's shapes; without, only the given shapes run")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help=f"dtype(s), comma-separated or repeated: {', '.join(DTYPES)} "
                             "(default: the preset's; bfloat16 needs ml_dtypes)")
    parser.add_argument("--backends", action="append", metavar="NAMES",
                        help=f"backends to run, comma-separated: {', '.join(names)}. Default: every one "
                             "available here except linear-emulate. A named backend that is not available "
                             "is an error (exit 2)")
    parser.add_argument("--ops", action="append", metavar="OPS",
                        help=f"operations, comma-separated: {', '.join(OPS)} (default: all)")
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="timed repeats per case (default: the preset's, per device); the median is reported")
    parser.add_argument("--warmup", type=int, metavar="N",
                        help="untimed calls before the timed ones (default: the preset's, per device)")
    parser.add_argument("--max-seconds", type=float, metavar="S",
                        help="time budget of one case on either device: repeats stop when it is used up, and "
                             "a case predicted (from smaller shapes) to exceed it is skipped; 0 = no limit "
                             "(default: the preset's)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="BLAS and OpenMP threads (threadpoolctl; torch's too), the same for every CPU "
                             "contender; 0 = the libraries' defaults (default: 1, the fairest side by side "
                             "on a shared machine)")
    parser.add_argument("--max-spread", type=float, default=0.1, metavar="F",
                        help="a ratio whose interquartile range over the repeats exceeds this fraction of it is "
                             "flagged as untrusted (default: 0.1)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where results.json/.md/.png go (default: bench/out/<date>-<machine> in a "
                             "checkout, else ./linear-bench-out/<date>-<machine>)")
    parser.add_argument("--tf32", action="store_true",
                        help="float32 products on TF32 tensor cores for every GPU contender: ours "
                             "(linear.set_tf32), cuBLAS (CUPY_TF32=1) and torch (allow_tf32); tolerance 1e-3")
    parser.add_argument("--no-plot", action="store_true", help="do not draw results.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    return parser


def _parse(argv: list[str] | None):
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    try:
        user_shapes = [parse_shape(text) for text in args.shape or []]
    except ValueError as e:
        parser.error(f"--shape: {e}")
    args.shapes = (preset.shapes if args.quick or args.full or not user_shapes else []) + user_shapes
    args.dtypes = _split(args.dtype) or preset.dtypes
    args.ops = _split(args.ops) or list(OPS)
    args.backend_names = _split(args.backends)
    for option, chosen, allowed in (("--dtype", args.dtypes, DTYPES), ("--ops", args.ops, OPS),
                                    ("--backends", args.backend_names, [c.name for c in all_contenders()])):
        unknown = [name for name in chosen if name not in allowed]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    for option, value in (("--repeats", args.repeats), ("--warmup", args.warmup)):
        if value is not None and value < (1 if option == "--repeats" else 0):
            parser.error(f"{option} must be {'positive' if option == '--repeats' else 'non-negative'}; got {value}")
    for option, value in (("--max-seconds", args.max_seconds), ("--threads", args.threads),
                          ("--max-spread", args.max_spread)):
        if value is not None and value < 0:
            parser.error(f"{option} must be non-negative; got {value}")
    if "bfloat16" in args.dtypes:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            parser.error("--dtype bfloat16 needs ml_dtypes (pip install ml_dtypes)")
    args.preset = preset
    return args


def _select_backends(names: list[str]) -> tuple[list, dict[str, str]] | str:
    """(the contenders that run, {skipped name: why}); or the error line when a named one cannot run."""
    ran, skipped = [], {}
    for contender in all_contenders():
        named = contender.name in names
        if names and not named:
            continue
        if contender.explicit_only and not named:
            skipped[contender.name] = f"not a performance backend; only with --backends {contender.name}"
            continue
        try:
            contender.load()
        except Unavailable as e:
            if named:
                return f"bench: backend {contender.name!r} is not available here: {e}"
            skipped[contender.name] = str(e)
            continue
        ran.append(contender)
    return ran, skipped


def _notes(ran: list, settings, machine: dict, threads: dict, tf32_note: str) -> list[str]:
    """What a reader of the results must know: how cases were checked and timed, and caveats."""
    devices = [d for d in ("gpu", "cpu") if any(c.device == d for c in ran)]
    clocks = {"gpu": "CUDA events, cupyx.profiler.benchmark", "cpu": "wall clock"}
    notes = [c.note for c in ran if c.note]
    if "gpu" in devices:
        notes.append(tf32_note)
    notes += [
        "correctness: each case runs once on fresh random inputs (uniform in [-1, 1), outputs pre-filled with "
        "NaN) and is compared with float64 on up to 256 random rows per output (all rows when fewer); every "
        "element must be finite. Cases over the tolerance are marked WRONG and not timed",
        "timing: the contenders of a case interleaved, one call each per round; "
        + "; ".join(f"up to {settings.repeats[d]} rounds after {settings.warmup[d]} warm-up call(s) on the "
                    f"{d.upper()} ({clocks[d]})" for d in devices)
        + "; repeats rotate through copies of the inputs that overflow the last-level cache twice",
        f"vs base: the median of the ratios taken round by round; untrusted (marked ?) below 3 rounds or "
        f"when their interquartile range exceeds {settings.max_spread:.0%} of the ratio",
        "time budget per case (--max-seconds): "
        + ", ".join(f"{d.upper()} {settings.max_seconds[d]:g} s" for d in devices),
    ]
    if "cpu" in devices:
        notes.append(f"CPU threads: {threads['requested']} per BLAS/OpenMP pool" if threads["pinned"] else
                     threads.get("why", "CPU threads: the libraries' defaults (--threads 0)"))
        if machine["load_before"]["busy"]:
            notes.append("the machine was " + describe_load(machine["load_before"])
                         + " when the run started: CPU timings are noisy; trust only the ratios not marked ?")
    if "gpu" in devices and machine["gpu"] and not settings.peaks:
        notes.append(f"% peak: left blank, the peak of a {machine['gpu']['name']} is not in bench/machine.py")
    return notes


def _default_out(label: str) -> Path:
    """bench/out/<label> in a checkout (bench/ beside pyproject.toml), else ./linear-bench-out/<label>."""
    here = Path(__file__).resolve().parent
    if (here.parent / "pyproject.toml").exists():
        return here / "out" / label
    return Path.cwd() / "linear-bench-out" / label


def _stop(signum, frame):
    """The first Ctrl-C or SIGTERM ends the run after the call in flight, a second one at once.

    A flag, not an exception raised wherever the signal lands: an exception that passes through code
    run by exec() of a string (dataclasses, lazy imports) makes CPython end a `python -m` run by SIGINT
    whatever exit status it returns."""
    if stop_requested.is_set():
        raise KeyboardInterrupt
    stop_requested.set()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGINT, _stop)   # even where the parent ignored SIGINT
    signal.signal(signal.SIGTERM, _stop)
    load_before = load_check()
    print("load check: " + describe_load(load_before), flush=True)
    # CuPy reads CUPY_TF32 when it is imported: every contender runs float32 the same way, on plain FP32
    # units or (--tf32) on TF32 tensor cores.
    import linear
    linear.set_tf32(args.tf32)
    os.environ["CUPY_TF32"] = "1" if args.tf32 else "0"
    tf32_note = (f"float32 GEMMs {'with' if args.tf32 else 'without'} TF32: linear.set_tf32({args.tf32}), "
                 f"CUPY_TF32={os.environ['CUPY_TF32']}, torch.backends.cuda.matmul.allow_tf32={args.tf32}"
                 if "cupy" not in sys.modules else
                 "WARNING: CuPy was imported before bench could set CUPY_TF32; cublas float32 may differ")

    from .report import skipped_summary, terminal_table, write_all, write_json
    from .runner import Progress, Settings, run_cases
    from .timers import pin_threads

    selected = _select_backends(args.backend_names)
    if isinstance(selected, str):
        print(selected, file=sys.stderr)
        return EXIT_USAGE
    ran, skipped = selected
    print("backends: running " + ", ".join(c.name for c in ran))
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    threads = pin_threads(args.threads)   # after the contenders loaded their libraries (and thread pools)

    torch_version = next((c.kind.torch.__version__ for c in ran if hasattr(c.kind, "torch")), None)
    machine = machine_info(torch_version)
    machine["load_before"] = load_before
    machine["threads"] = threads
    label = f"{datetime.date.today().isoformat()}-{machine_label(machine)}"
    preset = args.preset
    settings = Settings(
        shapes=args.shapes, dtypes=args.dtypes, ops=args.ops, contenders=ran,
        repeats={"gpu": args.repeats or preset.gpu_repeats, "cpu": args.repeats or preset.cpu_repeats},
        warmup={"gpu": preset.gpu_warmup if args.warmup is None else args.warmup,
                "cpu": preset.cpu_warmup if args.warmup is None else args.warmup},
        max_seconds=(preset.max_seconds if args.max_seconds is None
                     else {"gpu": args.max_seconds, "cpu": args.max_seconds}),
        seed=args.seed, max_spread=args.max_spread,
        peaks=PEAK_TFLOPS.get(machine["gpu"]["peak_model"]) if machine["gpu"] else None)
    notes = _notes(ran, settings, machine, threads, tf32_note)
    out_dir = args.out or _default_out(label)
    run = {
        "label": label,
        "command": shlex.join([build_parser().prog] + (sys.argv[1:] if argv is None else list(argv))),
        "preset": preset.name,
        "machine": machine,
        "settings": {"repeats": settings.repeats, "warmup": settings.warmup, "max_seconds": settings.max_seconds,
                     "seed": settings.seed, "dtypes": settings.dtypes, "ops": settings.ops,
                     "threads": args.threads, "max_spread": settings.max_spread},
        "backends": {"ran": [c.name for c in ran], "skipped": skipped},
        "notes": notes,
        "partial": True,
    }

    total = len(set(settings.shapes)) * len(settings.dtypes) * len(settings.ops) * len(ran)
    results, interrupted = run_cases(settings, Progress(total), lambda done: write_json(done, run, out_dir))
    machine["load_after"] = load_check()
    run["partial"] = interrupted
    if interrupted:
        notes.append(f"INTERRUPTED after {len(results)} of {total} cases: the results are partial")

    print()
    print(terminal_table(results))
    skipped_cases = skipped_summary(results)
    if skipped_cases:
        print("\ncases not run:")
        for line in skipped_cases:
            print("  " + line)
    print("\nnotes:")
    for note in notes:
        print("  " + note)
    print("load after the run: " + describe_load(machine["load_after"]))

    written = write_all(results, run, out_dir, make_plot=not args.no_plot)
    if not args.no_plot and "plot" not in written:
        print("\nno plot: matplotlib is not installed (pip install 'linear[bench]')")
    print("\nwrote " + ", ".join(str(path) for path in written.values()))

    if interrupted:
        print("bench: interrupted; partial results written", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [r for r in results if r.status in ("wrong", "error")]
    if failed:
        print(f"bench: {len(failed)} case(s) gave a wrong result or failed (see the note column)", file=sys.stderr)
        return EXIT_WRONG
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
