"""The augmented Lagrangian: its pure functions against the formula, the closed-form slack,
the method on a problem with a known solution, its settings and the penalty-update rule."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import sympy
import torch
from helpers import QuadraticProgram, assert_bitwise_equal, sgd_pair
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from lagrange_opt import (
    DEFAULT_AUGMENTED,
    AlternatingGDA,
    AugmentedLagrangian,
    ConstrainedProblem,
    ExtraGradient,
    NonFiniteError,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)
from lagrange_opt.maths.augmented import (
    augmented_residual,
    augmented_value,
    augmented_weight,
    closed_form_slack,
    grown_penalty,
    primal_settled,
)
from lagrange_opt.problems import HOCK_SCHITTKOWSKI, NonlinearProgram

PENALTIES = [1e-8, 1e-2, 1.0, 1e2, 1e8]


def _formula_inequality(g: Tensor, lam: Tensor, c: Tensor) -> Tensor:
    """The issue's formula, written out: (max(0, lam + c g)^2 - lam^2) / (2c)."""
    return (torch.clamp(lam + c * g, min=0).square() - lam.square()) / (2 * c)


def _formula_equality(h: Tensor, mu: Tensor, c: Tensor) -> Tensor:
    return mu * h + c / 2 * h.square()


def _random_points(seed: int, n: int = 200) -> tuple[Tensor, Tensor]:
    """Values of every sign and scale, multipliers >= 0; the kink lam + c g = 0 is avoided
    by the draw (continuous)."""
    generator = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-3, 4, (n,), generator=generator, dtype=torch.float64)
    g = torch.randn(n, generator=generator, dtype=torch.float64) * scale
    lam = torch.rand(n, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(
        -3, 4, (n,), generator=generator, dtype=torch.float64
    )
    return g, lam


def _autograd(formula: Any, g: Tensor, lam: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    g = g.clone().requires_grad_()
    lam = lam.clone().requires_grad_()
    d_g, d_lam = torch.autograd.grad(formula(g, lam, c).sum(), (g, lam))
    return d_g, d_lam


def _conditioned_points(seed: int, c: float, n: int = 200) -> tuple[Tensor, Tensor]:
    """Points where the float64 formula itself is well conditioned: its derivative in lambda,
    (max(0, lam + c g) - lam) / c, cancels when |c g| << lam, so lambda is drawn as
    u |c g| with u in [0, 3] (both branches: inactive where g < 0 and u < 1)."""
    generator = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-3, 4, (n,), generator=generator, dtype=torch.float64)
    g = torch.randn(n, generator=generator, dtype=torch.float64) * scale
    lam = torch.rand(n, generator=generator, dtype=torch.float64) * 3 * (c * g).abs()
    return g, lam


@pytest.mark.parametrize("c", PENALTIES)
def test_inequality_derivatives_equal_autograd_of_the_formula(c: float) -> None:
    g, lam = _conditioned_points(0, c)
    penalty = torch.tensor(c, dtype=torch.float64)
    inactive = lam + c * g < 0
    assert 20 < int(inactive.sum()) < 180
    d_g, d_lam = _autograd(_formula_inequality, g, lam, penalty)
    torch.testing.assert_close(augmented_weight(g, lam, penalty, False), d_g, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(
        augmented_residual(g, lam, penalty, False), d_lam, rtol=1e-10, atol=0.0
    )
    torch.testing.assert_close(
        augmented_value(g, lam, penalty, False), _formula_inequality(g, lam, penalty),
        rtol=1e-10, atol=0.0,
    )  # fmt: skip


@pytest.mark.parametrize("c", PENALTIES)
def test_equality_derivatives_equal_autograd_of_the_formula(c: float) -> None:
    h, mu = _random_points(1)
    mu = mu * torch.where(torch.arange(mu.numel()) % 2 == 0, 1.0, -1.0)  # any sign
    penalty = torch.tensor(c, dtype=torch.float64)
    d_h, d_mu = _autograd(_formula_equality, h, mu, penalty)
    torch.testing.assert_close(augmented_weight(h, mu, penalty, True), d_h, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(augmented_residual(h, mu, penalty, True), d_mu, rtol=0.0, atol=0.0)
    torch.testing.assert_close(
        augmented_value(h, mu, penalty, True), _formula_equality(h, mu, penalty),
        rtol=1e-12, atol=0.0,
    )  # fmt: skip


_G, _LAM, _C = sympy.symbols("g lam c", real=True)
_PSI = (sympy.Max(0, _LAM + _C * _G) ** 2 - _LAM**2) / (2 * _C)
_PSI_G = sympy.diff(_PSI, _G)
_PSI_LAM = sympy.diff(_PSI, _LAM)


def _exact(expression: sympy.Expr, g: float, lam: float, c: float) -> float:
    values = {_G: sympy.Rational(Fraction(g)), _LAM: sympy.Rational(Fraction(lam))}
    values[_C] = sympy.Rational(Fraction(c))
    # xreplace: the symbols replaced as subs does, exactly (the same floats), 8 times faster.
    return float(expression.xreplace(values))


@pytest.mark.parametrize("c", PENALTIES)
def test_inequality_functions_equal_the_exact_formula(c: float) -> None:
    """The formula and its derivatives in exact rational arithmetic (sympy), at the float64
    inputs: the functions are accurate to rounding for every c, 1e-8 and 1e8 included."""
    g, lam = _random_points(2, n=40)
    penalty = torch.tensor(c, dtype=torch.float64)
    value = augmented_value(g, lam, penalty, False)
    weight = augmented_weight(g, lam, penalty, False)
    residual = augmented_residual(g, lam, penalty, False)
    for i, (g_i, lam_i) in enumerate(zip(g.tolist(), lam.tolist())):
        assert float(residual[i]) == pytest.approx(_exact(_PSI_LAM, g_i, lam_i, c), rel=1e-10)
        assert float(weight[i]) == pytest.approx(_exact(_PSI_G, g_i, lam_i, c), rel=1e-10, abs=0)
        assert float(value[i]) == pytest.approx(_exact(_PSI, g_i, lam_i, c), rel=1e-10)


def test_inequality_value_equals_the_float_formula_without_cancellation() -> None:
    # c = 1 and |g| comparable to lambda: (lam + c g)^2 - lam^2 does not cancel.
    generator = torch.Generator().manual_seed(3)
    g = torch.rand(100, generator=generator, dtype=torch.float64) * 4 - 2
    lam = torch.rand(100, generator=generator, dtype=torch.float64) + 0.5
    one = torch.tensor(1.0, dtype=torch.float64)
    inactive = lam + g < 0
    assert 10 < int(inactive.sum()) < 90  # both branches drawn
    torch.testing.assert_close(
        augmented_value(g, lam, one, False), _formula_inequality(g, lam, one), rtol=1e-12, atol=0
    )
    # Inactive: exactly -lam^2 / (2c); active: lam g + c/2 g^2.
    torch.testing.assert_close(
        augmented_value(g, lam, one, False)[inactive], -lam[inactive].square() / 2, rtol=0, atol=0
    )


def test_inequality_docstring_values() -> None:
    c = torch.tensor(2.0, dtype=torch.float64)
    g = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    lam = torch.ones(2, dtype=torch.float64)
    assert augmented_weight(g, lam, c, False).tolist() == [0.0, 2.0]
    assert augmented_residual(g, lam, c, False).tolist() == [-0.5, 0.5]
    assert augmented_value(g, lam, c, False).tolist() == [-0.25, 0.75]


EXTREME_PENALTIES = [1e-300, 1e-12, 1.0, 1e12]
EXTREME_MULTIPLIERS = [0.0, 1e-300, 1e10]
EXTREME_VALUES = [-1e10, 0.0, 1e10]


@pytest.mark.parametrize("equality", [False, True], ids=["inequality", "equality"])
@pytest.mark.parametrize("c", EXTREME_PENALTIES)
def test_every_output_is_finite_at_extreme_inputs(c: float, equality: bool) -> None:
    grid = torch.tensor(
        [(v, m) for v in EXTREME_VALUES for m in EXTREME_MULTIPLIERS], dtype=torch.float64
    )
    values, multipliers = grid[:, 0], grid[:, 1]
    if equality:
        multipliers = torch.cat([multipliers, -multipliers])
        values = torch.cat([values, values])
    penalty = torch.tensor(c, dtype=torch.float64)
    outputs = {
        "value": augmented_value(values, multipliers, penalty, equality),
        "weight": augmented_weight(values, multipliers, penalty, equality),
        "residual": augmented_residual(values, multipliers, penalty, equality),
    }
    if not equality:
        outputs["slack"] = closed_form_slack(values, multipliers, penalty)
    for name, output in outputs.items():
        assert bool(torch.isfinite(output).all()), (name, values, multipliers, output)
    if not equality:
        # The residual is max(g, -lam/c): with lam = 0 it is max(g, 0), whatever c.
        zero = multipliers == 0
        assert torch.equal(outputs["residual"][zero], values[zero].clamp(min=0))


# Closed-form slack: the inequality's term is the equality term of g + s^2 = 0 minimised
# over s.
SLACK_CASES = [
    # (g, lambda, c)
    (-4.0, 0.0, 1.0),
    (-4.0, 1.0, 1.0),
    (-4.0, 10.0, 1.0),
    (-0.3, 0.2, 3.0),
    (0.5, 0.0, 1.0),
    (0.5, 2.0, 0.5),
    (2.0, 0.1, 10.0),
    (-1.5, 0.0, 0.01),
    (-1e-3, 1e-3, 100.0),
]


@pytest.mark.parametrize(("g", "lam", "c"), SLACK_CASES)
def test_inequality_term_is_the_equality_term_minimised_over_the_slack(
    g: float, lam: float, c: float
) -> None:
    def equality_term(s: float) -> float:
        h = g + s * s
        return lam * h + c / 2 * h * h

    # A dense grid over s, then a bounded scalar minimisation around its best point.
    top = math.sqrt(max(4.0 * abs(g), 1.0)) + 1.0
    grid = np.linspace(0.0, top, 20001)
    values = lam * (g + grid**2) + c / 2 * (g + grid**2) ** 2
    best = int(np.argmin(values))
    step = grid[1] - grid[0]
    low, high = max(0.0, grid[best] - step), grid[best] + step
    refined = minimize_scalar(equality_term, bounds=(low, high), method="bounded",
                              options={"xatol": 1e-12})  # fmt: skip
    s_numeric = float(refined.x) if refined.fun <= values[best] else float(grid[best])
    minimum = min(float(refined.fun), float(values[best]))

    tensor = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    psi = float(augmented_value(tensor(g), tensor(lam), tensor(c), False))
    assert minimum == pytest.approx(psi, rel=1e-9, abs=1e-12)
    expected_s2 = max(0.0, -g - lam / c)
    assert s_numeric**2 == pytest.approx(expected_s2, abs=1e-6)
    slack = float(closed_form_slack(tensor(g), tensor(lam), tensor(c)))
    assert slack**2 == pytest.approx(expected_s2, rel=1e-14, abs=0)
    # And the library's own equality term at the closed-form slack is the inequality's term.
    at_slack = augmented_value(tensor(g + slack**2), tensor(lam), tensor(c), True)
    assert float(at_slack) == pytest.approx(psi, rel=1e-12, abs=1e-15)


class ShiftedQP(QuadraticProgram):
    """QuadraticProgram with the constraint x1 + x2 >= rhs (rhs = 2: the helpers' problem).

    For rhs below 3/5 the constraint is inactive: x* = Q^-1 p = (1/5, 2/5), multiplier 0."""

    def __init__(self, treatment: str, rhs: float) -> None:
        super().__init__(treatment)
        self.rhs = rhs

    def forward(self) -> ProblemState:
        objective = 0.5 * self.x @ self.Q @ self.x - self.p @ self.x
        return ProblemState(objective, {"sum": self.x.sum() - self.rhs})


@pytest.mark.parametrize(
    ("rhs", "solution", "multiplier"),
    [(2.0, (2 / 3, 4 / 3), 7 / 3), (0.0, (0.2, 0.4), 0.0)],
    ids=["active", "inactive"],
)
@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_default_optimizer_solves_the_quadratic_program(
    treatment: str, rhs: float, solution: tuple[float, float], multiplier: float, device: str
) -> None:
    problem = ShiftedQP(treatment, rhs).to(device)
    optimizer = default_optimizer(problem)
    assert optimizer.formulation == DEFAULT_AUGMENTED
    # Measured: every assertion below holds for good from step 208 (active; 81 inactive).
    for _ in range(320):
        optimizer.step(problem)
    constraint = problem.constraints["sum"]
    torch.testing.assert_close(
        problem.x.detach().cpu(), torch.tensor(solution, dtype=torch.float64), rtol=0, atol=1e-6
    )
    assert float(constraint.multiplier.detach()) == pytest.approx(multiplier, abs=1e-6)
    if treatment == "slack":
        g = rhs - float(problem.x.detach().sum())  # standard form: rhs - x1 - x2 <= 0
        s = float(constraint.slack.detach())
        assert g + s * s == pytest.approx(0.0, abs=1e-6)
        assert s * s == pytest.approx(max(0.0, -(rhs - sum(solution))), abs=1e-6)
    else:
        assert constraint.slack is None


@pytest.mark.parametrize("method", [ExtraGradient, SimultaneousGDA, AlternatingGDA],
                         ids=lambda m: m.__name__)  # fmt: skip
@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_augmented_formulation_with_fixed_steps_converges(
    method: type, treatment: str, device: str
) -> None:
    problem = QuadraticProgram(treatment).to(device)
    # Measured: the assertions below hold for good from step 281 (AlternatingGDA; 265 to 280
    # for the others); with a rate of 0.1, from step 363 (with 0.2 ExtraGradient diverges).
    optimizer = method(problem, *sgd_pair(problem, 0.13, 0.13), formulation="augmented")
    for _ in range(425):
        result = optimizer.step(problem)
    torch.testing.assert_close(
        problem.x.detach().cpu(),
        torch.tensor(problem.solution, dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )
    assert float(problem.constraints["sum"].multiplier.detach()) == pytest.approx(7 / 3, abs=1e-6)
    assert float(result.max_violation) <= 1e-6
    assert result.evaluations == (2 if method is ExtraGradient else 1)


INVALID_SETTINGS = [
    (dict(penalty=0.0), "Invalid penalty coefficient: 0.0"),
    (dict(penalty=-1.0), "Invalid penalty coefficient: -1.0"),
    (dict(penalty=math.nan), "Invalid penalty coefficient: nan"),
    (dict(penalty=math.inf), "Invalid penalty coefficient: inf"),
    (dict(growth=0.5), "Invalid penalty growth factor: 0.5"),
    (dict(growth=math.inf), "Invalid penalty growth factor: inf"),
    (dict(shrink=0.0), "Invalid violation shrink factor: 0.0"),
    (dict(shrink=1.0), "Invalid violation shrink factor: 1.0"),
    (dict(shrink=math.nan), "Invalid violation shrink factor: nan"),
    (dict(window=0), "Invalid penalty update window: 0"),
    (dict(window=2.5), "Invalid penalty update window: 2.5"),
    (dict(window=True), "Invalid penalty update window: True"),
    (dict(penalty=10.0, max_penalty=5.0), "Invalid maximum penalty: 5.0"),
    (dict(max_penalty=math.inf), "Invalid maximum penalty: inf"),
    (dict(sample_penalty=0.0), "Invalid per-sample penalty factor: 0.0"),
    (dict(sample_penalty=math.nan), "Invalid per-sample penalty factor: nan"),
    (dict(margin_rate=-0.1), "Invalid margin rate: -0.1"),
    (dict(margin_rate=math.inf), "Invalid margin rate: inf"),
    (dict(margin_decay=0.0), "Invalid margin decay: 0.0"),
    (dict(margin_decay=1.5), "Invalid margin decay: 1.5"),
    (dict(margin_decay=math.nan), "Invalid margin decay: nan"),
    (dict(penalty_dual_step="yes"), "Invalid penalty_dual_step: yes"),
]  # fmt: skip


@pytest.mark.parametrize("method", [ExtraGradient, SimultaneousGDA], ids=lambda m: m.__name__)
@pytest.mark.parametrize(("settings", "message"), INVALID_SETTINGS,
                         ids=[m for _, m in INVALID_SETTINGS])  # fmt: skip
def test_invalid_settings_are_named(method: type, settings: dict[str, Any], message: str) -> None:
    problem = QuadraticProgram()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        method(problem, *sgd_pair(problem, 0.1), formulation=AugmentedLagrangian(**settings))


def test_valid_edge_settings_are_accepted() -> None:
    problem = QuadraticProgram()
    edge = AugmentedLagrangian(penalty=2.0, growth=1.0, shrink=0.99, window=1, max_penalty=2.0)
    optimizer = ExtraGradient(problem, *sgd_pair(problem, 0.1), formulation=edge)
    assert optimizer.formulation is edge


@pytest.mark.parametrize("formulation", ["augmented_lagrangian", "Augmented", None, 1.0])
def test_invalid_formulation_is_named(formulation: Any) -> None:
    problem = QuadraticProgram()
    message = (
        f"invalid formulation {formulation!r}; expected 'lagrangian', 'augmented' or an "
        "AugmentedLagrangian"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ExtraGradient(problem, *sgd_pair(problem, 0.1), formulation=formulation)


RULE = AugmentedLagrangian(growth=10.0, shrink=0.5, max_penalty=500.0)
GROWN_PENALTY_CASES = [
    # (penalty, previous, current, expected)
    (1.0, math.inf, 5.0, 1.0),  # the first window has nothing to compare with
    (1.0, 1.0, 0.5, 1.0),  # shrank by exactly the factor: kept
    (1.0, 1.0, 0.5000001, 10.0),  # not quite: grown
    (1.0, 1.0, 2.0, 10.0),  # grew: grown
    (10.0, 1e-3, 0.9e-3, 100.0),
    (100.0, 1.0, 1.0, 500.0),  # capped at max_penalty
    (500.0, 1.0, 1.0, 500.0),  # stays at the cap
    (1.0, 0.0, 0.0, 1.0),  # feasible: never grown
    (1.0, 1.0, 0.0, 1.0),
    (3.0, 1e-12, 1e-11, 30.0),
]


@pytest.mark.parametrize(("penalty", "previous", "current", "expected"), GROWN_PENALTY_CASES)
def test_grown_penalty(penalty: float, previous: float, current: float, expected: float) -> None:
    assert grown_penalty(RULE, penalty, previous, current) == expected


def test_grown_penalty_with_growth_one_keeps_the_penalty() -> None:
    assert grown_penalty(AugmentedLagrangian(growth=1.0), 2.0, 1.0, 3.0) == 2.0


SETTLED_CASES = [
    # (previous move, move, scaled violation, settled)
    (math.inf, 5.0, 1e-3, True),  # the first window has nothing to compare with
    (1.0, 0.5, 1e-3, True),  # the move shrank by the factor (shrink 0.5 here)
    (1.0, 0.5000001, 1e-3, False),  # not quite, and farther than the violation
    (1.0, 1.04, 2e-3, False),  # hs118 at step 2,000: sliding at a steady rate
    (2.5e-4, 2.5e-4, 1.1e-2, True),  # drifting by less than it is off the constraint
    (1.0, 1e-3, 1e-3, True),
    (0.0, 0.0, 0.0, True),  # at rest
]


@pytest.mark.parametrize(("previous", "move", "distance", "settled"), SETTLED_CASES)
def test_primal_settled(previous: float, move: float, distance: float, settled: bool) -> None:
    assert primal_settled(RULE, previous, move, distance) is settled
    # Not settled, a growing violation keeps its coefficient.
    expected = 10.0 if settled else 1.0
    assert grown_penalty(RULE, 1.0, 1.0, 2.0, settled) == expected


def test_the_settled_rule_resumes_bitwise() -> None:
    # Windows of 3 steps: the checkpoint falls inside a window whose start, scaled
    # violations and previous movement it must carry.
    rule = AugmentedLagrangian(growth=10.0, window=3)

    def build() -> tuple[QuadraticProgram, ExtraGradient]:
        problem = QuadraticProgram("projection")
        return problem, ExtraGradient(problem, *sgd_pair(problem, 0.05), formulation=rule)

    straight_problem, straight = build()
    straight_states = []
    for _ in range(20):
        straight.step(straight_problem)
        straight_states.append(straight.state_dict())
    first_problem, first = build()
    for _ in range(10):
        first.step(first_problem)
    saved = {"problem": first_problem.state_dict(), "optimizer": first.state_dict()}
    formulation = saved["optimizer"]["formulation"]
    assert formulation["window_start"] is not None and formulation["window_max"]
    assert math.isfinite(formulation["previous_move"])
    resumed_problem, resumed = build()
    resumed_problem.load_state_dict(saved["problem"])
    resumed.load_state_dict(saved["optimizer"])
    assert_bitwise_equal(resumed.state_dict(), saved["optimizer"])
    for step in range(10, 20):
        resumed.step(resumed_problem)
        assert_bitwise_equal(resumed.state_dict(), straight_states[step])
    assert_bitwise_equal(straight_problem.state_dict(), resumed_problem.state_dict())


def test_the_penalty_waits_while_the_iterate_slides_along_its_constraints() -> None:
    # hs118 (docs/benchmarks.md): its iterate slides along active bounds at a steady pace
    # until about step 8,500 while its largest violation stays flat. Judged by the
    # violation alone the penalty grew to 10 at step 2,000 and to 100 at 2,500, and the
    # objective stalled at 665.0645 (f* = 664.8205); it now keeps falling.
    problem = NonlinearProgram(HOCK_SCHITTKOWSKI["hs118"], "projection")
    optimizer = default_optimizer(problem)
    for _ in range(2_600):
        result = optimizer.step(problem)
    assert set(optimizer.state_dict()["formulation"]["penalties"].values()) == {1.0}
    assert float(result.objective) < 665.05


class Infeasible(ConstrainedProblem):
    """min (x - 1)^2 s.t. x^2 + 1 <= 0: the violation is at least 1 at every point."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.add_inequality("impossible", "<=", treatment="projection")

    def forward(self) -> ProblemState:
        return ProblemState((self.x - 1).square(), {"impossible": self.x.square() + 1})


def _replay(rule: AugmentedLagrangian, violations: list[float]) -> list[float]:
    """The penalty after each step by the rule, from the violations the steps reported."""
    penalty, previous, worst = rule.penalty, math.inf, 0.0
    penalties = []
    for step, violation in enumerate(violations, start=1):
        worst = max(worst, violation)
        if step % rule.window == 0:
            penalty = grown_penalty(rule, penalty, previous, worst)
            previous, worst = worst, 0.0
        penalties.append(penalty)
    return penalties


@pytest.mark.parametrize(
    ("name", "max_penalty", "lr"),
    [("quadratic-program", 100.0, 1e-3), ("infeasible", 50.0, 1e-3)],
)
def test_penalty_grows_by_the_rule_and_is_capped(
    name: str, max_penalty: float, lr: float, device: str
) -> None:
    rule = AugmentedLagrangian(growth=10.0, window=5, max_penalty=max_penalty)
    problem: ConstrainedProblem = (
        QuadraticProgram("projection") if name != "infeasible" else Infeasible()
    ).to(device)
    constraint = next(iter(problem.declared()))
    optimizer = ExtraGradient(problem, *sgd_pair(problem, lr), formulation=rule)
    penalties, violations = [], []
    for _ in range(40):
        result = optimizer.step(problem)
        violations.append(float(result.constraints[constraint].max_violation))
        penalties.append(optimizer.state_dict()["formulation"]["penalties"][constraint])
    assert penalties == _replay(rule, violations)
    # Steps 1-9: no growth yet (no window to compare the first with); 10: x10; 15: the cap.
    assert penalties[:9] == [1.0] * 9
    assert penalties[9:14] == [10.0] * 5
    assert penalties[14:] == [max_penalty] * 26
    assert all(math.isfinite(v) for v in violations)


def test_penalty_is_fixed_without_growth(device: str) -> None:
    problem = Infeasible().to(device)
    optimizer = ExtraGradient(problem, *sgd_pair(problem, 1e-3), formulation="augmented")
    for _ in range(30):
        optimizer.step(problem)
    assert optimizer.state_dict()["formulation"]["penalties"] == {"impossible": 1.0}


class Fragile(ConstrainedProblem):
    """min ||x||^2 s.t. x1 <= 10 (inactive) and x2 >= -10 (inactive): a NaN or an infinity
    in an inactive inequality leaves its augmented term finite (-lam^2 / 2c)."""

    def __init__(self, bad: float | None, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.add_inequality("cap", "<=", treatment="projection")
        self.add_inequality("floor", ">=")
        self.to(dtype)
        self.bad = bad

    def forward(self) -> ProblemState:
        cap = self.x[0] - 10
        if self.bad is not None:
            cap = cap + self.bad
        return ProblemState(self.x.square().sum(), {"cap": cap, "floor": self.x[1] + 10})


@pytest.mark.parametrize("bad", [math.nan, -math.inf, math.inf])
def test_a_non_finite_inequality_is_caught_in_the_augmented_lagrangian(
    bad: float, device: str
) -> None:
    problem = Fragile(bad).to(device)
    optimizer = SimultaneousGDA(problem, *sgd_pair(problem, 0.1), formulation="augmented")
    before = [p.detach().clone() for p in problem.parameters()]
    with pytest.raises(NonFiniteError, match=r"^constraint 'cap' has 1 non-finite value"):
        optimizer.step(problem)
    assert all(torch.equal(a, b) for a, b in zip(before, problem.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_augmented_lagrangian_keeps_the_problem_dtype(dtype: torch.dtype, device: str) -> None:
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == torch.float32 else torch.float32)
    try:
        problem = Fragile(None, dtype).to(device)
        optimizer = default_optimizer(problem)
        result = optimizer.step(problem)
    finally:
        torch.set_default_dtype(default)
    assert result.lagrangian.dtype == dtype
    assert result.lagrangian.device.type == device
    assert all(p.dtype == dtype for p in problem.parameters())


def test_a_state_from_another_configuration_is_refused() -> None:
    problem = Fragile(None)
    adaptive = default_optimizer(problem)
    adaptive.step(problem)
    fixed = ExtraGradient(problem, *sgd_pair(problem, 0.1), formulation="augmented")
    with pytest.raises(
        ValueError, match=r"^state_dict is from an adaptive step; this optimizer's step is fixed$"
    ):
        fixed.load_state_dict(adaptive.state_dict())
    unscaled = ExtraGradient(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=1.0),
        torch.optim.SGD(problem.dual_parameters(), lr=1.0, maximize=True),
        formulation="augmented",
        step_size="adaptive",
    )
    with pytest.raises(
        ValueError, match=r"^the formulation state has scales, but this method does not scale$"
    ):
        unscaled.load_state_dict(adaptive.state_dict())
