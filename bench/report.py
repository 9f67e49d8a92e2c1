"""The results as a terminal table, JSON, a markdown page and a PNG plot."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .cases import OPS
from .runner import Result

COLUMNS = ("op", "B×F×D", "dtype", "backend", "min ms", "median ms", "spread", "TFLOP/s", "vs base", "% peak",
           "rel_err", "n", "note")
NUMERIC = {"min ms", "median ms", "spread", "TFLOP/s", "vs base", "% peak", "rel_err", "n"}


def _ratio(r: Result) -> str:
    """'1.02x numpy'; an untrusted ratio shows its interquartile range and a question mark instead."""
    if r.ratio is None:
        return ""
    if r.backend == r.ratio_to:
        return "base"
    if not r.ratio_doubt:
        return f"{r.ratio:.2f}x {r.ratio_to}"
    if r.ratio_high > r.ratio_low:
        return f"{r.ratio_low:.2f}-{r.ratio_high:.2f}x? {r.ratio_to}"
    return f"{r.ratio:.2f}x? {r.ratio_to}"


def _row(r: Result) -> list[str]:
    ok = r.status == "ok"
    note = f"{r.status.upper()}: {r.reason}" if not ok else f"ratio untrusted: {r.ratio_doubt}" if r.ratio_doubt else ""
    return [
        r.op, str(r.shape), r.dtype, r.backend,
        f"{r.min_ms:.4g}" if ok else "",
        f"{r.median_ms:.4g}" if ok else "",
        f"{100 * r.spread:.0f}%" if ok and r.spread is not None else "",
        f"{r.tflops:.3g}" if ok else "",
        _ratio(r),
        f"{100 * r.peak_fraction:.1f}" if r.peak_fraction is not None else "",
        f"{r.rel_err:.1e}" if r.rel_err is not None else "",
        str(len(r.times_ms)) if ok else "",
        note,
    ]


def shown(results: list[Result]) -> list[Result]:
    """The cases that go in the tables: all but the skipped ones (summarised separately)."""
    order = {name: i for i, name in enumerate(OPS)}
    kept = [r for r in results if r.status != "skipped"]
    return sorted(kept, key=lambda r: (order[r.op], r.shape.volume, str(r.shape), r.dtype))


def skipped_summary(results: list[Result]) -> list[str]:
    """One line per (reason, backend): the cases, each shape (and dtype) with its ops."""
    several_dtypes = len({r.dtype for r in results}) > 1
    groups: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.status == "skipped":
            case = f"{r.shape} {r.dtype}" if several_dtypes else str(r.shape)
            groups[(r.skip_group, r.backend)][case].append(r.op)
    lines = []
    for (group, backend), cases in groups.items():
        listed = ", ".join(f"{case} ({' '.join(ops)})" for case, ops in cases.items())
        lines.append(f"{backend}: {listed} — {group}")
    return lines


def terminal_table(results: list[Result]) -> str:
    rows = [_row(r) for r in shown(results)]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(COLUMNS)]
    widths[-1] = len(COLUMNS[-1])   # the note is last; let it run on

    def line(cells):
        return "  ".join(c.rjust(w) if name in NUMERIC else c.ljust(w)
                         for c, w, name in zip(cells, widths, COLUMNS)).rstrip()

    out = [line(COLUMNS), line(["-" * w for w in widths])]
    previous_op = None
    for r, row in zip(shown(results), rows):
        if previous_op is not None and r.op != previous_op:
            out.append("")
        previous_op = r.op
        out.append(line(row))
    return "\n".join(out)


def markdown_table(results: list[Result]) -> str:
    header = "| " + " | ".join(COLUMNS) + " |"
    align = "|" + "|".join("---:" if c in NUMERIC else "---" for c in COLUMNS) + "|"
    body = ["| " + " | ".join(cell.replace("|", "\\|") for cell in _row(r)) + " |" for r in shown(results)]
    return "\n".join([header, align] + body)


def _json_number(x: float | None):
    return None if x is None or not math.isfinite(x) else x


def to_json(results: list[Result], run: dict) -> dict:
    cases = []
    for r in results:
        cases.append({
            "op": r.op, "formula": OPS[r.op].formula,
            "shape": {"B": r.shape.b, "F": r.shape.f, "D": r.shape.d},
            "dtype": r.dtype, "backend": r.backend, "device": r.device,
            "status": r.status, "reason": r.reason,
            "flops": r.flops,
            "median_ms": r.median_ms,
            "min_ms": r.min_ms,
            "max_ms": max(r.times_ms) if r.times_ms else None,
            "spread": r.spread,
            "times_ms": r.times_ms,
            "repeats_timed": len(r.times_ms),
            "input_sets": r.input_sets,
            "tflops": r.tflops,
            "ratio": r.ratio, "ratio_to": r.ratio_to, "ratio_iqr": [r.ratio_low, r.ratio_high],
            "ratio_trusted": r.ratio is not None and not r.ratio_doubt, "ratio_doubt": r.ratio_doubt,
            "peak_fraction": r.peak_fraction,
            # rel_err is inf when an output held NaN or inf; JSON has no inf, so the flag says it.
            "rel_err": _json_number(r.rel_err),
            "rel_err_not_finite": r.rel_err is not None and not math.isfinite(r.rel_err),
            "tolerance": r.tolerance,
            "rows_checked": r.rows_checked,
        })
    return {**run, "cases": cases}


def markdown(results: list[Result], run: dict, plot_name: str | None) -> str:
    machine = run["machine"]
    gpu = machine["gpu"]
    lines = [f"# linear benchmark — {run['label']}", "",
             f"`{run['command']}` on {machine['date']}", "", "## Machine", ""]
    if gpu:
        lines.append(f"- GPU: {gpu['name']} (compute capability {gpu['compute_capability']}, "
                     f"{gpu['multiprocessors']} SMs, {gpu['memory_gib']} GiB), driver {gpu['driver']}, "
                     f"CUDA runtime {gpu['cuda_runtime']}, CuPy {gpu['cupy']}, CUPY_TF32={gpu['cupy_tf32']}")
    lines.append(f"- CPU: {machine['cpu']} ({machine['cpu_count']} logical cores), {machine['platform']}")
    blas = machine["blas"].get("blas", {})
    blas_text = f"{blas.get('name', '?')} {blas.get('version', '')}".strip() if blas else "unknown"
    lines.append(f"- numpy {machine['numpy']} with BLAS {blas_text}, Python {machine['python']}"
                 + (f", torch {machine['torch']}" if machine.get("torch") else ""))
    if machine.get("linear_commit"):
        lines.append(f"- linear at commit {machine['linear_commit']}")
    lines += ["", "## Backends", ""]
    lines.append("- ran: " + (", ".join(run["backends"]["ran"]) or "none"))
    lines += [f"- skipped {name}: {why}" for name, why in run["backends"]["skipped"].items()]
    lines += [f"- {note}" for note in run["notes"]]
    lines += ["", "## Results", "", markdown_table(results), ""]
    skipped = skipped_summary(results)
    if skipped:
        lines += ["Cases not run:", ""] + [f"- {s}" for s in skipped] + [""]
    if plot_name:
        lines += [f"![TFLOP/s against size]({plot_name})", ""]
    lines += ["Columns: see bench/README.md. TFLOP/s counts 2·B·F·D per GEMM (3 GEMMs for step); "
              "`vs base` is the speed relative to the device's baseline (cublas on the GPU, numpy on the CPU), "
              "the median of ratios taken repeat by repeat; `a-b x?` marks an untrusted ratio (too few repeats, "
              "or spread above --max-spread) with its interquartile range; spread = interquartile range / median.",
              ""]
    return "\n".join(lines)


def plot(results: list[Result], path: Path, title: str) -> None:
    """TFLOP/s against size, one panel per operation, one line per backend (and dtype).

    x is the cube root of B·F·D (= N for a square N×N×N). Squares are joined by lines; the other
    (training) shapes are open markers labelled with their B×F×D.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [r for r in results if r.status == "ok"]
    ops = [op for op in OPS if any(r.op == op for r in ok)]
    if not ops:
        ops = [op for op in OPS if any(r.op == op for r in results)][:1] or ["forward"]
    cols = min(2, len(ops))
    rows = math.ceil(len(ops) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    series = sorted({(r.backend, r.dtype) for r in ok})
    multiple_dtypes = len({dtype for _, dtype in series}) > 1
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    backends = sorted({backend for backend, _ in series})
    styles = ["-", "--", ":", "-."]
    dtypes = sorted({dtype for _, dtype in series})
    for ax, op in zip(axes.flat, ops):
        labelled = set()
        for backend, dtype in series:
            points = [r for r in ok if r.op == op and r.backend == backend and r.dtype == dtype]
            color = colors[backends.index(backend) % len(colors)]
            label = f"{backend} {dtype}" if multiple_dtypes else backend
            square = sorted((r.shape.b, r.tflops) for r in points if r.shape.b == r.shape.f == r.shape.d)
            other = [r for r in points if not r.shape.b == r.shape.f == r.shape.d]
            if square:
                ax.plot(*zip(*square), marker="o", markersize=4, color=color, label=label,
                        linestyle=styles[dtypes.index(dtype) % len(styles)])
            for r in other:
                size = r.shape.volume ** (1 / 3)
                ax.plot(size, r.tflops, marker="D", markersize=6, markerfacecolor="none", color=color,
                        linestyle="none", label=None if square or label in labelled else label)
                labelled.add(label)
                if str(r.shape) not in labelled:
                    ax.annotate(str(r.shape), (size, r.tflops), fontsize=7, xytext=(4, 4),
                                textcoords="offset points")
                    labelled.add(str(r.shape))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(f"{op}: {OPS[op].formula}", fontsize=10)
        ax.set_xlabel("size: ∛(B·F·D), = N for N×N×N")
        ax.set_ylabel("TFLOP/s")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ops):]:
        ax.set_visible(False)
    fig.suptitle(title if multiple_dtypes or not dtypes else f"{title} ({dtypes[0]})", fontsize=11)
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, dpi=120, format="png")
    partial.replace(path)
    plt.close(fig)


def write_atomic(path: Path, text: str) -> None:
    """Writes through a temporary file and a rename: a reader, or a run stopped midway, never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def write_json(results: list[Result], run: dict, out_dir: Path) -> Path:
    path = out_dir / "results.json"
    write_atomic(path, json.dumps(to_json(results, run), indent=1) + "\n")
    return path


def write_all(results: list[Result], run: dict, out_dir: Path, make_plot: bool) -> dict[str, Path]:
    """results.json, results.md and (with make_plot) results.png in out_dir; returns what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    plot_name = None
    if make_plot:
        try:
            plot(results, out_dir / "results.png", run["label"])
            plot_name = "results.png"
            written["plot"] = out_dir / plot_name
        except ImportError:
            run["notes"].append("no plot: matplotlib is not installed (pip install 'linear[bench]')")
    written["json"] = write_json(results, run, out_dir)
    written["markdown"] = out_dir / "results.md"
    write_atomic(written["markdown"], markdown(results, run, plot_name))
    return written
