"""bench/gpu_session.sh on the CPU with stand-in phases: one deadline, SIGINT before SIGKILL, a refused
tool recorded, every result that was written kept in the archive, and the script done in time."""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PHASES = r'''
PHASES=(preflight:5 early:5 memcheck:5 hang:3 stubborn:100 late:5)
phase_preflight() { echo "stand-in preflight"; }
phase_early() { echo 42 >"$R/early.txt"; }
phase_hang() {   # writes what it has when SIGINT comes at its limit
    "$PY" -c 'import os, time
try:
    time.sleep(60)
except KeyboardInterrupt:
    open(os.path.join(os.environ["R"], "partial.txt"), "w").write("saved on SIGINT")
    raise SystemExit(130)'
}
phase_stubborn() { trap "" INT; sleep 200; }   # ignores SIGINT: SIGKILL after the grace, at the deadline
phase_late() { echo never >"$R/late.txt"; }
'''


def run_session(tmp_path: Path, phases: str, deadline: int, *args: str, pythonpath: str | None = None):
    (tmp_path / "phases.sh").write_text(phases)
    bin_dir = tmp_path / "bin"   # a compute-sanitizer that refuses the device, as on some GPU hosts
    bin_dir.mkdir()
    (bin_dir / "compute-sanitizer").write_text("#!/bin/sh\necho '========= Error: Device not supported'\nexit 1\n")
    (bin_dir / "compute-sanitizer").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": sys.executable, "DEADLINE_S": str(deadline),
           "MARGIN_S": "3", "GRACE_S": "1", "MIN_S": "1", "GPU_SESSION_PHASES": str(tmp_path / "phases.sh")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.monotonic()
    proc = subprocess.run([str(ROOT / "bench" / "gpu_session.sh"), str(tmp_path / "out"), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def steps(summary: str) -> dict[str, str]:
    names = ("preflight", "early", "memcheck", "hang", "stubborn", "late")
    return {line.split()[0]: line for line in summary.splitlines() if line.split() and line.split()[0] in names}


def test_a_phase_past_the_deadline_loses_nothing_and_the_session_ends_in_time(tmp_path):
    proc, seconds = run_session(tmp_path, PHASES, 12, "--archive-only")
    assert seconds < 12 + 2, proc.stdout + proc.stderr   # the margin covers the grace and the packing
    assert proc.returncode == 1, proc.stdout + proc.stderr   # not every phase ran
    out = tmp_path / "out"
    (archive,) = out.glob("*.tar.gz")
    assert sorted(p.name for p in out.iterdir()) == [archive.name, "summary.txt"]   # --archive-only
    with tarfile.open(archive) as tar:
        files = {Path(name).name: name for name in tar.getnames()}
        assert tar.extractfile(files["early.txt"]).read() == b"42\n"
        assert tar.extractfile(files["partial.txt"]).read() == b"saved on SIGINT"
        assert {"steps.tsv", "summary.txt", "hang.log", "memcheck.log"} <= set(files)
    summary = (out / "summary.txt").read_text()
    rows = steps(summary)
    assert rows["early"].split()[1] == "ok"
    assert rows["memcheck"].split()[1] == "refused" and "Device not supported" in rows["memcheck"]
    assert rows["hang"].split()[1:3] == ["timeout", "124"] and rows["stubborn"].split()[1] == "timeout"
    assert "not run" in rows["late"] and "no time left" in rows["late"]
    assert "partial.txt" in summary and "early.txt" in summary


def test_a_failed_preflight_stops_the_session_with_one_line(tmp_path):
    phases = PHASES.replace('phase_preflight() { echo "stand-in preflight"; }',
                            'phase_preflight() { echo "preflight: STOP: kernels cannot compile"; exit 3; }')
    proc, _ = run_session(tmp_path, phases, 30)
    assert proc.returncode == 1
    assert "gpu_session: STOP: preflight: STOP: kernels cannot compile" in proc.stdout
    rows = steps((tmp_path / "out" / "summary.txt").read_text())
    assert rows["preflight"].split()[1] == "failed"
    assert all("not run" in rows[name] for name in ("early", "memcheck", "hang", "late"))


def test_the_real_preflight_stops_with_one_line_when_a_test_dependency_is_missing(tmp_path):
    """bench/gpu_session.sh's own phase_preflight (not a stand-in), with hypothesis missing: one line
    naming it, before gpu_check.py runs, and no later phase."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "hypothesis.py").write_text("raise ImportError('stand-in: hypothesis is not installed')\n")
    phases = "PHASES=(preflight:20 late:5)\nphase_late() { echo late >\"$R/late.txt\"; }\n"
    proc, _ = run_session(tmp_path, phases, 30, pythonpath=str(stubs))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    stop = [line for line in proc.stdout.splitlines() if line.startswith("gpu_session: STOP")]
    assert stop == ['gpu_session: STOP: preflight: STOP: the tests need hypothesis: pip install .[test]'], proc.stdout
    (folder,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert not (folder / "late.txt").exists()
    assert "gpu_check" not in (folder / "preflight.log").read_text()


def test_the_nsight_compute_filter_takes_ours_and_cublas_kernels_hopper_ones_included():
    script = (ROOT / "bench" / "gpu_session.sh").read_text()
    (pattern,) = re.findall(r"--kernel-name regex:'([^']+)'", script)
    for name in ("linear_gemm<float, float, false, true, 128, 128, 8, 64, 32, 2>", "nvjet_tst_128x256_64x4_1x2_h_bz_NNT",
                 "sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32_cublas", "cutlass_80_tensorop_s1688gemm"):
        assert re.search(pattern, name), name
    assert not re.search(pattern, "vectorized_elementwise_kernel")  # torch's own kernels stay out


def test_the_sanitizer_phases_turn_cupys_pool_off():
    script = (ROOT / "bench" / "gpu_session.sh").read_text()
    for phase in ("memcheck", "racecheck"):
        (line,) = [line for line in script.splitlines() if line.startswith(f"phase_{phase}()")]
        assert "compute-sanitizer" in line and "bench/gpu_sanitize.py" in line and "--no-pool" in line, line
