"""The Hock-Schittkowski definitions: their published optima, their start points, and SLSQP
from those start points (the helpers of benchmarks/verify_optima.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from benchmarks.verify_optima import (
    SLSQP_STOPS_ELSEWHERE,
    TOLERANCE,
    max_violation,
    objective_value,
    solve_slsqp,
)
from lagrange_opt.problems import HOCK_SCHITTKOWSKI, relative_gap
from lagrange_opt.problems import hock_schittkowski as _hock_schittkowski

NAMES = list(HOCK_SCHITTKOWSKI)

PROBLEMS = [
    1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 14, 16, 18, 21, 22, 23, 24, 26, 27, 28, 30, 32, 35, 38,
    39, 40, 42, 43, 44, 46, 47, 48, 53, 55, 60, 64, 65, 66, 71, 76, 78, 80, 81, 113, 118,
]  # fmt: skip


def _slsqp_cases() -> list[object]:
    """Every problem, with the problems where SLSQP stops elsewhere marked as strict xfails."""
    cases: list[object] = []
    for name in NAMES:
        reason = SLSQP_STOPS_ELSEWHERE.get(name)
        marks = [] if reason is None else [pytest.mark.xfail(strict=True, reason=reason)]
        cases.append(pytest.param(name, marks=marks))
    return cases


def test_the_problem_set_in_order() -> None:
    assert [f"hs{number:03d}" for number in PROBLEMS] == NAMES
    assert all(name == definition.name for name, definition in HOCK_SCHITTKOWSKI.items())
    # The attribute's docstring lists them all, in the same order.
    assert re.findall(r"hs\d{3}", _attribute_docstring()) == NAMES


def _attribute_docstring() -> str:
    """The string literal after ``HOCK_SCHITTKOWSKI = ...`` in the module's source."""
    source = Path(_hock_schittkowski.__file__).read_text(encoding="utf-8")
    match = re.search(r'HOCK_SCHITTKOWSKI: .*\n"""(.*?)"""', source, re.DOTALL)
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize("name", NAMES)
def test_x_star_is_feasible_and_optimal(name: str) -> None:
    definition = HOCK_SCHITTKOWSKI[name]
    assert max_violation(definition, definition.x_star) <= 1e-5
    objective = objective_value(definition, definition.x_star)
    assert relative_gap(objective, definition.f_star) <= 1e-6


@pytest.mark.parametrize("name", _slsqp_cases())
def test_slsqp_from_x0_reaches_f_star(name: str) -> None:
    definition = HOCK_SCHITTKOWSKI[name]
    solution = solve_slsqp(definition)
    assert solution.violation <= TOLERANCE
    assert relative_gap(solution.objective, definition.f_star) <= TOLERANCE, solution


@pytest.mark.parametrize("name", NAMES)
def test_sizes_bounds_and_gradients(name: str, device: str) -> None:
    definition = HOCK_SCHITTKOWSKI[name]
    n = len(definition.x0)
    assert len(definition.lower) == len(definition.upper) == len(definition.x_star) == n
    assert all(lo <= hi for lo, hi in zip(definition.lower, definition.upper))
    assert all(math.isfinite(v) for v in (*definition.x0, *definition.x_star))
    assert math.isfinite(definition.f_star)
    x = torch.tensor(definition.x0, dtype=torch.float64, device=device, requires_grad=True)
    values = [definition.objective(x)]
    assert values[0].shape == ()
    for function in (definition.equalities, definition.inequalities):
        if function is not None:
            value = function(x)
            assert value.dim() == 1 and value.numel() >= 1
            assert value.dtype == torch.float64 and value.device == x.device
            values.append(value.sum())
    # Every function is differentiable by autograd at x0.
    for value in values:
        (grad,) = torch.autograd.grad(value, x)
        assert bool(torch.isfinite(grad).all())


def test_infeasible_start_points_are_kept_as_published() -> None:
    # hs016's x0 = (-2, 1) lies outside -0.5 <= x1 <= 0.5; the definition keeps it.
    definition = HOCK_SCHITTKOWSKI["hs016"]
    assert definition.x0 == (-2.0, 1.0)
    assert max_violation(definition, definition.x0) == pytest.approx(1.5)


def test_hs055_optimum_along_its_feasible_segment() -> None:
    # The six equalities have rank 5: the feasible set is the segment x(t), 0 <= t <= 1,
    # x = (t, (4 + t)/3, (5 - 4t)/3, 1 - t, (2 - t)/3, (1 + 4t)/3), on which
    # f = 16/3 + t/3 + exp(t - t^2) >= 19/3, with equality at t = 0 only: an independent
    # check of f*, since SLSQP from x0 stops at the segment's maximiser.
    definition = HOCK_SCHITTKOWSKI["hs055"]
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    segment = torch.stack(
        [t, (4 + t) / 3, (5 - 4 * t) / 3, 1 - t, (2 - t) / 3, (1 + 4 * t) / 3], dim=1
    )
    assert all(max_violation(definition, tuple(point.tolist())) <= 1e-12 for point in segment)
    values = torch.stack([definition.objective(point) for point in segment])
    assert int(values.argmin()) == 0
    assert float(values[0]) == pytest.approx(definition.f_star, rel=1e-12)
    assert segment[0].tolist() == pytest.approx(definition.x_star, rel=1e-12)
