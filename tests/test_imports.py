"""The package's import graph: no two modules import each other (top-level or inside a function),
and the light parts stay light (no torch, transformers or the Trainer glue behind them).

A package and its own submodules are left out of the circle check: an ``__init__`` re-exporting
what its submodules define is the package's public face, not a circle between two concerns.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import promptintern

ROOT = Path(promptintern.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every promptintern module ``path`` imports, resolved from relative imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("promptintern"):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("promptintern"))
    return out


def test_no_two_modules_import_each_other():
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {name: _imports(path, name) & modules.keys() - {name} for name, path in modules.items()}
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if a in graph.get(b, set()) and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not pairs, f"modules importing each other: {pairs}"
    assert len(modules) > 50  # the walk found the package


HEAVY = ("torch", "transformers", "peft", "promptintern.training.hf")


def _heavy_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_light_training_parts_import_without_torch():
    """The signal handling and the run directory's bookkeeping are read by torch-free code paths
    (the pipeline's checks, compare's stage-0 reuse); the package's lazy API keeps them light."""
    assert _heavy_after("import promptintern.training.stop") == []
    assert _heavy_after("import promptintern.training.checkpoints") == []
    assert _heavy_after("from promptintern.training import DONE_FILE, StopRequest") == []


def test_cli_help_imports_no_training_glue():
    code = ("import runpy, sys, contextlib, io\nsys.argv = ['promptintern', '--help']\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    runpy.run_module('promptintern.cli', run_name='__main__')")
    assert _heavy_after(code) == []


def test_training_api_names_come_from_their_modules():
    import promptintern.training as training

    assert "train_stages" in training.__all__ and "Teacher" in training.__all__
    for name, module in training._EXPORTS.items():
        assert getattr(training, name) is getattr(importlib.import_module(f"promptintern.training.{module}"), name)
    with pytest.raises(AttributeError, match="no_such_name"):
        training.no_such_name  # noqa: B018
