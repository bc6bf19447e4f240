"""Naming what made an extra-gradient step non-finite when its checks were not read at once.

A step reads its evaluations' finiteness in one host read (with its test, or with what its
update wrote). When that read fails, the culprit is searched in the order of the step, so
that the error is the one reading at once would have raised: the start's values and
gradients, the move they made to the extrapolated point (an infinite gradient, or an
optimizer's update that overflowed), what that move wrote, the evaluation there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lagrange_opt.evaluation.term_checks import raise_for_gradient, search_bad_values
from lagrange_opt.evaluation.terms import Evaluation
from lagrange_opt.problem.validation import NonFiniteError, first_non_finite
from lagrange_opt.updates.rollback import SavedPoint


def blame_start_gradient(
    point: SavedPoint, describe: Callable[[Tensor], str], error: Exception | None
) -> None:
    """Names the parameter that the extrapolation moved to a non-finite value (where
    ``error``, if any, was found): its gradient at the start was not finite, or its
    optimizer's update overflowed."""
    for param, copy in zip(point.params, point.copies):
        move = param.detach() - copy
        if not bool(torch.isfinite(move).all()):
            raise NonFiniteError(
                f"the gradient of {describe(param)} has {first_non_finite(move)} "
                "times the learning rate at the point the step started from: a finite "
                "value with an infinite derivative (sqrt or log at 0?) or an overflow in "
                "backward; or its optimizer's update overflowed (in float16 past 65504, "
                "or an eps below 6e-8, such as Adam's default 1e-8, rounds to 0)"
            ) from error


def search_try(
    point: SavedPoint,
    start_grads: Sequence[Tensor | None],
    start: Evaluation,
    extrapolated: Evaluation,
    params: Sequence[Tensor],
    describe: Callable[[Tensor], str],
    check_moved: Callable[[], None],
) -> None:
    """The detailed search of an adaptive try whose checks' read failed: the start's
    values and slack gradients, its parameters' gradients (``start_grads``, held for the
    test, in the order of ``point.params``; those of ``params``, the primal ones), the move
    to the extrapolated point, what it wrote (``check_moved``), the evaluation there.
    Returns if nothing is at fault (a sum that overflowed)."""
    search_bad_values(start, (), describe, slacks=True)
    primal = {id(param) for param in params}
    for param, grad in zip(point.params, start_grads):
        if grad is not None and id(param) in primal:
            raise_for_gradient(describe(param), grad)
    blame_start_gradient(point, describe, None)
    check_moved()
    search_bad_values(extrapolated, params, describe, slacks=True)
