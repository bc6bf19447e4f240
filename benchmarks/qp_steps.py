"""Steps to 1e-4 on the core QP, for each method and inequality treatment.

min 1/2 x'Qx - p'x s.t. x1 + x2 >= 2, Q = [[3, 1], [1, 2]], p = (1, 1): x* = (2/3, 4/3),
multiplier 7/3. Plain SGD on both sides, float64. A run counts as converged at the first
step after which the error (in x and in the multiplier) stays <= 1e-4 for 50 more steps.

    python -m benchmarks.qp_steps [--lr 0.1]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    ProblemState,
    SimultaneousGDA,
)

SOLUTION = torch.tensor([2 / 3, 4 / 3], dtype=torch.float64)
MULTIPLIER = 7 / 3


class QuadraticProgram(ConstrainedProblem):
    def __init__(self, treatment: str) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.Q = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        self.add_inequality("sum", ">=", treatment=treatment)  # type: ignore[arg-type]
        self.double()

    def forward(self) -> ProblemState:
        objective = 0.5 * self.x @ self.Q @ self.x - self.x.sum()
        return ProblemState(objective, {"sum": self.x.sum() - 2})

    def error(self) -> float:
        multiplier = float(self.constraints["sum"].multiplier.detach())
        return max(float((self.x.detach() - SOLUTION).abs().max()), abs(multiplier - MULTIPLIER))


def steps_to_tolerance(
    method: type[ConstrainedOptimizer], treatment: str, lr: float, max_steps: int = 5000
) -> int | None:
    problem = QuadraticProgram(treatment)
    optimizer = method(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=lr),
        torch.optim.SGD(problem.dual_parameters(), lr=lr, maximize=True),
    )
    first = None
    for step in range(1, max_steps + 1):
        optimizer.step(problem)
        if problem.error() > 1e-4:
            first = None
        elif first is None:
            first = step
        elif step - first >= 50:
            return first
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    print(f"| method | slack | projection |  (SGD, lr {args.lr})")
    print("|---|---|---|")
    for method in (ExtraGradient, SimultaneousGDA, AlternatingGDA):
        cells = [
            steps_to_tolerance(method, treatment, args.lr) for treatment in ("slack", "projection")
        ]
        print(f"| {method.__name__} | " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
