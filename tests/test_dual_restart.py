"""Dual restarts (``add_inequality(..., dual_restart=True)``): after each dual step, the
multipliers of the strictly satisfied elements are 0; the others take the ascent step."""

from __future__ import annotations

import re

import pytest
import torch

from lagrange_opt import (
    ConstrainedProblem,
    IndexedValue,
    ProblemState,
    SimultaneousGDA,
)

LR = 0.1
START = 0.7


class Caps(ConstrainedProblem):
    """min |x - 2|^2 s.t. x <= 1 elementwise (dense), or each sample's x[i] <= 1 (indexed)."""

    def __init__(self, restart: bool, indexed: bool = False) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor([0.0, 2.0, 0.5, 3.0]))
        shape = () if indexed else (4,)
        samples = 4 if indexed else None
        self.cap = self.add_inequality(
            "cap", "<=", shape=shape, num_samples=samples, dual_restart=restart
        )
        with torch.no_grad():
            self.cap.multiplier.fill_(START)  # type: ignore[union-attr]

    def forward(self, indices: torch.Tensor | None = None) -> ProblemState:
        objective = (self.x - 2).square().sum()
        if indices is None:
            return ProblemState(objective, {"cap": self.x - 1})
        return ProblemState(objective, {"cap": IndexedValue(self.x[indices] - 1, indices)})


def _step(problem: Caps, dual: str, indices: torch.Tensor | None = None) -> torch.Tensor:
    multipliers = problem.dual_parameters()
    dual_optimizer = (
        torch.optim.SGD(multipliers, lr=LR, maximize=True)
        if dual == "sgd"
        else torch.optim.SGD(multipliers, lr=LR, momentum=0.5, maximize=True)
    )
    optimizer = SimultaneousGDA(
        problem, torch.optim.SGD(problem.primal_parameters(), lr=0.0), dual_optimizer
    )
    optimizer.step(lambda: problem(indices) if indices is not None else problem())
    multiplier = problem.cap.multiplier
    assert multiplier is not None
    return multiplier.detach().clone()


# g = x - 1 = (-1, 1, -0.5, 2): elements 0 and 2 strictly satisfied.
ASCENT = torch.tensor([START - LR, START + LR, START - 0.5 * LR, START + 2 * LR])


@pytest.mark.parametrize("dual", ["sgd", "stock"])  # the direct update and optimizer.step()
def test_the_rule_by_hand_on_a_dense_constraint(dual: str) -> None:
    torch.testing.assert_close(_step(Caps(restart=False), dual), ASCENT)
    restarted = torch.tensor([0.0, START + LR, 0.0, START + 2 * LR])
    torch.testing.assert_close(_step(Caps(restart=True), dual), restarted)


@pytest.mark.parametrize("dual", ["sgd", "stock"])
def test_only_the_batch_rows_of_an_indexed_constraint_restart(dual: str) -> None:
    batch = torch.tensor([0, 1])  # row 0 satisfied, row 1 violated; rows 2 and 3 not read
    expected = torch.tensor([0.0, START + LR, START, START])
    torch.testing.assert_close(_step(Caps(restart=True, indexed=True), dual, batch), expected)


def test_a_constraint_met_with_equality_is_not_restarted() -> None:
    problem = Caps(restart=True)
    with torch.no_grad():
        problem.x.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))  # g = 0: active, not strictly met
    torch.testing.assert_close(_step(problem, "sgd"), torch.full((4,), START))


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (
            {"treatment": "slack"},
            ValueError,
            "constraint 'c': dual_restart needs treatment='projection' (its multiplier is "
            "projected onto >= 0), got treatment='slack'",
        ),
        (
            {"treatment": "penalty", "penalty_weight": 1.0},
            ValueError,
            "constraint 'c': dual_restart needs treatment='projection' (its multiplier is "
            "projected onto >= 0), got treatment='penalty'",
        ),
        ({"dual_restart": 1}, TypeError, "constraint 'c': dual_restart must be a bool, got 1"),
    ],
)
def test_bad_declarations(settings: dict[str, object], error: type, message: str) -> None:
    class Problem(ConstrainedProblem):
        def forward(self) -> ProblemState:
            raise NotImplementedError

    settings = {"dual_restart": True, **settings}
    with pytest.raises(error, match=re.escape(message)):
        Problem().add_inequality("c", "<=", **settings)  # type: ignore[arg-type]
