"""A griffe extension: the package's reStructuredText roles as Markdown for mkdocstrings.

The docstrings are Google style with Sphinx roles (``:class:`ExtraGradient```,
``:math:`\\lambda```, ``.. math::`` blocks), which read well in ``help()``. For the site,
``:math:`` becomes arithmatex's ``$...$``, a ``.. math::`` block ``$$...$$``, and a
reference to a public name of the package a link to its entry in the API reference; any
other reference (a private module, torch) is shown as code.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

import lagrange_opt

_PUBLIC = set(lagrange_opt.__all__)
_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`~?\.?(?P<target>[^`]+)`")
_MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?:(?P=indent)[ \t]+[^\n]*)?\n)+)",
    re.M,
)


_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.M)


def _reference(match: re.Match[str]) -> str:
    target = match.group("target").removeprefix("lagrange_opt.")
    if target == "problems":
        return "[`lagrange_opt.problems`][lagrange_opt.problems]"
    # A member (a NamedTuple's field, a method) links to its class's entry.
    head = target.split(".")[0]
    if head in _PUBLIC:
        return f"[`{target}`][lagrange_opt.{head}]"
    return f"`{target}`"


def _math_block(match: re.Match[str]) -> str:
    indent = match.group("indent")
    body = textwrap.dedent(match.group("body")).strip("\n")
    tex = textwrap.indent(body, indent)
    return f"{indent}$$\n{tex}\n{indent}$$\n\n"


def to_markdown(text: str) -> str:
    """One docstring's roles and math blocks in Markdown, its doctests as code."""
    # Griffe reads "Examples:" (not "Example:") as doctests to show as code.
    text = _EXAMPLE.sub(r"\g<indent>Examples:", text)
    text = _MATH_BLOCK.sub(_math_block, text)
    text = _MATH_ROLE.sub(lambda match: f"${match.group('tex')}$", text)
    return _ROLE.sub(_reference, text)


class RstRoles(griffe.Extension):
    """Rewrites every docstring of the package when griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
