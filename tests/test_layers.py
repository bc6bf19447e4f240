"""The package's layering as its users see it: benchmarks, examples and tutorials use the
public face only (``lagrange_opt``, ``lagrange_opt.problems``), never a private module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"lagrange_opt", "lagrange_opt.problems"}
USERS = sorted(
    path.relative_to(ROOT)
    for folder in ("benchmarks", "examples", "docs/tutorials")
    for path in (ROOT / folder).glob("*.py")
)


def imported_modules(path: Path) -> set[str]:
    """The absolute module names that ``path`` imports from."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", USERS, ids=str)
def test_users_import_the_public_face_only(path: Path) -> None:
    private = {
        name
        for name in imported_modules(ROOT / path)
        if name.split(".")[0] == "lagrange_opt" and name not in PUBLIC
    }
    # The demo is a program of its own: examples/positive_outputs.py runs it.
    assert private <= {"lagrange_opt.demo"} if path.name == "positive_outputs.py" else not private


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    module = tmp_path / "user.py"
    module.write_text("from lagrange_opt._lagrangian import standard_form\nimport torch\n")
    assert imported_modules(module) == {"lagrange_opt._lagrangian", "torch"}
