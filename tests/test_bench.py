"""`python -m bench` end to end on tiny shapes: files written, correctness filled in, failures caught.

No timing is asserted. bench/ is not part of the installed package, so it is imported from the
repository root (and run there as `python -m bench`).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--shape", "8,16,4", "--shape", "33,17,5", "--repeats", "3", "--warmup", "1"]


@pytest.fixture
def bench(monkeypatch):
    """The bench package, imported from the repository; CUPY_TF32 restored after the run."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("CUPY_TF32", raising=False)
    import bench.__main__
    return bench


def _cases(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "results.json").read_text())["cases"]


def test_cli_writes_table_json_markdown_and_plot(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench", *TINY, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "backends: running" in proc.stdout and "linear-numpy" in proc.stdout

    data = json.loads((out / "results.json").read_text())
    machine = data["machine"]
    for key in ("date", "cpu", "numpy", "blas", "gpu"):
        assert key in machine
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()

    ran = data["backends"]["ran"]
    assert {"linear-numpy", "numpy"} <= set(ran)
    expected = {(op, shape, backend) for op in ("forward", "dx", "dw", "step")
                for shape in ((8, 16, 4), (33, 17, 5)) for backend in ran}
    seen = {(c["op"], (c["shape"]["B"], c["shape"]["F"], c["shape"]["D"]), c["backend"]) for c in data["cases"]}
    assert seen == expected
    for case in data["cases"]:
        assert case["status"] == "ok", case
        assert case["rel_err"] is not None and math.isfinite(case["rel_err"])
        assert case["rel_err"] <= case["tolerance"] == 1e-5
        assert case["repeats_timed"] >= 1 and case["median_ms"] > 0 and case["tflops"] > 0
        assert case["flops"] == 2 * np.prod(list(case["shape"].values())) * (3 if case["op"] == "step" else 1)
        if case["backend"] == "linear-numpy":
            assert case["ratio_to"] == "numpy" and case["ratio"] > 0
        # the same figures in the markdown table
        assert f"| {case['op']} | {case['shape']['B']}x{case['shape']['F']}x{case['shape']['D']} | float32 " \
               f"| {case['backend']} |" in markdown


def test_requested_backend_missing_is_one_line_and_exit_2(bench, monkeypatch, capsys, tmp_path):
    def unavailable(self):
        raise bench.contenders.Unavailable("torch is not installed (pip install torch)")

    monkeypatch.setattr(bench.contenders.Torch, "_arrays", unavailable)
    code = bench.__main__.main(["--backends", "numpy,torch-cpu", *TINY, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "bench: backend 'torch-cpu' is not available here: torch is not installed (pip install torch)"
    assert not (tmp_path / "results.json").exists()


def test_unavailable_backends_are_listed_as_skipped_with_the_reason(bench, monkeypatch, capsys, tmp_path):
    def unavailable(self):
        raise bench.contenders.Unavailable("no torch here")

    monkeypatch.setattr(bench.contenders.Torch, "_arrays", unavailable)
    assert bench.__main__.main(["--ops", "forward", "--shape", "8,16,4", "--repeats", "1", "--no-plot",
                                "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped torch-cpu: no torch here" in out
    skipped = json.loads((tmp_path / "results.json").read_text())["backends"]["skipped"]
    assert skipped["torch-gpu"] == skipped["torch-cpu"] == "no torch here"
    assert "not a performance backend" in skipped["linear-emulate"]
    assert not (tmp_path / "results.png").exists()


def test_wrong_or_unwritten_results_are_caught_and_fail_the_run(bench, monkeypatch, tmp_path):
    """Negative controls: a contender that forgets the bias, and one that writes nothing."""
    contenders = bench.contenders

    class NoBias(contenders.Raw):
        def prepare(self, op, t, shape):
            prepared = super().prepare(op, t, shape)
            y = prepared.results()["y"]
            return contenders.Prepared(lambda: np.matmul(t["x"], t["w"], out=y), prepared.results)

    class WritesNothing(contenders.Raw):
        def prepare(self, op, t, shape):
            return contenders.Prepared(lambda: None, super().prepare(op, t, shape).results)

    real = contenders.all_contenders
    monkeypatch.setattr(bench.__main__, "all_contenders",
                        lambda: real() + [NoBias("no-bias", "cpu"), WritesNothing("lazy", "cpu")])
    code = bench.__main__.main(["--backends", "numpy,no-bias,lazy", "--ops", "forward", *TINY, "--no-plot",
                                "--out", str(tmp_path)])
    assert code == 1
    by_backend = {}
    for case in _cases(tmp_path):
        by_backend.setdefault(case["backend"], []).append(case)
    assert all(c["status"] == "ok" for c in by_backend["numpy"])
    for case in by_backend["no-bias"]:
        assert case["status"] == "wrong" and case["rel_err"] > 1e-2 and case["median_ms"] is None
    for case in by_backend["lazy"]:
        assert case["status"] == "wrong" and case["rel_err"] is None and case["rel_err_not_finite"]


def test_a_case_predicted_over_the_time_budget_is_skipped_and_said(bench, capsys, tmp_path):
    code = bench.__main__.main(["--backends", "numpy", "--ops", "forward", "--shape", "8,16,4",
                                "--shape", "64,64,64", "--repeats", "1", "--max-seconds", "1e-9",
                                "--no-plot", "--out", str(tmp_path)])
    assert code == 0
    small, large = sorted(_cases(tmp_path), key=lambda c: c["shape"]["B"])
    assert small["status"] == "ok"          # nothing measured yet to predict from: it runs
    assert large["status"] == "skipped" and "--max-seconds" in large["reason"]
    assert "64x64x64" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--shape", "8,16"], ["--shape", "0,16,4"], ["--dtype", "int8"],
                                  ["--ops", "sideways"], ["--backends", "fortran"], ["--repeats", "0"]])
def test_bad_arguments_exit_2_with_a_message(bench, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        bench.__main__.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_card_peaks_and_ratios(bench):
    """The GPU-only arithmetic, on made-up timings: ratio to cuBLAS and fraction of the card's peak."""
    from bench.cases import Shape
    from bench.machine import PEAK_TFLOPS, card_model
    from bench.runner import Result, add_ratios

    assert card_model("NVIDIA H100 80GB HBM3", 132) == "H100 SXM"
    assert card_model("NVIDIA H200", 132) == "H200 SXM"
    for name, sms in (("NVIDIA H100 PCIe", 114), ("NVIDIA H100 NVL", 132), ("NVIDIA H200 NVL", 132),
                      ("NVIDIA A100-SXM4-80GB", 108)):
        assert card_model(name, sms) is None

    shape = Shape(1024, 1024, 1024)     # 2·1024³ flops = 2.147 GFLOP per GEMM
    ours = Result("forward", shape, "float32", "linear-cuda", "gpu", times_ms=[0.04, 0.03, 0.05])
    cublas = Result("forward", shape, "float32", "cublas", "gpu", times_ms=[0.05, 0.0375, 0.0625])
    wrong = Result("forward", shape, "float32", "torch-gpu", "gpu", status="wrong", times_ms=[])
    add_ratios([ours, cublas, wrong], PEAK_TFLOPS["H100 SXM"], max_spread=0.1)
    # round by round: 0.05/0.04 = 0.0375/0.03 = 0.0625/0.05 = 1.25, however much both moved together
    assert ours.ratio == pytest.approx(1.25) and ours.ratio_to == "cublas" and not ours.ratio_doubt
    assert ours.tflops == pytest.approx(2 * 1024**3 / 0.04e-3 / 1e12)   # the median time
    assert ours.min_ms == 0.03 and ours.spread == pytest.approx((0.045 - 0.035) / 0.04)
    assert ours.peak_fraction == pytest.approx(ours.tflops / 66.9)
    assert wrong.ratio is None and wrong.peak_fraction is None


def test_a_ratio_is_flagged_when_its_spread_or_its_repeats_make_it_meaningless(bench):
    from bench.cases import Shape
    from bench.report import terminal_table
    from bench.runner import Result, add_ratios

    shape = Shape(32, 784, 256)
    steady = [Result("dx", shape, "float32", name, "cpu", times_ms=times)
              for name, times in (("linear-numpy", [1.0, 1.0, 1.0, 1.0]), ("numpy", [1.0, 1.1, 1.0, 1.1]))]
    noisy = [Result("forward", shape, "float32", name, "cpu", times_ms=times)   # a busy machine: 66 ms once
             for name, times in (("linear-numpy", [0.11, 66.0, 0.11, 8.0]), ("numpy", [0.1, 0.1, 16.0, 0.1]))]
    few = [Result("dw", shape, "float32", name, "cpu", times_ms=[1.0, 1.0]) for name in ("linear-numpy", "numpy")]
    add_ratios(steady + noisy + few, None, max_spread=0.1)
    assert steady[0].ratio == pytest.approx(1.05) and not steady[0].ratio_doubt
    assert "ratio spread" in noisy[0].ratio_doubt and "2 paired" in few[0].ratio_doubt
    table = terminal_table(steady + noisy + few)
    row = {line.split()[0]: line for line in table.splitlines() if "linear-numpy" in line}
    assert "1.05x numpy" in row["dx"] and "?" not in row["dx"]
    assert "x? numpy" in row["forward"] and "ratio untrusted" in row["forward"]
    assert "1.00x? numpy" in row["dw"]


def test_contenders_are_timed_interleaved_until_their_repeats_or_budget(bench):
    from bench.timers import Entry, time_interleaved

    calls = []

    def clock(name):
        def measure(call):
            call()
            return {"a": 1.0, "b": 400.0}[name]
        return measure

    a = Entry([lambda: calls.append("a")], clock("a"), repeats=4, warmup=1, max_seconds=10)
    b = Entry([lambda: calls.append("b")], clock("b"), repeats=4, warmup=1, max_seconds=1)  # 1 s = 2.5 calls
    time_interleaved([a, b])
    assert calls == ["a", "b"] + ["a", "b"] * 3 + ["a"]   # warm-up, three rounds, then a alone
    assert a.times_ms == [1.0] * 4 and b.times_ms == [400.0] * 3


def test_a_stop_signal_ends_the_run_between_calls_and_a_second_one_at_once():
    from bench.__main__ import _stop
    from bench.timers import Entry, Interrupted, stop_requested, time_interleaved

    calls = []
    entry = Entry([lambda: calls.append(1)], lambda call: call() or 1.0, repeats=5, warmup=0, max_seconds=10)
    try:
        _stop(None, None)   # a flag, not an exception raised inside whatever code the signal lands in
        with pytest.raises(Interrupted):
            time_interleaved([entry])
        assert calls == []
        with pytest.raises(KeyboardInterrupt):
            _stop(None, None)
    finally:
        stop_requested.clear()


def test_sigterm_writes_what_was_measured_and_exits_130(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "run"
    shapes = [arg for n in range(8, 200, 4) for arg in ("--shape", f"{n},{n},{n}")]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *shapes, "--repeats", "50", "--no-plot",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "results.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)   # the first checkpoint: one (shape, op) group is done
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert stdout.splitlines()[0].startswith("load check: ")
    data = json.loads((out / "results.json").read_text())
    assert data["partial"] is True and data["machine"]["threads"]["requested"] == 1
    assert any(case["status"] == "ok" for case in data["cases"])
    assert "INTERRUPTED" in (out / "results.md").read_text()
    assert not list(out.glob("*.partial")), os.listdir(out)


def test_installed_benchmark_runs_outside_the_repository(tmp_path):
    """After pip install, `python -m linear.bench` (the linear-bench command) runs from any directory."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("linear.bench")
    if spec is None:   # linear imported from the source tree
        pytest.skip("linear is not pip-installed here")
    if (Path(spec.origin).parent.parent / "pyproject.toml").exists():   # pip install -e: the checkout's bench/
        pytest.skip("linear is installed editable: the benchmark writes into the checkout's bench/out")
    scripts = importlib.metadata.distribution("linear").entry_points.select(group="console_scripts")
    assert {ep.name: ep.value for ep in scripts}["linear-bench"] == "linear.bench.__main__:main"
    proc = subprocess.run([sys.executable, "-m", "linear.bench", "--shape", "8,16,4", "--ops", "forward",
                           "--repeats", "3", "--no-plot"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(tmp_path.glob("linear-bench-out/*/results.json"))) == 1


def test_the_activation_case_runs_on_a_kernel_backend_and_writes_its_json(bench, tmp_path, capsys):
    """bench.activation on emulate: the code path the GPU session runs on cuda (backend arrays, timers, --json)."""
    from bench.activation import main, step_bytes
    out = tmp_path / "activation.json"
    main(["--backend", "emulate", "--shape", "16,24,8", "--repeats", "1", "--activation", "relu",
          "--activation", "gelu", "--json", str(out)])
    result = json.loads(out.read_text())
    assert not list(tmp_path.glob("*.partial"))
    assert (result["backend"], result["dtype"], result["clock"]) == ("emulate", "float32", "wall")
    assert [row["activation"] for row in result["results"]] == ["relu", "gelu"]
    for row in result["results"]:
        assert row["shape"] == [16, 24, 8]
        assert row["mb_unfused"] == step_bytes(16, 24, 8, 4, row["activation"], False) / 1e6
        assert row["mb_fused"] == step_bytes(16, 24, 8, 4, row["activation"], True) / 1e6
        assert row["ms_unfused"] > 0 and row["ms_fused"] > 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and "gelu" in printed[2]


def test_the_activation_case_refuses_to_time_steps_that_disagree(bench, monkeypatch):
    """Negative control: a fused step whose Y is off is caught before anything is timed."""
    import bench.activation as activation
    from bench.cases import Shape
    fused = activation.fused_step
    monkeypatch.setattr(activation, "fused_step", lambda x, *rest: (fused(x, *rest)[0] * 1.1, *fused(x, *rest)[1:]))
    with pytest.raises(AssertionError, match="fused and unfused steps differ"):
        activation.measure(Shape(16, 24, 8), "float32", "gelu", "numpy", repeats=1)
