"""One evaluation of a problem: the closure called and validated (:mod:`._validation`), each
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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn
from torch.overrides import has_torch_function

from . import _augmented as aug
from . import _lagrangian as lag
from ._accumulation import MicroBatches, Replay
from ._closure_call import (
    ObservedIndices,
    call,
    call_micro_batches,
    call_synchronized,
    detached_standard,
)
from ._finiteness import check_finite as check_finite
from ._finiteness import raise_for_bad_values, slack_variable
from ._formulation import PLAIN, UNIT_RULE, Formulation, TermRule, row_margin
from ._problem import ConstrainedProblem, Constraint, ConstraintSpec, ProblemState
from ._slacks import (
    SlackRows,
    UndoLog,
    dense_slack_residual,
    indexed_slack_residual,
    write_closed_form_slack,
)
from ._validation import (
    Checked,
    any_outside_table,
    check_index_range,
    gradient_path_fault,
)

if TYPE_CHECKING:
    from ._distributed import GlobalBatch, Synchronizer


def _find_engine() -> Callable[..., object] | None:
    try:
        # Private, but the thin layer that torch.autograd.backward calls once it has
        # checked its arguments in Python, a check that costs about 30 microseconds a call
        # (more than the backward pass of a small model; docs/performance.md). The
        # cotangents given here are built with their roots' shapes and dtypes, and the C++
        # engine validates them.
        from torch.autograd.graph import _engine_run_backward
    except ImportError:  # torch < 2.3
        return None
    return _engine_run_backward


_ENGINE_RUN_BACKWARD = _find_engine()


def _run_backward(roots: list[Tensor], cotangents: list[Tensor]) -> None:
    """``torch.autograd.backward(roots, cotangents)``, without its argument checks."""
    if _ENGINE_RUN_BACKWARD is None or has_torch_function(roots):
        # A tensor subclass may override backward: the public function dispatches to it.
        torch.autograd.backward(roots, cotangents)
        return
    _ENGINE_RUN_BACKWARD(
        tuple(roots), tuple(cotangents), False, False, (),
        allow_unreachable=True, accumulate_grad=True,
    )  # fmt: skip


class Term(NamedTuple):
    """The part of an evaluation of one constraint that has multipliers.

    The constraint's Lagrangian term is ``<weights, output>``: backward starts from
    ``output`` with ``weights`` as its cotangent (a vector-Jacobian product), so the
    Lagrangian's sum is never built as a graph.

    Attributes:
        constraint: The constraint.
        multiplier: Its multiplier parameter (the table, if indexed).
        output: With its autograd graph: the value as returned, whose standard form's sign
            the weights carry, or the slack residual ``g + s**2``; indexed: one row per
            batch entry.
        weights: The (scaled) Lagrangian's derivative with respect to ``output``: the
            multipliers (the augmented Lagrangian's estimates), signed, divided by the batch
            size if indexed, times the objective weight.
        indices: The sample indices (``int64``) of an indexed constraint, else ``None``.
        multipliers_read: A copy of the multipliers read, detached: the whole multiplier
            if dense, the batch entries' rows if indexed.
        residual: The gradient of the multipliers, per batch entry: the residual ``h``,
            ``g`` or ``g + s**2`` (``max(g, -lambda / c)`` in the augmented Lagrangian)
            times the rule's dual scale, detached, never sharing memory with a parameter.
        standard: The value in standard form (``h`` or ``g``, without a slack), detached,
            in memory of its own and in the multipliers' dtype: its violation is read after
            the step.
        slack: The slack rows read, for an indexed slack variable.
        rule: The formulation of this term.
        objective_weight: The weight of the Lagrangian (the objective's inverse scale).
        projected: Whether the dual step projects the multipliers onto ``>= 0``.
        value: The term's value in the (scaled) Lagrangian, detached.
        local: With a process group, this rank's entries of an indexed constraint within
            ``indices``, ``multipliers_read``, ``residual`` and ``standard``, which hold
            every rank's batch (``output`` and ``weights`` hold this rank's only); else
            ``None``.
        share: With a process group, an indexed constraint's batch entries per rank
            (:attr:`._distributed.GlobalBatch.share`), which divides the weights in place
            of this rank's entries; else ``None``.
    """

    constraint: Constraint
    multiplier: nn.Parameter
    output: Tensor
    weights: Tensor
    indices: Tensor | None
    multipliers_read: Tensor
    residual: Tensor
    standard: Tensor
    slack: SlackRows | None
    rule: TermRule
    objective_weight: float
    projected: bool
    value: Tensor
    local: slice | None = None
    share: float | None = None


class Evaluation(NamedTuple):
    """One call of the closure, validated, with the value of the Lagrangian.

    Attributes:
        objective: The objective, with its graph.
        terms: The constraints with multipliers observed, in declaration order.
        penalties: The penalty of each penalised constraint observed, with its graph.
        standards: Every observed constraint's spec and its value in standard form,
            detached (its violation is computed when asked for).
        lagrangian: The Lagrangian's value in the user's units, detached.
        objective_weight: The weight of the Lagrangian in the primal gradient.
        values: What the closure returned, validated: per observed constraint its name, the
            constraint, its value and its indices (the detailed finiteness check reads it).
        total: The (scaled) Lagrangian's value, detached: finite only if every value,
            multiplier and residual that entered it is (:func:`check_finite`).
        sync: The collectives of a data-parallel step (:mod:`._distributed`), or ``None``.
        replay: For micro-batches (:mod:`._accumulation`), the second pass: the values
            above are then the combined ones, leaves without the micro-batches' graphs.
        own: With a process group, the constraints this rank observed, with their
            indices (``values`` holds every constraint some rank observed); else ``None``.
    """

    objective: Tensor
    terms: list[Term]
    penalties: list[Tensor]
    standards: list[tuple[ConstraintSpec, Tensor]]
    lagrangian: Tensor
    objective_weight: float
    values: Checked
    total: Tensor
    sync: Synchronizer | None = None
    replay: Replay | None = None
    own: ObservedIndices | None = None

    def backward(self, weights: list[Tensor] | None = None, scale: Tensor | None = None) -> None:
        """Backpropagates the Lagrangian into the primal variables' ``.grad``.

        Args:
            weights: Replace the terms' own (multipliers read again after a dual step).
            scale: Multiplies every cotangent: the loss scale of float16 training
                (:mod:`._loss_scaling`), which divides the gradients afterwards.
        """
        if weights is None:
            weights = [term.weights for term in self.terms]
        if self.replay is not None:
            self.replay.clear_cotangents()
        roots = [root for root in (self.objective, *self.penalties) if root.requires_grad]
        objective = self.objective
        cotangents = [
            torch.ones_like(root) if root is not objective or self.objective_weight == 1.0
            else torch.full_like(root, self.objective_weight)
            for root in roots
        ]  # fmt: skip
        for term, weight in zip(self.terms, weights):
            if term.output.requires_grad:
                roots.append(term.output)
                cotangents.append(weight.to(term.output.dtype))
        if scale is not None:
            # A 0-dim scale keeps the cotangent's dtype, as backward of a scaled loss casts
            # it: one that overflows a float16 output is what the scaler is there to detect.
            cotangents = [cotangent * scale for cotangent in cotangents]
        if roots:
            _run_backward(roots, cotangents)
        if self.replay is not None:
            # The combined values' cotangents (scaled already) into each micro-batch's graph.
            for micro_roots, micro_cotangents in self.replay.passes():
                if micro_roots:
                    _run_backward(micro_roots, micro_cotangents)
        for term in self.terms:
            # A sample's own slack steps along the gradient of that sample's term, as its
            # multiplier does, not along the batch average's.
            if term.slack is not None and term.slack.values.grad is not None:
                share = term.output.shape[0] if term.share is None else term.share
                term.slack.values.grad.mul_(share)
        if self.sync is not None:
            # DDP averaged its modules' gradients in backward; the rest are reduced here.
            self.sync.reduce_gradients(
                [term.slack.values for term in self.terms if term.slack is not None]
            )

    def gradients(self, params: Sequence[Tensor], slacks: bool = True) -> list[Tensor]:
        """The gradients backward left on ``params`` and (with ``slacks``) on the indexed
        slack rows read."""
        grads = [grad for param in params if (grad := param.grad) is not None]
        for term in self.terms if slacks else ():
            if term.slack is not None and (grad := term.slack.values.grad) is not None:
                grads.append(grad)
        return grads

    def observed(self) -> ObservedIndices:
        """The constraints this evaluation observed, with their indices: what a later
        evaluation of the same step must repeat (``evaluate``'s ``expected_indices``): with
        a process group, this rank's own."""
        if self.own is not None:
            return self.own
        return ObservedIndices({name: indices for name, _, _, indices in self.values})

    def violation_summary(self) -> tuple[Tensor, Tensor]:
        """The maximum and the mean violation over every constraint element observed (both 0
        when none is)."""
        violations = [lag.violation(standard, spec) for spec, standard in self.standards]
        if not violations:
            zero = torch.zeros((), dtype=self.objective.dtype, device=self.objective.device)
            return zero, zero
        if len(violations) == 1:
            return violations[0].amax(), violations[0].mean()
        maxima = torch.stack([violation.amax() for violation in violations])
        total = torch.stack([violation.sum() for violation in violations]).sum()
        count = sum(violation.numel() for violation in violations)
        return maxima.amax(), total / count


def term_weights(
    spec: ConstraintSpec,
    multipliers: Tensor,
    indices: Tensor | None,
    slack_output: bool,
    objective_weight: float = 1.0,
    share: float | None = None,
) -> Tensor:
    """The cotangent of a term's output (see :func:`._lagrangian.constraint_term`).

    Args:
        spec: The constraint.
        multipliers: Per element, the derivative of the term with respect to the
            standard form (the multipliers, or the augmented Lagrangian's estimates).
        indices: The batch of an indexed constraint: its terms are averaged over it.
        slack_output: Whether the output is the slack residual (already in standard form);
            otherwise it is the value as returned, and the weights carry the standard
            form's sign.
        objective_weight: The weight of the whole Lagrangian.
        share: Divides an indexed term in place of ``len(indices)``: with a process group,
            the whole batch's entries per rank (:attr:`Term.share`).
    """
    scale = objective_weight if slack_output else objective_weight * lag.standard_sign(spec)
    if indices is not None:
        scale /= indices.shape[0] if share is None else share
    return multipliers if scale == 1.0 else multipliers * scale


def _estimates(
    term_standard: Tensor, multipliers: Tensor, rule: TermRule, spec: ConstraintSpec,
    indices: Tensor | None,
) -> Tensor:  # fmt: skip
    """The derivative of a term with respect to its standard form (``indices``: the rows
    of an indexed constraint)."""
    if rule.penalty is None:
        return multipliers
    return aug.augmented_weight(
        aug.shifted(term_standard, row_margin(rule, indices)), multipliers, rule.penalty,
        spec.kind == "equality",
    )  # fmt: skip


def current_weights(term: Term) -> Tensor:
    """The term's weights with the multipliers as they are now (after a dual step)."""
    multipliers = term.multiplier.detach()
    indices, standard = term.indices, term.standard
    if term.local is not None:
        # The weights are this rank's cotangents: its own entries only.
        assert indices is not None
        indices, standard = indices[term.local], standard[term.local]
    if indices is not None:
        multipliers = multipliers.index_select(0, indices)
    spec = term.constraint.spec
    estimates = _estimates(standard, multipliers, term.rule, spec, indices)
    return term_weights(
        spec, estimates, indices, slack_variable(spec, term.rule), term.objective_weight,
        term.share,
    )  # fmt: skip


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
        estimates = _estimates(detached, multipliers, rule, spec, indices)
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
            residual = output.detach().to(multiplier.dtype)
        else:
            assert slack_rows is not None
            every_slack = slack_rows.values.detach()[slack_rows.inverse]
            residual = lag.slack_residual(all_standard, every_slack).to(multiplier.dtype)
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
    (:func:`._validation.gradient_path_fault`), after the checks of the values.

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
            averaged and the indexed batches gathered across ranks (:mod:`._distributed`).
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
