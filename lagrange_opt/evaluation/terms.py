"""One evaluation's terms: what each constraint contributed, its backward pass and gradients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn
from torch.overrides import has_torch_function

from lagrange_opt.evaluation.finiteness import slack_variable
from lagrange_opt.evaluation.micro_batches import Replay
from lagrange_opt.evaluation.observed import ObservedIndices, observed_in
from lagrange_opt.evaluation.slacks import SlackRows
from lagrange_opt.maths import augmented as aug
from lagrange_opt.maths import lagrangian as lag
from lagrange_opt.maths.casts import in_dtype
from lagrange_opt.maths.formulation import TermRule, row_margin
from lagrange_opt.problem.constraints import Constraint, ConstraintSpec
from lagrange_opt.problem.validation import Checked

if TYPE_CHECKING:
    from lagrange_opt.evaluation.distributed import Synchronizer


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
            (:attr:`.distributed.GlobalBatch.share`), which divides the weights in place
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
        sync: The collectives of a data-parallel step (:mod:`.distributed`), or ``None``.
        replay: For micro-batches (:mod:`.micro_batches`), the second pass: the values
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
                (:mod:`..updates.loss_scaling`), which divides the gradients afterwards.
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
                cotangents.append(in_dtype(weight, term.output.dtype))
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
        return observed_in(self.values)

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
    """The cotangent of a term's output (see :func:`..maths.lagrangian.constraint_term`).

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


def multiplier_estimates(
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
    estimates = multiplier_estimates(standard, multipliers, term.rule, spec, indices)
    return term_weights(
        spec, estimates, indices, slack_variable(spec, term.rule), term.objective_weight,
        term.share,
    )  # fmt: skip
