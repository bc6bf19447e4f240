"""Execute a tutorial written as a percent-format Python script and render it as Markdown.

A tutorial is a plain script whose cells are separated by ``# %%`` lines; a cell that
starts with ``# %% [markdown]`` is prose, every line a comment. Rendering runs the code
cells in order in one namespace and puts each cell's code, what it printed and the
matplotlib figures it left open into the page, so the site shows what the code does today.
An exception in a cell fails the build.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

_CELL = re.compile(r"^# %%(?P<markdown> \[markdown\])?[^\n]*$", flags=re.MULTILINE)


class Cell(NamedTuple):
    """One cell of a tutorial: ``markdown`` prose or ``code``."""

    kind: str
    text: str


class Rendered(NamedTuple):
    """A tutorial's page and its figures (file name to PNG bytes)."""

    markdown: str
    figures: dict[str, bytes]
    seconds: float


def cells(source: str) -> list[Cell]:
    """Split a percent-format script into cells, prose uncommented.

    Raises:
        ValueError: If a line of a Markdown cell is not a comment.
    """
    found: list[Cell] = []
    marks = list(_CELL.finditer(source))
    if not marks or source[: marks[0].start()].strip():
        raise ValueError("a tutorial starts with a '# %%' or '# %% [markdown]' line")
    for mark, following in zip(marks, [*marks[1:], None]):
        body = source[mark.end() : following.start() if following else len(source)].strip("\n")
        if mark.group("markdown"):
            lines = []
            for number, line in enumerate(body.splitlines(), 1):
                if line != "#" and not line.startswith("# "):
                    raise ValueError(f"markdown cell line {number} is not a comment: {line!r}")
                lines.append(line[2:])
            found.append(Cell("markdown", "\n".join(lines)))
        elif body.strip():
            found.append(Cell("code", body))
    return found


def _figures(stem: str, start: int) -> list[tuple[str, bytes]]:
    """Every open matplotlib figure as a PNG, then closed."""
    from matplotlib import pyplot as plt

    saved = []
    for offset, number in enumerate(plt.get_fignums()):
        figure = plt.figure(number)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
        plt.close(figure)
        saved.append((f"{stem}-{start + offset}.png", buffer.getvalue()))
    return saved


def render(path: Path, source_link: str) -> Rendered:
    """Run the tutorial at ``path`` in a temporary directory and render its page.

    Args:
        path: The script.
        source_link: The page's link to the script, for the download note.
    """
    import matplotlib

    matplotlib.use("Agg")
    path = path.resolve()  # the cells run in a scratch directory
    stem = path.stem.replace("_", "-")
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    parts: list[str] = []
    figures: dict[str, bytes] = {}
    start = time.perf_counter()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            for index, cell in enumerate(cells(path.read_text())):
                if cell.kind == "markdown" and index == 0:
                    # The note goes under the page's title, the first line.
                    title, _, prose = cell.text.partition("\n")
                    parts.extend([title, _note(source_link)])
                    if prose.strip():
                        parts.append(prose.strip("\n"))
                    continue
                if cell.kind == "markdown":
                    parts.append(cell.text)
                    continue
                parts.append(f"```python\n{cell.text}\n```")
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(compile(cell.text, str(path), "exec"), namespace)
                if printed.getvalue().strip():
                    parts.append(f"```text\n{printed.getvalue().rstrip()}\n```")
                for name, png in _figures(stem, len(figures) + 1):
                    figures[name] = png
                    parts.append(f"![Figure {len(figures)}]({name})")
        finally:
            os.chdir(cwd)
    seconds = time.perf_counter() - start
    parts.append(f"*Executed when this site was built, in {seconds:.0f} s on the build machine.*")
    return Rendered("\n\n".join(parts) + "\n", figures, seconds)


def _note(source_link: str) -> str:
    return (
        "!!! note\n"
        f"    This page is a script, [`{Path(source_link).name}`]({source_link}), run when "
        "the site is built: the output and figures below are what it printed and drew. "
        "Run it yourself with `python` from the repository's root."
    )
