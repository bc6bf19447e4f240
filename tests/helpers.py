"""Small problems with known solutions, shared by the tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
    SimultaneousGDA,
)

METHODS: list[type[ConstrainedOptimizer]] = [ExtraGradient, SimultaneousGDA, AlternatingGDA]
TREATMENTS = ["slack", "projection"]


class QuadraticProgram(ConstrainedProblem):
    """min 1/2 x'Qx - p'x s.t. x1 + x2 >= 2, Q = [[3, 1], [1, 2]], p = (1, 1).

    Solution x* = (2/3, 4/3), multiplier 7/3.
    """

    solution = (2 / 3, 4 / 3)
    multiplier = 7 / 3

    def __init__(
        self,
        treatment: str = "slack",
        dtype: torch.dtype = torch.float64,
        penalty_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2))
        self.register_buffer("Q", torch.tensor([[3.0, 1.0], [1.0, 2.0]]))
        self.register_buffer("p", torch.ones(2))
        self.add_inequality(
            "sum",
            ">=",
            treatment=treatment,  # type: ignore[arg-type]
            penalty_weight=penalty_weight,
        )
        self.to(dtype)

    def forward(self) -> ProblemState:
        objective = 0.5 * self.x @ self.Q @ self.x - self.p @ self.x
        return ProblemState(objective, {"sum": self.x.sum() - 2})


class MinNorm(ConstrainedProblem):
    """min ||x||^2 s.t. Ax = b: x* = pinv(A) b, multiplier -2 (AA')^-1 b."""

    def __init__(self, A: Tensor, b: Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("b", b)
        self.x = nn.Parameter(torch.zeros(A.shape[1], dtype=A.dtype))
        self.add_equality("Ax=b", shape=(A.shape[0],))
        self.to(A.dtype)

    def forward(self) -> ProblemState:
        return ProblemState(self.x.square().sum(), {"Ax=b": self.A @ self.x - self.b})


class NonNegativeLinear(ConstrainedProblem):
    """Least squares of a linear model whose every training prediction must be >= 0."""

    def __init__(self, X: Tensor, y: Tensor, treatment: str = "slack") -> None:
        super().__init__()
        self.register_buffer("X", X)
        self.register_buffer("y", y)
        self.linear = nn.Linear(X.shape[1], 1, dtype=X.dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.add_inequality(
            "nonnegative",
            ">=",
            num_samples=X.shape[0],
            treatment=treatment,  # type: ignore[arg-type]
        )
        self.to(X.dtype)

    def forward(self, indices: Tensor) -> ProblemState:
        predictions = self.linear(self.X[indices]).squeeze(-1)
        loss = (predictions - self.y[indices]).square().mean()
        return ProblemState(loss, {"nonnegative": IndexedValue(predictions, indices)})


def sgd_pair(
    problem: ConstrainedProblem,
    lr: float,
    dual_lr: float | None = None,
    slack_lr: float | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Plain SGD on both sides; the slacks may get their own learning rate."""
    slacks = problem.slack_parameters()
    slack_ids = {id(p) for p in slacks}
    others = [p for p in problem.primal_parameters() if id(p) not in slack_ids]
    groups: list[dict[str, object]] = [{"params": others}]
    if slacks:
        groups.append({"params": slacks, "lr": lr if slack_lr is None else slack_lr})
    primal = torch.optim.SGD(groups, lr=lr)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=dual_lr or lr, maximize=True)
    return primal, dual


def steps_to_tolerance(
    step: Callable[[], object],
    error: Callable[[], float],
    tolerance: float,
    max_steps: int,
    hold: int = 50,
) -> int | None:
    """The first step after which error() stays <= tolerance for `hold` more steps."""
    first = None
    for k in range(1, max_steps + 1):
        step()
        if error() <= tolerance:
            if first is None:
                first = k
            elif k - first >= hold:
                return first
        else:
            first = None
    return None
