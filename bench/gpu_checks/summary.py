"""The readable summary of a session folder: what ran and how it ended, the key figures, where each file is."""
from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def summary(outdir: Path) -> int:
    """Prints what a person reads first: what ran and how it ended, the key figures, and where each file is."""
    steps = [line.split("\t") for line in (outdir / "steps.tsv").read_text().splitlines()[1:]] \
        if (outdir / "steps.tsv").exists() else []
    pre = _read_json(outdir / "preflight.json") or {}
    gpu = pre.get("gpu") or {}
    out = [f"linear GPU session {outdir.name} at commit {_git('rev-parse', '--short', 'HEAD')}"
           + (" (uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else "")]
    if gpu:
        out.append(f"GPU {gpu['name']} (cc {gpu['compute_capability']}, {gpu['multiprocessors']} SMs), driver "
                   f"{gpu['driver']}, CUDA runtime {gpu['cuda_runtime']}, CuPy {gpu['cupy']}, numpy {pre.get('numpy')}, "
                   f"torch {pre.get('torch')}; NVRTC headers {pre.get('nvrtc_include_dirs')}")
    if pre.get("stop"):
        out.append(f"STOPPED EARLY: {pre['stop']}")
    out += ["", f"{'phase':<13} {'status':<9} {'exit':>4} {'s':>4} {'limit':>5}  log / why"]
    out += [f"{name:<13} {status:<9} {code:>4} {secs:>4} {limit:>5}  {why}" for name, status, code, secs, limit, why in steps]
    junit = outdir / "pytest.xml"
    if junit.exists():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        out.append("\ntests (pytest.xml): " + ", ".join(f"{suite.get(k)} {k}" for k in ("tests", "failures", "errors", "skipped")))
    det = _read_json(outdir / "determinism.json")
    if det:
        out.append(f"determinism (determinism.json): {'bitwise identical' if det['ok'] else 'DIFFERS'} over "
                   f"{det['runs']} runs: {det['identical']}")
    bench = _read_json(outdir / "bench" / "results.json")
    if bench:
        out.append(f"\nbenchmark (bench/results.md){' PARTIAL' if bench.get('partial') else ''}: ours / cublas, "
                   "speed ratio >1 is faster; ? = untrusted (interquartile range shown)")
        for c in bench["cases"]:
            if c["backend"] == "linear-cuda" and c["ratio"] is not None:
                shape = "x".join(str(v) for v in c["shape"].values())
                low, high = c["ratio_iqr"]
                mark = "" if c["ratio_trusted"] else f"?  ({low:.2f}-{high:.2f})"
                out.append(f"  {c['op']:<8} {shape:>16} {c['dtype']:<9} {c['median_ms']:9.3f} ms  {c['ratio']:.2f}x{mark}")
    sweep = _read_json(outdir / "sweep" / "sweep.json")
    if sweep:
        from bench.sweep import recommend
        out += ["", "sweep (sweep/sweep.json):", recommend(sweep)]
    for kernel in _read_json(outdir / "counters.json") or []:
        out.append("" if kernel is None else "counters: " + json.dumps(kernel))
    out += ["", f"files (in {outdir.name}/):"]
    out += [f"  {path.relative_to(outdir)}  {path.stat().st_size} B" for path in sorted(outdir.rglob("*")) if path.is_file()]
    print("\n".join(out))
    return 0


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
