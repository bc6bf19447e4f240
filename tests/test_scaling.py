"""Gradient-based scaling: the scales measured, the closure call it costs, and every figure
the user sees in the user's units."""

from __future__ import annotations

import copy
import io
import math
import re
from typing import Any

import pytest
import torch
from helpers import QuadraticProgram, sgd_pair
from torch import nn

from lagrange_opt import (
    DEFAULT_AUGMENTED,
    AlternatingGDA,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
    kkt,
)
from lagrange_opt.maths.augmented import augmented_value

F64 = torch.float64


class ScaledQP(QuadraticProgram):
    """QuadraticProgram with its objective times ``fs`` and its constraint times ``gs``.

    Same x* = (2/3, 4/3); the multiplier of the user's problem is 7/3 * fs / gs."""

    def __init__(self, treatment: str, fs: float, gs: float) -> None:
        super().__init__(treatment)
        self.fs, self.gs = fs, gs

    def forward(self) -> ProblemState:
        state = super().forward()
        return ProblemState(state.objective * self.fs, {"sum": state.constraints["sum"] * self.gs})


def _multiplier(problem: ConstrainedProblem, name: str = "sum") -> float:
    return float(problem.constraints[name].multiplier.detach())


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_scaled_problem_is_solved_in_user_units(treatment: str, device: str) -> None:
    problem = ScaledQP(treatment, 1e4, 1e3).to(device)
    optimizer = default_optimizer(problem)
    # Measured: every assertion below holds for good from step 311 (either treatment).
    for _ in range(470):
        result = optimizer.step(problem)
    torch.testing.assert_close(
        problem.x.detach().cpu(),
        torch.tensor(QuadraticProgram.solution, dtype=F64),
        rtol=0,
        atol=1e-6,
    )
    assert _multiplier(problem) == pytest.approx(7 / 3 * 1e4 / 1e3, rel=1e-6)
    # The optimum of the user's objective: 1e4 * (1/2 x'Qx - p'x) at x* = 1e4 * (-1/3 + ...).
    x = torch.tensor(QuadraticProgram.solution, dtype=F64)
    f_star = 1e4 * float(0.5 * x @ problem.Q.cpu() @ x - problem.p.cpu() @ x)
    assert float(result.objective) == pytest.approx(f_star, rel=1e-9)
    assert float(result.lagrangian) == pytest.approx(f_star, rel=1e-9)
    assert float(result.max_violation) <= 1e-6 * 1e3
    residuals = kkt(problem)
    assert residuals.converged(1e-6 * 1e4), residuals


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_scaled_run_is_the_unit_run_in_user_units(treatment: str, device: str) -> None:
    """Scaling divides the objective by 1e4 and the constraint by 1e3: the scaled run is the
    unit problem's run (scales 1), with every figure in the user's units."""
    scaled = ScaledQP(treatment, 1e4, 1e3).to(device)
    unit = ScaledQP(treatment, 1.0, 1.0).to(device)
    scaled_opt, unit_opt = default_optimizer(scaled), default_optimizer(unit)
    for step in range(200):
        before = scaled()
        ours, theirs = scaled_opt.step(scaled), unit_opt.step(unit)
        context = f"step {step}"
        # The objective and the violations are the user's, at the start of the step.
        assert float(ours.objective) == float(before.objective.detach()), context
        violation = max(0.0, -float(before.constraints["sum"].detach()))
        assert float(ours.max_violation) == pytest.approx(violation, rel=1e-15, abs=1e-300)
        assert float(ours.constraints["sum"].max_violation) == float(ours.max_violation)
        # And they are the unit run's, times the user's factors.
        assert float(ours.objective) == pytest.approx(1e4 * float(theirs.objective), rel=1e-9)
        assert float(ours.lagrangian) == pytest.approx(
            1e4 * float(theirs.lagrangian), rel=1e-9, abs=1e-9
        ), context
        assert float(ours.max_violation) == pytest.approx(
            1e3 * float(theirs.max_violation), rel=1e-9, abs=1e-9
        ), context
        torch.testing.assert_close(scaled.x.detach(), unit.x.detach(), rtol=0, atol=1e-12)
        assert _multiplier(scaled) == pytest.approx(10 * _multiplier(unit), rel=1e-9, abs=1e-12)
        assert ours.evaluations == theirs.evaluations
    scales = scaled_opt.state_dict()["formulation"]["scales"]
    assert scales["objective"] == 1e4
    assert torch.equal(scales["constraints"]["sum"].cpu(), torch.tensor(1e3, dtype=F64))
    unit_scales = unit_opt.state_dict()["formulation"]["scales"]
    assert unit_scales["objective"] == 1.0


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_lagrangian_is_the_users_augmented_lagrangian(treatment: str, device: str) -> None:
    """L = f + psi_c(g, lambda) with the user's f, g, lambda and c_user = c s_f / s_g^2."""
    problem = ScaledQP(treatment, 1e4, 1e3).to(device)
    optimizer = default_optimizer(problem)
    for step in range(30):
        with torch.no_grad():
            state = problem()
            multiplier = problem.constraints["sum"].multiplier.detach().clone()
        result = optimizer.step(problem)
        scales = optimizer.state_dict()["formulation"]["scales"]
        c_user = 1.0 * scales["objective"] / scales["constraints"]["sum"].square()
        g = -state.constraints["sum"]  # standard form of ">="
        expected = state.objective + augmented_value(g, multiplier, c_user, False)
        assert float(result.lagrangian) == pytest.approx(float(expected), rel=1e-12), step


FIXED_METHODS = [
    (SimultaneousGDA, "lagrangian"),
    (AlternatingGDA, "lagrangian"),
    (ExtraGradient, "lagrangian"),
    (ExtraGradient, "augmented"),
    (SimultaneousGDA, "augmented"),
]


@pytest.mark.parametrize(
    ("method", "formulation"), FIXED_METHODS, ids=[f"{m.__name__}-{f}" for m, f in FIXED_METHODS]
)
def test_fixed_step_scaled_run_is_the_unit_run(method: type, formulation: str, device: str) -> None:
    scaled = ScaledQP("projection", 1e4, 1e3).to(device)
    unit = ScaledQP("projection", 1.0, 1.0).to(device)
    # Measured: the last two assertions hold for good from step 264 (ExtraGradient, augmented;
    # 116 to 250 for the others); with a rate of 0.1, from step 341 (with 0.2 it diverges).
    scaled_opt = method(scaled, *sgd_pair(scaled, 0.13), formulation=formulation, scaling=True)
    unit_opt = method(unit, *sgd_pair(unit, 0.13), formulation=formulation, scaling=True)
    for _ in range(400):
        ours, theirs = scaled_opt.step(scaled), unit_opt.step(unit)
        assert float(ours.objective) == pytest.approx(1e4 * float(theirs.objective), rel=1e-9)
        assert float(ours.lagrangian) == pytest.approx(1e4 * float(theirs.lagrangian), rel=1e-9)
        torch.testing.assert_close(scaled.x.detach(), unit.x.detach(), rtol=0, atol=1e-12)
        assert _multiplier(scaled) == pytest.approx(10 * _multiplier(unit), rel=1e-9, abs=1e-12)
    assert _multiplier(scaled) == pytest.approx(70 / 3, rel=1e-6)
    torch.testing.assert_close(
        scaled.x.detach().cpu(),
        torch.tensor(QuadraticProgram.solution, dtype=F64),
        rtol=0,
        atol=1e-6,
    )


class Measured(ConstrainedProblem):
    """Gradients known at x0 = (1, -2, 0.5) (objective's inf-norm 6; the dense rows'
    5, 0.5 and 200; the indexed rows' up to 30; the scalar equality's 0.25)."""

    def __init__(self, objective_factor: float = 1.0, device: str = "cpu") -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=F64))
        self.objective_factor = objective_factor
        # Plain attributes (not buffers: not in the state dict), made on the device.
        self.A = torch.tensor(
            [[5.0, 1.0, 0.0], [0.5, -0.25, 0.0], [0.0, 0.0, -200.0]], dtype=F64, device=device
        )
        self.rows = torch.tensor(
            [[1.0, 2.0, 3.0], [-30.0, 0.0, 0.0], [0.0, 4.0, 0.0]], dtype=F64, device=device
        )
        self.add_inequality("dense", "<=", shape=(3,), treatment="slack")
        self.add_inequality("indexed", ">=", num_samples=5, treatment="projection")
        self.add_equality("scalar")
        self.add_inequality("penalised", "<=", treatment="penalty", penalty_weight=1e6)
        self.calls = 0
        self.to(device=device, dtype=F64)  # the tables (and so the scales) in the values' dtype

    def forward(self) -> ProblemState:
        self.calls += 1
        x = self.x
        # grad of x'x = 2x = (2, -4, 1); times 1.5: (3, -6, 1.5): inf-norm 6.
        objective = self.objective_factor * 1.5 * x.square().sum()
        indices = torch.tensor([4, 0, 2], device=x.device)
        return ProblemState(
            objective,
            {
                "dense": self.A @ x - 1.0,
                "indexed": IndexedValue(self.rows @ x, indices),
                "scalar": 0.25 * x[0] - 0.25,
                "penalised": 1e3 * x.sum(),
            },
        )


def test_scales_are_the_gradients_inf_norms_at_the_first_point(device: str) -> None:
    problem = Measured(device=device)
    optimizer = ExtraGradient(problem, *sgd_pair(problem, 1e-3), scaling=True)
    assert optimizer.state_dict()["formulation"]["scales"] is None
    optimizer.step(problem)
    scales = optimizer.state_dict()["formulation"]["scales"]
    assert scales["objective"] == 6.0
    constraints = scales["constraints"]
    assert set(constraints) == {"dense", "indexed", "scalar"}  # no scale for the penalty
    # Per element for a dense constraint; 0.5 < 1 gives 1.
    assert constraints["dense"].dtype == F64 and constraints["dense"].shape == (3,)
    assert constraints["dense"].cpu().tolist() == [5.0, 1.0, 200.0]
    # One scalar for an indexed constraint: the largest of its batch rows.
    assert constraints["indexed"].shape == () and float(constraints["indexed"]) == 30.0
    assert constraints["scalar"].shape == () and float(constraints["scalar"]) == 1.0
    # Measured once: later steps keep them.
    for _ in range(5):
        optimizer.step(problem)
    later = optimizer.state_dict()["formulation"]["scales"]
    assert later["objective"] == 6.0 and torch.equal(
        later["constraints"]["dense"], constraints["dense"]
    )


def test_lagrangian_with_per_element_scales_is_the_users(device: str) -> None:
    """Each dense element has its own c_user = s_f / s_g,i^2; the indexed rows share one,
    times the default's per-sample stiffness, see their rows shifted by the constraint's
    margin and their own, and are averaged over the batch; the penalty enters as declared."""
    problem = Measured(device=device)
    optimizer = default_optimizer(problem)
    for step in range(10):
        with torch.no_grad():
            state = problem()
            multipliers = {
                name: problem.constraints[name].multiplier.detach().clone()
                for name in ("dense", "indexed", "scalar")
            }
        margins = optimizer.state_dict()["formulation"]["margins"]
        result = optimizer.step(problem)
        scales = optimizer.state_dict()["formulation"]["scales"]
        s_f, s_g = scales["objective"], scales["constraints"]
        values = state.constraints
        indexed = values["indexed"]
        assert isinstance(indexed, IndexedValue)
        dense = augmented_value(
            values["dense"], multipliers["dense"], s_f / s_g["dense"].square(), False
        ).sum()
        shift = margins["margins"]["indexed"]
        if "indexed" in margins["rows"]:
            shift = shift + margins["rows"]["indexed"][indexed.indices]
        rows = augmented_value(
            -indexed.value + shift,
            multipliers["indexed"][indexed.indices],
            DEFAULT_AUGMENTED.sample_penalty * s_f / s_g["indexed"].square(),
            False,
        ).sum() / len(indexed.indices)
        scalar = augmented_value(
            values["scalar"], multipliers["scalar"], s_f / s_g["scalar"].square(), True
        )
        penalty = 1e6 * values["penalised"].clamp(min=0).square()
        expected = state.objective + dense + rows + scalar + penalty
        assert float(result.lagrangian) == pytest.approx(float(expected), rel=1e-12), step
        assert float(result.objective) == float(state.objective)


def test_small_gradients_give_unit_scales(device: str) -> None:
    problem = Measured(objective_factor=0.1, device=device)  # objective gradient inf-norm 0.6
    optimizer = SimultaneousGDA(problem, *sgd_pair(problem, 1e-3), scaling=True)
    optimizer.step(problem)
    assert optimizer.state_dict()["formulation"]["scales"]["objective"] == 1.0


def test_a_large_dense_constraint_gets_one_scale(device: str) -> None:
    class Wide(ConstrainedProblem):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.ones(size, dtype=F64))
            self.weights = torch.arange(1.0, size + 1, dtype=F64, device=device)
            self.add_equality("rows", shape=(size,))
            self.to(device=device, dtype=F64)

        def forward(self) -> ProblemState:
            return ProblemState(self.x.sum(), {"rows": self.weights * self.x})

    # Up to 64 elements: one scale each; above, the largest of the first 64 as one scale.
    for size, expected in [(64, torch.arange(1.0, 65, dtype=F64)), (70, torch.tensor(64.0))]:
        problem = Wide(size)
        optimizer = SimultaneousGDA(problem, *sgd_pair(problem, 1e-3), scaling=True)
        optimizer.step(problem)
        scale = optimizer.state_dict()["formulation"]["scales"]["constraints"]["rows"]
        assert scale.device.type == device
        assert torch.equal(scale.cpu(), expected.to(F64)), size


@pytest.mark.parametrize(
    ("build", "calls"),
    [
        (lambda p: SimultaneousGDA(p, *sgd_pair(p, 1e-3), scaling=True), 1),
        (lambda p: AlternatingGDA(p, *sgd_pair(p, 1e-3), scaling=True), 1),
        (lambda p: ExtraGradient(p, *sgd_pair(p, 1e-3), scaling=True), 2),
        (lambda p: ExtraGradient(p, *sgd_pair(p, 1e-3), formulation="augmented", scaling=True), 2),
    ],
    ids=["simultaneous", "alternating", "extra-gradient", "extra-gradient-augmented"],
)
def test_scaling_costs_one_call_on_the_first_step_only(build: Any, calls: int, device: str) -> None:
    problem = Measured(device=device)
    optimizer = build(problem)
    counted = []
    for _ in range(4):
        before = problem.calls
        result = optimizer.step(problem)
        assert problem.calls - before == result.evaluations
        counted.append(result.evaluations)
    assert counted == [calls + 1, calls, calls, calls]
    unscaled_problem = Measured(device=device)
    unscaled = type(optimizer)(unscaled_problem, *sgd_pair(unscaled_problem, 1e-3))
    assert unscaled.step(unscaled_problem).evaluations == calls
    assert unscaled.state_dict()["formulation"]["scales"] is None


def _roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_loaded_scales_are_not_measured_again(device: str) -> None:
    problem = ScaledQP("slack", 1e4, 1e3).to(device)
    optimizer = default_optimizer(problem)
    for _ in range(5):
        optimizer.step(problem)
    saved = _roundtrip({"problem": problem.state_dict(), "optimizer": optimizer.state_dict()})
    reference = copy.deepcopy((problem, optimizer))

    fresh = ScaledQP("slack", 1e4, 1e3).to(device)
    with torch.no_grad():
        fresh.x.fill_(3.0)  # scales measured here would differ
    resumed = default_optimizer(fresh)
    fresh.load_state_dict(saved["problem"])
    resumed.load_state_dict(saved["optimizer"])
    result = resumed.step(fresh)
    reference_problem, reference_optimizer = reference
    expected = reference_optimizer.step(reference_problem)
    assert result.evaluations == expected.evaluations
    assert resumed.state_dict()["formulation"]["scales"]["objective"] == 1e4
    assert torch.equal(fresh.x, reference_problem.x)
    assert torch.equal(
        fresh.constraints["sum"].multiplier, reference_problem.constraints["sum"].multiplier
    )


class Steep(ConstrainedProblem):
    """sqrt(x) at x = 0: a finite value with an infinite gradient."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([start, 1.0], dtype=F64))
        self.add_equality("e")

    def forward(self) -> ProblemState:
        return ProblemState(self.x[0].sqrt() + self.x[1].square(), {"e": self.x[1] - 1})


def test_an_infinite_gradient_at_the_first_point_is_named_and_changes_nothing(
    device: str,
) -> None:
    problem = Steep(0.0).to(device)
    optimizer = ExtraGradient(problem, *sgd_pair(problem, 1e-3), scaling=True)
    before = copy.deepcopy((problem.state_dict(), optimizer.state_dict()))
    message = "the gradient of the objective at the first point is not finite"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    after = (problem.state_dict(), optimizer.state_dict())
    assert torch.equal(before[0]["x"], after[0]["x"])
    assert after[1]["formulation"]["scales"] is None
    assert all(param.grad is None for param in problem.parameters())
    # From a point where it is finite, the scale is measured: the gradient is (1, 2).
    problem = Steep(0.25).to(device)
    optimizer = ExtraGradient(problem, *sgd_pair(problem, 1e-3), scaling=True)
    optimizer.step(problem)
    assert optimizer.state_dict()["formulation"]["scales"]["objective"] == 2.0
    assert math.isfinite(float(problem.x.detach()[0]))
