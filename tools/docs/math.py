"""The site's formulas as MathML, rendered when the site builds: no script, no CDN.

``pymdownx.arithmatex`` (``generic: true``) leaves each formula as LaTeX in a
``<span class="arithmatex">\\(...\\)</span>`` (inline) or a
``<div class="arithmatex">\\[...\\]</div>`` (display). :func:`render_math` replaces each
with MathML from ``latex2mathml``, which every current browser draws natively, so the
formulas show offline and without JavaScript.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_FORMULA = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*'
    r"\\(?P<open>[(\[])(?P<latex>.*?)\\[)\]]"
    r"\s*</(?P=tag)>",
    re.DOTALL,
)


def render_math(page: str) -> str:
    """``page`` with every arithmatex formula rendered as MathML.

    Example:
        >>> render_math('<p><span class="arithmatex">\\\\(x &lt; 1\\\\)</span></p>')[:51]
        '<p><math xmlns="http://www.w3.org/1998/Math/MathML"'

    Raises:
        ValueError: Naming the formula that ``latex2mathml`` could not read.
    """

    def rendered(match: re.Match[str]) -> str:
        latex = html.unescape(match.group("latex")).strip()
        display = "block" if match.group("open") == "[" else "inline"
        try:
            return convert(latex, display=display)
        except Exception as error:  # latex2mathml raises several kinds: name the formula
            raise ValueError(f"cannot render the formula {latex!r}: {error}") from error

    return _FORMULA.sub(rendered, page)
