"""The package's shape: the core never imports evaluation, data or the CLI; no import
cycles; modules stay readable in size; every benchmark script imports and says how to
run it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flowenedet"
OUTER = ("flowenedet.evaluation", "flowenedet.data", "flowenedet.cli")
"""What the core (the pipeline, image -> hooks -> energy -> flow -> maps, and storage)
must not depend on."""
SHIMS = {"flowenedet.__main__", "flowenedet.baselines", "flowenedet.metrics"}
"""Modules that exist to point elsewhere: ``python -m flowenedet`` and the old import
paths kept for compatibility."""
MAX_LINES = 400
LONG = "Longer than 400 lines:"
"""A module over :data:`MAX_LINES` says why in its docstring, on a line starting so."""


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, *, top_level: bool) -> set[str]:
    """The ``flowenedet`` modules ``name`` imports (only at module level with
    ``top_level``, else anywhere in it, functions included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


def test_the_core_imports_nothing_of_evaluation_data_or_the_cli():
    core = [n for n in MODULES if not n.startswith(OUTER) and n not in SHIMS]
    assert "flowenedet.detector" in core and "flowenedet.fitting" in core
    wrong = {n: [t for t in _imports(n, top_level=False) if t.startswith(OUTER)] for n in core}
    assert not {n: sorted(t) for n, t in wrong.items() if t}


def test_module_level_imports_form_no_cycle():
    graph = {name: _imports(name, top_level=True) for name in MODULES}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            # a package imports its own submodules; they may import the package's siblings
            if name.startswith(f"{target}.") or target.startswith(f"{name}."):
                continue
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, name, target]))
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_long_module_says_why(name):
    text = MODULES[name].read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert any(line.startswith(LONG) for line in doc.splitlines()), (
            f"{name} has {lines} lines: split it, or give a line '{LONG} <reason>' in its docstring"
        )


SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "common"])
def test_every_benchmark_script_imports_and_shows_its_command(script, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # scripts run as files import so
    module = importlib.import_module(f"benchmarks.{script}")
    doc = module.__doc__ or ""
    assert f"benchmarks.{script}" in doc or f"benchmarks/{script}.py" in doc, (
        f"benchmarks/{script}.py's docstring should show the command that runs it"
    )
    assert callable(getattr(module, "main", None))


def test_the_top_level_names_import_without_deprecation_warnings():
    code = "from flowenedet import *; import flowenedet; print(sorted(flowenedet.__all__))"
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "FlowEneDet" in done.stdout and "metrics" not in done.stdout
