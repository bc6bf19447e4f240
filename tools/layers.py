"""The package's layers as its imports draw them: which folder imports which.

    python -m tools.layers [--figure PATH]

prints the table that docs/architecture.md holds (``tests/test_layers.py`` checks that the
page's table is this one) and, with ``--figure``, draws the folders bottom-up with an
arrow for each folder that imports another.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lagrange_opt"

LAYERS = (
    "problem", "maths", "evaluation", "updates", "diagnostics", "methods", "problems",
    "lightning",
)  # fmt: skip
"""The folders from the bottom up: each may import only from itself and the ones before it."""

FACE = "(public face)"
"""The package's own ``__init__.py`` and ``demo.py``, above every folder."""


class Import(NamedTuple):
    """One import of a package module by a package module."""

    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    """``lagrange_opt/maths/augmented.py`` -> ``lagrange_opt.maths.augmented``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The folder a module of the package belongs to, or :data:`FACE`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else FACE


def package_imports(path: Path) -> list[Import]:
    """Every import of a package module in ``path``, ``TYPE_CHECKING`` ones included."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            modules = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            if module == "lagrange_opt" or module.startswith("lagrange_opt."):
                found.append(Import(importer, module, node.lineno))
    return found


def all_imports() -> list[Import]:
    """The imports of every module of the package."""
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in package_imports(path)]


def folder_edges() -> dict[str, set[str]]:
    """For each folder, the other folders it imports from."""
    edges: dict[str, set[str]] = {layer: set() for layer in (*LAYERS, FACE)}
    for found in all_imports():
        source, target = layer_of(found.importer), layer_of(found.imported)
        if source != target:
            edges[source].add(target)
    return edges


def table() -> str:
    """The folders with their modules and the folders they import from (no line counts:
    the page stays true while the code changes within its modules)."""
    edges = folder_edges()
    rows = ["| folder | modules | imports from |", "|---|---|---|"]
    for layer in LAYERS:
        modules = sorted(
            f"`{path.stem}`" for path in (PACKAGE / layer).glob("*.py") if path.stem != "__init__"
        )
        below = ", ".join(f"`{name}/`" for name in LAYERS if name in edges[layer]) or "-"
        rows.append(f"| `{layer}/` | {', '.join(modules)} | {below} |")
    return "\n".join(rows) + "\n"


def figure(path: Path) -> None:
    """The folders from the bottom up, an arrow from each folder to each it imports."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    edges = folder_edges()
    order = [*LAYERS, FACE]
    fig = Figure(figsize=(7, 6.5))
    axes = fig.subplots()
    height = {layer: index for index, layer in enumerate(order)}
    for layer in order:
        y = height[layer]
        axes.text(
            0, y, layer if layer == FACE else f"{layer}/", ha="center", va="center", fontsize=11,
            bbox={"boxstyle": "round", "facecolor": "#eef3fb", "edgecolor": "#4a6fa5"},
        )  # fmt: skip
    for source, targets in edges.items():
        for target in targets:
            gap = height[source] - height[target]
            # Side by side, each arrow bent by how far it reaches, so they stay apart.
            bend = 0.12 + 0.05 * gap
            arrow = FancyArrowPatch(
                (0.18, height[source]), (0.18, height[target]),
                connectionstyle=f"arc3,rad={-bend}", arrowstyle="-|>", mutation_scale=10,
                color="#d62728" if gap < 0 else "#555555", linewidth=0.8,
            )  # fmt: skip
            axes.add_patch(arrow)
    axes.set_xlim(-1, 1.6)
    axes.set_ylim(-0.7, len(order) - 0.3)
    axes.axis("off")
    axes.set_title("lagrange_opt: each folder imports only the folders below it", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", type=Path, help="where to draw the folders' imports")
    args = parser.parse_args()
    print(table(), end="")
    if args.figure is not None:
        figure(args.figure)


if __name__ == "__main__":
    main()
