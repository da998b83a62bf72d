"""The package's import graph: no two modules import each other (top-level or inside a function).

A package and its own submodules are left out: an ``__init__`` re-exporting what its submodules
define is the package's public face, not a circle between two concerns.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
