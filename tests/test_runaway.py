"""The runaway check: an objective unbounded below off the constraint set is held by an
early penalty growth, or stops the run with a diagnosis before the iterates leave every
sane range (lagrange_opt/maths/runaway.py)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from helpers import assert_bitwise_equal, failure_state

from lagrange_opt import (
    DEFAULT_AUGMENTED,
    AugmentedLagrangian,
    ConstrainedProblem,
    ExtraGradient,
    NonFiniteError,
    ProblemState,
    default_optimizer,
)
from lagrange_opt.maths.runaway import Reading, running_away


class FallingOffTheConstraint(ConstrainedProblem):
    """min -x**power s.t. x = 1: unbounded below off the constraint. For power 2 the
    augmented Lagrangian is bounded once c > 2 (solution x = 1, multiplier 2); for power 4
    it is unbounded for every c."""

    def __init__(self, power: int, start: float) -> None:
        super().__init__()
        self.power = power
        self.x = torch.nn.Parameter(torch.tensor([start], dtype=torch.float64))
        self.add_equality("one", shape=(1,))
        self.to(torch.float64)

    def forward(self) -> ProblemState:
        return ProblemState(-self.x.pow(self.power).sum(), {"one": self.x - 1})


def _default_without_check(problem: ConstrainedProblem) -> ExtraGradient:
    return ExtraGradient(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=1.0),
        torch.optim.SGD(problem.dual_parameters(), lr=1.0, maximize=True),
        formulation=DEFAULT_AUGMENTED._replace(runaway_check=0),
        scaling=True,
        step_size="adaptive",
        same_randomness=True,
    )


def test_an_early_penalty_growth_holds_a_concave_objective() -> None:
    problem = FallingOffTheConstraint(2, 0.0)
    optimizer = default_optimizer(problem)
    for _ in range(500):
        result = optimizer.step(problem)
    assert float(problem.x.detach()) == pytest.approx(1.0, abs=1e-9)
    assert float(problem.constraints["one"].multiplier.detach()) == pytest.approx(2.0, abs=1e-6)
    assert float(result.max_violation) < 1e-9
    assert optimizer.state_dict()["formulation"]["penalties"]["one"] > 2.0


def test_without_the_check_the_same_run_leaves_every_sane_range() -> None:
    problem = FallingOffTheConstraint(2, 0.0)
    optimizer = _default_without_check(problem)
    # The objective overflows at an extrapolated point: named at once, no rejection
    # (issue 22, item 5; before, 51 rejections hid it).
    with pytest.raises(NonFiniteError, match=r"^objective is not finite: -inf$"):
        for _ in range(3000):
            optimizer.step(problem)
    assert abs(float(problem.x.detach())) > 1e100


def test_an_unbounded_objective_stops_the_run_with_a_diagnosis() -> None:
    problem = FallingOffTheConstraint(4, 0.5)
    optimizer = default_optimizer(problem)
    steps = 0
    with pytest.raises(RuntimeError) as raised:
        for steps in range(200):  # noqa: B007
            optimizer.step(problem)
    message = str(raised.value)
    assert message.startswith("the run is leaving the constraint set: over the last 10 steps")
    assert "violation of constraint 'one'" in message
    assert "penalty coefficient at its maximum, 100" in message
    assert steps <= 60
    assert abs(float(problem.x.detach())) < 1e6  # stopped long before the numbers run out of range
    # The step that raises changes nothing, and so does every later one.
    before = failure_state(problem, optimizer)
    with pytest.raises(RuntimeError, match=r"^the run is leaving the constraint set"):
        optimizer.step(problem)
    assert_bitwise_equal(failure_state(problem, optimizer), before)


def test_the_diagnosis_is_in_the_checkpoint() -> None:
    problem = FallingOffTheConstraint(4, 0.5)
    optimizer = default_optimizer(problem)
    with pytest.raises(RuntimeError):
        for _ in range(200):
            optimizer.step(problem)
    state = optimizer.state_dict()
    assert state["formulation"]["stopped"].startswith("the run is leaving the constraint set")
    resumed = default_optimizer(FallingOffTheConstraint(4, 0.5))
    resumed.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"^the run is leaving the constraint set"):
        resumed.step(resumed.problem)


READINGS: list[tuple[Reading, Reading, bool]] = [
    (Reading(0.0, {"c": 0.1}), Reading(-1.0, {"c": 2.0}), True),
    (Reading(0.0, {"c": 0.1}), Reading(-1.0, {"c": 0.9}), False),  # not past 1
    (Reading(0.0, {"c": 1.0}), Reading(-1.0, {"c": 3.9}), False),  # not fourfold
    (Reading(0.0, {"c": 0.1}), Reading(0.0, {"c": 2.0}), False),  # the objective held
    (Reading(0.0, {}), Reading(-1.0, {"c": 2.0}), False),  # not observed before
]


@pytest.mark.parametrize(("before", "after", "expected"), READINGS)
def test_running_away_by_hand(before: Reading, after: Reading, expected: bool) -> None:
    assert running_away(before, after, "c") is expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "Invalid runaway check interval: -1"),
        (2.5, "Invalid runaway check interval: 2.5"),
        (True, "Invalid runaway check interval: True"),
    ],
)
def test_an_invalid_interval_is_named(value: Any, message: str) -> None:
    problem = FallingOffTheConstraint(2, 0.0)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ExtraGradient(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=0.1),
            torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
            formulation=AugmentedLagrangian(runaway_check=value),
        )
    assert math.isfinite(float(problem.x.detach()))
