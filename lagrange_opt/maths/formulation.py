"""How the constraints enter one evaluation's Lagrangian: the formulation and the scaling.

A method decides, before each evaluation, the weight of the objective (the inverse of its
scale) and, per constraint, the penalty coefficient of the augmented Lagrangian (none for
the plain Lagrangian) and the factor on the multipliers' gradient. Everything the user sees
stays in the user's units: with the objective scaled by :math:`1/s_f` and a constraint by
:math:`1/s_g`, the scaled problem's augmented Lagrangian is the user's divided by
:math:`s_f`, with the user's multipliers and

.. math::

    c_\\text{user} = c \\, \\frac{s_f}{s_g^2}, \\qquad
    \\lambda_\\text{user} \\leftarrow \\lambda_\\text{user} + \\eta \\, \\frac{s_f}{s_g^2}
    \\, \\nabla_\\lambda \\psi

so a step in the scaled problem is a step on the user's multipliers with these factors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from torch import Tensor


class Scales(NamedTuple):
    """The scales measured at the first evaluation (IPOPT's gradient-based scaling).

    Attributes:
        objective: :math:`s_f = \\max(1, \\lVert \\nabla f \\rVert_\\infty)`.
        constraints: Per constraint name, :math:`s_g = \\max(1, \\lVert \\nabla g
            \\rVert_\\infty)`: per element for a dense constraint, one scalar tensor for
            an indexed one (its rows are samples of one kind).
    """

    objective: float
    constraints: dict[str, Tensor]


class TermRule(NamedTuple):
    """How one constraint enters the Lagrangian in one evaluation.

    Attributes:
        penalty: The augmented Lagrangian's coefficient in the user's units (a number, or
            a tensor with one per element), or ``None`` for the plain Lagrangian.
        dual_scale: Factor on the multipliers' gradient (a number, or a tensor with one
            per element), or ``None`` for none.
        margin: The self-tuned margin of a per-sample constraint in the augmented
            Lagrangian (:func:`.augmented.next_margin`), a 0-dim tensor, or ``None``.
        row_margins: Its rows' own margins on top of ``margin`` (:mod:`..methods.margins`), a
            table of the multipliers' shape, or ``None``.
    """

    penalty: Tensor | float | None
    dual_scale: Tensor | float | None
    margin: Tensor | None = None
    row_margins: Tensor | None = None


def row_margin(rule: TermRule, indices: Tensor | None) -> Tensor | None:
    """The margin each of a term's rows sees: the constraint's plus the rows' own."""
    if rule.margin is None or rule.row_margins is None or indices is None:
        return rule.margin
    return rule.margin + rule.row_margins.index_select(0, indices)


class Formulation(NamedTuple):
    """What an evaluation needs of the method's formulation and scaling.

    Attributes:
        objective_weight: :math:`1/s_f`, the weight of the whole Lagrangian in the
            primal gradient.
        rules: Per constraint with multipliers, its :class:`TermRule` (missing: the plain
            Lagrangian with no factor).
    """

    objective_weight: float
    rules: Mapping[str, TermRule]


PLAIN = Formulation(1.0, {})
"""The plain Lagrangian, unscaled."""

UNIT_RULE = TermRule(None, None)
