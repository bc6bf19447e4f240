"""The package's layering as its users see it: benchmarks, examples and tutorials use the
public face only (``lagrange_opt``, ``lagrange_opt.problems``), never a private module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tools import layers

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"lagrange_opt", "lagrange_opt.problems", "lagrange_opt.lightning"}
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
    module.write_text("from lagrange_opt.maths.lagrangian import standard_form\nimport torch\n")
    assert imported_modules(module) == {"lagrange_opt.maths.lagrangian", "torch"}


# The package's own layers (docs/architecture.md; tools/layers.py draws them).


def test_every_module_sits_in_a_layer_folder() -> None:
    loose = sorted(
        path.name
        for path in (ROOT / "lagrange_opt").glob("*.py")
        if path.name not in {"__init__.py", "demo.py"}
    )
    assert loose == []
    folders = sorted(
        path.name for path in (ROOT / "lagrange_opt").iterdir() if (path / "__init__.py").exists()
    )
    assert folders == sorted(layers.LAYERS)


def test_imports_only_go_down_the_layers() -> None:
    climbing = [
        f"{found.importer} (line {found.line}) imports {found.imported}"
        for found in layers.all_imports()
        if layers.layer_of(found.importer) != layers.FACE
        and (
            layers.layer_of(found.imported) == layers.FACE
            or layers.LAYERS.index(layers.layer_of(found.imported))
            > layers.LAYERS.index(layers.layer_of(found.importer))
        )
    ]
    assert climbing == []


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    modules = {layers.module_name(path) for path in (ROOT / "lagrange_opt").rglob("*.py")}
    for found in layers.all_imports():
        # "from lagrange_opt.maths import augmented" names the module itself.
        if found.imported in modules and found.imported != found.importer:
            graph.setdefault(found.importer, set()).add(found.imported)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its nodes (the first repeated at the end)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_module_passes_about_500_lines_or_is_named_like_a_test() -> None:
    for path in (ROOT / "lagrange_opt").rglob("*.py"):
        assert not path.stem.endswith("_test") and not path.stem.startswith("test_"), path
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 520, path


def test_the_architecture_page_has_the_current_table() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert layers.table() in page
