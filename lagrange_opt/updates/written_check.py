"""The check of what a step's updates wrote, before the step commits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lagrange_opt.evaluation.term_checks import DeferredCheck
from lagrange_opt.evaluation.terms import Term
from lagrange_opt.problem.validation import NonFiniteError, first_non_finite
from lagrange_opt.updates.rollback import all_finite, first_non_finite_tensor


def check_written(
    params: Sequence[Tensor],
    terms: Sequence[Term],
    indexed_tables: set[int],
    describe: Callable[[Tensor], str],
    deferred: Sequence[DeferredCheck] = (),
) -> None:
    """Checks what the step's updates wrote, before the step commits: the dense primal
    parameters they moved (those with a gradient), the dense multipliers of ``terms``
    and the rows of its indexed tables (multipliers, slacks).

    An update can write a NaN or an infinity from finite inputs: in float16 a value
    past 65504 overflows and Adam's ``eps`` (1e-8) rounds to 0, so a step on a
    multiplier whose residual is small divides by 0. Committed, it would fail every
    later step that reads it and be saved in every checkpoint. Cost: one reduction
    call (after a gather per indexed table) and one host synchronisation per step
    (:func:`..updates.rollback.all_finite`), shared with the ``deferred`` checks of the
    step's evaluations: a fixed-step simultaneous step reads the device once.

    Args:
        params: The primal optimizer's parameters (those with a gradient were moved).
        terms: The evaluation's terms, whose multipliers and slack rows were moved.
        indexed_tables: The ``id`` of every indexed table (checked by rows, in ``terms``).
        describe: Names a parameter in the error message.
        deferred: The step's evaluations whose finiteness was not read yet: on failure
            they are searched first, so that a NaN in the data is named as such and not
            as the NaN the update wrote from it.

    Raises:
        NonFiniteError: Naming the value, gradient or written tensor and its first
            non-finite entry; the step's rollback then puts everything back.
    """
    # Each tensor, and where it is: a parameter (named only if at fault) or a table.
    written: list[Tensor] = []
    places: list[Tensor | str] = []
    for param in params:
        if param.grad is not None and id(param) not in indexed_tables:
            written.append(param)
            places.append(param)
    # Under one no_grad the gathers and the reduction record nothing, without a detach
    # per tensor.
    with torch.no_grad():
        for term in terms:
            name = term.constraint.spec.name
            if term.indices is None:
                written.append(term.multiplier)
                places.append(f"the multipliers of constraint '{name}'")
            else:
                written.append(term.multiplier.index_select(0, term.indices))
                places.append(f"the batch's rows of the multipliers of constraint '{name}'")
            if term.slack is not None:
                written.append(term.slack.table.index_select(0, term.slack.rows))
                places.append(f"the batch's rows of the slacks of constraint '{name}'")
        numbers = [number for check in deferred for number in check.numbers]
        if all_finite(written, numbers):
            return
    for check in deferred:
        check.search(describe)
    index = first_non_finite_tensor(written)
    if index is None:
        return
    tensor, place = written[index], places[index]
    where = place if isinstance(place, str) else describe(place)
    raise NonFiniteError(
        f"the update wrote {first_non_finite(tensor)} into {where} ({tensor.dtype}): "
        "the step was rolled back (in float16 an update overflows past 65504, and an "
        "eps below 6e-8, such as Adam's default 1e-8, rounds to 0)"
    )
