"""The training example (examples/mlp.py) learns its task, and README.md carries it verbatim."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from conftest import load_example, require
from linear.backends import available_backends

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mlp.py"


def test_example_reaches_95_percent_accuracy():
    assert load_example("mlp.py").train(backend="numpy", seed=0, verbose=False) >= 0.95


def test_untrained_network_is_near_chance():
    """Negative control: the task is not solved by the initial weights (3 classes: chance is 1/3)."""
    assert load_example("mlp.py").train(backend="numpy", seed=0, steps=0, verbose=False) < 0.6


def test_example_trains_on_the_emulated_kernels():
    require("emulate" in available_backends(), "the emulate backend")
    # fewer, larger steps than the default keep the emulator's run short
    assert load_example("mlp.py").train(backend="emulate", seed=0, steps=200, lr=0.05, verbose=False) >= 0.95


def test_readme_training_loop_is_the_example():
    readme = ROOT / "README.md"
    assert readme.is_file(), f"{readme} is missing; it must carry examples/mlp.py as a ```python block"
    blocks = re.findall(r"^```python\n(.*?)^```", readme.read_text(), flags=re.S | re.M)
    loop = next((block for block in blocks if "Linear(" in block), None)
    assert loop is not None, ("README.md has no ```python block containing 'Linear(': paste "
                              "examples/mlp.py into it")
    example = EXAMPLE.read_text()
    if loop.strip() != example.strip():
        diff = "".join(difflib.unified_diff((example.strip() + "\n").splitlines(True), (loop.strip() + "\n").splitlines(True),
                                            "examples/mlp.py", "README.md (first ```python block with Linear()"))
        raise AssertionError("README.md's training loop has drifted from examples/mlp.py; copy the file "
                             "into the README again:\n" + diff)
