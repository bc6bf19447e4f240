"""The convergence runner's measurements and its Cooper adapter."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.check_convergence import problems_in
from benchmarks.convergence import run_one
from benchmarks.cooper_adapter import CooperMethod
from benchmarks.methods import METHODS, applies
from benchmarks.report import figure, markdown, record, steps_to
from benchmarks.runs import Trace
from benchmarks.suite import BENCHMARKS, budget
from lagrange_opt import KKTResiduals
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
    residuals = KKTResiduals(1e-9, 0.0, 0.0, 2e-10)
    trace = Trace(np.array([3.0, 1.5, 1.0 + 1e-8]), np.array([0.5, 0.0, 0.0]), 0.25, 2.5, residuals)
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
        "evaluations_per_step": 2.5,
        "seconds": 0.25,
        "solved": True,
        "kkt": {
            "stationarity": 1e-9,
            "primal_feasibility": 0.0,
            "dual_feasibility": 0.0,
            "complementarity": 2e-10,
        },
        "gap_to_bound": None,
        "fraction_violated": None,
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


def test_checker_validates_the_new_keys() -> None:
    trace = Trace(np.array([2.0, 1.0]), np.array([0.0, 0.0]), 0.1, 2.0, KKTResiduals(0, 0, 0, 0))
    entry = record("hs035", "default-projection", trace, 1.0)
    assert problems_in(entry) == []
    assert problems_in({**entry, "evaluations_per_step": 0.5}) == [
        "hs035/default-projection: evaluations_per_step = 0.5 < 1"
    ]
    assert problems_in({**entry, "kkt": {"stationarity": 0.0}}) != []
    assert problems_in({**entry, "kkt": {**entry["kkt"], "complementarity": -1.0}}) != []
    assert problems_in({**entry, "method": "cooper-augmented"}) == [
        "hs035/cooper-augmented: kkt residuals for a method that is not lagrange_opt's"
    ]
    assert problems_in({**entry, "gap_to_bound": 0.5}) == [
        "hs035/default-projection: gap_to_bound on a problem without a lower bound"
    ]
    slsqp = record("hs035", "slsqp", Trace(np.array([1.0]), np.array([0.0]), 0.1), 1.0)
    assert slsqp["evaluations_per_step"] is None and slsqp["kkt"] is None
    assert problems_in(slsqp) == []
    assert problems_in({**slsqp, "evaluations_per_step": 1.0}) != []


def test_network_records_and_checker() -> None:
    trace = Trace(np.array([0.5, 0.3]), np.array([0.2, 0.1]), 0.1, 2.0, None, 0.25)
    entry = record("positive-outputs", "penalty-1", trace, None, lower_bound=0.35)
    # An infeasible fit can beat the bound: the gap is then negative.
    assert entry["gap_to_bound"] == pytest.approx(-0.05)
    assert entry["fraction_violated"] == 0.25
    assert problems_in(entry) == []
    assert problems_in({**entry, "fraction_violated": 1.5}) == [
        "positive-outputs/penalty-1: fraction_violated = 1.5"
    ]
    assert problems_in({**entry, "gap_to_bound": None}) == [
        "positive-outputs/penalty-1: gap_to_bound is null"
    ]


def test_markdown_summary_has_steps_and_evaluations() -> None:
    def run(steps_to_solve: int, per_step: float, solved: bool = True) -> Trace:
        objective = np.array([2.0] * steps_to_solve + [1.0 if solved else 2.0])
        return Trace(objective, np.zeros(objective.size), 0.1, per_step)

    records = [
        record("a", "m", run(10, 2.0), 1.0),
        record("b", "m", run(30, 3.0), 1.0),
        record("c", "m", run(20, 2.5), 1.0),
        record("d", "m", run(5, 2.5, solved=False), 1.0),
    ]
    table = markdown(records)
    assert "| problem | method |" in table and "| evals/step |" in table
    assert "| m | 3 / 4 | 20 | 30 | 2.5 |" in table


def test_applicability() -> None:
    assert applies("positive-outputs", "exp") and not applies("hs071", "exp")
    assert applies("hs071", "slsqp") and not applies("positive-outputs", "slsqp")
    assert applies("hs071", "cooper-extrapolation")
    for method in ("default-projection", "default-slack", "default-adam-projection",
                   "augmented-projection", "augmented-slack", "cooper-augmented",
                   "optimistic-slack", "nupi-projection", "default-nupi-projection",
                   "cooper-nupi"):  # fmt: skip
        assert method in METHODS
        assert applies("hs071", method) and applies("positive-outputs", method)


@pytest.mark.parametrize("scheme", ["extrapolation", "simultaneous", "augmented", "nupi"])
def test_cooper_adapter_solves_hs035(scheme: str) -> None:
    definition = HOCK_SCHITTKOWSKI["hs035"]
    problem = NonlinearProgram(definition, "projection")
    # Every scheme meets the tolerances below for good by step 336 at these rates (measured:
    # simultaneous and nupi; 251 to 274 for the others), by 850 at 0.01/0.1.
    method = CooperMethod(problem, scheme, lr=0.03, dual_lr=0.3)  # type: ignore[arg-type]
    for _ in range(510):
        result = method.step()
    assert result.evaluations == (1 if scheme in ("simultaneous", "nupi") else 2)
    assert relative_gap(float(result.objective), definition.f_star) <= 1e-6
    assert float(result.max_violation) <= 1e-6
    # Cooper's multipliers, copied into the problem's, satisfy the KKT conditions.
    assert method.kkt().converged(1e-6)


@pytest.mark.parametrize("scheme", ["extrapolation", "simultaneous", "augmented", "nupi"])
def test_cooper_adapter_keeps_the_bounds(scheme: str) -> None:
    # hs004 has bounds only (no multiplier: Cooper's unconstrained optimizer); hs021 has
    # bounds and a constraint. Both optima lie on the boundary of the box. Measured: within
    # 1e-6 for good from step 81 (hs021, extrapolation; 6 for hs004); at 0.01/0.1, from 234.
    for name in ("hs004", "hs021"):
        definition = HOCK_SCHITTKOWSKI[name]
        problem = NonlinearProgram(definition, "projection")
        method = CooperMethod(problem, scheme, lr=0.03, dual_lr=0.3)  # type: ignore[arg-type]
        for _ in range(150):
            result = method.step()
            for param, bounds in problem.bounded_parameters():
                assert bool(((param >= bounds.lower) & (param <= bounds.upper)).all())
        assert relative_gap(float(result.objective), definition.f_star) <= 1e-6


def test_cooper_augmented_uses_coopers_augmented_lagrangian() -> None:
    import cooper

    problem = NonlinearProgram(HOCK_SCHITTKOWSKI["hs071"], "projection")
    method = CooperMethod(problem, "augmented", lr=0.01, dual_lr=0.05)
    assert isinstance(method.optimizer, cooper.optim.AlternatingPrimalDualOptimizer)
    for constraint in method.cmp.wrapped.values():
        assert isinstance(constraint.formulation, cooper.formulations.AugmentedLagrangian)
        assert constraint.penalty_coefficient is not None
        assert float(constraint.penalty_coefficient.value) == 1.0
    with pytest.raises(ValueError, match="invalid scheme"):
        CooperMethod(problem, "nope", lr=0.01, dual_lr=0.05)  # type: ignore[arg-type]


def test_one_method_on_one_problem_in_process_with_a_budget() -> None:
    result = run_one("hs035", "default-projection", max_steps=300)
    assert result.trace is not None and result.trace.objective.size <= 301
    entry = record(result.problem, result.method, result.trace, result.f_star)
    assert entry["solved"] is True
    benchmark = BENCHMARKS["hs035"](False)
    assert budget(benchmark, quick=False) == 50_000
    assert budget(benchmark, quick=True) == 200
    assert budget(benchmark, quick=False, max_steps=300) == 300


def test_figure_returns_what_it_draws() -> None:
    trace = Trace(np.array([3.0, 1.5, 1.0]), np.array([0.5, 1e-3, 0.0]), 0.1)
    drawn = figure("p", {"extragradient-projection": trace}, f_star=1.0)
    left, right = drawn.axes
    assert (left.get_title(), right.get_title()) == ("relative gap", "max violation")
    (line,) = left.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [2.0, 0.5, 1e-16])
