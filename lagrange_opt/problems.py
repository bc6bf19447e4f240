"""Constrained problems with known solutions, to test methods and settings on.

Every problem is a :class:`~lagrange_opt.ConstrainedProblem` whose constructor takes the
inequality treatment (``"slack"``, ``"projection"`` or ``"penalty"``; under ``"penalty"``
the equalities are penalised too), so that one definition serves every method.

- :data:`HOCK_SCHITTKOWSKI`: eleven problems of Hock and Schittkowski, *Test Examples for
  Nonlinear Programming Codes* (1981), from their standard start points, with their
  variable bounds written as inequality constraints. Build one with
  :class:`NonlinearProgram`.
- :class:`NonNegativeLeastSquares`: least squares with non-negative coefficients (the
  reference is ``scipy.optimize.nnls``).
- :class:`NonNegativePredictions`: a linear least-squares model whose every training
  prediction must be non-negative: an indexed constraint, one per sample.
- :class:`PositiveOutputs`: the same constraint on a network's outputs (no known optimum).

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

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._evaluation import check_state
from ._lagrangian import standard_form, violation
from ._problem import ConstrainedProblem, IndexedValue, ProblemState, Treatment

__all__ = [
    "HOCK_SCHITTKOWSKI",
    "NonNegativeLeastSquares",
    "NonNegativePredictions",
    "NonlinearProgram",
    "PositiveOutputs",
    "ProgramDefinition",
    "max_violation",
    "relative_gap",
]

INF = math.inf


class ProgramDefinition(NamedTuple):
    """A smooth nonlinear program ``min f(x) s.t. h(x) = 0, g(x) >= 0, lower <= x <= upper``.

    Attributes:
        name: Short name, such as ``"hs071"``.
        objective: ``f``, a function of the 1-D tensor ``x``.
        equalities: ``h``, returning a 1-D tensor, or ``None``.
        inequalities: ``g``, returning a 1-D tensor that must be ``>= 0``, or ``None``.
        lower: Lower bounds, ``-inf`` where there is none.
        upper: Upper bounds, ``inf`` where there is none.
        x0: The standard start point.
        f_star: The optimal value.
        x_star: An optimal point.
    """

    name: str
    objective: Callable[[Tensor], Tensor]
    equalities: Callable[[Tensor], Tensor] | None
    inequalities: Callable[[Tensor], Tensor] | None
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    x0: tuple[float, ...]
    f_star: float
    x_star: tuple[float, ...]


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


def _stack(*values: Tensor) -> Tensor:
    return torch.stack(values)


def _hs006(x: Tensor) -> Tensor:
    return (1 - x[0]).square()


def _hs007(x: Tensor) -> Tensor:
    return torch.log1p(x[0].square()) - x[1]


def _hs021(x: Tensor) -> Tensor:
    return 0.01 * x[0].square() + x[1].square() - 100


def _hs028(x: Tensor) -> Tensor:
    return (x[0] + x[1]).square() + (x[1] + x[2]).square()


def _hs035(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (
        9 - 8 * x1 - 6 * x2 - 4 * x3
        + 2 * x1**2 + 2 * x2**2 + x3**2 + 2 * x1 * x2 + 2 * x1 * x3
    )  # fmt: skip


def _hs043(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1**2 + x2**2 + 2 * x3**2 + x4**2 - 5 * x1 - 5 * x2 - 21 * x3 + 7 * x4


def _hs043_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(
        8 - x1**2 - x2**2 - x3**2 - x4**2 - x1 + x2 - x3 + x4,
        10 - x1**2 - 2 * x2**2 - x3**2 - 2 * x4**2 + x1 + x4,
        5 - 2 * x1**2 - x2**2 - x3**2 - 2 * x1 + x2 + x4,
    )


def _hs044(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1 - x2 - x3 - x1 * x3 + x1 * x4 + x2 * x3 - x2 * x4


def _hs044_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(
        8 - x1 - 2 * x2,
        12 - 4 * x1 - x2,
        12 - 3 * x1 - 4 * x2,
        8 - 2 * x3 - x4,
        8 - x3 - 2 * x4,
        5 - x3 - x4,
    )


def _hs048(x: Tensor) -> Tensor:
    return (x[0] - 1).square() + (x[1] - x[2]).square() + (x[3] - x[4]).square()


def _hs065(x: Tensor) -> Tensor:
    x1, x2, x3 = x.unbind()
    return (x1 - x2) ** 2 + (x1 + x2 - 10) ** 2 / 9 + (x3 - 5) ** 2


def _hs071(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return x1 * x4 * (x1 + x2 + x3) + x3


def _hs076(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return (
        x1**2 + 0.5 * x2**2 + x3**2 + 0.5 * x4**2
        - x1 * x3 + x3 * x4 - x1 - 3 * x2 + x3 - x4
    )  # fmt: skip


def _hs076_inequalities(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x.unbind()
    return _stack(
        5 - x1 - 2 * x2 - x3 - x4,
        4 - 3 * x1 - x2 - 2 * x3 + x4,
        x2 + 4 * x3 - 1.5,
    )


_DEFINITIONS = [
    ProgramDefinition(
        "hs006", _hs006,
        lambda x: _stack(10 * (x[1] - x[0].square())), None,
        (-INF, -INF), (INF, INF), (-1.2, 1.0), 0.0, (1.0, 1.0),
    ),
    ProgramDefinition(
        "hs007", _hs007,
        lambda x: _stack((1 + x[0].square()).square() + x[1].square() - 4), None,
        (-INF, -INF), (INF, INF), (2.0, 2.0), -math.sqrt(3), (0.0, math.sqrt(3)),
    ),
    ProgramDefinition(
        "hs021", _hs021,
        None, lambda x: _stack(10 * x[0] - x[1] - 10),
        (2.0, -50.0), (50.0, 50.0), (-1.0, -1.0), -99.96, (2.0, 0.0),
    ),
    ProgramDefinition(
        "hs028", _hs028,
        lambda x: _stack(x[0] + 2 * x[1] + 3 * x[2] - 1), None,
        (-INF,) * 3, (INF,) * 3, (-4.0, 1.0, 1.0), 0.0, (0.5, -0.5, 0.5),
    ),
    ProgramDefinition(
        "hs035", _hs035,
        None, lambda x: _stack(3 - x[0] - x[1] - 2 * x[2]),
        (0.0,) * 3, (INF,) * 3, (0.5, 0.5, 0.5), 1 / 9, (4 / 3, 7 / 9, 4 / 9),
    ),
    ProgramDefinition(
        "hs043", _hs043,
        None, _hs043_inequalities,
        (-INF,) * 4, (INF,) * 4, (0.0,) * 4, -44.0, (0.0, 1.0, 2.0, -1.0),
    ),
    ProgramDefinition(
        "hs044", _hs044,
        None, _hs044_inequalities,
        (0.0,) * 4, (INF,) * 4, (0.0,) * 4, -15.0, (0.0, 3.0, 0.0, 4.0),
    ),
    ProgramDefinition(
        "hs048", _hs048,
        lambda x: _stack(x.sum() - 5, x[2] - 2 * (x[3] + x[4]) + 3), None,
        (-INF,) * 5, (INF,) * 5, (3.0, 5.0, -3.0, 2.0, -2.0), 0.0, (1.0,) * 5,
    ),
    ProgramDefinition(
        "hs065", _hs065,
        None, lambda x: _stack(48 - x.square().sum()),
        (-4.5, -4.5, -5.0), (4.5, 4.5, 5.0), (-5.0, 5.0, 0.0),
        0.9535288567, (3.650461821, 3.65046168, 4.6204170507),
    ),
    ProgramDefinition(
        "hs071", _hs071,
        lambda x: _stack(x.square().sum() - 40), lambda x: _stack(x.prod() - 25),
        (1.0,) * 4, (5.0,) * 4, (1.0, 5.0, 5.0, 1.0),
        17.0140173, (1.0, 4.7429994, 3.8211503, 1.3794082),
    ),
    ProgramDefinition(
        "hs076", _hs076,
        None, _hs076_inequalities,
        (0.0,) * 4, (INF,) * 4, (0.5,) * 4,
        -4.6818181818, (0.2727273, 2.090909, 0.0, 0.5454545),
    ),
]  # fmt: skip

HOCK_SCHITTKOWSKI: dict[str, ProgramDefinition] = {d.name: d for d in _DEFINITIONS}
"""The Hock-Schittkowski problems by name: hs006, hs007, hs021, hs028, hs035, hs043, hs044,
hs048, hs065, hs071, hs076."""


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

    Constraints (those the definition has): ``"equality"`` (``h(x) = 0``),
    ``"inequality"`` (``g(x) >= 0``), ``"lower"`` (``x - lower >= 0`` where the bound is
    finite) and ``"upper"`` (``upper - x >= 0``).

    Args:
        definition: The program.
        treatment: Inequality treatment; ``"penalty"`` penalises the equalities too.
        penalty_weight: The weight ``alpha`` of the penalty ``alpha * violation**2``,
            with ``treatment="penalty"`` only.
    """

    lower: Tensor
    upper: Tensor
    lower_index: Tensor
    upper_index: Tensor

    def __init__(
        self,
        definition: ProgramDefinition,
        treatment: Treatment = "slack",
        penalty_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.definition = definition
        x0 = torch.tensor(definition.x0, dtype=torch.float64)
        self.x = nn.Parameter(x0.clone())
        lower = torch.tensor(definition.lower, dtype=torch.float64)
        upper = torch.tensor(definition.upper, dtype=torch.float64)
        self.register_buffer("lower_index", torch.isfinite(lower).nonzero().squeeze(1))
        self.register_buffer("upper_index", torch.isfinite(upper).nonzero().squeeze(1))
        self.register_buffer("lower", lower[self.lower_index])
        self.register_buffer("upper", upper[self.upper_index])
        with torch.no_grad():
            if definition.equalities is not None:
                size = definition.equalities(x0).numel()
                _declare(self, "equality", "equality", size, treatment, penalty_weight)
            if definition.inequalities is not None:
                size = definition.inequalities(x0).numel()
                _declare(self, "inequality", "inequality", size, treatment, penalty_weight)
        for name, bound in (("lower", self.lower), ("upper", self.upper)):
            if bound.numel():
                _declare(self, name, "inequality", bound.numel(), treatment, penalty_weight)
        self.double()

    def forward(self) -> ProblemState:
        definition = self.definition
        x = self.x
        values: dict[str, Tensor | IndexedValue] = {}
        if definition.equalities is not None:
            values["equality"] = definition.equalities(x)
        if definition.inequalities is not None:
            values["inequality"] = definition.inequalities(x)
        if self.lower.numel():
            values["lower"] = x[self.lower_index] - self.lower
        if self.upper.numel():
            values["upper"] = self.upper - x[self.upper_index]
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
        treatment: Treatment = "slack",
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
        treatment: Treatment = "slack",
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
        treatment: Treatment = "slack",
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
