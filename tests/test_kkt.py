"""KKT residuals against closed forms, and the per-constraint figures of a step."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from helpers import MinNorm, QuadraticProgram, assert_bitwise_equal, sgd_pair, snapshot
from torch import nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedProblem,
    ConstraintFigures,
    ExtraGradient,
    IndexedValue,
    KKTResiduals,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
    kkt,
)

F64 = torch.float64


def _set(problem: QuadraticProgram, x: tuple[float, float], multiplier: float) -> None:
    with torch.no_grad():
        problem.x.copy_(torch.tensor(x, dtype=F64))
        problem.constraints["sum"].multiplier.fill_(multiplier)


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_kkt_is_zero_at_the_known_solution(treatment: str, device: str) -> None:
    problem = QuadraticProgram(treatment).to(device)
    _set(problem, QuadraticProgram.solution, QuadraticProgram.multiplier)
    residuals = kkt(problem)
    assert isinstance(residuals, KKTResiduals)
    assert residuals.converged(1e-9), residuals
    assert max(residuals) <= 1e-14
    assert all(param.grad is None for param in problem.parameters())


# At x* = (2/3, 4/3), grad f = Qx - p = (7/3, 7/3) and the standard form 2 - x1 - x2 has
# gradient (-1, -1): grad L = (7/3 - lam) (1, 1).
@pytest.mark.parametrize("multiplier", [0.0, 1.0, 2.0, 3.5, 100.0])
def test_stationarity_with_a_wrong_multiplier_is_the_gradient(
    multiplier: float, device: str
) -> None:
    problem = QuadraticProgram("projection").to(device)
    _set(problem, QuadraticProgram.solution, multiplier)
    residuals = kkt(problem)
    assert residuals.stationarity == pytest.approx(abs(7 / 3 - multiplier), rel=1e-12, abs=1e-14)
    assert residuals.primal_feasibility <= 1e-15
    assert residuals.dual_feasibility == 0.0
    assert residuals.complementarity <= 1e-14 * max(1.0, multiplier)
    assert residuals.converged(1e-6) is (abs(7 / 3 - multiplier) <= 1e-6)


@pytest.mark.parametrize("multiplier", [-0.5, -3.0])
def test_dual_feasibility_is_the_negative_multiplier(multiplier: float, device: str) -> None:
    problem = QuadraticProgram("projection").to(device)
    _set(problem, QuadraticProgram.solution, multiplier)
    residuals = kkt(problem)
    assert residuals.dual_feasibility == -multiplier
    assert residuals.stationarity == pytest.approx(7 / 3 - multiplier, rel=1e-12)
    assert not residuals.converged(0.4)


@pytest.mark.parametrize(
    ("x", "multiplier", "primal", "complementarity", "stationarity"),
    [
        # g = 2 - x1 - x2; grad L = Qx - p - lam (1, 1)
        ((0.0, 0.0), 1.5, 2.0, 3.0, 2.5),  # violated: g = 2
        ((2.0, 2.0), 0.25, 0.0, 0.5, 6.75),  # strictly feasible: g = -2, grad f = (7, 5)
        ((1.0, 0.5), 0.0, 0.5, 0.0, 2.5),  # lam = 0: no complementarity term
    ],
)
def test_feasibility_and_complementarity_closed_forms(
    x: tuple[float, float], multiplier: float, primal: float, complementarity: float,
    stationarity: float, device: str,
) -> None:  # fmt: skip
    problem = QuadraticProgram("slack").to(device)
    _set(problem, x, multiplier)
    residuals = kkt(problem)
    assert residuals.primal_feasibility == pytest.approx(primal, abs=1e-15)
    assert residuals.complementarity == pytest.approx(complementarity, rel=1e-15)
    assert residuals.stationarity == pytest.approx(stationarity, rel=1e-15)
    assert residuals.dual_feasibility == 0.0


def test_converged_is_the_largest_residual_against_the_tolerance() -> None:
    assert KKTResiduals(1e-7, 0.0, 0.0, 2e-7).converged(1e-6)
    assert KKTResiduals(0.0, 0.0, 0.0, 1e-6).converged(1e-6)  # at the tolerance
    assert not KKTResiduals(0.0, 0.0, 1.1e-6, 0.0).converged(1e-6)
    assert not KKTResiduals(0.0, 2e-6, 0.0, 0.0).converged()  # default 1e-6
    assert not KKTResiduals(float("nan"), 0.0, 0.0, 0.0).converged(1.0)


@pytest.mark.parametrize("position", [1, 2, 3])
def test_a_nan_residual_is_never_converged(position: int) -> None:
    residuals = [0.0] * 4
    residuals[position] = float("nan")
    assert not KKTResiduals(*residuals).converged(1.0)


class NaNConstraint(QuadraticProgram):
    def forward(self) -> ProblemState:
        state = super().forward()
        return ProblemState(state.objective, {"sum": state.constraints["sum"] * float("nan")})


def test_kkt_at_a_point_with_a_nan_constraint_is_not_converged(device: str) -> None:
    problem = NaNConstraint("projection").to(device)
    _set(problem, QuadraticProgram.solution, QuadraticProgram.multiplier)
    assert not kkt(problem).converged(1.0)


def test_equality_residuals(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(2, 4, generator=generator, dtype=F64)
    b = torch.randn(2, generator=generator, dtype=F64)
    problem = MinNorm(A.to(device), b.to(device))
    x_star = torch.linalg.pinv(A) @ b
    mu_star = -2 * torch.linalg.solve(A @ A.T, b)
    with torch.no_grad():
        problem.x.copy_(x_star)
        problem.constraints["Ax=b"].multiplier.copy_(mu_star)
    assert kkt(problem).converged(1e-12)
    # A wrong multiplier: grad L = 2x + A' mu; a point off the constraint: |Ax - b|.
    mu = mu_star + torch.tensor([0.5, -0.25], dtype=F64)
    x = x_star + torch.tensor([0.1, 0.0, -0.2, 0.3], dtype=F64)
    with torch.no_grad():
        problem.x.copy_(x)
        problem.constraints["Ax=b"].multiplier.copy_(mu)
    residuals = kkt(problem)
    assert residuals.stationarity == pytest.approx(float((2 * x + A.T @ mu).abs().max()), rel=1e-12)
    assert residuals.primal_feasibility == pytest.approx(float((A @ x - b).abs().max()), rel=1e-12)
    # Equalities have no sign condition and no complementarity.
    assert residuals.dual_feasibility == 0.0 and residuals.complementarity == 0.0


class Penalised(ConstrainedProblem):
    """min 1/2 x'Qx - p'x with x1 + x2 >= 2 as the penalty 10 max(0, 2 - x1 - x2)^2."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2, dtype=F64, device=device))
        self.Q = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=F64, device=device)
        self.add_inequality("sum", ">=", treatment="penalty", penalty_weight=10.0)

    def forward(self) -> ProblemState:
        objective = 0.5 * self.x @ self.Q @ self.x - self.x.sum()
        return ProblemState(objective, {"sum": self.x.sum() - 2})


def test_penalty_constraint_counts_in_feasibility_and_stationarity(device: str) -> None:
    problem = Penalised(device)
    residuals = kkt(problem)
    # At x = 0: g = 2, grad = -p + 10 * 2 * 2 * (-1, -1) = (-41, -41).
    assert residuals == KKTResiduals(41.0, 2.0, 0.0, 0.0)


class Box(ConstrainedProblem):
    """min 1/2 ||x - a||^2 with lower <= x <= upper: grad = x - a."""

    def __init__(
        self, x: list[float], a: list[float], lower: float, upper: float, device: str = "cpu"
    ) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x, dtype=F64, device=device))
        self.a = torch.tensor(a, dtype=F64, device=device)
        self.add_bounds(self.x, lower, upper)

    def forward(self) -> ProblemState:
        return ProblemState(0.5 * (self.x - self.a).square().sum(), {})


@pytest.mark.parametrize(
    ("x", "a", "expected"),
    [
        (1.0, 3.0, 0.0),  # on the upper bound, the gradient (-2) points outward: 0
        (0.0, -5.0, 0.0),  # on the lower bound, pointing outward: 0
        (1.0, 0.75, 0.25),  # on the upper bound, pointing inward: |grad|
        (1.0, -5.0, 1.0),  # inward, but the projected step stops at the other bound
        (0.5, 2.0, 0.5),  # interior: the projected step stops at the bound (u - x)
        (0.5, 0.25, 0.25),  # interior: |grad|
    ],
)
def test_stationarity_with_bounds_is_the_projected_gradient(
    x: float, a: float, expected: float, device: str
) -> None:
    problem = Box([x, 0.5], [a, 0.5], 0.0, 1.0, device)
    residuals = kkt(problem)
    assert residuals.stationarity == expected
    assert residuals == KKTResiduals(expected, 0.0, 0.0, 0.0)


def test_kkt_takes_a_closure_and_parameters(device: str) -> None:
    problem = QuadraticProgram("projection").to(device)
    _set(problem, QuadraticProgram.solution, 1.0)
    calls = []

    def closure() -> ProblemState:
        calls.append(1)
        return problem()

    # Only x1's gradient: the same |7/3 - 1|; with no parameters, no stationarity at all.
    assert kkt(problem, closure, [problem.x]).stationarity == pytest.approx(4 / 3, rel=1e-12)
    assert kkt(problem, closure, []).stationarity == 0.0
    assert len(calls) == 2


# StepResult.constraints


class Several(ConstrainedProblem):
    """Every kind of constraint, each violated at the start, multipliers set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=F64))
        self.add_inequality(
            "vec", ">=", shape=(3,), treatment="slack"
        )  # x[:3] >= (1, -2, 0): 0.5 short
        self.add_equality("eq", shape=(2,))  # x[1:3] = (0, 1.5): violations 1, 0.5
        self.add_inequality("pen", "<=", treatment="penalty", penalty_weight=3.0)
        self.add_inequality("rows", "<=", num_samples=4, treatment="projection")
        self.add_inequality("cap", "<=", treatment="projection")  # satisfied
        with torch.no_grad():
            self.constraints["vec"].multiplier.copy_(torch.tensor([0.5, 1.5, 0.0]))
            self.constraints["eq"].multiplier.copy_(torch.tensor([-3.0, 2.0]))
            self.constraints["rows"].multiplier.copy_(torch.tensor([0.125, 4.0, 0.25, 0.375]))
            self.constraints["cap"].multiplier.fill_(0.75)
        self.to(F64)

    def forward(self) -> ProblemState:
        x = self.x
        indices = torch.tensor([0, 2, 3], device=x.device)
        return ProblemState(
            x.square().sum(),
            {
                "vec": x[:3] - torch.tensor([1.0, -2.0, 0.0], dtype=F64, device=x.device),
                "eq": x[1:3] - torch.tensor([0.0, 1.5], dtype=F64, device=x.device),
                "pen": x.sum() - 1.0,  # 0.75: violated by 0.75
                "rows": IndexedValue(x[indices] * 2, indices),  # 1, 4, 0.5 > 0
                "cap": x.sum() - 10.0,
            },
        )


NAMES = ["vec", "eq", "pen", "rows", "cap"]
STEP_METHODS = ["extra-gradient", "simultaneous", "alternating", "default"]


def _optimizer(name: str, problem: ConstrainedProblem) -> Any:
    if name == "default":
        return default_optimizer(problem)
    method = {
        "extra-gradient": ExtraGradient,
        "simultaneous": SimultaneousGDA,
        "alternating": AlternatingGDA,
    }[name]
    return method(problem, *sgd_pair(problem, 0.1))


def _expected_violations(problem: Several) -> dict[str, float]:
    with torch.no_grad():
        state = problem()
    values = state.constraints
    rows = values["rows"]
    assert isinstance(rows, IndexedValue)
    return {
        "vec": float((-values["vec"]).clamp(min=0).max()),
        "eq": float(values["eq"].abs().max()),
        "pen": float(values["pen"].clamp(min=0)),
        "rows": float(rows.value.clamp(min=0).max()),
        "cap": float(values["cap"].clamp(min=0)),
    }


def test_the_start_point_is_what_the_table_says(device: str) -> None:
    problem = Several().to(device)
    assert _expected_violations(problem) == {
        "vec": 0.5, "eq": 1.0, "pen": 0.75, "rows": 4.0, "cap": 0.0
    }  # fmt: skip


@pytest.mark.parametrize("method", STEP_METHODS)
def test_per_constraint_max_violation_is_the_start_points(method: str, device: str) -> None:
    problem = Several().to(device)
    optimizer = _optimizer(method, problem)
    for step in range(3):
        expected = _expected_violations(problem)
        result = optimizer.step(problem)
        figures = result.constraints
        assert list(figures) == NAMES and len(figures) == 5
        assert set(figures.keys()) == set(NAMES) and "x" not in figures
        for name in NAMES:
            entry = figures[name]
            assert isinstance(entry, ConstraintFigures)
            assert entry.max_violation.ndim == 0 and not entry.max_violation.requires_grad
            assert float(entry.max_violation) == expected[name], (step, name)
        assert figures["pen"].multiplier_norm is None
        assert float(result.max_violation) == max(expected.values())
        with pytest.raises(KeyError):
            figures["missing"]


@pytest.mark.parametrize("method", STEP_METHODS)
def test_indexed_multiplier_norm_is_the_rows_read(method: str, device: str) -> None:
    problem = Several().to(device)
    optimizer = _optimizer(method, problem)
    result = optimizer.step(problem)
    # The batch reads rows 0, 2, 3 (0.125, 0.25, 0.375); row 1's 4.0 is not read.
    norm = result.constraints["rows"].multiplier_norm
    assert norm is not None and float(norm) == 0.375


@pytest.mark.parametrize("method", STEP_METHODS)
def test_dense_multiplier_norm_is_the_multipliers_read(method: str, device: str) -> None:
    problem = Several().to(device)
    optimizer = _optimizer(method, problem)
    result = optimizer.step(problem)
    reported = {name: result.constraints[name].multiplier_norm for name in ("vec", "eq", "cap")}
    assert {name: float(norm) for name, norm in reported.items()} == {  # type: ignore[arg-type]
        "vec": 1.5, "eq": 3.0, "cap": 0.75
    }  # fmt: skip


@pytest.mark.parametrize("method", STEP_METHODS)
def test_reading_the_figures_changes_nothing(method: str, device: str) -> None:
    problem = Several().to(device)
    optimizer = _optimizer(method, problem)
    result = optimizer.step(problem)
    before = snapshot(problem, optimizer)
    grads = [param.grad for param in problem.parameters()]
    first = {name: result.constraints[name] for name in result.constraints}
    second = {name: result.constraints[name] for name in result.constraints}
    for name in NAMES:
        assert torch.equal(first[name].max_violation, second[name].max_violation)
        if first[name].multiplier_norm is not None:
            assert torch.equal(first[name].multiplier_norm, second[name].multiplier_norm)
    assert_bitwise_equal(before, snapshot(problem, optimizer))
    assert [param.grad for param in problem.parameters()] == grads == [None] * len(grads)
    assert repr(result.constraints) == f"ConstraintReport({NAMES})"


def test_no_constraints_no_figures(device: str) -> None:
    problem = Box([0.5, 0.5], [2.0, 0.0], 0.0, 1.0, device)
    result = default_optimizer(problem).step(problem)
    assert len(result.constraints) == 0 and list(result.constraints) == []


# After a solve


def _solved(problem: ConstrainedProblem, steps: int) -> KKTResiduals:
    optimizer = default_optimizer(problem)
    for _ in range(steps):
        optimizer.step(problem)
    return kkt(problem)


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_kkt_converged_after_default_optimizer_on_the_quadratic_program(
    treatment: str, device: str
) -> None:
    # Measured: converged for good from step 216 (either treatment).
    residuals = _solved(QuadraticProgram(treatment).to(device), 330)
    assert residuals.converged(1e-6), residuals


def test_kkt_converged_after_default_optimizer_on_min_norm(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, generator=generator, dtype=F64)
    b = torch.randn(3, generator=generator, dtype=F64)
    # Measured: converged for good from step 557.
    residuals = _solved(MinNorm(A.to(device), b.to(device)), 840)
    assert residuals.converged(1e-6), residuals


def test_kkt_converged_after_default_optimizer_with_bounds(device: str) -> None:
    # Measured: converged for good from step 74.
    residuals = _solved(Box([0.5, 0.5, 0.5], [3.0, -2.0, 0.25], 0.0, 1.0, device), 120)
    assert residuals.converged(1e-6), residuals


KKT_GROUP_ERRORS = [
    (3, TypeError, "process_group must be None, 'default' or a torch.distributed.ProcessGroup, got int"),
    ("all", TypeError, "process_group must be None, 'default' or a torch.distributed.ProcessGroup, got str"),
    ("default", RuntimeError, "process_group given, but the default process group is not initialized"),
]  # fmt: skip


@pytest.mark.parametrize(("group", "error", "message"), KKT_GROUP_ERRORS)
def test_kkt_names_a_bad_process_group(group: Any, error: type, message: str) -> None:
    if not torch.distributed.is_available() or torch.distributed.is_initialized():
        pytest.skip("needs torch.distributed, with no process group initialised here")
    problem = QuadraticProgram("projection")
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        kkt(problem, process_group=group)
