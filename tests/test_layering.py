"""The house rule: imports run one way, formats → layers → services → render → api/cli
(test_imports.py checks there is no cycle).

Read from the source (every ``import`` and ``from ... import``, function-level ones included:
a late import is still a dependency), so a new upward arrow or a cycle fails here, not in review.
A new top-level module must be given its place in ``RANKS``: that is where its job is decided.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bninspect"

# Each top-level module or package of bninspect and its place in the pipeline: a module may import
# only from its own rank or below. Within one package, modules may import each other (no cycle).
RANKS = {
    "textfmt": 0, "errors": 1,                       # words and failures, used by all
    "checkpoint": 2, "numerics": 2,                  # the data model every reader fills; the BN math
    "formats": 3, "atomic": 3,                       # reading files (and the one writer)
    "layers": 4,                                     # discovery: BatchNorm layers from a checkpoint
    "rules": 5,                                      # check's rules
    "running": 6, "settings": 6,                     # running a model; process-wide settings
    "services": 7,                                   # one function per command, returning data
    "render": 8,                                     # results as text, JSON, HTML
    "api": 9, "cli": 10, "__main__": 11, "__init__": 11,   # the faces: Python API, command line
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str) -> str:
    """The module a dotted name refers to: the longest prefix that is a module or package here."""
    parts = name.split(".")
    while parts:
        base = PACKAGE.parent.joinpath(*parts)
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return ".".join(parts)
        parts.pop()
    return name


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        here = _module_name(path)
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] == "bninspect":
                    resolved = _resolve(target)
                    if resolved != here:
                        graph[here].add(resolved)
    return graph


def _rank(module: str) -> int:
    parts = module.split(".")
    return RANKS["__init__" if len(parts) == 1 else parts[1]]


def test_every_top_level_module_has_a_place():
    names = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert sorted(names - RANKS.keys()) == []


def test_imports_run_one_way():
    upward = [f"{a} → {b}" for a, targets in sorted(_imports().items()) for b in sorted(targets)
              if b != "bninspect" and _rank(b) > _rank(a)]
    assert upward == []
