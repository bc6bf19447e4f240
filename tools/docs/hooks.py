"""MkDocs hooks: render the tutorials (docs/tutorials/*.py) into pages when the site builds."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.docs.math import render_math  # noqa: E402
from tools.docs.tutorial_pages import Rendered, render  # noqa: E402

_log = logging.getLogger("mkdocs.hooks.tutorials")

# mkdocs serve rebuilds on every change: a tutorial whose source did not change is not re-run.
_cache: dict[Path, tuple[str, Rendered]] = {}


def rendered_tutorial(script: Path) -> Rendered:
    """The tutorial executed into its page, saying which one runs (it can take a minute);
    a tutorial whose source did not change since the last build is not run again."""
    source = script.read_text()
    if script not in _cache or _cache[script][0] != source:
        _log.info("Running the tutorial %s", script.name)
        start = time.perf_counter()
        _cache[script] = (source, render(script, script.name))
        _log.info("Ran %s in %.0f s", script.name, time.perf_counter() - start)
    return _cache[script][1]


def on_files(files: Files, config: Any) -> Files:
    """Add each tutorial's page and figures beside its script."""
    for script in sorted((Path(config["docs_dir"]) / "tutorials").glob("*.py")):
        rendered = rendered_tutorial(script)
        uri = f"tutorials/{script.stem.replace('_', '-')}"
        files.append(File.generated(config, f"{uri}.md", content=rendered.markdown))
        for name, png in rendered.figures.items():
            files.append(File.generated(config, f"tutorials/{name}", content=png))
    return files


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Every formula of the page as MathML (:mod:`tools.docs.math`): the site needs no
    script and no network to show them."""
    return render_math(html)
