"""What a step returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from torch import Tensor

from lagrange_opt.diagnostics.kkt import ConstraintFigures, ConstraintReport
from lagrange_opt.evaluation.terms import Evaluation


class StepResult(NamedTuple):
    """What a step returns, measured at the point the step started from.

    The figures are detached 0-dim tensors: logging them costs no host synchronisation
    until they are converted with ``float()``.

    Attributes:
        objective: The objective.
        lagrangian: The Lagrangian (the augmented one under that formulation), in the
            user's units.
        max_violation: The largest violation of any constraint element in the evaluation.
        mean_violation: The mean violation over every constraint element in the evaluation.
        constraints: Per constraint name, its :class:`ConstraintFigures` (largest violation,
            largest absolute multiplier), computed when read: only the constraints
            observed in the step's evaluation (one left out, or of size zero, has no entry).
        evaluations: How many times the step called the closure.
        skipped: Whether the step was skipped because a gradient overflowed under loss
            scaling (``grad_scaler``): nothing moved, the scale was backed off.
    """

    objective: Tensor
    lagrangian: Tensor
    max_violation: Tensor
    mean_violation: Tensor
    constraints: Mapping[str, ConstraintFigures] = {}
    evaluations: int = 1
    skipped: bool = False


def step_result(evaluation: Evaluation, evaluations: int) -> StepResult:
    """A step's result from the evaluation at the point it started from, built before
    anything is updated; ``evaluations`` closure calls made."""
    max_violation, mean_violation = evaluation.violation_summary()
    multipliers = {term.constraint.spec.name: term.multipliers_read for term in evaluation.terms}
    return StepResult(
        evaluation.objective.detach(),
        evaluation.lagrangian,
        max_violation,
        mean_violation,
        ConstraintReport(evaluation.standards, multipliers),
        evaluations,
    )
