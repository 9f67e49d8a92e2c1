"""linear/'s modules import each other without cycles: every import counts, including those inside
functions and under `if TYPE_CHECKING`, since each is a dependency of one module on another."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import linear

PACKAGE = Path(linear.__file__).parent


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (a package is its __init__; `from . import x`
    imports the module x when there is one, else the package)."""
    def name(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name(path): path for path in package.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    imported.add(submodule if submodule in files else target)
        graph[module] = (imported & files.keys()) - {module}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_linear_imports_no_cycles():
    graph = import_graph(PACKAGE)
    assert {"linear.layer", "linear.backends.emulate.kernel"} <= graph.keys()  # it read the package
    assert graph["linear.layer"] >= {"linear.backends", "linear.functional"}
    assert cycle(graph) is None, f"import cycle: {' -> '.join(cycle(graph))}"


@pytest.mark.parametrize("runtime_import", ["from .kernel import Kernel", "def f():\n    from . import kernel"])
def test_a_cycle_is_found(tmp_path, runtime_import):
    """Negative control: a package whose runtime and kernel import each other (at the top or inside a
    function, the shapes the real cycles had) is reported."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "kernel.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from .runtime import Runtime\nclass Kernel: ...\n")
    (package / "runtime.py").write_text(runtime_import + "\n")
    assert set(cycle(import_graph(package))) == {"pkg.kernel", "pkg.runtime"}
