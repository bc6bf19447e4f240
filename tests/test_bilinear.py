"""The bilinear game min_x max_y x*y: the reason for extra-gradient.

As a constrained problem it is min 0 subject to x = 0, whose Lagrangian is y * x with the
multiplier y. With plain SGD of step eta, each method is a linear map with a known rate.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import sgd_pair

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedProblem,
    ExtraGradient,
    ProblemState,
    SimultaneousGDA,
)

ETA = 0.1


class Bilinear(ConstrainedProblem):
    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        self.add_equality("x=0")
        self.to(device=device, dtype=torch.float64)
        with torch.no_grad():
            self.constraints["x=0"].multiplier.fill_(1.0)

    def forward(self) -> ProblemState:
        objective = torch.zeros((), dtype=torch.float64, device=self.x.device)
        return ProblemState(objective, {"x=0": self.x})

    def radius(self) -> float:
        y = self.constraints["x=0"].multiplier
        return math.hypot(float(self.x.detach()), float(y.detach()))


def _run(method: type, steps: int, device: str, eta: float = ETA) -> Bilinear:
    game = Bilinear(device)
    optimizer = method(game, *sgd_pair(game, lr=eta))
    for _ in range(steps):
        optimizer.step(game)
    return game


def test_simultaneous_descent_ascent_spirals_outwards(device: str) -> None:
    game = _run(SimultaneousGDA, 200, device)
    # Each step multiplies the distance to the saddle point by sqrt(1 + eta^2).
    expected = math.sqrt(2) * (1 + ETA**2) ** 100
    assert game.radius() == pytest.approx(expected, rel=1e-9)
    assert game.radius() > 2.5 * math.sqrt(2)


def test_extra_gradient_converges_to_the_origin(device: str) -> None:
    # A step of 2 ETA: the radius is below 1e-6 from step 724 (measured; with ETA, from step
    # 2,847 of the former 3,000).
    eta = 2 * ETA
    game = _run(ExtraGradient, 1100, device, eta)
    # Each step multiplies the distance by sqrt((1 - eta^2)^2 + eta^2) < 1.
    expected = math.sqrt(2) * ((1 - eta**2) ** 2 + eta**2) ** 550
    assert game.radius() == pytest.approx(expected, rel=1e-6)
    assert game.radius() < 1e-6


def test_alternating_descent_ascent_cycles(device: str) -> None:
    game = Bilinear(device)
    optimizer = AlternatingGDA(game, *sgd_pair(game, lr=ETA))
    radii = []
    for _ in range(2000):
        optimizer.step(game)
        radii.append(game.radius())
    # The map has determinant 1: it neither converges nor diverges.
    assert min(radii) > 0.9 and max(radii) < 1.6
