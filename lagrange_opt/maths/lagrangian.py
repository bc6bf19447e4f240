"""The Lagrangian's pieces as small pure functions of tensors.

Every constraint is first brought to a standard form: an equality ``h(x) = 0`` keeps its
value, an inequality becomes ``g(x) <= 0``. Multipliers of inequalities are then
non-negative at a saddle point, under either the slack or the projection treatment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lagrange_opt.problem.constraints import ConstraintSpec


def standard_form(value: Tensor, spec: ConstraintSpec) -> Tensor:
    """Writes a constraint's value as ``h = 0`` or ``g <= 0``.

    .. math::

        g = \\begin{cases} -v & \\text{sense } v \\ge 0 \\\\ v & \\text{otherwise} \\end{cases}

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstraintSpec
        >>> spec = ConstraintSpec("c", "inequality", ">=", (), None, "slack", 1e-2)
        >>> standard_form(torch.tensor(3.0), spec)
        tensor(-3.)
    """
    if spec.sense == ">=":
        return -value
    return value


def standard_sign(spec: ConstraintSpec) -> float:
    """The sign :math:`\\sigma` with ``standard_form(v) = \\sigma v``: -1 for ``>=``, else 1."""
    return -1.0 if spec.sense == ">=" else 1.0


def violation(standard: Tensor, spec: ConstraintSpec) -> Tensor:
    """Elementwise violation of a constraint in standard form.

    .. math::

        \\operatorname{viol}(h) = |h|, \\qquad \\operatorname{viol}(g) = \\max(g, 0)

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstraintSpec
        >>> spec = ConstraintSpec("c", "inequality", "<=", (2,), None, "slack", 1e-2)
        >>> violation(torch.tensor([-1.0, 0.5]), spec)
        tensor([0.0000, 0.5000])
    """
    if spec.kind == "equality":
        return standard.abs()
    return standard.clamp(min=0)


def slack_residual(standard: Tensor, slack: Tensor) -> Tensor:
    """The equality that replaces ``g <= 0`` under the slack treatment.

    .. math::

        r(x, s) = g(x) + s^2 = 0

    Example:
        >>> import torch
        >>> slack_residual(torch.tensor(-4.0), torch.tensor(2.0))
        tensor(0.)
    """
    return standard + slack.square()


def initial_slack(standard: Tensor, margin: float) -> Tensor:
    """A slack that satisfies ``g + s**2 = 0`` where ``g <= -margin``.

    .. math::

        s_0 = \\sqrt{\\max(-g, m)}

    The margin ``m > 0`` keeps ``s`` away from zero, where ``d(s^2)/ds = 2s`` vanishes and
    the slack could never move.

    Example:
        >>> import torch
        >>> initial_slack(torch.tensor([-4.0, 1.0]), 0.01)
        tensor([2.0000, 0.1000])
    """
    return standard.neg().clamp(min=margin).sqrt()


def refreshed_slack(slack: Tensor, seen: Tensor, standard: Tensor, margin: float) -> Tensor:
    """The slack an evaluation starts from, entry by entry.

    .. math::

        s \\leftarrow \\begin{cases} \\sqrt{\\max(-g, m)} & \\text{never observed} \\\\
        \\sqrt{\\max(-g, 0)} & s^2 = 0 \\\\ s & \\text{otherwise} \\end{cases}

    Where ``s**2`` is 0 (``s = 0``, or so small that its square underflows: a slack that
    decayed while its constraint was active) the gradient ``2 s lambda`` vanishes or rounds
    away, and ``s`` could never move again: once the constraint turns inactive the
    multiplier would go negative to hold the point on the boundary. Such an entry is set
    again from the current value, with no margin: it satisfies ``g + s**2 = 0`` where the
    constraint is inactive and stays 0 where it is active or violated, so a converged
    active constraint is not disturbed.

    Args:
        slack: The stored slack entries.
        seen: Whether each row was observed before (one flag, or one per row of ``slack``).
        standard: ``g``, of ``slack``'s shape and dtype.
        margin: The lower bound of ``s**2`` on first observation.

    Example:
        >>> import torch
        >>> seen = torch.tensor([False, True, True, True])
        >>> refreshed_slack(torch.tensor([0.0, 0.0, 0.0, 3.0]), seen,
        ...                 torch.tensor([1.0, 1.0, -4.0, -4.0]), 0.01)
        tensor([0.1000, 0.0000, 2.0000, 3.0000])
    """
    seen = seen.reshape(seen.shape + (1,) * (slack.ndim - seen.ndim))
    negative = standard.neg()
    initial = torch.where(seen, negative.clamp(min=0), negative.clamp(min=margin)).sqrt()
    return torch.where(seen & slack.square().ne(0), slack, initial)


def project_nonnegative_(multiplier: Tensor) -> Tensor:
    """Projects inequality multipliers onto the dual feasible set, in place.

    .. math::

        \\lambda \\leftarrow \\max(\\lambda, 0)
    """
    return multiplier.clamp_(min=0)


def constraint_term(multiplier: Tensor, residual: Tensor, batch_size: int | None) -> Tensor:
    """A constraint's contribution to the Lagrangian.

    .. math::

        \\langle \\lambda, r \\rangle \\quad\\text{or, indexed,}\\quad
        \\frac{1}{B} \\sum_{i \\in \\text{batch}} \\langle \\lambda_i, r_i \\rangle

    An indexed constraint is averaged over the batch, so that its weight against a
    batch-mean objective does not depend on the batch size.

    Example:
        >>> import torch
        >>> constraint_term(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), None)
        tensor(11.)
    """
    term = (multiplier * residual).sum()
    if batch_size is None:
        return term
    return term / batch_size


def penalty_term(standard: Tensor, spec: ConstraintSpec, batch_size: int | None) -> Tensor:
    """The quadratic penalty that replaces a multiplier under the penalty treatment.

    .. math::

        \\alpha \\sum \\operatorname{viol}(r)^2 \\quad\\text{or, indexed,}\\quad
        \\frac{\\alpha}{B} \\sum_{i \\in \\text{batch}} \\operatorname{viol}(r_i)^2

    with :math:`\\alpha` = ``spec.penalty_weight``. Its minimiser is feasible only in the
    limit :math:`\\alpha \\to \\infty`.

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstraintSpec
        >>> spec = ConstraintSpec("c", "inequality", "<=", (2,), None, "penalty", 1e-2, 10.0)
        >>> penalty_term(torch.tensor([-1.0, 0.5]), spec, None)
        tensor(2.5000)
    """
    assert spec.penalty_weight is not None
    term = spec.penalty_weight * violation(standard, spec).square().sum()
    if batch_size is None:
        return term
    return term / batch_size


def lagrangian(objective: Tensor, terms: list[Tensor]) -> Tensor:
    """The Lagrangian: the objective plus every constraint's term (penalties included).

    .. math::

        \\mathcal{L}(x, s, \\lambda) = f(x) + \\sum_c \\langle \\lambda_c, r_c(x, s_c) \\rangle
        + \\sum_{c \\text{ penalised}} \\alpha_c \\lVert \\operatorname{viol}(r_c) \\rVert^2
    """
    total = objective
    for term in terms:
        total = total + term
    return total
