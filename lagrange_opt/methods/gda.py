"""Gradient descent-ascent: both sides from one point, or the dual side first."""

from __future__ import annotations

import torch

from lagrange_opt.diagnostics.step_result import step_result
from lagrange_opt.evaluation.step_closure import Closure
from lagrange_opt.evaluation.terms import current_weights
from lagrange_opt.methods.base import ConstrainedOptimizer, Outcome
from lagrange_opt.problem.validation import NonFiniteError
from lagrange_opt.updates.rollback import Rollback
from lagrange_opt.updates.side_update import dual_update, primal_update


class SimultaneousGDA(ConstrainedOptimizer):
    """Simultaneous gradient descent-ascent.

    Both sides step from the same point, with the gradients of one evaluation.

    .. math::

        x_{k+1} = x_k - \\eta_x \\nabla_x \\mathcal{L}(x_k, \\lambda_k), \\qquad
        \\lambda_{k+1} = \\lambda_k + \\eta_\\lambda \\nabla_\\lambda \\mathcal{L}(x_k, \\lambda_k)

    (with the base optimizers' updates in place of the plain gradient steps). Cheapest per
    step, but it can oscillate around a saddle point or spiral away from it.

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, ProblemState, SimultaneousGDA
        >>> class Problem(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.zeros(2))
        ...         self.add_equality("sum")
        ...     def forward(self) -> ProblemState:
        ...         return ProblemState(self.x.square().sum(), {"sum": self.x.sum() - 2})
        >>> problem = Problem()
        >>> optimizer = SimultaneousGDA(
        ...     problem,
        ...     torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        ...     torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        ... )
        >>> for _ in range(300):
        ...     result = optimizer.step(problem)
        >>> [round(v, 3) for v in problem.x.tolist()]
        [1.0, 1.0]
    """

    def _step(self, closure: Closure, calls: int, rollback: Rollback) -> Outcome:
        evaluation, deferred = self._evaluate_and_backward_deferred(closure, rollback.undo)
        result = step_result(evaluation, calls + 1)
        sizes = self._step_sizes()
        # The primal side moves first: a stock dual step that raises, or the check of what
        # both wrote, must find it saved.
        self._save_point(rollback, evaluation)
        with torch.no_grad():
            self._update(evaluation.terms, sizes, rollback)
        self._check_written(evaluation.terms, deferred)
        self._clear_grads()
        return Outcome(result, evaluation)


class AlternatingGDA(ConstrainedOptimizer):
    """Alternating gradient descent-ascent: the dual step first, then the primal step.

    .. math::

        \\lambda_{k+1} = \\lambda_k + \\eta_\\lambda \\nabla_\\lambda \\mathcal{L}(x_k, \\lambda_k),
        \\qquad
        x_{k+1} = x_k - \\eta_x \\nabla_x \\mathcal{L}(x_k, \\lambda_{k+1})

    The multiplier gradient is the constraint residual itself, so the primal step sees the
    updated multipliers at the cost of one evaluation and one backward pass.
    """

    def _step(self, closure: Closure, calls: int, rollback: Rollback) -> Outcome:
        evaluation = self._evaluate(closure, rollback.undo)
        result = step_result(evaluation, calls + 1)
        self._clear_grads()
        sizes = self._step_sizes()
        # The dual step comes before the check of the values (done with the gradients,
        # after backward), and both before the check of what the updates wrote: the saved
        # point lets a failed check undo them.
        self._save_point(rollback, evaluation)
        with torch.no_grad():
            rollback.keep(dual_update(self.dual_optimizer, sizes.dual, evaluation.terms, True))
        if self._sync is not None:
            # ddp: a dual step that raised on one rank stops every rank before DDP's backward.
            self._sync.agree(None)
        try:
            self._backward(evaluation, [current_weights(term) for term in evaluation.terms])
        except NonFiniteError:
            # A multiplier the dual step wrote non-finite makes the Lagrangian so: the
            # check of what it wrote names it (only on this failure path: no cost).
            self._check_written(evaluation.terms)
            raise
        with torch.no_grad():
            rollback.keep(
                primal_update(self.primal_optimizer, sizes.primal, evaluation.terms, True)
            )
            self.problem.project_bounds_()
        self._check_written(evaluation.terms)
        self._clear_grads()
        return Outcome(result, evaluation)
