"""The backtracking step of extra-gradient: its pure rules, its settings, what it solves
that a fixed step does not, and that a retried extrapolation leaks nothing."""

from __future__ import annotations

import copy
import io
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import assert_bitwise_equal, sgd_pair, snapshot
from torch import Tensor, nn

import lagrange_opt.methods.extragradient as extragradient_module
from lagrange_opt import (
    AdaptiveStep,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
    default_optimizer,
)
from lagrange_opt.maths.stepsize import (
    Trial,
    interpolation_weight,
    judge_extrapolation,
    next_factor,
)

F64 = torch.float64
DEFAULT = AdaptiveStep()

JUDGE_CASES = [
    # (config, factor, operator_change, point_change, point_norm, expected)
    (DEFAULT, 1.0, 4.0, 1.0, 1.0, Trial(False, 2.0)),  # t L = 2 > 0.9
    (DEFAULT, 0.45, 4.0, 1.0, 1.0, Trial(True, 2.0)),  # t L = 0.9: at the threshold
    (DEFAULT, 0.5, 4.0, 1.0, 1.0, Trial(False, 2.0)),
    (DEFAULT, 1.0, 0.25, 1.0, 1.0, Trial(True, 0.5)),
    (DEFAULT, 2.0, 36.0, 4.0, 1.0, Trial(False, 3.0)),  # L = sqrt(36 / 4)
    (DEFAULT, 1.0, 0.0, 1.0, 1.0, Trial(True, 0.0)),  # the operator did not change
    (DEFAULT, 1.0, 5.0, 0.0, 1.0, Trial(True, 0.0)),  # the point did not move
    (DEFAULT, 1.0, math.inf, 1.0, 1.0, Trial(False, math.inf)),
    (DEFAULT, 1.0, math.nan, 1.0, 1.0, Trial(False, math.inf)),
    (DEFAULT, 1.0, 1.0, math.inf, 1.0, Trial(False, math.inf)),
    (DEFAULT, 1.0, 1.0, math.nan, 1.0, Trial(False, math.inf)),
    # A move below the noise level (1e-13)^2 (norm + 1) is accepted whatever L says.
    (DEFAULT, 1.0, 4e-30, 1e-30, 1.0, Trial(True, 2.0)),
    (DEFAULT, 1.0, 4e-20, 1e-20, 1e6, Trial(True, 2.0)),  # floor 1.000001e-20
    (DEFAULT, 1.0, 4e-20, 1e-20, 1e5, Trial(False, 2.0)),  # floor 1.00001e-21
    (AdaptiveStep(noise=0.0), 1.0, 4e-30, 1e-30, 1.0, Trial(False, 2.0)),
    (AdaptiveStep(delta=0.5), 1.0, 0.36, 1.0, 1.0, Trial(False, 0.6)),
    (AdaptiveStep(delta=0.5), 1.0, 0.25, 1.0, 1.0, Trial(True, 0.5)),
]


@pytest.mark.parametrize(("config", "factor", "operator", "point", "norm", "expected"), JUDGE_CASES)
def test_judge_extrapolation(
    config: AdaptiveStep, factor: float, operator: float, point: float, norm: float,
    expected: Trial,
) -> None:  # fmt: skip
    reads = []

    def point_norm() -> float:
        reads.append(norm)
        return norm

    trial = judge_extrapolation(config, factor, operator, point, point_norm)
    assert trial.accepted is expected.accepted
    assert trial.lipschitz == pytest.approx(expected.lipschitz, rel=1e-15)
    # The point's norm (a pass over every parameter) is read only for the noise level of a
    # move that failed the test.
    failed = math.isfinite(expected.lipschitz) and factor * expected.lipschitz > config.delta
    assert len(reads) == int(failed)


def test_a_rejected_trial_measures_its_move_relative_to_the_point() -> None:
    rejected = judge_extrapolation(DEFAULT, 1.0, 4.0, 1e-2, lambda: 4.0)
    assert rejected.relative_move == pytest.approx(0.05, rel=1e-15)  # sqrt(1e-2 / 4)
    assert judge_extrapolation(DEFAULT, 1.0, 4.0, 1.0, lambda: 0.0).relative_move == math.inf
    assert judge_extrapolation(DEFAULT, 0.1, 4.0, 1.0, lambda: 4.0).relative_move == math.inf


NEXT_FACTOR_CASES = [
    # (config, factor, trial, expected)
    (DEFAULT, 1.0, Trial(True, 0.5), 0.9 * 0.9 / 0.5),  # capped by safety * delta / L
    (DEFAULT, 0.1, Trial(True, 1.0), 0.2),  # grown by 2
    (DEFAULT, 1.0, Trial(True, 0.0), 2.0),  # no estimate: grown
    (DEFAULT, 1.0, Trial(False, math.inf), 0.5),  # no estimate: shrunk
    (DEFAULT, 1.0, Trial(False, 10.0), 0.081),  # below the shrink: the estimate's cap
    (DEFAULT, 1.0, Trial(False, 1.0), 0.5),
    (DEFAULT, 3.0, Trial(True, math.nan), 6.0),
    (AdaptiveStep(growth=1.0), 0.3, Trial(True, 0.1), 0.3),
    (AdaptiveStep(safety=0.5), 1.0, Trial(True, 1.0), 0.45),
    (AdaptiveStep(shrink=0.1), 1.0, Trial(False, 1.0), 0.1),
]


@pytest.mark.parametrize(("config", "factor", "trial", "expected"), NEXT_FACTOR_CASES)
def test_next_factor(config: AdaptiveStep, factor: float, trial: Trial, expected: float) -> None:
    assert next_factor(config, factor, trial) == pytest.approx(expected, rel=1e-15)


INTERPOLATION_CASES = [
    # (config, factor, trial, expected fraction kept; None: redo the extrapolation)
    (DEFAULT, 1.0, Trial(False, 1.0, 0.05), 0.81),  # t L = 1: keep 0.81 / 1
    (DEFAULT, 0.5, Trial(False, 4.0, 0.05), 0.405),  # t L = 2: at max_interpolated
    (DEFAULT, 0.5, Trial(False, 4.5, 0.05), None),  # t L = 2.25: redone
    (DEFAULT, 1.0, Trial(False, 1.0, 0.35), 0.81),  # a move of 35 % of the point: kept
    (DEFAULT, 1.0, Trial(False, 1.0, 0.36), None),  # a longer move: redone
    (DEFAULT, 1.0, Trial(False, 1.0), None),  # move not measured (a point at 0): redone
    (DEFAULT, 1.0, Trial(False, math.inf, 0.05), None),  # not finite: redone
    (DEFAULT, 1.0, Trial(True, 0.5), None),  # accepted: nothing to shorten
    (AdaptiveStep(max_interpolated=0.0), 1.0, Trial(False, 1.0, 0.05), None),
    (AdaptiveStep(max_interpolated_move=math.inf), 1.0, Trial(False, 1.0), 0.81),
    (AdaptiveStep(max_interpolated=10.0, safety=0.5), 1.0, Trial(False, 9.0, 0.05), 0.05),
]


@pytest.mark.parametrize(("config", "factor", "trial", "expected"), INTERPOLATION_CASES)
def test_interpolation_weight(
    config: AdaptiveStep, factor: float, trial: Trial, expected: float | None
) -> None:
    weight = interpolation_weight(config, factor, trial)
    if expected is None:
        assert weight is None
    else:
        assert weight == pytest.approx(expected, rel=1e-15)


class Stiff(ConstrainedProblem):
    """min k ||x - (1, 2)||^2 s.t. x1 + x2 >= 4: x* = (1.5, 2.5), multiplier k.

    From x0 = (1.5, 1.75) the gradient is k: with scaling the step is one unit, while the
    scaled curvature is 4: a fixed unit step (t = 1) diverges."""

    def __init__(self, k: float = 1e6, treatment: str = "slack") -> None:
        super().__init__()
        self.k = k
        self.x = nn.Parameter(torch.tensor([1.5, 1.75]))
        self.register_buffer("c", torch.tensor([1.0, 2.0]))
        self.add_inequality("sum", ">=", treatment=treatment)  # type: ignore[arg-type]
        self.to(F64)

    def forward(self) -> ProblemState:
        return ProblemState(self.k * (self.x - self.c).square().sum(), {"sum": self.x.sum() - 4})


def _default_like(problem: ConstrainedProblem, step_size: Any) -> ExtraGradient:
    """default_optimizer's configuration with the step size given."""
    return ExtraGradient(
        problem,
        *sgd_pair(problem, 1.0),
        formulation="augmented",
        scaling=True,
        step_size=step_size,
    )


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_huge_gradients_diverge_with_a_fixed_step_and_converge_with_the_adaptive(
    treatment: str, device: str
) -> None:
    fixed_problem = Stiff(treatment=treatment).to(device)
    fixed = _default_like(fixed_problem, "fixed")
    diverged = False
    try:
        # Measured: past 1e10 from step 13.
        for _ in range(20):
            fixed.step(fixed_problem)
        diverged = float(fixed_problem.x.detach().abs().max()) > 1e10
    except ValueError:  # a non-finite value
        diverged = True
    assert diverged

    problem = Stiff(treatment=treatment).to(device)
    optimizer = default_optimizer(problem)
    evaluations = []
    # Measured: within the tolerances below for good from step 106; 2.01 to 2.02 evaluations
    # a step on average over 160 steps (the retries come in the first three).
    for _ in range(160):
        evaluations.append(optimizer.step(problem).evaluations)
    torch.testing.assert_close(
        problem.x.detach().cpu(), torch.tensor([1.5, 2.5], dtype=F64), rtol=0, atol=1e-6
    )
    assert float(problem.constraints["sum"].multiplier.detach()) == pytest.approx(1e6, rel=1e-6)
    assert min(evaluations) >= 2
    assert evaluations[0] >= 4  # the scales' call, the start and at least one retry
    assert sum(evaluations) / len(evaluations) <= 2.1
    assert max(evaluations) <= 6
    assert optimizer.step_factor < 1.0


def test_the_learning_rates_follow_the_step_factor(device: str) -> None:
    problem = Stiff(treatment="projection").to(device)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.5)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=2.0, maximize=True)
    optimizer = ExtraGradient(problem, primal, dual, scaling=True, step_size="adaptive")
    factors = []
    checked = 0
    for step in range(20):
        factor = optimizer.step_factor
        seen: list[tuple[float, float]] = []

        def closure(seen: list[tuple[float, float]] = seen) -> ProblemState:
            seen.append((primal.param_groups[0]["lr"], dual.param_groups[0]["lr"]))
            return problem()

        result = optimizer.step(closure)
        factors.append(optimizer.step_factor)
        if step > 0 and result.evaluations == 2:  # no scale measurement, no retry
            # The multipliers' factor is capped at AdaptiveStep.max_dual_factor (0.5).
            assert seen == [(0.5 * factor, 2.0 * min(factor, 0.5))] * 2
            checked += 1
        # Between steps the rates are the bases, what a scheduler reads and writes.
        assert (primal.param_groups[0]["lr"], dual.param_groups[0]["lr"]) == (0.5, 2.0)
    assert checked > 10
    assert len(set(factors)) > 1  # the factor moved
    fixed = ExtraGradient(problem, primal, dual, step_size="fixed")
    assert fixed.step_factor == 1.0


class OnlyDualMoves(ConstrainedProblem):
    """min x^2 s.t. x - 1 = 0 from x = 0, multiplier 0: the first extrapolation moves only
    the multiplier.

    F(x, mu) = (2x + mu, -(x - 1)): from (0, 0) with t = 1 the extrapolation is (0, -1),
    F changes by (-1, 0) for a move (0, -1): L = 1 and t L = 1 > 0.9, a retry with
    t = min(0.5, 0.81 / 1) = 0.5 (L = 1 again: accepted), then the step from (0, 0) along
    F(0, -0.5) = (-0.5, 1) ends at (0.25, -0.5) and the next factor is min(1, 0.9 * 0.9 / 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros((), dtype=F64))
        self.add_equality("h")
        self.to(F64)

    def forward(self) -> ProblemState:
        return ProblemState(self.x.square(), {"h": self.x - 1})


def test_the_extrapolation_test_counts_the_multipliers_move(device: str) -> None:
    problem = OnlyDualMoves().to(device)
    # No cap on the multipliers' factor: both sides step with t, as in the docstring; no
    # interpolation: the rejected extrapolation is redone.
    optimizer = ExtraGradient(
        problem,
        *sgd_pair(problem, 1.0),
        step_size=AdaptiveStep(max_dual_factor=100.0, max_interpolated=0.0),
    )
    result = optimizer.step(problem)
    assert result.evaluations == 3
    assert optimizer.step_factor == pytest.approx(0.81, rel=1e-15)
    assert float(problem.x.detach()) == 0.25
    assert float(problem.constraints["h"].multiplier.detach()) == -0.5


def test_a_mild_rejection_is_interpolated_exactly_for_an_affine_operator(device: str) -> None:
    """OnlyDualMoves' operator is affine. From (0, 0) with t = 1 the extrapolation is
    rejected with t L = 1 <= max_interpolated = 2: the step keeps the fraction
    theta = 0.81 / 1 of it, whose operator (-0.81, 1) is interpolated, not evaluated, and
    steps from (0, 0) with t = 0.81 to (0.6561, -0.81): what a retry with t = 0.81 gives,
    at two evaluations instead of three."""
    runs = []
    for config in (
        # The point starts at 0: any move is long relative to it, unless allowed.
        AdaptiveStep(max_dual_factor=100.0, max_interpolated_move=math.inf),
        # Redone instead, shrinking to min(0.9 t, 0.81 / L) = 0.81.
        AdaptiveStep(max_dual_factor=100.0, max_interpolated=0.0, shrink=0.9),
    ):
        problem = OnlyDualMoves().to(device)
        optimizer = ExtraGradient(problem, *sgd_pair(problem, 1.0), step_size=config)
        result = optimizer.step(problem)
        multiplier = float(problem.constraints["h"].multiplier.detach())
        runs.append(
            (result.evaluations, optimizer.step_factor, float(problem.x.detach()), multiplier)
        )
    (calls, factor, x, multiplier), (retried_calls, *retried) = runs
    assert (calls, retried_calls) == (2, 3)
    assert factor == pytest.approx(0.81, rel=1e-15)
    assert x == pytest.approx(0.6561, rel=1e-15)
    assert multiplier == pytest.approx(-0.81, rel=1e-15)
    assert retried == pytest.approx([factor, x, multiplier], rel=1e-15)


def test_an_interpolated_step_scales_the_capped_multipliers_move_too(device: str) -> None:
    """From t = 2 the multipliers' factor is capped at 1/2: the extrapolation (0, -0.5)
    changes F by (-0.5, 0), L = 0.5 in the metric where the multiplier weighs 1/4, and
    t L = 1 is rejected. The kept fraction theta = 0.81 scales both moves: the primal factor
    to 1.62 and the multipliers' to 0.81 * 0.5 = 0.405 (not the cap's 0.5 at 1.62), so the
    interpolated point (0, -0.405) is on the evaluated segment; its operator (-0.405, 1)
    steps (0, 0) to (1.62 * 0.405, -0.405)."""
    problem = OnlyDualMoves().to(device)
    optimizer = ExtraGradient(
        problem,
        *sgd_pair(problem, 1.0),
        step_size=AdaptiveStep(initial=2.0, max_interpolated_move=math.inf),
    )
    result = optimizer.step(problem)
    assert result.evaluations == 2
    assert optimizer.step_factor == pytest.approx(1.62, rel=1e-15)
    assert float(problem.x.detach()) == pytest.approx(1.62 * 0.405, rel=1e-15)
    multiplier = float(problem.constraints["h"].multiplier.detach())
    assert multiplier == pytest.approx(-0.405, rel=1e-15)


def test_an_update_that_raises_after_an_interpolated_extrapolation_changes_nothing(
    device: str,
) -> None:
    """The dual step is a stock ``step()`` (a hook on it); its second call, the update after
    the interpolated extrapolation of OnlyDualMoves' first step, raises."""
    calls = []

    def hook(*_: Any) -> None:
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("hook failed")

    problem = OnlyDualMoves().to(device)
    optimizer = ExtraGradient(
        problem,
        *sgd_pair(problem, 1.0),
        step_size=AdaptiveStep(max_dual_factor=100.0, max_interpolated_move=math.inf),
    )
    optimizer.dual_optimizer.register_step_pre_hook(hook)
    before = snapshot(problem, optimizer)
    with pytest.raises(RuntimeError, match=r"^hook failed$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, snapshot(problem, optimizer))
    assert optimizer.step_factor == 1.0
    result = optimizer.step(problem)  # the hook passes from now on: the interpolated step
    assert result.evaluations == 2
    assert float(problem.x.detach()) == pytest.approx(0.6561, rel=1e-15)


class Quartic(ConstrainedProblem):
    """A curvature that changes with x, so that some later steps are retried. Every call
    records a draw of the global generator."""

    def __init__(self, treatment: str = "slack") -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([3.0, 0.0]))
        self.add_inequality("sum", ">=", treatment=treatment)  # type: ignore[arg-type]
        self.to(F64)
        self.draws: list[float] = []
        self.fail_on: int | None = None

    def forward(self) -> ProblemState:
        self.draws.append(float(torch.rand(())))
        if self.fail_on is not None and len(self.draws) == self.fail_on:
            raise RuntimeError("closure failed")
        x = self.x
        objective = 100 * (x[0] - 1) ** 4 + (x[0] - 1) ** 2 + (x[1] - 2) ** 2
        return ProblemState(objective, {"sum": x.sum() - 4})


def _quartic_optimizer(
    problem: Quartic, base: str, formulation: str, interpolate: bool = True
) -> ExtraGradient:
    primal_params, dual_params = problem.primal_parameters(), problem.dual_parameters()
    if base == "adam":
        primal: torch.optim.Optimizer = torch.optim.Adam(primal_params, lr=0.5)
        dual: torch.optim.Optimizer = torch.optim.Adam(dual_params, lr=0.5, maximize=True)
    elif base == "momentum":
        primal = torch.optim.SGD(primal_params, lr=0.1, momentum=0.5)
        dual = torch.optim.SGD(dual_params, lr=0.1, momentum=0.5, maximize=True)
    else:
        primal = torch.optim.SGD(primal_params, lr=1.0)
        dual = torch.optim.SGD(dual_params, lr=1.0, maximize=True)
    step_size = AdaptiveStep() if interpolate else AdaptiveStep(max_interpolated=0.0)
    return ExtraGradient(problem, primal, dual, formulation=formulation, step_size=step_size)


def test_retried_extrapolations_see_the_same_random_draws(device: str) -> None:
    # The closure draws from the CPU generator on every device.
    torch.manual_seed(0)
    problem = Quartic().to(device)
    optimizer = _quartic_optimizer(problem, "sgd", "lagrangian", interpolate=False)
    retried = 0
    for _ in range(60):
        problem.draws.clear()
        before = torch.get_rng_state()
        result = optimizer.step(problem)
        draws = problem.draws
        assert len(draws) == result.evaluations
        # The start's draw, then one draw that every extrapolation repeats.
        assert len(set(draws[1:])) == 1, draws
        assert draws[0] != draws[1]
        # The generator ends as after exactly two draws: the retries consumed nothing.
        replay = torch.Generator()
        replay.set_state(before)
        expected = torch.rand(2, generator=replay).tolist()
        assert draws[:2] == expected
        assert torch.equal(torch.get_rng_state(), replay.get_state())
        retried += result.evaluations > 2
    assert retried >= 3


@pytest.mark.parametrize("formulation", ["lagrangian", "augmented"])
def test_adam_state_advances_once_per_step_whatever_the_retries(
    formulation: str, device: str
) -> None:
    problem = Quartic().to(device)
    optimizer = _quartic_optimizer(problem, "adam", formulation)
    primal, dual = optimizer.primal_optimizer, optimizer.dual_optimizer
    assert dual is not None
    retried_steps = 0
    for step in range(12):
        if (
            step % 20 == 6
        ):  # a jump far up the quartic: large gradients, retries  # far out on the quartic: the curvature jumps and the step retries
            with torch.no_grad():
                problem.x[0] = 8.0
        result = optimizer.step(problem)
        retried_steps += result.evaluations > 2
        for optim in (primal, dual):
            for group in optim.param_groups:
                for param in group["params"]:
                    if param in optim.state:
                        assert float(optim.state[param]["step"]) == step + 1
        assert float(primal.state[problem.x]["step"]) == step + 1
        assert float(dual.state[problem.constraints["sum"].multiplier]["step"]) == step + 1
    assert retried_steps >= 2


def _state(problem: ConstrainedProblem, optimizer: ExtraGradient) -> dict[str, Any]:
    return copy.deepcopy(
        {
            "problem": problem.state_dict(),
            "optimizer": optimizer.state_dict(),
            "factor": optimizer.step_factor,
            "lrs": [group["lr"] for group in optimizer.param_groups],
            "grads": [param.grad for param in problem.parameters()],
        }
    )


@pytest.mark.parametrize("formulation", ["lagrangian", "augmented"])
@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_a_closure_failing_in_a_retry_changes_nothing(
    base: str, formulation: str, device: str
) -> None:
    torch.manual_seed(0)
    problem = Quartic().to(device)
    optimizer = _quartic_optimizer(problem, base, formulation)
    for step in range(200):
        if step % 20 == 6:  # a jump far up the quartic: large gradients, retries
            with torch.no_grad():
                problem.x[0] = 8.0
        # A dry run on a copy says whether this step retries.
        rng = torch.get_rng_state()
        dry_problem, dry = copy.deepcopy((problem, optimizer))
        dry_problem.draws.clear()
        calls = dry.step(dry_problem).evaluations
        torch.set_rng_state(rng)
        if step >= 3 and calls >= 3:
            break
        optimizer.step(problem)
    else:
        pytest.fail("no step with a retry")
    assert problem.constraints["sum"].slack is not None
    assert optimizer.primal_optimizer.state or base == "sgd"
    before = _state(problem, optimizer)

    problem.draws.clear()
    problem.fail_on = 3  # the start, a rejected extrapolation, then its retry fails
    with pytest.raises(RuntimeError, match=r"^closure failed$"):
        optimizer.step(problem)
    assert len(problem.draws) == 3
    assert_bitwise_equal(before, _state(problem, optimizer))

    # And the next step is the one the dry run took, bitwise.
    problem.fail_on = None
    problem.draws.clear()
    assert optimizer.step(problem).evaluations == calls
    assert_bitwise_equal(dry_problem.state_dict(), problem.state_dict())
    assert_bitwise_equal(dry.state_dict(), optimizer.state_dict())
    assert dry.step_factor == optimizer.step_factor


def test_too_many_retries_raise_and_change_nothing(device: str) -> None:
    problem = Stiff(treatment="slack").to(device)
    optimizer = ExtraGradient(
        problem,
        *sgd_pair(problem, 1.0),
        scaling=True,
        step_size=AdaptiveStep(max_retries=0),
    )
    before = _state(problem, optimizer)
    message = (
        "the adaptive step was rejected 1 times in one step (step factor 1): the operator is "
        "not locally Lipschitz here, or the closure is not deterministic"
    )
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    after = _state(problem, optimizer)
    # The scales measured before the step are kept (a measurement, not a step's change).
    before["optimizer"]["formulation"]["scales"] = after["optimizer"]["formulation"]["scales"]
    assert_bitwise_equal(before, after)
    assert optimizer.step_factor == 1.0


INVALID_STEPS = [
    (dict(initial=0.0), "Invalid initial step factor: 0.0"),
    (dict(initial=-1.0), "Invalid initial step factor: -1.0"),
    (dict(initial=math.inf), "Invalid initial step factor: inf"),
    (dict(initial=math.nan), "Invalid initial step factor: nan"),
    (dict(delta=0.0), "Invalid acceptance threshold delta: 0.0"),
    (dict(delta=1.0), "Invalid acceptance threshold delta: 1.0"),
    (dict(delta=math.nan), "Invalid acceptance threshold delta: nan"),
    (dict(safety=0.0), "Invalid safety factor: 0.0"),
    (dict(safety=1.5), "Invalid safety factor: 1.5"),
    (dict(growth=0.5), "Invalid step growth factor: 0.5"),
    (dict(growth=math.inf), "Invalid step growth factor: inf"),
    (dict(shrink=0.0), "Invalid step shrink factor: 0.0"),
    (dict(shrink=1.0), "Invalid step shrink factor: 1.0"),
    (dict(max_retries=-1), "Invalid max_retries: -1"),
    (dict(max_retries=2.0), "Invalid max_retries: 2.0"),
    (dict(max_retries=True), "Invalid max_retries: True"),
    (dict(noise=-1e-3), "Invalid noise level: -0.001"),
    (dict(noise=1.0), "Invalid noise level: 1.0"),
    (dict(max_interpolated=-0.5), "Invalid max_interpolated: -0.5"),
    (dict(max_interpolated=math.inf), "Invalid max_interpolated: inf"),
    (dict(max_interpolated=math.nan), "Invalid max_interpolated: nan"),
    (dict(max_interpolated_move=-1.0), "Invalid max_interpolated_move: -1.0"),
    (dict(max_interpolated_move=math.nan), "Invalid max_interpolated_move: nan"),
    (dict(sample_dual_factor=0.0), "Invalid sample_dual_factor: 0.0"),
    (dict(sample_dual_factor=math.inf), "Invalid sample_dual_factor: inf"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "message"), INVALID_STEPS, ids=[m for _, m in INVALID_STEPS])
def test_invalid_adaptive_settings_are_named(settings: dict[str, Any], message: str) -> None:
    problem = Stiff()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _default_like(problem, AdaptiveStep(**settings))


@pytest.mark.parametrize("step_size", ["auto", "Adaptive", None, 1.0])
def test_invalid_step_size_is_named(step_size: Any) -> None:
    problem = Stiff()
    message = f"invalid step_size {step_size!r}; expected 'fixed', 'adaptive' or an AdaptiveStep"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _default_like(problem, step_size)


def test_valid_edge_settings_are_accepted() -> None:
    edge = AdaptiveStep(initial=1e-9, delta=0.999, safety=1.0, growth=1.0, shrink=0.999,
                        max_retries=0, noise=0.0)  # fmt: skip
    assert _default_like(Stiff(), edge).adaptive is edge


def _roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "build",
    [
        lambda problem: default_optimizer(problem),
        lambda problem: _quartic_optimizer(problem, "adam", "lagrangian"),
        lambda problem: _quartic_optimizer(problem, "momentum", "augmented"),
    ],
    ids=["default", "adam", "momentum-augmented"],
)
def test_resume_is_bitwise_identical(
    build: Callable[[Quartic], ExtraGradient], device: str
) -> None:
    problem = Quartic().to(device)
    optimizer = build(problem)
    calls = []
    for _ in range(20):
        calls.append(optimizer.step(problem).evaluations)
    saved = _roundtrip({"problem": problem.state_dict(), "optimizer": optimizer.state_dict()})
    for _ in range(20):
        calls.append(optimizer.step(problem).evaluations)
    assert max(calls) > 2  # retries happened on the way

    fresh = Quartic().to(device)
    with torch.no_grad():
        fresh.x.fill_(-1.0)  # another start: the load must overwrite it
    resumed = build(fresh)
    fresh.load_state_dict(saved["problem"])
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.step_factor == saved["optimizer"]["step_factor"]
    for _ in range(20):
        resumed.step(fresh)

    assert torch.equal(fresh.x, problem.x)
    for name in ("multiplier", "slack"):
        assert torch.equal(
            getattr(fresh.constraints["sum"], name), getattr(problem.constraints["sum"], name)
        )
    assert resumed.step_factor == optimizer.step_factor
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert_bitwise_equal(resumed.state_dict(), optimizer.state_dict())


class InactiveWithMultiplier(ConstrainedProblem):
    """min 1e-3 (x - 3)^2 s.t. x <= 10, from x = 0 with the multiplier at 5: the constraint
    is inactive, so the multiplier must decay to 0, while the flat objective lets the
    step factor grow far past 1."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros((), dtype=F64))
        self.add_inequality("cap", "<=", treatment="projection")
        self.to(F64)
        with torch.no_grad():
            self.constraints["cap"].multiplier.fill_(5.0)

    def forward(self) -> ProblemState:
        return ProblemState(1e-3 * (self.x - 3).square(), {"cap": self.x - 10})


def test_the_capped_dual_factor_lets_the_primal_step_grow(device: str) -> None:
    problem = InactiveWithMultiplier().to(device)
    optimizer = ExtraGradient(
        problem,
        *sgd_pair(problem, 1.0),
        formulation="augmented",
        step_size="adaptive",
    )
    for _ in range(300):
        optimizer.step(problem)
    assert optimizer.step_factor > 100.0
    assert float(problem.constraints["cap"].multiplier.detach()) < 1e-30
    assert abs(float(problem.x.detach()) - 3.0) < 1e-6


def test_without_the_cap_the_multipliers_hold_the_step_below_one(device: str) -> None:
    # In the augmented Lagrangian's metric an inactive multiplier's block has Lipschitz
    # constant 1: with one factor for both sides, the flat objective cannot get t past it.
    problem = InactiveWithMultiplier().to(device)
    optimizer = ExtraGradient(
        problem,
        *sgd_pair(problem, 1.0),
        formulation="augmented",
        step_size=AdaptiveStep(max_dual_factor=100.0),
    )
    for _ in range(300):
        optimizer.step(problem)
    assert optimizer.step_factor < 1.0
    assert abs(float(problem.x.detach()) - 3.0) > 1e-2


def test_the_factor_stops_growing_at_max_factor() -> None:
    config = AdaptiveStep(max_factor=8.0)
    assert next_factor(config, 6.0, Trial(True, 0.0)) == 8.0
    assert next_factor(config, 8.0, Trial(True, 0.0)) == 8.0
    assert next_factor(config, 8.0, Trial(False, math.inf)) == 4.0
    with pytest.raises(ValueError, match=re.escape("Invalid max_factor: 0.5")):
        ExtraGradient(
            Stiff(treatment="projection"),
            torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0),
            step_size=AdaptiveStep(max_factor=0.5),
        )


class AffineGame(ConstrainedProblem):
    """min |A x - b|^2 s.t. C x = d (dense) and e_i . x = f_i (indexed, 6 rows): a
    quadratic objective with linear equalities, so the operator is affine and an
    interpolated extrapolation is exactly the extrapolation it stands for."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.x = nn.Parameter(torch.zeros(5, dtype=F64))
        self.A, self.b, self.C, self.d, self.E, self.f = (
            torch.randn(shape, generator=generator, dtype=F64)
            for shape in ((8, 5), (8,), (2, 5), (2,), (6, 5), (6,))
        )
        self.add_equality("dense", shape=(2,))
        self.add_equality("rows", num_samples=6)
        self.to(F64)

    def forward(self, indices: Tensor) -> ProblemState:
        residual = self.E[indices] @ self.x - self.f[indices]
        return ProblemState(
            (self.A @ self.x - self.b).square().sum(),
            {"dense": self.C @ self.x - self.d, "rows": IndexedValue(residual, indices)},
        )


def test_interpolated_steps_equal_redone_ones_on_an_affine_operator() -> None:
    """40 steps on batches of 3 of the 6 indexed rows, from a factor 8 (many rejections):
    interpolating mild rejections follows the trajectory of redoing them with the same
    shorter factor (a shrink of 0.9999 makes the retry's factor the estimate's 0.81 / L),
    to rounding, at fewer closure calls."""
    runs = []
    for config in (
        AdaptiveStep(initial=8.0, max_dual_factor=1e6, max_interpolated_move=math.inf),
        AdaptiveStep(initial=8.0, max_dual_factor=1e6, max_interpolated=0.0, shrink=0.9999),
    ):
        problem = AffineGame()
        optimizer = ExtraGradient(problem, *sgd_pair(problem, 0.02), step_size=config)
        calls, trajectory = 0, []
        for step in range(40):
            indices = torch.tensor([step % 6, (step + 2) % 6, (step + 3) % 6])
            result = optimizer.step(lambda i=indices, p=problem: p(i))
            calls += result.evaluations
            trajectory.append(
                torch.cat(
                    [problem.x.detach(), *(p.detach().flatten() for p in problem.dual_parameters())]
                )
            )
        runs.append((calls, torch.stack(trajectory), optimizer.step_factor))
    (calls, trajectory, factor), (retried_calls, retried, retried_factor) = runs
    assert calls < retried_calls - 5
    torch.testing.assert_close(trajectory, retried, rtol=1e-10, atol=1e-12)
    assert factor == pytest.approx(retried_factor, rel=1e-10)


def test_the_test_reads_a_plain_sgd_move_from_the_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With plain SGD an unbounded parameter moved by ``size * grad``: the test reads the
    move's norm from the gradient instead of differencing the points. Both give the same
    sums (to rounding) on every step of a run, and the run took the gradient's way."""
    compared = []

    def both_ways(*args: Any) -> Tensor:
        dense, copies, start_grads, bases, sgd_moves, start, extrapolated = args
        assert sgd_moves, "plain SGD: the moves are read from the gradients"
        from_points = change_norms(dense, copies, start_grads, bases, {}, start, extrapolated)
        from_gradients = change_norms(*args)
        torch.testing.assert_close(from_gradients, from_points, rtol=1e-12, atol=0.0)
        compared.append(None)
        return from_gradients

    change_norms = extragradient_module.change_norms
    monkeypatch.setattr(extragradient_module, "change_norms", both_ways)
    problem = AffineGame()
    optimizer = ExtraGradient(problem, *sgd_pair(problem, 0.02), step_size="adaptive")
    for step in range(10):
        indices = torch.tensor([step % 6, (step + 1) % 6])
        optimizer.step(lambda i=indices: problem(i))
    assert len(compared) >= 10


def test_under_adam_a_rejected_extrapolation_is_always_redone() -> None:
    """Adam scales a normalised step: the interpolation is left to plain SGD, and with Adam
    the run is bitwise the one that redoes every rejection."""
    runs = []
    for config in (
        AdaptiveStep(initial=8.0, max_interpolated_move=math.inf),
        AdaptiveStep(initial=8.0, max_interpolated=0.0),
    ):
        problem = AffineGame()
        optimizer = ExtraGradient(
            problem,
            torch.optim.Adam(problem.primal_parameters(), lr=0.05),
            torch.optim.SGD(problem.dual_parameters(), lr=0.05, maximize=True),
            step_size=config,
        )
        calls = 0
        for step in range(30):
            indices = torch.tensor([step % 6, (step + 3) % 6])
            calls += optimizer.step(lambda i=indices, p=problem: p(i)).evaluations
        runs.append((calls, snapshot(problem, optimizer)))
    (calls, state), (redone_calls, redone_state) = runs
    assert calls == redone_calls > 60  # rejections happened, and were redone in both
    assert_bitwise_equal(state, redone_state)
