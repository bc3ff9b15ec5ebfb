"""No function in ``manager/`` is longer than 80 lines (issue 20: short orchestrators).

A function is counted from its ``def`` line (decorators excluded) to its last line, docstring and
comments included: what a reader has to hold in view. Methods and nested functions count on
their own (a nested function's lines count for its parent too). Read from the source with `ast`,
like tests/test_layout.py, so no module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "manager"
MAX_LINES = 80


def function_lengths(source: str, filename: str = "<source>") -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length in lines)`` of every function in ``source``."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                out.append((name, child.lineno, end - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=filename), "")
    return out


def long_functions(limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function in ``manager/`` over ``limit`` lines."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for name, line, length in function_lengths(path.read_text(), rel):
            if length > limit:
                found.append(f"{rel}:{line} {name} ({length} lines)")
    return found


def test_the_counter_counts_methods_nested_and_async() -> None:
    src = (
        "import x\n"  # 1
        "@deco\n"  # 2
        "def f(a,\n"  # 3: f starts here, not at its decorator
        "      b):\n"  # 4
        "    '''doc'''\n"  # 5
        "    def g():\n"  # 6
        "        return 1\n"  # 7
        "    return g\n"  # 8
        "class C:\n"  # 9
        "    async def m(self):\n"  # 10
        "        if self:\n"  # 11
        "            pass\n"  # 12
        "\n"  # 13
        "        return 2\n"  # 14
    )
    assert function_lengths(src) == [("f", 3, 6), ("f.g", 6, 2), ("C.m", 10, 5)]


def test_no_function_over_80_lines() -> None:
    offenders = long_functions()
    assert not offenders, f"functions over {MAX_LINES} lines:\n" + "\n".join(offenders)
