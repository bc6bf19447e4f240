"""Every example in the documentation runs, and every command in it parses.

- Every ```python block of a page under docs/ runs, the page's blocks in order in one
  namespace, in a fresh working directory (a pymdownx snippet line, ``--8<-- "path"``, is
  replaced by the file it includes, as the site does).
- Every command of a ```bash block (in docs/, the tutorials' prose and the README) is checked without running it:
  a Python script's or module's arguments go through its own argparse parser, a make target
  must exist, a pytest path must exist; a command of any other kind fails the test until it
  is added to ``UNCHECKED_PROGRAMS``.
- Every page is in the site's navigation and every navigation entry exists.
- The tutorial renderer (tools/docs/tutorial_pages.py) splits, runs and renders as documented.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.docs.math import render_math
from tools.docs.tutorial_pages import cells, render

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$', re.M)

UNCHECKED_PROGRAMS = {"pip", "apt-get", "mkdocs", "cd", "bash", "git"}
"""Commands shown but not checked: installs, the site's build, shell built-ins."""


def _blocks(path: Path, language: str) -> list[str]:
    """A page's fenced blocks in ``language``; a tutorial's, those of its prose cells."""
    text = path.read_text()
    if path.suffix == ".py":
        text = "\n\n".join(cell.text for cell in cells(text) if cell.kind == "markdown")
    return [
        textwrap.dedent(match.group("body"))
        for match in _FENCE.finditer(text)
        if match.group("lang") == language
    ]


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _torchrun_environment() -> dict[str, str]:
    """What ``torchrun --nproc-per-node 1`` would set."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }


def _executed_pages() -> list[str]:
    return [str(page.relative_to(DOCS)) for page in _pages() if _blocks(page, "python")]


@pytest.mark.parametrize("page", _executed_pages())
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    if page == "distributed.md":
        for name, value in _torchrun_environment().items():
            monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        for block in _blocks(DOCS / page, "python"):
            # An included script is loaded as a module: its definitions run, not its main.
            namespace["__name__"] = "__snippet__" if _SNIPPET.search(block) else "__main__"
            source = _SNIPPET.sub(lambda m: (ROOT / m.group("path")).read_text(), block)
            exec(compile(source, str(DOCS / page), "exec"), namespace)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        import matplotlib.pyplot as plt

        plt.close("all")


def _commands(path: Path) -> Iterator[list[str]]:
    for block in _blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]  # an environment assignment
            if words:
                yield words


class _Parsed(Exception):
    """Raised in place of running a script once its arguments parsed."""


def _dry_parse(target: str, arguments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``target`` (a module name or a path) as __main__ up to its argument parsing."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parse_args(self, *args, **kwargs)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [target, *arguments])
    with pytest.raises(_Parsed):
        if target.endswith(".py"):
            runpy.run_path(str(ROOT / target), run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)


def _check_python(words: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if words[0] == "-m" and words[1] == "pytest":
        for word in words[2:]:
            if not word.startswith("-"):
                assert (ROOT / word.split("::")[0]).exists(), word
    elif words[0] == "-m":
        _dry_parse(words[1], words[2:], monkeypatch)
    else:
        _dry_parse(words[0], words[1:], monkeypatch)


def _command_cases() -> list[tuple[str, list[str]]]:
    sources = [ROOT / "README.md", *_pages(), *sorted((DOCS / "tutorials").glob("*.py"))]
    return [(str(path.relative_to(ROOT)), words) for path in sources for words in _commands(path)]


@pytest.mark.parametrize(
    ("source", "words"),
    _command_cases(),
    ids=[f"{source}: {' '.join(words)}" for source, words in _command_cases()],
)
def test_documented_command_parses(
    source: str, words: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    program = Path(words[0]).name
    if program in {"python", "python3"}:
        _check_python(words[1:], monkeypatch)
    elif program == "torchrun":
        script = next(index for index, word in enumerate(words) if word.endswith(".py"))
        _dry_parse(words[script], words[script + 1 :], monkeypatch)
    elif program == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(words[1:]) <= set(targets), f"{source}: no make target {words[1:]}"
    else:
        assert program in UNCHECKED_PROGRAMS, f"{source}: unchecked command {words}"


def _nav_pages(entries: Any) -> Iterator[str]:
    for entry in entries:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from _nav_pages([value] if isinstance(value, str) else value)


def test_navigation_lists_every_page() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(_nav_pages(config["nav"]))
    pages = {str(page.relative_to(DOCS)) for page in _pages()}
    tutorials = {
        f"tutorials/{script.stem.replace('_', '-')}.md"
        for script in (DOCS / "tutorials").glob("*.py")
    }
    assert pages - listed == set(), "pages missing from the navigation"
    assert listed - pages - tutorials == set(), "navigation entries with no page"


TUTORIAL = """\
# %% [markdown]
# # A title
#
# Some *prose*.

# %%
import matplotlib.pyplot as plt

total = sum(range(4))
print("total", total)

# %%
plt.plot([0, 1], [1, 0])
plt.figure()
plt.plot([0, 1], [0, 1])
"""


def test_tutorial_cells() -> None:
    assert cells(TUTORIAL) == [
        ("markdown", "# A title\n\nSome *prose*."),
        ("code", 'import matplotlib.pyplot as plt\n\ntotal = sum(range(4))\nprint("total", total)'),
        ("code", "plt.plot([0, 1], [1, 0])\nplt.figure()\nplt.plot([0, 1], [0, 1])"),
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n# %%\n", "a tutorial starts with a '# %%' or '# %% [markdown]' line"),
        ("", "a tutorial starts with a '# %%' or '# %% [markdown]' line"),
        (
            "# %% [markdown]\n# fine\nnot a comment\n",
            "markdown cell line 2 is not a comment: 'not a comment'",
        ),
    ],
)
def test_tutorial_cells_refused(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cells(source)


def test_tutorial_renders_output_and_figures(tmp_path: Path) -> None:
    script = tmp_path / "a_tutorial.py"
    script.write_text(TUTORIAL)
    cwd = Path.cwd()
    rendered = render(script, "a_tutorial.py")
    assert Path.cwd() == cwd
    assert list(rendered.figures) == ["a-tutorial-1.png", "a-tutorial-2.png"]
    assert all(png.startswith(b"\x89PNG") for png in rendered.figures.values())
    markdown = rendered.markdown
    assert markdown.startswith("# A title\n\n!!! note\n")
    assert "[`a_tutorial.py`](a_tutorial.py)" in markdown
    assert "```text\ntotal 6\n```" in markdown
    assert markdown.index("![Figure 1](a-tutorial-1.png)") < markdown.index(
        "![Figure 2](a-tutorial-2.png)"
    )


def test_the_site_build_says_which_tutorial_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tools.docs import hooks

    script = tmp_path / "a_tutorial.py"
    script.write_text(TUTORIAL)
    with caplog.at_level("INFO", logger="mkdocs.hooks.tutorials"):
        first = hooks.rendered_tutorial(script)
        again = hooks.rendered_tutorial(script)
    messages = [record.getMessage() for record in caplog.records]
    # Once: the unchanged tutorial is not run again.
    assert messages[0] == "Running the tutorial a_tutorial.py"
    assert re.fullmatch(r"Ran a_tutorial\.py in \d+ s", messages[1])
    assert len(messages) == 2 and again is first


def test_tutorial_error_fails_and_restores_the_directory(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("# %%\nraise RuntimeError('cell 1 broke')\n")
    cwd = Path.cwd()
    with pytest.raises(RuntimeError, match="cell 1 broke"):
        render(script, "broken.py")
    assert Path.cwd() == cwd
    assert os.getcwd() == str(cwd)


@pytest.mark.parametrize(
    ("docstring", "markdown"),
    [
        (":math:`\\lambda \\ge 0` holds", "$\\lambda \\ge 0$ holds"),
        ("see :class:`ExtraGradient`.", "see [`ExtraGradient`][lagrange_opt.ExtraGradient]."),
        (":func:`~lagrange_opt.kkt`", "[`kkt`][lagrange_opt.kkt]"),
        (":attr:`StepResult.skipped`", "[`StepResult.skipped`][lagrange_opt.StepResult]"),
        (":mod:`lagrange_opt.problems`", "[`lagrange_opt.problems`][lagrange_opt.problems]"),
        (":func:`._lagrangian.constraint_term`", "`_lagrangian.constraint_term`"),
        (":class:`torch.optim.Optimizer`", "`torch.optim.Optimizer`"),
        ("Example:\n    >>> 1\n    1\n", "Examples:\n    >>> 1\n    1\n"),
        (
            "The update:\n\n.. math::\n\n    x_{k+1} = x_k\n\n    y = 1\n\nAfter.",
            "The update:\n\n$$\nx_{k+1} = x_k\n\ny = 1\n$$\n\nAfter.",
        ),
        (
            "Args:\n    a: One.\n\n        .. math::\n\n            a = 1\n\n    b: Two.",
            "Args:\n    a: One.\n\n        $$\n        a = 1\n        $$\n\n    b: Two.",
        ),
    ],
)
def test_docstring_roles_to_markdown(docstring: str, markdown: str) -> None:
    from tools.docs.rst_roles import to_markdown

    assert to_markdown(docstring) == markdown


def test_api_reference_lists_the_public_surface() -> None:
    """Every public name has its entry in the API reference (the strict site build fails
    on a docstring's reference to a name it does not list)."""
    import lagrange_opt

    listed = set(re.findall(r"^::: lagrange_opt\.(\w+)$", (DOCS / "api.md").read_text(), re.M))
    assert set(lagrange_opt.__all__) - {"__version__"} <= listed


# The site works offline: formulas are MathML rendered at build time, and nothing is
# loaded from the network.


def test_formulas_become_mathml_inline_and_displayed() -> None:
    page = (
        '<p>with <span class="arithmatex">\\(w &lt; 0\\)</span>:</p>\n'
        '<div class="arithmatex">\\[\n\\lVert x \\rVert_\\infty \\le 1\n\\]</div>'
    )
    rendered = render_math(page)
    assert "arithmatex" not in rendered
    inline, display = re.findall(r'<math [^>]*display="(\w+)"', rendered)
    assert (inline, display) == ("inline", "block")
    # The escaped "<" is unescaped for the converter and escaped again in the MathML.
    assert "<mo>&#x0003C;</mo>" in rendered
    assert rendered.startswith("<p>with <math") and rendered.endswith("</math>")


def test_a_formula_that_cannot_be_read_is_named() -> None:
    page = '<span class="arithmatex">\\(x^\\)</span>'
    with pytest.raises(ValueError, match=re.escape("cannot render the formula 'x^'")):
        render_math(page)


def test_the_site_loads_nothing_from_the_network() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assets = [*config.get("extra_javascript", []), *config.get("extra_css", [])]
    assert not [asset for asset in assets if "://" in str(asset)]
    assert config["theme"]["font"] is False
