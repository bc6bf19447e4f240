"""One evaluation of a problem: the closure called and validated (:mod:`..problem.validation`), each
constraint's term of the (augmented) Lagrangian formed, and the undo log of what it changed.

**Absent constraints.** A constraint that the closure left out, or returned with zero
entries, is not observed in the evaluation: it has no term, no penalty and no violation,
and its multipliers and slacks are neither read nor stepped.

**Dtypes.** A constraint's multipliers and slacks keep the dtype of their tables (the
problem's, set by ``problem.to(dtype)``). Its value may have any floating-point dtype (a
float64 value in a float32 problem, a bfloat16 one under autocast): the dual side (the
residual that steps the multipliers, the slacks set in the evaluation, the closed-form slack,
the violations) is computed in the table's dtype, the value being cast to it once
(:func:`_detached_standard`; the slack residual ``g + s**2``, built on the primal side in the
promoted dtype of the value and the slack, is cast likewise when it is detached); the primal
side (the value's graph, the penalty of a penalised constraint, which has no table) keeps the
value's own dtype, the cotangent of backward being cast to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lagrange_opt.evaluation.closure_call import (
    call,
    call_micro_batches,
    call_synchronized,
    detached_standard,
)
from lagrange_opt.evaluation.micro_batches import MicroBatches
from lagrange_opt.evaluation.slacks import (
    UndoLog,
    dense_slack_residual,
    indexed_slack_residual,
    write_closed_form_slack,
)
from lagrange_opt.evaluation.term_checks import check_finite, raise_for_bad_values
from lagrange_opt.maths import augmented as aug
from lagrange_opt.maths import lagrangian as lag
from lagrange_opt.maths.casts import in_dtype
from lagrange_opt.maths.formulation import PLAIN, UNIT_RULE, Formulation, TermRule, row_margin
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import Constraint, ConstraintSpec, ProblemState
from lagrange_opt.problem.validation import (
    any_outside_table,
    check_index_range,
    gradient_path_fault,
)

if TYPE_CHECKING:
    from lagrange_opt.evaluation.distributed import Synchronizer
    from lagrange_opt.evaluation.global_batch import GlobalBatch
from lagrange_opt.evaluation.terms import Evaluation, Term, multiplier_estimates, term_weights


def _value_weights(
    weights: Tensor,
    spec: ConstraintSpec,
    batch: GlobalBatch | None,
    all_multipliers: Tensor,
    slack_output: bool,
    objective_weight: float,
) -> Tensor:
    """The weights of a term's reported value: ``weights`` (this rank's entries), or with a
    process group the whole batch's, so that every rank reports the whole batch's
    Lagrangian."""
    if batch is None:
        return weights
    return term_weights(spec, all_multipliers, batch.indices, slack_output, objective_weight)


def _term(
    constraint: Constraint,
    value: Tensor,
    indices: Tensor | None,
    undo: UndoLog,
    rule: TermRule,
    objective_weight: float,
    batch: GlobalBatch | None = None,
) -> Term:
    """One constraint's term; with a process group, ``batch`` holds an indexed constraint's
    batch over every rank: the dual side (residual, multipliers read, slacks written) is
    formed over it, the primal side (output, weights, value) over this rank's entries."""
    multiplier = constraint.multiplier
    assert multiplier is not None
    spec = constraint.spec
    all_indices = indices if batch is None else batch.indices
    if all_indices is not None:
        # Reads first (an index out of range fails here, before anything is written).
        all_multipliers = multiplier.detach().index_select(0, all_indices)
    else:
        # A copy: the dual step updates the parameter in place, and the step's figures
        # and the adaptive step's test read the multipliers the evaluation used.
        all_multipliers = multiplier.detach().clone()
    detached = detached_standard(value, spec, multiplier.dtype)
    multipliers, all_standard, local, share = all_multipliers, detached, None, None
    if batch is not None:
        local, share = batch.local, batch.share
        multipliers, all_standard = all_multipliers[local], batch.standard
    slack_rows = None
    projected = spec.treatment == "projection"
    if rule.penalty is not None:
        equality = spec.kind == "equality"
        projected = not equality
        output = value
        # The margin shifts the rows the augmented Lagrangian sees; the violations reported
        # (all_standard, kept in the term) are the constraint's own.
        seen = aug.shifted(all_standard, row_margin(rule, all_indices))
        residual = aug.augmented_residual(seen, all_multipliers, rule.penalty, equality)
        estimates = multiplier_estimates(detached, multipliers, rule, spec, indices)
        weights = term_weights(spec, estimates, indices, False, objective_weight, share)
        terms = aug.augmented_value(seen, all_multipliers, rule.penalty, equality)
        scale = objective_weight if all_indices is None else objective_weight / all_indices.shape[0]
        # An inactive inequality's term does not depend on its value: the value's own sum,
        # times 0, carries a NaN or an infinity into the one finiteness check.
        term_value = terms.sum() * scale + detached.sum() * 0
        if spec.has_slack:
            write_closed_form_slack(
                constraint, seen, all_multipliers, rule.penalty, all_indices, undo
            )
    elif not spec.has_slack:
        output = value
        residual = all_standard
        weights = term_weights(spec, multipliers, indices, False, objective_weight, share)
        # The weights carry the standard form's sign, and so does the standard value.
        reported = _value_weights(weights, spec, batch, all_multipliers, False, objective_weight)
        term_value = (reported * all_standard).sum()
        if spec.sense == ">=":
            term_value = term_value.neg()
    else:
        standard = lag.standard_form(value, spec)
        if indices is None:
            output = dense_slack_residual(constraint, standard, detached, undo)
        else:
            assert all_indices is not None
            output, slack_rows = indexed_slack_residual(
                constraint, standard, all_standard, all_indices, undo, local
            )
        # The output has the promoted dtype of the value and the slack (the primal side);
        # its detached copy steps the multipliers, in their dtype.
        if batch is None:
            residual = in_dtype(output.detach(), multiplier.dtype)
        else:
            assert slack_rows is not None
            every_slack = slack_rows.values.detach()[slack_rows.inverse]
            residual = in_dtype(lag.slack_residual(all_standard, every_slack), multiplier.dtype)
        weights = term_weights(spec, multipliers, indices, True, objective_weight, share)
        reported = _value_weights(weights, spec, batch, all_multipliers, True, objective_weight)
        term_value = (reported * residual).sum()
    if rule.dual_scale is not None:
        residual = residual * rule.dual_scale
    return Term(
        constraint, multiplier, output, weights, all_indices, all_multipliers, residual,
        all_standard, slack_rows, rule, objective_weight, projected, term_value, local, share,
    )  # fmt: skip


def evaluate(
    problem: ConstrainedProblem,
    closure: Callable[[], ProblemState],
    undo: UndoLog,
    expected_indices: Mapping[str, Tensor | None] | None = None,
    formulation: Formulation = PLAIN,
    check_values: bool = True,
    sync: Synchronizer | None = None,
) -> Evaluation:
    """Calls the closure, validates its result and forms every observed constraint's residual.

    Slacks seen for the first time, or whose square is 0, are set here; the undo log records
    what that changed, so that a failing step can put it back. A non-finite objective,
    constraint value, multiplier or slack, or an index of a penalised constraint out of
    range, raises, found with one host synchronisation: every value enters the Lagrangian,
    which is finite only if they all are (an overflow sends the check to the detailed one,
    which lets a finite state pass). A value with no gradient path to the parameters raises
    (:func:`..problem.validation.gradient_path_fault`), after the checks of the values.

    Args:
        problem: The problem being solved.
        closure: Re-evaluates the problem on the current batch.
        undo: Collects the state this evaluation changes.
        expected_indices: The constraints that an earlier evaluation within the same step
            observed, with their indices, which this one must repeat: a constraint with
            multipliers (with an :class:`ObservedIndices`, any constraint) is observed by
            both or by neither.
        formulation: The objective's weight and each constraint's rule.
        check_values: Check the values now (one host synchronisation); ``False`` leaves it
            to a :func:`check_finite` after backward, which checks the gradients too.
        sync: The collectives of a data-parallel step: the closure's result is then checked
            whole on this rank (values, index ranges, gradient paths: one more host
            synchronisation) before every rank agrees to go on, and the dense values are
            averaged and the indexed batches gathered across ranks (:mod:`.distributed`).
    """
    replay = None
    batches: dict[str, GlobalBatch] = {}
    own = None
    if sync is not None:
        objective, checked, batches, replay, own = call_synchronized(
            problem, closure, expected_indices, sync
        )
    elif isinstance(closure, MicroBatches):
        objective, checked, replay = call_micro_batches(problem, closure, expected_indices)
    else:
        objective, checked = call(problem, closure, expected_indices)
    terms = []
    penalties = []
    standards = []
    weight = formulation.objective_weight
    value = objective.detach() * weight if weight != 1.0 else objective.detach()
    for name, constraint, constraint_value, indices in checked:
        spec = constraint.spec
        if spec.penalty_weight is not None:
            standard = lag.standard_form(constraint_value, spec)
            standards.append(
                (spec, detached_standard(constraint_value, spec, constraint_value.dtype))
            )
            batch_size = None if indices is None else indices.shape[0]
            penalty = lag.penalty_term(standard, spec, batch_size)
            if weight != 1.0:
                penalty = penalty * weight
            penalties.append(penalty)
            # A satisfied inequality's penalty is 0 even for an infinite value: the value's
            # own sum, times 0, carries it into the finiteness check.
            value = value + penalty.detach() + constraint_value.detach().sum() * 0
            if indices is not None:
                # No table is read with these indices: one out of range makes the finiteness
                # check fail, whose detailed search names it.
                value = value + torch.where(any_outside_table(constraint, indices), math.nan, 0.0)
            continue
        if indices is not None and indices.device.type != "cpu":
            # Off the CPU, reading a row out of range is a device-side assertion that ends
            # the process; on the CPU index_select raises, caught below.
            check_index_range(name, constraint, indices)
        try:
            rule = formulation.rules.get(name, UNIT_RULE)
            term = _term(
                constraint, constraint_value, indices, undo, rule, weight, batches.get(name)
            )
        except IndexError:
            if indices is not None:
                check_index_range(name, constraint, indices)
            raise
        terms.append(term)
        standards.append((spec, term.standard))
        value = value + term.value
    # With a process group the rank's own values were checked before the ranks agreed (a
    # value some other rank observed has no graph here, and needs none).
    fault = None if sync is not None else gradient_path_fault(objective, checked)
    if fault is not None:
        # A value at fault (non-finite, an index out of range) is named first.
        raise_for_bad_values(objective, checked, terms)
        raise ValueError(fault)
    evaluation = Evaluation(
        objective, terms, penalties, standards, value / weight if weight != 1.0 else value,
        weight, checked, value, sync, replay, own,
    )  # fmt: skip
    if check_values:
        check_finite(evaluation)
    return evaluation
