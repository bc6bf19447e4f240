"""Optimistic descent-ascent, as extrapolation from the past: one evaluation per step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lagrange_opt.diagnostics.step_result import step_result
from lagrange_opt.evaluation.slacks import SlackRows
from lagrange_opt.evaluation.step_closure import Closure
from lagrange_opt.evaluation.terms import Term
from lagrange_opt.maths.formulation import UNIT_RULE
from lagrange_opt.methods.base import ConstrainedOptimizer, Outcome
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.updates.optimizer_params import params_of
from lagrange_opt.updates.rollback import Rollback, current_rows


class Past(NamedTuple):
    """What the previous step's evaluation left for the next extrapolation.

    Attributes:
        grads: The gradient of each dense primal parameter (``None``: it had none), in the
            order of :meth:`OptimisticGDA._dense_primal`.
        terms: What the evaluation's terms hold for the extrapolation (:func:`_past_term`):
            each multiplier's residual (its gradient) on the rows read, and an indexed
            slack's rows with their gradient.
    """

    grads: list[Tensor | None]
    terms: list[Term]


class OptimisticGDA(ConstrainedOptimizer):
    """Optimistic gradient descent-ascent, in the form of extrapolation from the past.

    Extra-gradient's extrapolation, taken along the gradients of the previous step's
    extrapolated point instead of fresh ones (Popov 1980; Gidel et al., ICLR 2019), so that
    a step evaluates the problem once:

    .. math::

        \\tilde x_k &= x_k - \\eta_x \\nabla_x \\mathcal{L}(\\tilde x_{k-1},
            \\tilde\\lambda_{k-1}), &
        \\tilde\\lambda_k &= \\lambda_k + \\eta_\\lambda \\nabla_\\lambda
            \\mathcal{L}(\\tilde x_{k-1}, \\tilde\\lambda_{k-1}), \\\\
        x_{k+1} &= x_k - \\eta_x \\nabla_x \\mathcal{L}(\\tilde x_k, \\tilde\\lambda_k), &
        \\lambda_{k+1} &= \\lambda_k + \\eta_\\lambda \\nabla_\\lambda
            \\mathcal{L}(\\tilde x_k, \\tilde\\lambda_k)

    (with the base optimizers' updates in place of the plain gradient steps, the
    extrapolation leaving their states as they were, and the multipliers of projected
    inequalities projected after each). With plain SGD and no projection, the extrapolated
    points follow optimistic descent-ascent,
    :math:`\\tilde z_{k+1} = \\tilde z_k - 2\\eta g(\\tilde z_k) + \\eta g(\\tilde z_{k-1})`.
    It converges on the bilinear games where simultaneous descent-ascent spirals out, at
    the cost of one evaluation per step (extra-gradient: two) and one stored gradient.

    The first step, with no past, extrapolates nowhere (a simultaneous step). The step's
    result reports the point it evaluated, the extrapolated one. An indexed constraint's
    rows are extrapolated along the residuals of the previous batch: a row that the
    previous batch did not read is evaluated where it stands. The fixed step only (the
    adaptive test of :class:`ExtraGradient` compares two evaluations of one point).

    Args: as :class:`ConstrainedOptimizer`.

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, OptimisticGDA, ProblemState
        >>> class Problem(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.zeros(2))
        ...         self.add_equality("sum")
        ...     def forward(self) -> ProblemState:
        ...         return ProblemState(self.x.square().sum(), {"sum": self.x.sum() - 2})
        >>> problem = Problem()
        >>> optimizer = OptimisticGDA(
        ...     problem,
        ...     torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        ...     torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        ... )
        >>> for _ in range(300):
        ...     result = optimizer.step(problem)
        >>> [round(v, 3) for v in problem.x.tolist()]
        [1.0, 1.0]
    """

    _past: Past | None = None

    def _dense_primal(self) -> list[Tensor]:
        return [p for p in params_of(self.primal_optimizer) if id(p) not in self._indexed_tables]

    def _step(self, closure: Closure, calls: int, rollback: Rollback) -> Outcome:
        past = self._past
        rows = [] if past is None else current_rows(past.terms)
        # The evaluation logs the slack rows it reads, extrapolated, in the undo log, which
        # a failed step restores after the saved point: logged first, these rows are put
        # back last, as they were before the extrapolation.
        for table, index, values in rows:
            rollback.undo.save(table, index, values)
        point = rollback.save_point(self._dense_parameters(), rows)
        sizes = self._step_sizes()
        if past is not None:
            with torch.no_grad():
                for param, grad in zip(self._dense_primal(), past.grads):
                    param.grad = grad
                self._update(past.terms, sizes, None)
        evaluation, deferred = self._evaluate_and_backward_deferred(closure, rollback.undo)
        result = step_result(evaluation, calls + 1)
        with torch.no_grad():
            # The update starts from the saved point: the rows this evaluation read go back
            # there too, saved as they were before the extrapolation.
            point.restore_rows()
            point.add_rows(current_rows(evaluation.terms))
            self._update_from_point(rollback, point, evaluation, sizes)
        self._check_written(evaluation.terms, deferred)
        grads = [param.grad for param in self._dense_primal()]
        self._clear_grads()
        self._past = Past(
            grads,
            [
                _past_term(t.constraint, t.indices, t.residual, t.projected, t.slack)
                for t in evaluation.terms
            ],
        )
        return Outcome(result, evaluation)

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states, the formulation's and the gradients of the last
        evaluation, which the next step extrapolates along."""
        state = super().state_dict()
        state["past"] = None if self._past is None else _past_state(self._past)
        return state

    def _check_state(self, state_dict: dict[str, Any]) -> None:
        """Also the past gradients: they must match this optimizer's parameters and
        constraints."""
        super()._check_state(state_dict)
        if "past" not in state_dict:
            raise ValueError("state_dict lacks ['past']")
        saved = state_dict["past"]
        if saved is not None:
            _load_past(saved, self.problem, self._dense_primal())

    def _set_state(self, state_dict: dict[str, Any]) -> None:
        super()._set_state(state_dict)
        saved = state_dict["past"]
        params = self._dense_primal()
        self._past = None if saved is None else _load_past(saved, self.problem, params)


def _past_state(past: Past) -> dict[str, Any]:
    terms = []
    for term in past.terms:
        slack = term.slack
        terms.append(
            {
                "name": term.constraint.spec.name,
                "indices": term.indices,
                "residual": term.residual,
                "projected": term.projected,
                "slack_rows": None if slack is None else slack.rows,
                "slack_grad": None if slack is None else slack.values.grad,
            }
        )
    return {"grads": list(past.grads), "terms": terms}


def _load_past(
    saved: dict[str, Any], problem: ConstrainedProblem, params: Sequence[Tensor]
) -> Past:
    grads = list(saved["grads"])
    if len(grads) != len(params):
        raise ValueError(
            f"state_dict's past has {len(grads)} gradients, this optimizer {len(params)} "
            "dense primal parameters"
        )
    for index, (grad, param) in enumerate(zip(grads, params)):
        if grad is not None and grad.shape != param.shape:
            raise ValueError(
                f"state_dict's past gradient {index} has shape {tuple(grad.shape)}, its "
                f"parameter {tuple(param.shape)}"
            )
    declared = problem.declared()
    terms = []
    for entry in saved["terms"]:
        name = entry["name"]
        if name not in declared or declared[name].multiplier is None:
            raise ValueError(
                f"state_dict's past names constraint '{name}', which has no multiplier here"
            )
        terms.append(_restored_term(declared[name], entry))
    return Past(grads, terms)


def _restored_term(constraint: Any, entry: dict[str, Any]) -> Term:
    """A term of the past, from what :func:`_past_state` saved of it."""
    slack = None
    if entry["slack_rows"] is not None:
        rows: Tensor = entry["slack_rows"]
        # Only the gradient of the rows' values is read.
        values = constraint.slack.detach().index_select(0, rows)
        values.grad = entry["slack_grad"]
        slack = SlackRows(constraint.slack, rows, rows.new_empty(0), values)
    return _past_term(
        constraint, entry["indices"], entry["residual"], bool(entry["projected"]), slack
    )


def _past_term(
    constraint: Any,
    indices: Tensor | None,
    residual: Tensor,
    projected: bool,
    slack: SlackRows | None,
) -> Term:
    """A term holding what an extrapolation reads (the multiplier, its rows and residual,
    the projection, an indexed slack's rows and their gradient); the fields only the
    evaluation's own step reads (its graph, weights, values) are left empty."""
    empty = residual.new_empty(0)
    return Term(
        constraint, constraint.multiplier, empty, empty, indices, empty, residual, empty,
        slack, UNIT_RULE, 1.0, projected, residual.new_zeros(()),
    )  # fmt: skip
