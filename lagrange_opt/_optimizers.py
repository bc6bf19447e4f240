"""Saddle-point optimizers: descent on the parameters and slacks, ascent on the multipliers."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from ._augmented import AugmentedLagrangian, check_augmented
from ._evaluation import Evaluation, UndoLog, current_weights, evaluate
from ._formulation_state import FormulationState
from ._kkt import ConstraintFigures, ConstraintReport
from ._problem import ConstrainedProblem, ProblemState
from ._scaling import measure_scales
from ._updates import dual_update, primal_update, sgd_step_sizes

Closure = Callable[[], ProblemState]

FormulationName = Literal["lagrangian", "augmented"]


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
            largest absolute multiplier), computed when read.
        evaluations: How many times the step called the closure.
    """

    objective: Tensor
    lagrangian: Tensor
    max_violation: Tensor
    mean_violation: Tensor
    constraints: Mapping[str, ConstraintFigures] = {}
    evaluations: int = 1


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

    Parameters bounded with :meth:`ConstrainedProblem.add_bounds` are projected onto their
    box after every primal update.

    Args:
        problem: The problem to solve.
        primal_optimizer: Optimizer over the model parameters and ``problem.slack_parameters()``.
        dual_optimizer: Optimizer over ``problem.dual_parameters()`` with ``maximize=True``;
            ``None`` if every constraint has the penalty treatment (no multipliers).
        formulation: ``"lagrangian"`` (the Lagrangian), ``"augmented"`` (the augmented
            Lagrangian with the default :class:`AugmentedLagrangian` settings) or an
            :class:`AugmentedLagrangian` with settings of its own. In the augmented
            Lagrangian a slack is minimised in closed form (it stays in the primal
            optimizer but takes no step) and every inequality's multipliers are projected.
        scaling: Divide the objective and each constraint by the largest entry of its
            gradient at the first step (if above one); the first step then calls the
            closure once more. Every figure the user sees stays in the user's units.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal_optimizer: torch.optim.Optimizer,
        dual_optimizer: torch.optim.Optimizer | None = None,
        *,
        formulation: FormulationName | AugmentedLagrangian = "lagrangian",
        scaling: bool = False,
    ) -> None:
        if not isinstance(problem, ConstrainedProblem):
            raise TypeError(f"problem must be a ConstrainedProblem, got {type(problem).__name__}")
        _check_optimizer("primal", primal_optimizer, maximize=False)
        if dual_optimizer is not None:
            _check_optimizer("dual", dual_optimizer, maximize=True)
        _check_membership(problem, primal_optimizer, dual_optimizer)
        if not isinstance(scaling, bool):
            raise TypeError(f"scaling must be a bool, got {type(scaling).__name__}")
        self.formulation = _check_formulation(formulation)
        self._formulation = FormulationState(
            problem, self.formulation, scaling, self._penalty_steps_dual()
        )
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

    def _penalty_steps_dual(self) -> bool:
        """Whether the multipliers' gradient carries the penalty coefficient (the adaptive
        step's dual metric); fixed-step methods step along the plain gradient."""
        return False

    def step(self, closure: Closure) -> StepResult:
        """Takes one step.

        Args:
            closure: Re-evaluates the problem on the current batch and returns its
                :class:`ProblemState`, e.g. ``lambda: problem(inputs, targets, indices)``.

        Returns:
            The objective, Lagrangian and violations at the point the step started from.
        """
        measured = self._formulation.needs_scales
        if measured:
            self._formulation.set_scales(
                measure_scales(self.problem, closure, _params(self.primal_optimizer))
            )
        try:
            return self._step(closure, int(measured))
        except BaseException:
            if measured:
                self._formulation.set_scales(None)
            raise

    @abc.abstractmethod
    def _step(self, closure: Closure, calls: int) -> StepResult:
        """The method's step, after the scales are known; ``calls`` closure calls made."""

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
            "formulation": self._formulation.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned.

        Raises:
            ValueError: If the state comes from another method or lacks a part.
        """
        missing = {"method", "primal", "dual", "formulation"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        method = state_dict["method"]
        if method != type(self).__name__:
            raise ValueError(f"state_dict is from {method}, not {type(self).__name__}")
        if (state_dict["dual"] is None) != (self.dual_optimizer is None):
            raise ValueError("state_dict and this optimizer disagree on having a dual optimizer")
        self._formulation.load_state_dict(state_dict["formulation"])
        self.primal_optimizer.load_state_dict(state_dict["primal"])
        if self.dual_optimizer is not None:
            self.dual_optimizer.load_state_dict(state_dict["dual"])

    # The pieces every method is made of.

    def _evaluate(
        self,
        closure: Closure,
        undo: UndoLog,
        expected_indices: Mapping[str, Tensor | None] | None = None,
    ) -> Evaluation:
        return evaluate(self.problem, closure, undo, expected_indices, self._formulation.current())

    def _evaluate_and_backward(self, closure: Closure, undo: UndoLog) -> Evaluation:
        """Evaluates at the current point and backpropagates; on failure undoes both."""
        try:
            evaluation = self._evaluate(closure, undo)
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
        self.problem.project_bounds_()
        dual_update(self.dual_optimizer, sizes.dual, evaluation.terms, commit_state)

    def _result(self, evaluation: Evaluation, evaluations: int) -> StepResult:
        """The step's result; also where the penalty-update rule sees the step."""
        self._formulation.observe(evaluation)
        max_violation, mean_violation = evaluation.violation_summary()
        multipliers = {
            term.constraint.spec.name: term.multipliers_read for term in evaluation.terms
        }
        return StepResult(
            evaluation.objective.detach(),
            evaluation.lagrangian,
            max_violation,
            mean_violation,
            ConstraintReport(evaluation.standards, multipliers),
            evaluations,
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

    def _step(self, closure: Closure, calls: int) -> StepResult:
        evaluation = self._evaluate_and_backward(closure, UndoLog())
        with torch.no_grad():
            self._update(evaluation, self._step_sizes(), commit_state=True)
        self._clear_grads()
        return self._result(evaluation, calls + 1)


class AlternatingGDA(ConstrainedOptimizer):
    """Alternating gradient descent-ascent: the dual step first, then the primal step.

    .. math::

        \\lambda_{k+1} = \\lambda_k + \\eta_\\lambda \\nabla_\\lambda \\mathcal{L}(x_k, \\lambda_k),
        \\qquad
        x_{k+1} = x_k - \\eta_x \\nabla_x \\mathcal{L}(x_k, \\lambda_{k+1})

    The multiplier gradient is the constraint residual itself, so the primal step sees the
    updated multipliers at the cost of one evaluation and one backward pass.
    """

    def _step(self, closure: Closure, calls: int) -> StepResult:
        undo = UndoLog()
        try:
            evaluation = self._evaluate(closure, undo)
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
            self.problem.project_bounds_()
        self._clear_grads()
        return self._result(evaluation, calls + 1)


def _check_formulation(
    formulation: FormulationName | AugmentedLagrangian,
) -> AugmentedLagrangian | None:
    """The augmented Lagrangian's settings, or ``None`` for the plain Lagrangian."""
    if isinstance(formulation, AugmentedLagrangian):
        return check_augmented(formulation)
    if formulation == "augmented":
        return AugmentedLagrangian()
    if formulation == "lagrangian":
        return None
    raise ValueError(
        f"invalid formulation {formulation!r}; expected 'lagrangian', 'augmented' or an "
        "AugmentedLagrangian"
    )
