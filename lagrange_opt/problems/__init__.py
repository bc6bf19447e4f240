"""Constrained problems with known solutions, to test methods and settings on.

Every problem is a :class:`~lagrange_opt.ConstrainedProblem` whose constructor takes the
inequality treatment (``"slack"``, ``"projection"`` or ``"penalty"``; under ``"penalty"``
the equalities are penalised too), so that one definition serves every method.

- :data:`HOCK_SCHITTKOWSKI`: 41 problems of Hock and Schittkowski, *Test Examples for
  Nonlinear Programming Codes* (1981), from their standard start points, with their
  variable bounds kept by projection (``add_bounds``). Build one with
  :class:`NonlinearProgram`.
- :class:`NonNegativeLeastSquares`: least squares with non-negative coefficients (the
  reference is ``scipy.optimize.nnls``).
- :class:`NonNegativePredictions`: a linear least-squares model whose every training
  prediction must be non-negative: an indexed constraint, one per sample.
- :class:`PositiveOutputs`: the same constraint on a network's outputs (no known optimum).
- :func:`digits_split`, :func:`class_recall`, :func:`soft_class_recall`: the data and the
  rates of the recall-constrained digit classifier (``examples/rate_constraints.py``, the
  network suite's ``recall`` row).

Example:
    >>> import torch
    >>> from lagrange_opt import ExtraGradient
    >>> from lagrange_opt.problems import HOCK_SCHITTKOWSKI, NonlinearProgram
    >>> problem = NonlinearProgram(HOCK_SCHITTKOWSKI["hs035"], treatment="projection")
    >>> optimizer = ExtraGradient(
    ...     problem,
    ...     torch.optim.SGD(problem.primal_parameters(), lr=0.05),
    ...     torch.optim.SGD(problem.dual_parameters(), lr=0.05, maximize=True),
    ... )
    >>> for _ in range(2000):
    ...     result = optimizer.step(problem)
    >>> round(float(result.objective), 6), problem.definition.f_star
    (0.111111, 0.1111111111111111)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lagrange_opt.maths.lagrangian import standard_form, violation
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import IndexedValue, ProblemState, Treatment
from lagrange_opt.problem.validation import check_state
from lagrange_opt.problems.digit_recall import (
    DigitsSplit,
    class_recall,
    digits_split,
    soft_class_recall,
)
from lagrange_opt.problems.hock_schittkowski import HOCK_SCHITTKOWSKI, ProgramDefinition
from lagrange_opt.problems.regression_data import (
    NEGATIVE_TOLERANCE,
    RegressionData,
    regression_data,
    regression_network,
)

__all__ = [
    "HOCK_SCHITTKOWSKI",
    "NEGATIVE_TOLERANCE",
    "DigitsSplit",
    "NonNegativeLeastSquares",
    "NonNegativePredictions",
    "NonlinearProgram",
    "PositiveOutputs",
    "ProgramDefinition",
    "RegressionData",
    "check_state",
    "class_recall",
    "digits_split",
    "max_violation",
    "regression_data",
    "regression_network",
    "relative_gap",
    "soft_class_recall",
    "standard_form",
    "violation",
]


def relative_gap(objective: float, f_star: float) -> float:
    """``|f - f*| / |f*|``, or the absolute gap ``|f - f*|`` where ``f* = 0``.

    Example:
        >>> relative_gap(-99.0, -100.0), relative_gap(1e-7, 0.0)
        (0.01, 1e-07)
    """
    gap = abs(objective - f_star)
    return gap if f_star == 0 else gap / abs(f_star)


def max_violation(problem: ConstrainedProblem, state: ProblemState) -> float:
    """The largest violation of any constraint element in what ``problem`` returned.

    Example:
        >>> problem = NonlinearProgram(HOCK_SCHITTKOWSKI["hs035"], treatment="projection")
        >>> max_violation(problem, problem())
        0.0
    """
    worst = 0.0
    _, checked = check_state(problem, state)
    for _, constraint, value, _ in checked:
        standard = standard_form(value.detach(), constraint.spec)
        worst = max(worst, float(violation(standard, constraint.spec).max()))
    return worst


def _declare(
    problem: ConstrainedProblem,
    name: str,
    kind: str,
    size: int,
    treatment: Treatment,
    penalty_weight: float | None,
    num_samples: int | None = None,
) -> None:
    """Declares ``name`` with the treatment that ``treatment`` implies for its kind."""
    shape = (size,) if num_samples is None else ()
    if kind == "equality":
        problem.add_equality(
            name,
            shape=shape,
            num_samples=num_samples,
            treatment="penalty" if treatment == "penalty" else "multiplier",
            penalty_weight=penalty_weight,
        )
    else:
        problem.add_inequality(
            name,
            ">=",
            shape=shape,
            num_samples=num_samples,
            treatment=treatment,
            penalty_weight=penalty_weight,
        )


class NonlinearProgram(ConstrainedProblem):
    """A :class:`ProgramDefinition` as a problem over the parameter ``x``, in float64.

    Constraints (those the definition has): ``"equality"`` (``h(x) = 0``) and
    ``"inequality"`` (``g(x) >= 0``); the variable bounds are kept by projection
    (:meth:`~lagrange_opt.ConstrainedProblem.add_bounds`), so ``x`` starts at the standard
    start point projected onto its box.

    Args:
        definition: The program.
        treatment: Inequality treatment; ``"penalty"`` penalises the equalities too.
        penalty_weight: The weight ``alpha`` of the penalty ``alpha * violation**2``,
            with ``treatment="penalty"`` only.
    """

    def __init__(
        self,
        definition: ProgramDefinition,
        treatment: Treatment = "projection",
        penalty_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.definition = definition
        x0 = torch.tensor(definition.x0, dtype=torch.float64)
        self.x = nn.Parameter(x0.clone())
        with torch.no_grad():
            if definition.equalities is not None:
                size = definition.equalities(x0).numel()
                _declare(self, "equality", "equality", size, treatment, penalty_weight)
            if definition.inequalities is not None:
                size = definition.inequalities(x0).numel()
                _declare(self, "inequality", "inequality", size, treatment, penalty_weight)
        self.double()
        lower = torch.tensor(definition.lower, dtype=torch.float64)
        upper = torch.tensor(definition.upper, dtype=torch.float64)
        if bool(torch.isfinite(lower).any() or torch.isfinite(upper).any()):
            self.add_bounds(self.x, lower=lower, upper=upper)

    def forward(self) -> ProblemState:
        definition = self.definition
        x = self.x
        values: dict[str, Tensor | IndexedValue] = {}
        if definition.equalities is not None:
            values["equality"] = definition.equalities(x)
        if definition.inequalities is not None:
            values["inequality"] = definition.inequalities(x)
        return ProblemState(definition.objective(x), values)


class NonNegativeLeastSquares(ConstrainedProblem):
    """``min ||X w - y||^2 / n  s.t.  w >= 0``, from ``w = 0``.

    Args:
        X: Features, shape ``(n, p)``.
        y: Targets, shape ``(n,)``.
        treatment: Treatment of ``w >= 0``.
        penalty_weight: The penalty weight, with ``treatment="penalty"`` only.
    """

    X: Tensor
    y: Tensor

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        treatment: Treatment = "projection",
        penalty_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("X", X)
        self.register_buffer("y", y)
        self.w = nn.Parameter(torch.zeros(X.shape[1], dtype=X.dtype))
        _declare(self, "nonnegative", "inequality", X.shape[1], treatment, penalty_weight)
        self.to(X.dtype)

    def forward(self) -> ProblemState:
        residual = self.X @ self.w - self.y
        return ProblemState(residual.square().mean(), {"nonnegative": self.w})


class NonNegativePredictions(ConstrainedProblem):
    """A linear model ``x'w + b`` fit by least squares, every prediction ``>= 0``.

    One indexed constraint per training sample. :meth:`forward` evaluates a batch of
    sample indices (all of them by default), from ``w = 0, b = 0``.

    Args:
        X: Features, shape ``(n, p)``.
        y: Targets, shape ``(n,)``.
        treatment: Treatment of the predictions' constraint.
        penalty_weight: The penalty weight, with ``treatment="penalty"`` only.
    """

    X: Tensor
    y: Tensor

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        treatment: Treatment = "projection",
        penalty_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("X", X)
        self.register_buffer("y", y)
        self.weight = nn.Parameter(torch.zeros(X.shape[1], dtype=X.dtype))
        self.bias = nn.Parameter(torch.zeros((), dtype=X.dtype))
        _declare(
            self, "nonnegative", "inequality", 1, treatment, penalty_weight,
            num_samples=X.shape[0],
        )  # fmt: skip
        self.to(X.dtype)

    def predict(self, X: Tensor) -> Tensor:
        """The model's predictions on ``X``."""
        return X @ self.weight + self.bias

    def forward(self, indices: Tensor | None = None) -> ProblemState:
        if indices is None:
            indices = torch.arange(self.X.shape[0], device=self.X.device)
        predictions = self.predict(self.X[indices])
        loss = (predictions - self.y[indices]).square().mean()
        return ProblemState(loss, {"nonnegative": IndexedValue(predictions, indices)})


class PositiveOutputs(ConstrainedProblem):
    """Least squares of a network whose every output on every training sample is ``>= 0``.

    One indexed constraint per sample, of the network's output shape. No optimum is known:
    compare methods by loss and feasibility.

    Args:
        network: Maps a batch of inputs to outputs of shape ``(batch, *output_shape)``.
        num_samples: Training set size.
        treatment: Treatment of the outputs' constraint.
        penalty_weight: The penalty weight, with ``treatment="penalty"`` only.
        output_shape: Shape of one sample's output.
    """

    def __init__(
        self,
        network: nn.Module,
        num_samples: int,
        treatment: Treatment = "projection",
        penalty_weight: float | None = None,
        output_shape: tuple[int, ...] = (2,),
    ) -> None:
        super().__init__()
        self.network = network
        self.add_inequality(
            "nonnegative",
            ">=",
            shape=output_shape,
            num_samples=num_samples,
            treatment=treatment,
            penalty_weight=penalty_weight,
        )

    def forward(self, inputs: Tensor, targets: Tensor, indices: Tensor) -> ProblemState:
        predictions = self.network(inputs)
        loss = nn.functional.mse_loss(predictions, targets)
        return ProblemState(loss, {"nonnegative": IndexedValue(predictions, indices)})
