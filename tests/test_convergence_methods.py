"""The convergence runner's new methods, its KKT stop and the network's lower bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks import references
from benchmarks.check_convergence import problems_in
from benchmarks.methods import METHODS, reports_kkt
from benchmarks.report import record
from benchmarks.runs import SOLVED_WINDOW, run_trace
from benchmarks.suite import BENCHMARKS, Benchmark, network_lower_bound
from lagrange_opt import KKTResiduals
from lagrange_opt.problems import HOCK_SCHITTKOWSKI, NonlinearProgram

NEW_METHODS = [
    "default-projection",
    "default-slack",
    "default-adam-projection",
    "augmented-projection",
    "augmented-slack",
    "cooper-augmented",
]


@pytest.fixture(scope="module")
def hs035() -> Benchmark:
    return BENCHMARKS["hs035"](True)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_new_method_runs_hs035(hs035: Benchmark, method: str) -> None:
    trace = METHODS[method](hs035, 300)
    assert trace is not None
    # 300 steps, then the final point: too few for the KKT stop (1,000 solved steps).
    assert trace.objective.shape == trace.max_violation.shape == (301,)
    assert np.isfinite(trace.objective).all() and np.isfinite(trace.max_violation).all()
    # Extra-gradient evaluates twice per step (more after a rejected adaptive step, one
    # more on a scaled method's first step); Cooper's alternating augmented Lagrangian
    # evaluates again at the new primal point.
    assert trace.evaluations_per_step is not None and trace.evaluations_per_step >= 2
    entry = record("hs035", method, trace, hs035.f_star, hs035.lower_bound)
    assert problems_in(entry) == []
    if reports_kkt(method):
        assert entry["kkt"] is not None and all(v >= 0 for v in entry["kkt"].values())
    else:
        assert entry["kkt"] is None
    assert entry["gap_to_bound"] is None and entry["fraction_violated"] is None


@pytest.mark.parametrize("method", ["default-projection", "augmented-projection"])
def test_converging_methods_solve_hs035(hs035: Benchmark, method: str) -> None:
    # Measured: within 1e-6 for good (steps_1e6) from step 99 (default) and 648 (augmented).
    trace = METHODS[method](hs035, 150 if method.startswith("default") else 1_000)
    assert trace is not None
    entry = record("hs035", method, trace, hs035.f_star)
    assert entry["solved"], entry


def test_default_methods_take_no_per_problem_setting(hs035: Benchmark) -> None:
    # Rates that would make any fixed-step method diverge at once: default_optimizer
    # ignores them.
    absurd = hs035._replace(lr=1e9, dual_lr=1e9, slack_lr=1e9)
    for method in ("default-projection", "default-slack"):
        # Measured: within 1e-6 for good (steps_1e6) from step 99.
        trace = METHODS[method](absurd, 150)
        assert trace is not None
        assert record("hs035", method, trace, hs035.f_star)["solved"]


def test_a_run_that_solves_quickly_ends_on_the_kkt_stop(hs035: Benchmark) -> None:
    budget = 20_000
    trace = METHODS["default-projection"](hs035, budget)
    assert trace is not None and trace.kkt is not None
    entry = record("hs035", "default-projection", trace, hs035.f_star)
    assert entry["solved"]
    steps = trace.objective.size - 1
    # Solved after about a hundred steps, then 1,000 solved steps and a converged KKT test.
    assert entry["steps_1e6"] is not None
    assert SOLVED_WINDOW <= steps <= entry["steps_1e6"] + SOLVED_WINDOW + 1
    assert steps < budget
    assert trace.kkt.converged(1e-6)


def test_cooper_stops_on_its_own_multipliers_kkt(hs035: Benchmark) -> None:
    trace = METHODS["cooper-extrapolation"](hs035, 20_000)
    assert trace is not None
    assert trace.objective.size - 1 < 20_000
    assert trace.kkt is None  # measured for the stop, not recorded
    assert record("hs035", "cooper-extrapolation", trace, hs035.f_star)["solved"]


def _solved_step(f_star: float):  # type: ignore[no-untyped-def]
    count = [0]

    def step(args: tuple) -> tuple[torch.Tensor, torch.Tensor, int]:
        # Solved at every step, but never a fixed point (the stall stop stays out of it).
        count[0] += 1
        objective = f_star * (1 + 1e-9 * (count[0] % 2))
        return torch.tensor(objective, dtype=torch.float64), torch.tensor(0.0), 2

    return step


def test_kkt_is_checked_again_a_window_later_when_it_fails(hs035: Benchmark) -> None:
    assert hs035.f_star is not None
    problem = hs035.build("projection", None)
    calls: list[int] = []

    def residuals() -> KKTResiduals:
        calls.append(1)
        # Not converged at the first check, converged at the second.
        return KKTResiduals(1.0 if len(calls) == 1 else 0.0, 0.0, 0.0, 0.0)

    trace = run_trace(problem, _solved_step(hs035.f_star), hs035, 10_000, residuals)
    assert len(calls) == 3  # two checks during the run, one for the record
    assert trace.objective.size - 1 == 2 * SOLVED_WINDOW
    assert trace.evaluations_per_step == 2

    never: list[int] = []

    def failing() -> KKTResiduals:
        never.append(1)
        return KKTResiduals(1.0, 0.0, 0.0, 0.0)

    trace = run_trace(problem, _solved_step(hs035.f_star), hs035, 3_500, failing)
    assert trace.objective.size - 1 == 3_500  # the whole budget
    assert len(never) == 3 + 1


def test_minibatch_runs_take_their_whole_budget() -> None:
    benchmark = BENCHMARKS["positive-outputs"](True)
    trace = METHODS["default-projection"](benchmark, 12)
    assert trace is not None and trace.objective.size == 13
    assert trace.evaluations_per_step is not None and trace.evaluations_per_step >= 2


def test_network_lower_bound() -> None:
    targets = references.network_data(True).targets
    bound = network_lower_bound(targets)
    clipped = targets.clamp(min=0)
    assert bound == pytest.approx(float(torch.nn.functional.mse_loss(clipped, targets)))
    assert bound > 0  # many targets are negative
    # Any fit whose outputs are all >= 0 does at least as badly.
    generator = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.1, 1.0):
        noise = scale * torch.randn(targets.shape, generator=generator)
        feasible = (clipped + noise).clamp(min=0)
        assert float(torch.nn.functional.mse_loss(feasible, targets)) >= bound
    benchmark = BENCHMARKS["positive-outputs"](True)
    assert benchmark.lower_bound == pytest.approx(bound)


def test_network_records_gap_to_bound_and_fraction_violated() -> None:
    benchmark = BENCHMARKS["positive-outputs"](True)
    trace = METHODS["default-adam-projection"](benchmark, 8)
    assert trace is not None and trace.fraction_violated is not None
    entry = record(
        "positive-outputs", "default-adam-projection", trace, None, benchmark.lower_bound
    )
    assert benchmark.lower_bound is not None
    assert entry["gap_to_bound"] == pytest.approx(entry["objective"] - benchmark.lower_bound)
    assert 0 <= entry["fraction_violated"] <= 1
    assert entry["kkt"] is not None
    assert problems_in(entry) == []


@pytest.mark.parametrize("method", ["cooper-augmented", "penalty-10", "default-adam-projection"])
def test_every_method_keeps_the_variable_bounds(method: str) -> None:
    # hs004: min (x1 + 1)**3 / 3 + x2 over x1 >= 1, x2 >= 0; without its bounds the
    # objective decreases without end.
    benchmark = BENCHMARKS["hs004"](True)
    trace = METHODS[method](benchmark, 200)
    assert trace is not None and np.isfinite(trace.objective).all()
    definition = HOCK_SCHITTKOWSKI["hs004"]
    assert float(trace.objective.min()) >= definition.f_star - 1e-12
    problem = NonlinearProgram(
        definition, "penalty" if method.startswith("penalty") else "projection"
    )
    assert problem.bounded_parameters()
    assert math.isfinite(float(trace.objective[-1]))


ONE_EVALUATION_METHODS = [
    "optimistic-slack", "optimistic-projection", "nupi-slack", "nupi-projection", "cooper-nupi",
]  # fmt: skip


@pytest.mark.parametrize("method", ONE_EVALUATION_METHODS)
def test_one_evaluation_methods_run_hs035(hs035: Benchmark, method: str) -> None:
    trace = METHODS[method](hs035, 300)
    assert trace is not None
    assert trace.objective.shape == trace.max_violation.shape == (301,)
    assert np.isfinite(trace.objective).all() and np.isfinite(trace.max_violation).all()
    assert trace.evaluations_per_step == 1.0
    entry = record("hs035", method, trace, hs035.f_star, hs035.lower_bound)
    assert problems_in(entry) == []
    assert (entry["kkt"] is None) == (not reports_kkt(method))


def test_nupi_follows_coopers_nupi_on_the_same_settings(hs035: Benchmark) -> None:
    # Both: simultaneous descent-ascent, SGD primal, nuPI with kp = NUPI_KP, ki = 1, nu = 0
    # and its average started at 0: the same iteration, up to rounding.
    ours = METHODS["nupi-projection"](hs035, 500)
    coopers = METHODS["cooper-nupi"](hs035, 500)
    assert ours is not None and coopers is not None
    np.testing.assert_allclose(ours.objective, coopers.objective, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.max_violation, coopers.max_violation, rtol=1e-8, atol=1e-12)


def test_default_with_nupi_solves_hs035(hs035: Benchmark) -> None:
    trace = METHODS["default-nupi-projection"](hs035, 2_000)
    assert trace is not None
    assert record("hs035", "default-nupi-projection", trace, hs035.f_star)["solved"]
