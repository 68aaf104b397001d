"""House rule: no function over 60 lines of code (from its def line to its last line, its docstring left out: a
docstring is documentation, and ruff's formatter sets the layout) outside the numeric kernels named in docs/DESIGN.md
("Numeric kernels")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
# numeric kernels: one documented pass with a shape comment per step (docs/DESIGN.md)
KERNELS = {
    ("uniclip_plugin/views.py", "sample_aug_params"),
    ("uniclip_plugin/views.py", "_render"),
    # the chunked loss and its closed-form gradient
    ("uniclip_plugin/losses/mpnce.py", "_ChunkedLoss.forward"),
}


def _long_functions(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, lines of code)`` of every function of ``path`` longer than ``MAX_LINES``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if ast.get_docstring(child, clean=False) is not None:
                        length -= child.body[0].end_lineno - child.body[0].lineno + 1
                    if length > MAX_LINES:
                        found.append((name, length))
                visit(child, f"{name}.")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def test_no_function_over_60_lines_outside_the_numeric_kernels() -> None:
    offenders = []
    for folder in ("uniclip_plugin", "harness"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            offenders += [
                f"{rel}:{name} ({n} lines)" for name, n in _long_functions(path) if (rel, name) not in KERNELS
            ]
    assert offenders == []
