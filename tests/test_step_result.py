"""What a step returns is measured at the point the step started from."""

from __future__ import annotations

import pytest
import torch
from helpers import METHODS
from torch import nn

from lagrange_opt import ConstrainedProblem, ProblemState


class ParameterBelowZero(ConstrainedProblem):
    """``x <= 0`` with the parameter itself as the constraint's value: the value returned
    shares memory with what the step changes."""

    def __init__(self, treatment: str) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
        weight = 10.0 if treatment == "penalty" else None
        self.add_inequality(
            "x",
            "<=",
            shape=(2,),
            treatment=treatment,
            penalty_weight=weight,  # type: ignore[arg-type]
        )
        self.double()

    def forward(self) -> ProblemState:
        return ProblemState((self.x - 3).square().sum(), {"x": self.x})


@pytest.mark.parametrize("treatment", ["slack", "projection", "penalty"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_violations_are_those_of_the_starting_point(
    method: type, treatment: str, device: str
) -> None:
    problem = ParameterBelowZero(treatment).to(device)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.1)
    multipliers = problem.dual_parameters()
    dual = torch.optim.SGD(multipliers, lr=0.1, maximize=True) if multipliers else None
    optimizer = method(problem, primal, dual)
    result = optimizer.step(problem)
    assert not torch.equal(problem.x.detach().cpu(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert float(result.max_violation) == 2.0
    assert float(result.mean_violation) == 1.5
    assert float(result.objective) == 5.0
