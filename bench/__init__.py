"""`python -m bench`: linear's kernels against cuBLAS, torch and the CPU, checked and timed.

    cases.py       operations, shape presets, dtypes, tolerances
    contenders.py  the implementations compared (ours, cuBLAS via CuPy, torch, numpy) and their arrays
    timers.py      GPU timing (CUDA events through cupyx.profiler.benchmark) and CPU timing
    machine.py     what the run ran on, and the peak throughput of the cards we know
    runner.py      correctness first, then timing, for every case
    report.py      terminal table, JSON, markdown, PNG plot
    overhead.py    python -m bench.overhead: the API's cost per call next to raw numpy, on a small layer
    activation.py  python -m bench.activation: a Linear+activation training step fused against unfused
                   (bytes counted, times measured)

See bench/README.md for how to run it and what every column means.
"""
