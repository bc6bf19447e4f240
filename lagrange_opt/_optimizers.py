"""Saddle-point optimizers: descent on the parameters and slacks, ascent on the multipliers."""

from __future__ import annotations

import abc
from collections.abc import Callable, Container
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._evaluation import Evaluation, UndoLog, current_weights, evaluate
from ._problem import ConstrainedProblem, ProblemState
from ._updates import dual_update, primal_update, sgd_step_sizes

Closure = Callable[[], ProblemState]


class StepResult(NamedTuple):
    """What a step returns, measured at the point the step started from.

    Every field is a detached 0-dim tensor: logging it costs no host synchronisation until
    it is converted with ``float()``.

    Attributes:
        objective: The objective.
        lagrangian: The Lagrangian.
        max_violation: The largest violation of any constraint element in the evaluation.
        mean_violation: The mean violation over every constraint element in the evaluation.
    """

    objective: Tensor
    lagrangian: Tensor
    max_violation: Tensor
    mean_violation: Tensor


class StepSizes(NamedTuple):
    """Each side's :func:`sgd_step_sizes` (``None``: the side uses ``optimizer.step()``)."""

    primal: list[float] | None
    dual: list[float] | None


def _params(optimizer: torch.optim.Optimizer | None) -> list[nn.Parameter]:
    if optimizer is None:
        return []
    return [param for group in optimizer.param_groups for param in group["params"]]


def _check_optimizer(label: str, optimizer: object, maximize: bool) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"the {label} optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    for index, group in enumerate(optimizer.param_groups):
        learning_rate = float(group.get("lr", 0.0))
        if not learning_rate > 0.0:
            raise ValueError(
                f"Invalid learning rate in the {label} optimizer (param group {index}): "
                f"{learning_rate}"
            )
        if bool(group.get("maximize", False)) != maximize:
            expected = "maximize: build it with maximize=True" if maximize else "minimize"
            raise ValueError(
                f"the {label} optimizer must {expected} (param group {index} has "
                f"maximize={group.get('maximize', False)})"
            )


def _check_membership(
    problem: ConstrainedProblem,
    primal_optimizer: torch.optim.Optimizer,
    dual_optimizer: torch.optim.Optimizer | None,
) -> None:
    primal = {id(param) for param in _params(primal_optimizer)}
    dual = {id(param) for param in _params(dual_optimizer)}
    for name, constraint in problem.constraint_items():
        if constraint.multiplier is None:
            continue
        if dual_optimizer is None:
            raise ValueError(
                f"constraint '{name}' has multipliers but no dual optimizer was given: "
                "build one over problem.dual_parameters() with maximize=True"
            )
        if id(constraint.multiplier) not in dual:
            raise ValueError(
                f"the multiplier of constraint '{name}' is not in the dual optimizer: "
                "build it over problem.dual_parameters()"
            )
        if id(constraint.multiplier) in primal:
            raise ValueError(
                f"the multiplier of constraint '{name}' is in the primal optimizer: "
                "multipliers take ascent steps in the dual optimizer only"
            )
        if constraint.slack is not None and id(constraint.slack) not in primal:
            raise ValueError(
                f"the slack of constraint '{name}' is not in the primal optimizer: "
                "add problem.slack_parameters() to it"
            )
    multipliers = {id(param) for param in problem.dual_parameters()}
    for param in _params(dual_optimizer):
        if id(param) not in multipliers:
            raise ValueError(
                f"the dual optimizer holds a tensor of shape {tuple(param.shape)} that is not a "
                "multiplier of this problem"
            )


class ConstrainedOptimizer(abc.ABC):
    """Common interface of the saddle-point methods.

    Each method takes two stock ``torch.optim`` optimizers: the primal one over the model
    parameters and the slacks (descent), the dual one over the multipliers, built with
    ``maximize=True`` (ascent). The method forms the Lagrangian and calls ``backward``
    itself, once per evaluation; gradients present before a step are discarded. A step that
    raises leaves the parameters, slacks, multipliers and optimizer states as they were.

    Args:
        problem: The problem to solve.
        primal_optimizer: Optimizer over the model parameters and ``problem.slack_parameters()``.
        dual_optimizer: Optimizer over ``problem.dual_parameters()`` with ``maximize=True``;
            ``None`` if every constraint has the penalty treatment (no multipliers).
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal_optimizer: torch.optim.Optimizer,
        dual_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        if not isinstance(problem, ConstrainedProblem):
            raise TypeError(f"problem must be a ConstrainedProblem, got {type(problem).__name__}")
        _check_optimizer("primal", primal_optimizer, maximize=False)
        if dual_optimizer is not None:
            _check_optimizer("dual", dual_optimizer, maximize=True)
        _check_membership(problem, primal_optimizer, dual_optimizer)
        self.problem = problem
        self.primal_optimizer = primal_optimizer
        self.dual_optimizer = dual_optimizer
        self._indexed_tables = {
            id(param)
            for _, constraint in problem.constraint_items()
            if constraint.spec.indexed
            for param in (constraint.multiplier, constraint.slack)
            if param is not None
        }

    @abc.abstractmethod
    def step(self, closure: Closure) -> StepResult:
        """Takes one step.

        Args:
            closure: Re-evaluates the problem on the current batch and returns its
                :class:`ProblemState`, e.g. ``lambda: problem(inputs, targets, indices)``.

        Returns:
            The objective, Lagrangian and violations at the point the step started from.
        """

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The primal optimizer's parameter groups, then the dual optimizer's."""
        dual_groups = [] if self.dual_optimizer is None else self.dual_optimizer.param_groups
        return [*self.primal_optimizer.param_groups, *dual_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the gradients of both optimizers' parameters."""
        self.primal_optimizer.zero_grad(set_to_none=set_to_none)
        if self.dual_optimizer is not None:
            self.dual_optimizer.zero_grad(set_to_none=set_to_none)

    def _clear_grads(self) -> None:
        # What zero_grad() does, without the profiler hooks of Optimizer.zero_grad, which
        # cost more than the rest of a small problem's step.
        for optimizer in (self.primal_optimizer, self.dual_optimizer):
            if optimizer is None:
                continue
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states. Multipliers and slacks are in ``problem.state_dict()``."""
        return {
            "method": type(self).__name__,
            "primal": self.primal_optimizer.state_dict(),
            "dual": None if self.dual_optimizer is None else self.dual_optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned.

        Raises:
            ValueError: If the state comes from another method or lacks a part.
        """
        missing = {"method", "primal", "dual"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        method = state_dict["method"]
        if method != type(self).__name__:
            raise ValueError(f"state_dict is from {method}, not {type(self).__name__}")
        if (state_dict["dual"] is None) != (self.dual_optimizer is None):
            raise ValueError("state_dict and this optimizer disagree on having a dual optimizer")
        self.primal_optimizer.load_state_dict(state_dict["primal"])
        if self.dual_optimizer is not None:
            self.dual_optimizer.load_state_dict(state_dict["dual"])

    # The pieces every method is made of.

    def _evaluate_and_backward(self, closure: Closure, undo: UndoLog) -> Evaluation:
        """Evaluates at the current point and backpropagates; on failure undoes both."""
        try:
            evaluation = evaluate(self.problem, closure, undo)
            self._backward(evaluation)
            return evaluation
        except BaseException:
            self._clear_grads()
            undo.restore()
            raise

    def _backward(self, evaluation: Evaluation, weights: list[Tensor] | None = None) -> None:
        self._clear_grads()
        evaluation.backward(weights)

    def _step_sizes(self) -> StepSizes:
        """Read once per step: a scheduler may change the learning rates between steps."""
        dual = self.dual_optimizer
        return StepSizes(
            sgd_step_sizes(self.primal_optimizer), None if dual is None else sgd_step_sizes(dual)
        )

    def _update(self, evaluation: Evaluation, sizes: StepSizes, commit_state: bool) -> None:
        """Both sides' steps along the gradients of ``evaluation``, from the current point
        (under the caller's ``torch.no_grad()``)."""
        primal_update(self.primal_optimizer, sizes.primal, evaluation.terms, commit_state)
        dual_update(self.dual_optimizer, sizes.dual, evaluation.terms, commit_state)

    def _result(self, evaluation: Evaluation) -> StepResult:
        max_violation, mean_violation = evaluation.violation_summary()
        return StepResult(
            evaluation.objective.detach(), evaluation.lagrangian, max_violation, mean_violation
        )

    def _dense_parameters(self) -> list[Tensor]:
        """Parameters of both optimizers except the indexed tables (stepped by rows)."""
        indexed = self._indexed_tables
        params = [*_params(self.primal_optimizer), *_params(self.dual_optimizer)]
        return [param for param in params if id(param) not in indexed]


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

    def step(self, closure: Closure) -> StepResult:
        evaluation = self._evaluate_and_backward(closure, UndoLog())
        with torch.no_grad():
            self._update(evaluation, self._step_sizes(), commit_state=True)
        self._clear_grads()
        return self._result(evaluation)


class AlternatingGDA(ConstrainedOptimizer):
    """Alternating gradient descent-ascent: the dual step first, then the primal step.

    .. math::

        \\lambda_{k+1} = \\lambda_k + \\eta_\\lambda \\nabla_\\lambda \\mathcal{L}(x_k, \\lambda_k),
        \\qquad
        x_{k+1} = x_k - \\eta_x \\nabla_x \\mathcal{L}(x_k, \\lambda_{k+1})

    The multiplier gradient is the constraint residual itself, so the primal step sees the
    updated multipliers at the cost of one evaluation and one backward pass.
    """

    def step(self, closure: Closure) -> StepResult:
        undo = UndoLog()
        try:
            evaluation = evaluate(self.problem, closure, undo)
        except BaseException:
            undo.restore()
            raise
        self._clear_grads()
        sizes = self._step_sizes()
        with torch.no_grad():
            dual_update(self.dual_optimizer, sizes.dual, evaluation.terms, commit_state=True)
        self._backward(evaluation, [current_weights(term) for term in evaluation.terms])
        with torch.no_grad():
            primal_update(self.primal_optimizer, sizes.primal, evaluation.terms, commit_state=True)
        self._clear_grads()
        return self._result(evaluation)


class ExtraGradient(ConstrainedOptimizer):
    """Extra-gradient (Korpelevich, 1976): step to an extrapolated point, then step from the
    original point with the gradients found at the extrapolated one.

    With :math:`z = (x, s, \\lambda)` and :math:`F(z) = (\\nabla_x \\mathcal{L},
    \\nabla_s \\mathcal{L}, -\\nabla_\\lambda \\mathcal{L})`:

    .. math::

        z_{k+1/2} = z_k - \\eta F(z_k), \\qquad z_{k+1} = z_k - \\eta F(z_{k+1/2})

    where each plain step is the base optimizer's update. The extrapolation reads the base
    optimizers' state (momentum, Adam's moments) without changing it, so the state advances
    once per step, with the gradient at the extrapolated point. On bilinear games, where
    simultaneous descent-ascent spirals outwards, extra-gradient converges.

    Each step calls the closure twice on the same batch. The step holds one copy of the
    parameters and multipliers for the duration of the step (reused from step to step).

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, ExtraGradient, ProblemState
        >>> class Problem(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.zeros(2))
        ...         self.add_inequality("sum", ">=")
        ...     def forward(self) -> ProblemState:
        ...         return ProblemState(self.x.square().sum(), {"sum": self.x.sum() - 2})
        >>> problem = Problem()
        >>> optimizer = ExtraGradient(
        ...     problem,
        ...     torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        ...     torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        ... )
        >>> for _ in range(500):
        ...     result = optimizer.step(problem)
        >>> [round(v, 3) for v in problem.x.tolist()], round(float(result.max_violation), 6)
        ([1.0, 1.0], 0.0)
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal_optimizer: torch.optim.Optimizer,
        dual_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        super().__init__(problem, primal_optimizer, dual_optimizer)
        self._copies: list[Tensor] = []

    def _save_point(self, params: list[Tensor]) -> None:
        if len(self._copies) != len(params) or any(
            copy.shape != param.shape or copy.dtype != param.dtype or copy.device != param.device
            for copy, param in zip(self._copies, params)
        ):
            self._copies = [
                torch.empty_like(param, memory_format=torch.preserve_format) for param in params
            ]
        if params:
            torch._foreach_copy_(self._copies, params)

    @staticmethod
    def _point_rows(evaluation: Evaluation) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The indexed rows the extrapolation will move: (table, rows, values at the start)."""
        saved = []
        for term in evaluation.terms:
            if term.indices is not None:
                saved.append((term.multiplier.data, term.indices, term.multipliers_read))
            if term.slack is not None:
                saved.append((term.slack.table.data, term.slack.rows, term.slack.values.detach()))
        return saved

    def _restore_point(
        self,
        params: list[Tensor],
        rows: list[tuple[Tensor, Tensor, Tensor]],
        skip: Container[int] = (),
    ) -> None:
        """Copies the saved point back, except into the parameters whose ids are in ``skip``."""
        targets, sources = params, self._copies
        if skip:
            kept = [index for index, param in enumerate(params) if id(param) not in skip]
            targets, sources = [params[i] for i in kept], [sources[i] for i in kept]
        if targets:
            torch._foreach_copy_(targets, sources)
        for table, index, values in rows:
            table.index_copy_(0, index, values)

    def _final_update(
        self,
        dense: list[Tensor],
        rows: list[tuple[Tensor, Tensor, Tensor]],
        extrapolated: Evaluation,
        sizes: StepSizes,
    ) -> None:
        """The step from the saved point along the extrapolated point's gradients."""
        if sizes.primal is None:
            self._restore_point(dense, rows)
            self._update(extrapolated, sizes, commit_state=True)
            return
        # Plain SGD steps from the saved point straight into the parameters it moves: one
        # pass over them instead of a copy back and an update.
        origins = {id(param): copy for param, copy in zip(dense, self._copies)}
        moved = {id(param) for param in _params(self.primal_optimizer) if param.grad is not None}
        self._restore_point(dense, rows, skip=moved)
        primal_update(
            self.primal_optimizer, sizes.primal, extrapolated.terms, commit_state=True,
            origins=origins,
        )  # fmt: skip
        dual_update(self.dual_optimizer, sizes.dual, extrapolated.terms, commit_state=True)

    def step(self, closure: Closure) -> StepResult:
        undo = UndoLog()
        start = self._evaluate_and_backward(closure, undo)
        dense = self._dense_parameters()
        rows = self._point_rows(start)
        sizes = self._step_sizes()
        with torch.no_grad():
            self._save_point(dense)
            self._update(start, sizes, commit_state=False)
        try:
            indices = {term.constraint.spec.name: term.indices for term in start.terms}
            extrapolated = evaluate(self.problem, closure, undo, expected_indices=indices)
            self._backward(extrapolated)
        except BaseException:
            self._clear_grads()
            with torch.no_grad():
                self._restore_point(dense, rows)
            undo.restore()
            raise
        with torch.no_grad():
            self._final_update(dense, rows, extrapolated, sizes)
        self._clear_grads()
        return self._result(start)
