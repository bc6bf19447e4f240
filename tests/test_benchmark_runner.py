"""The convergence runner's measurements and its Cooper adapter."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.check_convergence import problems_in
from benchmarks.convergence import Trace, applies, record, steps_to
from benchmarks.cooper_adapter import CooperMethod
from lagrange_opt.problems import HOCK_SCHITTKOWSKI, NonlinearProgram, relative_gap


def test_steps_to_counts_steps_until_it_stays_within_tolerance() -> None:
    gap = np.array([1.0, 1e-5, 1e-3, 1e-5, 1e-7, 1e-7])
    violation = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert steps_to(gap, violation, 1e-4) == 3
    assert steps_to(gap, violation, 1e-6) == 4
    assert steps_to(gap, violation + 1e-3, 1e-4) is None
    assert steps_to(None, violation, 1e-4) is None
    assert steps_to(np.zeros(3), np.zeros(3), 1e-6) == 0


def test_record_has_the_documented_keys_and_passes_the_checker() -> None:
    trace = Trace(np.array([3.0, 1.5, 1.0 + 1e-8]), np.array([0.5, 0.0, 0.0]), 0.25)
    entry = record("p", "extragradient-projection", trace, 1.0)
    assert entry == {
        "problem": "p",
        "method": "extragradient-projection",
        "objective": 1.0 + 1e-8,
        "f_star": 1.0,
        "rel_gap": pytest.approx(1e-8),
        "max_violation": 0.0,
        "steps_1e4": 2,
        "steps_1e6": 2,
        "seconds": 0.25,
        "solved": True,
    }
    assert problems_in(entry) == []
    assert problems_in({**entry, "steps_1e4": None}) == [
        "p/extragradient-projection: reached 1e-6 but not 1e-4"
    ]
    diverged = record(
        "p", "penalty-1000", Trace(np.array([1.0, np.nan]), np.array([0.0, np.nan]), 0.1), 1.0
    )
    assert diverged["objective"] is None and diverged["solved"] is False
    assert diverged["steps_1e4"] is None
    assert problems_in(diverged) == []


def test_applicability() -> None:
    assert applies("positive-outputs", "exp") and not applies("hs071", "exp")
    assert applies("hs071", "slsqp") and not applies("positive-outputs", "slsqp")
    assert applies("hs071", "cooper-extrapolation")


@pytest.mark.parametrize("scheme", ["extrapolation", "simultaneous"])
def test_cooper_adapter_solves_hs035(scheme: str) -> None:
    definition = HOCK_SCHITTKOWSKI["hs035"]
    problem = NonlinearProgram(definition, "projection")
    method = CooperMethod(problem, scheme, lr=0.01, dual_lr=0.1)  # type: ignore[arg-type]
    for _ in range(3000):
        result = method.step()
    assert relative_gap(float(result.objective), definition.f_star) <= 1e-6
    assert float(result.max_violation) <= 1e-6
