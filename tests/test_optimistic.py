"""OptimisticGDA: extrapolation from the past, against the recursion written out by hand.

The generic guarantees (a step that raises changes nothing, checkpoints resume bitwise,
absent constraints, bad input) run for it through helpers.METHODS in the other test files.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import QuadraticProgram, assert_bitwise_equal, build_mixed, sgd_pair, train_mixed
from test_bilinear import ETA, Bilinear

from lagrange_opt import (
    ConstrainedProblem,
    ExtraGradient,
    OptimisticGDA,
    ProblemState,
    SimultaneousGDA,
)


def _popov_bilinear(steps: int, eta: float = ETA) -> list[tuple[float, float]]:
    """Extrapolation from the past on L(x, y) = y * x by hand, from (1, 1): the extrapolation
    steps along the gradients of the previous extrapolated point (none before the first)."""
    x, y = 1.0, 1.0
    grad_x = grad_y = 0.0
    iterates = []
    for _ in range(steps):
        x_bar, y_bar = x - eta * grad_x, y + eta * grad_y
        grad_x, grad_y = y_bar, x_bar
        x, y = x - eta * grad_x, y + eta * grad_y
        iterates.append((x, y))
    return iterates


def test_equals_extrapolation_from_the_past_on_the_bilinear_game(device: str) -> None:
    game = Bilinear(device)
    optimizer = OptimisticGDA(game, *sgd_pair(game, lr=ETA))
    multiplier = game.constraints["x=0"].multiplier
    for x, y in _popov_bilinear(200):
        result = optimizer.step(game)
        assert result.evaluations == 1
        # Rounding only: the two recursions add the same terms in another order.
        assert float(game.x.detach()) == pytest.approx(x, rel=1e-12, abs=1e-14)
        assert float(multiplier.detach()) == pytest.approx(y, rel=1e-12, abs=1e-14)


def test_converges_on_the_bilinear_game_where_simultaneous_spirals_out(device: str) -> None:
    # A step of 2 ETA: measured, the radii pass their bounds below for good from step 559
    # (optimistic, 1e-5) and 687 (simultaneous, 1e6); with ETA, 2339 and 2708 of 3000.
    eta, steps = 2 * ETA, 1050
    radii = {}
    for method in (OptimisticGDA, SimultaneousGDA, ExtraGradient):
        game = Bilinear(device)
        optimizer = method(game, *sgd_pair(game, lr=eta))
        for _ in range(steps):
            optimizer.step(game)
        radii[method] = game.radius()
    expected = math.hypot(*_popov_bilinear(steps, eta)[-1])
    assert radii[OptimisticGDA] == pytest.approx(expected, rel=1e-9)
    assert radii[OptimisticGDA] < 1e-5
    assert radii[SimultaneousGDA] > 1e6
    # Per step as fast as extra-gradient here, at half its evaluations.
    assert radii[OptimisticGDA] < 2 * radii[ExtraGradient]


class Box(ConstrainedProblem):
    """min (x - 2)^2 s.t. x <= 1 (projection): x* = 1, multiplier 2."""

    def __init__(self) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.add_inequality("cap", "<=", treatment="projection")
        self.double()

    def forward(self) -> ProblemState:
        return ProblemState((self.x - 2).square(), {"cap": self.x - 1})


def test_projects_the_extrapolated_and_the_updated_multipliers() -> None:
    problem = Box()
    optimizer = OptimisticGDA(problem, *sgd_pair(problem, lr=0.3, dual_lr=0.5))
    multiplier = problem.constraints["cap"].multiplier
    # By hand: gradients g_x = 2(x - 2) + lam, g_lam = x - 1, the multiplier projected on
    # >= 0 after the extrapolation and after the update.
    x = lam = 0.0
    past_x = past_lam = 0.0
    for _ in range(60):
        x_bar, lam_bar = x - 0.3 * past_x, max(0.0, lam + 0.5 * past_lam)
        past_x, past_lam = 2 * (x_bar - 2) + lam_bar, x_bar - 1
        x, lam = x - 0.3 * past_x, max(0.0, lam + 0.5 * past_lam)
        optimizer.step(problem)
        assert float(problem.x.detach()) == pytest.approx(x, rel=1e-13, abs=1e-15)
        assert float(multiplier.detach()) == pytest.approx(lam, rel=1e-13, abs=1e-15)
    # Measured: within the tolerances below for good from the 18th step of these.
    for _ in range(30):
        optimizer.step(problem)
    assert float(problem.x.detach()) == pytest.approx(1.0, abs=1e-9)
    assert float(multiplier.detach()) == pytest.approx(2.0, abs=1e-8)


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_solves_the_quadratic_program(treatment: str, device: str) -> None:
    problem = QuadraticProgram(treatment).to(device)
    optimizer = OptimisticGDA(problem, *sgd_pair(problem, lr=0.05, dual_lr=0.2))
    # Measured: within the tolerance below for good from step 175 (either treatment).
    for _ in range(270):
        optimizer.step(problem)
    expected = torch.tensor([2 / 3, 4 / 3], dtype=torch.float64, device=device)
    torch.testing.assert_close(problem.x.detach(), expected, rtol=0, atol=1e-6)


def test_the_past_is_kept_in_the_state_dict() -> None:
    problem, optimizer = build_mixed(OptimisticGDA, "sgd")
    assert optimizer.state_dict()["past"] is None
    train_mixed(problem, optimizer, range(3))
    past = optimizer.state_dict()["past"]
    names = sorted(term["name"] for term in past["terms"])
    assert names == sorted(
        name for name, c in problem.constraint_items() if c.multiplier is not None
    )
    assert all(grad is None or torch.isfinite(grad).all() for grad in past["grads"])


def test_loading_a_past_that_does_not_fit_is_refused_and_changes_nothing() -> None:
    problem, optimizer = build_mixed(OptimisticGDA, "sgd")
    train_mixed(problem, optimizer, range(3))
    state = optimizer.state_dict()
    fewer = {**state, "past": {**state["past"], "grads": state["past"]["grads"][:-1]}}
    count = len(state["past"]["grads"])
    message = (
        f"state_dict's past has {count - 1} gradients, this optimizer {count} dense primal "
        "parameters"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.load_state_dict(fewer)
    unknown = [{**state["past"]["terms"][0], "name": "nowhere"}]
    renamed = {**state, "past": {**state["past"], "terms": unknown}}
    message = "state_dict's past names constraint 'nowhere', which has no multiplier here"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.load_state_dict(renamed)
    missing = {key: value for key, value in state.items() if key != "past"}
    with pytest.raises(ValueError, match=re.escape("state_dict lacks ['past']")):
        optimizer.load_state_dict(missing)
    assert_bitwise_equal(state, optimizer.state_dict())
