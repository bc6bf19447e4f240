"""scalars(): a step's figures and the KKT residuals as a flat dict of floats."""

from __future__ import annotations

import math

import pytest
import torch

from lagrange_opt import (
    ConstrainedProblem,
    IndexedValue,
    ProblemState,
    SimultaneousGDA,
    StepResult,
    kkt,
    scalars,
)


class Mixed(ConstrainedProblem):
    """x in R^3: an equality, a projected inequality, a penalised one, an indexed one."""

    def __init__(self) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64))
        self.add_equality("sum", shape=(1,))
        self.add_inequality("floor", ">=", treatment="projection")
        self.add_inequality("soft", "<=", treatment="penalty", penalty_weight=2.0)
        self.add_inequality("rows", ">=", num_samples=3, treatment="projection")
        self.to(torch.float64)
        self.include_rows = True

    def forward(self) -> ProblemState:
        x = self.x
        constraints = {
            "sum": x.sum().reshape(1) - 1,
            "floor": x[1] + 1,
            "soft": x[0] - 2,
        }
        if self.include_rows:
            constraints["rows"] = IndexedValue(x[[0, 2]], torch.tensor([0, 2]))
        return ProblemState(x.square().sum(), constraints)


def _step(problem: Mixed) -> StepResult:
    """The second step (the first moves the multipliers off zero)."""
    optimizer = SimultaneousGDA(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
    )
    optimizer.step(problem)
    return optimizer.step(problem)


def test_every_figure_of_the_step_by_name() -> None:
    problem = Mixed()
    declared = problem.declared()
    result = _step(problem)
    figures = scalars(result)
    assert list(figures) == [
        "objective", "lagrangian", "max_violation", "mean_violation",
        "violation/sum", "multiplier_norm/sum",
        "violation/floor", "multiplier_norm/floor",
        "violation/soft",  # a penalty has no multiplier
        "violation/rows", "multiplier_norm/rows",
    ]  # fmt: skip
    assert all(type(value) is float for value in figures.values())
    assert figures["objective"] == float(result.objective)
    assert figures["lagrangian"] == float(result.lagrangian)
    assert figures["max_violation"] == float(result.max_violation)
    assert figures["mean_violation"] == float(result.mean_violation)
    for name, constraint in result.constraints.items():
        assert figures[f"violation/{name}"] == float(constraint.max_violation)
    # The figures are those of the step's start point: the multipliers after one step.
    # By hand: a projected step from 0 with rate 0.5 on the starting violations.
    assert figures["multiplier_norm/floor"] == pytest.approx(0.5 * 1.0)  # x1 + 1 = -1
    assert figures["multiplier_norm/sum"] == pytest.approx(0.5 * 0.5)  # sum - 1 = 0.5
    assert figures["multiplier_norm/rows"] == 0.0  # rows 0 and 2 start feasible
    assert declared["floor"].multiplier.item() != figures["multiplier_norm/floor"]  # moved on


def test_left_out_constraint_has_no_keys() -> None:
    problem = Mixed()
    problem.include_rows = False
    figures = scalars(_step(problem))
    assert "violation/rows" not in figures
    assert "multiplier_norm/rows" not in figures
    assert "violation/floor" in figures


def test_residuals_and_prefix() -> None:
    problem = Mixed()
    result = _step(problem)
    residuals = kkt(problem)
    figures = scalars(result, residuals, prefix="train/")
    assert all(key.startswith("train/") for key in figures)
    assert [figures[f"train/kkt/{field}"] for field in residuals._fields] == list(residuals)
    assert figures["train/objective"] == float(result.objective)
    assert scalars(result, prefix="") == scalars(result)


def test_non_finite_residuals_stay_infinite() -> None:
    problem = Mixed()
    result = _step(problem)
    with torch.no_grad():
        problem.x[0] = math.nan
    figures = scalars(result, kkt(problem))
    assert figures["kkt/stationarity"] == math.inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_are_python_floats_of_the_tensors(dtype: torch.dtype) -> None:
    problem = Mixed().to(dtype)
    figures = scalars(_step(problem))
    assert all(isinstance(value, float) and math.isfinite(value) for value in figures.values())
