"""Reading a package's imports from its source, for the layering tests.

An AST scan sees every import statement: module level, inside functions (the CLI's lazy
imports), and relative ones (resolved to absolute names). It does not see a module named in a
string (`device/cli/main.py` maps `export` to "exporter.cli:export"), which is the point: such
a module is loaded only when that command runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_names(path: Path, root: Path = REPO) -> set[str]:
    """Every dotted name `path` imports: `import a.b` gives a.b; `from a.b import c` gives a.b.c
    (c may be a module or an attribute: either way it lies under a.b); `from . import c` is
    resolved against the file's own package (its folder under `root`)."""
    package = list(path.resolve().parent.relative_to(root.resolve()).parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def under(name: str, prefixes) -> bool:
    """Whether the dotted `name` is one of `prefixes` or inside one of them."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def python_files(folder: str) -> list[Path]:
    """The package's source files, as paths relative to the repository root."""
    return sorted(path.relative_to(REPO) for path in (REPO / folder).rglob("*.py"))


def offenders(folder: str, forbidden, allowed: dict[tuple[str, str], str] | None = None) -> dict[str, list[str]]:
    """file -> the forbidden names it imports (those under `forbidden`), minus the `allowed`
    edges ((file, module) -> why) that the architecture names."""
    allowed = allowed or {}
    found = {}
    for path in python_files(folder):
        edges = [module for file, module in allowed if file == str(path)]
        bad = sorted(name for name in imported_names(REPO / path) if under(name, forbidden) and not under(name, edges))
        if bad:
            found[str(path)] = bad
    return found


def unused_allowances(allowed: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    """The allowed edges no longer in the code: an allowance must not outlive its reason."""
    return [
        (file, module) for file, module in allowed
        if not any(under(name, [module]) for name in imported_names(REPO / file))
    ]
