"""The largest modules and classes of fpa_core/ and sweeps/, in lines (and a class's methods).

    .venv/bin/python benchmarks/code_size.py [ROOT]        # ROOT: a checkout (default: this one)

For a before/after: `git worktree add /tmp/old COMMIT`, then run this on /tmp/old and on the checkout.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def sizes(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, int, str]]]:
    modules, classes = [], []
    for path in sorted([*root.glob("fpa_core/**/*.py"), *root.glob("sweeps/**/*.py")]):
        text, name = path.read_text(), str(path.relative_to(root))
        modules.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
                classes.append((node.end_lineno - node.lineno + 1, methods, f"{name}:{node.name}"))
    return sorted(modules, reverse=True), sorted(classes, reverse=True)


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    modules, classes = sizes(root)
    print(f"{len(modules)} modules; the largest:")
    for lines, name in modules[:5]:
        print(f"  {lines:5d} lines  {name}")
    print("the largest classes:")
    for lines, methods, name in classes[:5]:
        print(f"  {lines:5d} lines, {methods:2d} methods  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
