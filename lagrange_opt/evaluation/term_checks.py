"""The checks of one evaluation's terms: every value, multiplier and gradient finite, or
the first that is not named."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from lagrange_opt.problem.validation import (
    Checked,
    NonFiniteError,
    check_index_range,
    first_non_finite,
    first_out_of_range,
)

if TYPE_CHECKING:
    from lagrange_opt.evaluation.terms import Evaluation, Term
from lagrange_opt.evaluation.finiteness import (
    finite_numbers,
    raise_for_bad_constraint,
    slack_variable,
)


def raise_for_bad_values(objective: Tensor, checked: Checked, terms: list[Term]) -> None:
    """Names the value at fault; called only once the cheap combined check has failed."""
    if not bool(torch.isfinite(objective.detach())):
        raise NonFiniteError(f"objective is not finite: {float(objective.detach())}")
    for name, constraint, value, indices in checked:
        raise_for_bad_constraint(name, value, indices)
        if indices is not None:
            check_index_range(name, constraint, indices)
    values = {name: (value, indices) for name, _, value, indices in checked}
    for term in terms:
        name = term.constraint.spec.name
        if not bool(torch.isfinite(term.standard).all()):
            dtype = term.standard.dtype
            value, indices = values[name]
            raise NonFiniteError(
                f"constraint '{name}' has {first_out_of_range(value, dtype, indices)}, the "
                "dtype of its multipliers (problem.to(dtype) sets it)"
            )
        if not bool(torch.isfinite(term.multipliers_read).all()):
            raise NonFiniteError(
                f"the multipliers of constraint '{name}' read in this step have "
                f"{first_non_finite(term.multipliers_read, term.indices)}: the dual iteration "
                "diverged"
            )
        if not bool(torch.isfinite(term.residual).all()):
            if term.slack is not None or slack_variable(term.constraint.spec, term.rule):
                raise NonFiniteError(
                    f"the slack residual of constraint '{name}' has "
                    f"{first_non_finite(term.residual, term.indices)}: the slacks diverged"
                )
            raise NonFiniteError(
                f"the multipliers' gradient of constraint '{name}' has "
                f"{first_non_finite(term.residual, term.indices)}"
            )


def check_finite(
    evaluation: Evaluation,
    params: Sequence[Tensor] = (),
    describe: Callable[[Tensor], str] | None = None,
    slacks: bool = True,
) -> None:
    """Raises :class:`NonFiniteError` if a value of the evaluation, or a gradient that its
    backward pass left on ``params`` or on the slack rows, is NaN or infinite.

    One host synchronisation: a number per gradient joins the Lagrangian's value (a number
    that overflows sends the check to the detailed one, which lets finite gradients pass). A
    finite value can have an infinite gradient (``sqrt`` at 0, an overflow of
    ``multiplier * value`` in backward): checked before any update commits it.

    Args:
        evaluation: The evaluation, backpropagated if gradients are to be checked.
        params: The parameters whose ``.grad`` the update will read.
        describe: Names a parameter in the error message.
        slacks: Whether to check the gradients of the indexed slack rows too.
    """
    numbers = finite_numbers_of(evaluation, params, slacks)
    total = torch.stack(numbers).sum() if len(numbers) > 1 else numbers[0]
    sync = evaluation.sync
    if sync is None:
        if not math.isfinite(total.item()):
            search_bad_values(evaluation, params, describe, slacks)
        return
    # Every rank takes part in the agreement, finite or not: the failing rank raises its
    # own error, the others one that names it.
    try:
        if not math.isfinite(total.item()):
            search_bad_values(evaluation, params, describe, slacks)
    except BaseException as error:
        sync.agree(error)
        raise
    sync.agree(None)


def finite_numbers_of(
    evaluation: Evaluation, params: Sequence[Tensor], slacks: bool
) -> list[Tensor]:
    """The numbers :func:`check_finite` reads: the Lagrangian's value and a number per
    gradient (:func:`.finiteness.finite_numbers`), all finite if the evaluation is (one
    that overflows sends the check to the detailed search, which lets finite gradients
    pass). No host synchronisation; the caller reduces them with whatever else it reads."""
    return [evaluation.total, *finite_numbers(evaluation.gradients(params, slacks))]


class DeferredCheck(NamedTuple):
    """:func:`check_finite` of an evaluation, its numbers not read yet: read with the
    check of what the step wrote (one host read for both), searched in detail on failure.

    Attributes:
        numbers: :func:`finite_numbers_of` the evaluation.
        evaluation: The evaluation.
        params: The parameters whose gradients it checks.
        slacks: Whether it checks the slack rows' gradients.
    """

    numbers: list[Tensor]
    evaluation: Evaluation
    params: Sequence[Tensor]
    slacks: bool

    def search(self, describe: Callable[[Tensor], str] | None) -> None:
        """Raises the evaluation's :class:`NonFiniteError` if a value or gradient is NaN
        or infinite (the detailed search: no cheap read first)."""
        search_bad_values(self.evaluation, self.params, describe, self.slacks)


def search_bad_values(
    evaluation: Evaluation,
    params: Sequence[Tensor],
    describe: Callable[[Tensor], str] | None,
    slacks: bool,
) -> None:
    """The detailed search of :func:`check_finite`, once its cheap check failed."""
    raise_for_bad_values(evaluation.objective, evaluation.values, evaluation.terms)
    for param in params:
        if param.grad is not None:
            name = (
                f"parameter of shape {tuple(param.shape)}" if describe is None else describe(param)
            )
            raise_for_gradient(name, param.grad)
    for term in evaluation.terms if slacks else ():
        grad = None if term.slack is None else term.slack.values.grad
        if grad is not None and not bool(torch.isfinite(grad).all()):
            raise NonFiniteError(
                f"the gradient of the slacks of constraint '{term.constraint.spec.name}' has "
                f"{first_non_finite(grad)}"
            )


def raise_for_gradient(name: str, grad: Tensor) -> None:
    """Raises the :class:`NonFiniteError` of a parameter's gradient (``name`` names the
    parameter) if an entry is NaN or infinite."""
    if not bool(torch.isfinite(grad).all()):
        raise NonFiniteError(
            f"the gradient of {name} has {first_non_finite(grad)}: a finite value with an "
            "infinite derivative (sqrt or log at 0?) or an overflow in backward"
        )
