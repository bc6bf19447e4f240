"""What a closure may return, and what it may not (issue 10, items 4, 6, 11, 12 and 13).

- A slack that decayed to 0 while its constraint was active grows again once the optimum
  moves inside (item 4).
- A value with no gradient path to the parameters is refused, naming it (item 6).
- A value of another floating-point dtype than the problem's is handled by one rule: the
  multipliers and slacks keep their tables' dtype, the dual side is computed in it, the
  gradient keeps the value's own; integer, boolean and complex values are refused (items 11,
  13).
- A constraint may be absent from an evaluation (left out, or of size zero): it enters
  nothing that step (item 12).
- An indexed penalised constraint's indices are checked (item 13).

Every test marked "failed before" in its docstring failed on the code before these fixes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import DEVICES, METHODS, assert_bitwise_equal, failure_state, sgd_pair
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    AugmentedLagrangian,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    NonFiniteError,
    ProblemState,
    SimultaneousGDA,
    kkt,
)
from lagrange_opt.evaluation.evaluate import evaluate
from lagrange_opt.evaluation.slacks import UndoLog

F32 = torch.float32

# The tests parametrised over DEVICES (tests/helpers.py) or taking the ``device`` fixture
# (tests/conftest.py) run on CUDA too: off the CPU a dense slack is written at every
# evaluation (deciding would be a host synchronisation), and indices are checked before a
# table is read.


def _method(
    problem: ConstrainedProblem,
    method: type,
    lr: float = 0.1,
    dual_lr: float | None = None,
    slack_lr: float | None = None,
    **options: Any,
) -> Any:
    """The method with plain SGD on both sides (no dual optimizer without multipliers)."""
    if not problem.dual_parameters():
        return method(problem, torch.optim.SGD(problem.primal_parameters(), lr=lr), **options)
    return method(problem, *sgd_pair(problem, lr, dual_lr, slack_lr), **options)


# Item 4: a slack stuck at 0.


class MovingTarget(ConstrainedProblem):
    """min sum_i (x_i - t)^2 s.t. x_i <= 1 by slacks, x in R^3, in float32.

    With ``t > 1`` the constraint is active: x* = 1, multiplier 2 (t - 1), and the slack
    decays to 0. With ``t = 0`` it is inactive: x* = 0, multiplier 0, s**2 = 1. The indexed
    form has one sample per coordinate and a mean objective, so that its multipliers (its
    term is the batch mean) are the same.
    """

    def __init__(self, indexed: bool, target: float) -> None:
        super().__init__()
        self.indexed = indexed
        self.target = target
        self.x = nn.Parameter(torch.zeros(3))
        size: dict[str, Any] = {"num_samples": 3} if indexed else {"shape": (3,)}
        self.add_inequality("cap", "<=", treatment="slack", **size)

    def forward(self) -> ProblemState:
        squares = (self.x - self.target).square()
        if self.indexed:
            indices = torch.arange(3, device=self.x.device)
            return ProblemState(squares.mean(), {"cap": IndexedValue(self.x - 1, indices)})
        return ProblemState(squares.sum(), {"cap": self.x - 1})


def _moving(
    method: type, indexed: bool, target: float, device: str = "cpu", lr: float = 0.1
) -> tuple[MovingTarget, Any]:
    """The problem and its method: primal and dual rate ``lr``, slack rate 0.05."""
    problem = MovingTarget(indexed, target).to(device)
    # The same steps in both forms: the mean objective's gradient is 3 times smaller.
    return problem, _method(problem, method, 3 * lr if indexed else lr, lr, 0.05)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target", [4.0, 3.0], ids=["slack-exactly-0", "slack-square-underflows"])
@pytest.mark.parametrize("indexed", [False, True], ids=["dense", "indexed"])
@pytest.mark.parametrize("method", [SimultaneousGDA, AlternatingGDA], ids=lambda m: m.__name__)
def test_a_slack_decayed_to_zero_grows_again_when_the_optimum_moves_inside(
    method: type, indexed: bool, target: float, device: str
) -> None:
    """Failed before: the slack stayed at 0 (or at the smallest subnormal, whose update
    rounds away), x stayed at 1 and the multiplier went to -2, holding it there."""
    # Primal and dual rates 0.2: the slack (its rate stays 0.05) decays as with 0.1.
    problem, optimizer = _moving(method, indexed, target, device, lr=0.2)
    constraint = problem.constraints["cap"]
    assert constraint.slack is not None and constraint.multiplier is not None
    # Measured: the slack reaches 0 (target 4) or the smallest subnormal (target 3, dense)
    # by step 211, and the assertions below hold from step 112.
    for _ in range(300):
        optimizer.step(problem)
    # The active phase: at the solution, with the slack stuck (s**2 == 0 in float32).
    x, multiplier, slack = problem.x.detach(), constraint.multiplier.detach(), constraint.slack
    torch.testing.assert_close(x.cpu(), torch.ones(3), atol=1e-3, rtol=0)
    expected = torch.full((3,), 2 * (target - 1))
    torch.testing.assert_close(multiplier.cpu(), expected, atol=1e-2, rtol=0)
    assert float(slack.detach().square().max()) == 0.0
    problem.target = 0.0
    # Measured: within the tolerances below for good from step 406 (SimultaneousGDA; 190
    # for AlternatingGDA); with rates 0.1, 1493 of the former 2000 steps.
    for _ in range(610):
        optimizer.step(problem)
    # Within 1e-3 of the unconstrained optimum, its multiplier 0 and s**2 = -g = 1.
    torch.testing.assert_close(x.cpu(), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(multiplier.cpu(), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(slack.detach().square().cpu(), torch.ones(3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("indexed", [False, True], ids=["dense", "indexed"])
@pytest.mark.parametrize("method", [SimultaneousGDA, AlternatingGDA], ids=lambda m: m.__name__)
def test_a_converged_active_slack_at_zero_is_left_alone(
    method: type, indexed: bool, device: str
) -> None:
    """The slack is set again only where g < 0, with no margin: at an active constraint that
    converged, with s = 0, the iterates do not move. (Setting it again to the margin,
    ``s**2 = max(-g, slack_margin)``, fails this test: each time the slack underflows
    again the indexed iterates are pushed inside.)"""
    problem, optimizer = _moving(method, indexed, 4.0, device)
    constraint = problem.constraints["cap"]
    assert constraint.multiplier is not None
    # Measured: from step 210 on (AlternatingGDA, dense; 170 to 200 for the others) the 600
    # steps below hold. With the margin, the indexed iterates move at their first step.
    for _ in range(320):
        optimizer.step(problem)
    x, multiplier = problem.x.detach().clone(), constraint.multiplier.detach().clone()
    for _ in range(600):
        optimizer.step(problem)
        torch.testing.assert_close(problem.x.detach(), x, atol=1e-6, rtol=0)
        torch.testing.assert_close(constraint.multiplier.detach(), multiplier, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("indexed", [False, True], ids=["dense", "indexed"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_slack_set_again_is_put_back_by_a_failed_step(
    method: type, indexed: bool, device: str
) -> None:
    """The evaluation writes the slack it sets again; a step that raises puts it back."""
    problem, optimizer = _moving(SimultaneousGDA, indexed, 4.0, device)
    for _ in range(300):
        optimizer.step(problem)
    constraint = problem.constraints["cap"]
    assert constraint.slack is not None
    assert float(constraint.slack.detach().square().max()) == 0.0
    optimizer = method(problem, optimizer.primal_optimizer, optimizer.dual_optimizer)
    problem.target = 0.0
    with torch.no_grad():
        problem.x.fill_(0.5)  # inside: g = -0.5, the slack would be set to sqrt(0.5)
    before = failure_state(problem, optimizer)

    def nan_objective() -> ProblemState:
        state = problem()
        return ProblemState(state.objective * math.nan, state.constraints)

    with pytest.raises(NonFiniteError, match=r"^objective is not finite: nan$"):
        optimizer.step(nan_objective)
    assert_bitwise_equal(before, failure_state(problem, optimizer))
    optimizer.step(problem)
    assert float(constraint.slack.detach().square().min()) > 0


# Problems with every kind of constraint, for the items below.


NUM_SAMPLES = 5


class Every(ConstrainedProblem):
    """An indexed constraint of each treatment and a dense one of each, on x in R^5: every
    constraint holds at x = 1 and is active there, from x = 0. ``self.make`` may replace or
    leave out values (``None``), or change the whole state."""

    INDEXED = ("rows-slack", "rows-projection", "rows-penalty", "rows-equality")
    DENSE = ("cap-slack", "cap-projection", "cap-penalty", "pair-equality")

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(NUM_SAMPLES))
        samples: dict[str, Any] = {"num_samples": NUM_SAMPLES}
        self.add_inequality("rows-slack", "<=", treatment="slack", **samples)
        self.add_inequality("rows-projection", "<=", treatment="projection", **samples)
        self.add_inequality(
            "rows-penalty", "<=", treatment="penalty", penalty_weight=5.0, **samples
        )
        self.add_equality("rows-equality", **samples)
        self.add_inequality("cap-slack", "<=", treatment="slack")
        self.add_inequality("cap-projection", "<=", treatment="projection")
        self.add_inequality("cap-penalty", "<=", treatment="penalty", penalty_weight=5.0)
        self.add_equality("pair-equality", shape=(2,))
        self.indices: Tensor
        self.register_buffer("indices", torch.tensor([0, 2, 3]))
        self.changes: dict[str, Any] = {}
        self.make: Callable[[Every], ProblemState] | None = None

    def values(self) -> ProblemState:
        x, indices = self.x, self.indices
        rows = x[indices] - 1
        constraints: dict[str, Tensor | IndexedValue] = {
            name: IndexedValue(rows * (k + 1), indices) for k, name in enumerate(self.INDEXED)
        }
        constraints["cap-slack"] = x.sum() - 5
        constraints["cap-projection"] = x[:2].sum() - 2
        constraints["cap-penalty"] = x[4] - 1
        constraints["pair-equality"] = x[:2] - 1
        return ProblemState((x - 2).square().sum(), constraints)

    def forward(self) -> ProblemState:
        if self.make is not None:
            return self.make(self)
        state = self.values()
        constraints = dict(state.constraints)
        for name, value in self.changes.items():
            if value is None:
                constraints.pop(name)
            else:
                constraints[name] = value(self) if callable(value) else value
        return ProblemState(state.objective, constraints)


def _empty(problem: Every) -> IndexedValue:
    """An indexed value over no sample: ``pred[mask], idx[mask]`` with no sample selected."""
    mask = torch.zeros(3, dtype=torch.bool, device=problem.x.device)
    return IndexedValue((problem.x[problem.indices] - 1)[mask], problem.indices[mask])


def _tables(problem: ConstrainedProblem, name: str) -> dict[str, Tensor]:
    """A constraint's multipliers, slacks and slack flags, copied."""
    return {
        key: value.detach().clone() for key, value in problem.constraints[name].state_dict().items()
    }


# Item 6: values with no gradient path.


NO_PATH = (
    "has no gradient path to the parameters (computed under torch.no_grad() or detached?): "
    "no step can move it; leave it out of ProblemState.constraints where it is not observed"
)


@pytest.mark.parametrize("name", [*Every.INDEXED, *Every.DENSE])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_detached_constraint_is_named(method: type, name: str) -> None:
    """Failed before: accepted, the multiplier grew (a penalty: did nothing) while nothing
    moved. A slack's residual ``g + s**2`` requires grad through ``s``: the value returned
    is what is checked."""
    problem = Every()
    optimizer = _method(problem, method)
    optimizer.step(problem)

    def detached(p: Every) -> Tensor | IndexedValue:
        value = p.values().constraints[name]
        if isinstance(value, IndexedValue):
            return IndexedValue(value.value.detach(), value.indices)
        return value.detach()

    problem.changes = {name: detached}
    before = failure_state(problem, optimizer)
    with pytest.raises(ValueError, match=f"^{re.escape(f'constraint {name!r} {NO_PATH}')}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_forward_under_no_grad_is_refused(method: type) -> None:
    """Failed before: accepted, the multipliers grew and nothing moved."""
    problem = Every()
    optimizer = _method(problem, method)

    def under_no_grad(p: Every) -> ProblemState:
        with torch.no_grad():
            return p.values()

    problem.make = under_no_grad
    before = failure_state(problem, optimizer)
    names = ", ".join(f"'{name}'" for name in problem.declared())
    message = (
        f"the objective and every constraint ({names}) have no gradient path to the parameters "
        "(computed under torch.no_grad() or detached?)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        kkt(problem)


def test_kkt_refuses_a_detached_constraint() -> None:
    """Failed before: the constraint counted for nothing in stationarity."""
    problem = Every()
    problem.changes = {
        "cap-projection": lambda p: p.values().constraints["cap-projection"].detach()
    }
    with pytest.raises(ValueError, match=re.escape(f"constraint 'cap-projection' {NO_PATH}")):
        kkt(problem)


def test_a_non_finite_constant_value_is_named_as_non_finite() -> None:
    """A value at fault is named first; the missing gradient path after."""
    problem = Every()
    optimizer = _method(problem, ExtraGradient)
    problem.changes = {"cap-projection": torch.tensor(math.nan)}
    with pytest.raises(NonFiniteError, match=r"^constraint 'cap-projection' has 1 non-finite"):
        optimizer.step(problem)


class Feasibility(ConstrainedProblem):
    """Find x with x_1 + x_2 = 2 and x_1 - x_2 >= 1: no objective (a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2))
        self.add_equality("sum")
        self.add_inequality("gap", ">=", treatment="projection")

    def forward(self) -> ProblemState:
        x = self.x
        objective = torch.zeros((), device=x.device)
        return ProblemState(objective, {"sum": x.sum() - 2, "gap": x[0] - x[1] - 1})


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_constant_objective_is_accepted(method: type, device: str) -> None:
    """A feasibility problem: the objective has no path, the constraints do (the augmented
    Lagrangian gives the bilinear game its curvature)."""
    problem = Feasibility().to(device)
    optimizer = _method(problem, method, formulation="augmented")
    for _ in range(500):
        result = optimizer.step(problem)
    assert float(result.max_violation) < 1e-5
    assert kkt(problem).primal_feasibility < 1e-5


# Items 11 and 13: dtypes.


ALPHA = 3.0
"""The penalty weight of the dtype tests: the penalised optimum is (2 + ALPHA) / (1 + ALPHA)."""

TREATMENTS = ["slack", "projection", "penalty", "equality", "equality-penalty", "augmented-slack"]


class Box(ConstrainedProblem):
    """min sum (y - 2)^2 s.t. y - 1 <= 0 (or == 0), y = x in R^2, with float32 tables and
    values of another dtype: ``"float64"`` computes y as ``x.double()``, ``"bfloat16"`` as
    ``I @ x`` under ``torch.autocast(device, dtype=torch.bfloat16)``.

    x* = 1 with multipliers 2 (the indexed form has a mean objective and a mean term: the
    same multipliers); under the penalty, x* = (2 + ALPHA) / (1 + ALPHA).
    """

    def __init__(self, treatment: str, indexed: bool, case: str) -> None:
        super().__init__()
        self.case = case
        self.indexed = indexed
        self.x = nn.Parameter(torch.zeros(2))
        self.register_buffer("eye", torch.eye(2))
        size: dict[str, Any] = {"num_samples": 2} if indexed else {"shape": (2,)}
        if treatment.startswith("equality"):
            penalised = treatment == "equality-penalty"
            self.add_equality(
                "c",
                treatment="penalty" if penalised else "multiplier",
                penalty_weight=ALPHA if penalised else None,
                **size,
            )
        else:
            kind = treatment.removeprefix("augmented-")
            self.add_inequality(
                "c", "<=", treatment=kind,  # type: ignore[arg-type]
                penalty_weight=ALPHA if kind == "penalty" else None, **size,
            )  # fmt: skip

    def forward(self) -> ProblemState:
        if self.case == "float64":
            return self.failure_state(self.x.double())
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16):
            return self.failure_state(self.eye @ self.x)

    def failure_state(self, y: Tensor) -> ProblemState:
        squares = (y - 2).square()
        if self.indexed:
            indices = torch.arange(2, device=y.device)
            return ProblemState(squares.mean(), {"c": IndexedValue(y - 1, indices)})
        return ProblemState(squares.sum(), {"c": y - 1})


VALUE_DTYPES = {"float64": torch.float64, "bfloat16": torch.bfloat16}
# Within STEPS, with float32 tables; bfloat16 values: a few of their ulps at 1 (2**-7).
TOLERANCES = {"float64": 1e-4, "bfloat16": 4 * 2**-7}
# Measured (dual rate 0.3): every case is within its tolerance for good from step 112 in
# float64 (SimultaneousGDA, equality) and 51 in bfloat16 (the same); at least 1.5 times that.
# With the former dual rate 0.1, 273 steps (float64, augmented slack) of 300.
STEPS = {"float64": 180, "bfloat16": 80}


@pytest.mark.parametrize("indexed", [False, True], ids=["dense", "indexed"])
@pytest.mark.parametrize("treatment", TREATMENTS)
@pytest.mark.parametrize("method", [ExtraGradient, SimultaneousGDA], ids=lambda m: m.__name__)
@pytest.mark.parametrize("case", list(VALUE_DTYPES))
def test_values_of_another_dtype_converge(
    case: str, method: type, treatment: str, indexed: bool, device: str = "cpu"
) -> None:
    """Failed before, for every treatment with multipliers: an indexed slack crashed
    (index_copy_ of a float64 or bfloat16 value into the float32 table), and the violations
    came in the value's dtype. A penalised constraint has no table: it keeps the value's
    dtype, as it did."""
    problem = Box(treatment, indexed, case).to(device)
    options = {"formulation": "augmented"} if treatment.startswith("augmented") else {}
    # The same steps in both forms: the mean objective's gradient is 2 times smaller.
    optimizer = _method(problem, method, 0.2 if indexed else 0.1, 0.3, 0.05, **options)
    for _ in range(STEPS[case]):
        result = optimizer.step(problem)
    tolerance = TOLERANCES[case]
    solution = (2 + ALPHA) / (1 + ALPHA) if treatment.endswith("penalty") else 1.0
    torch.testing.assert_close(
        problem.x.detach().cpu(), torch.full((2,), solution), atol=tolerance, rtol=0
    )
    constraint = problem.constraints["c"]
    value_dtype = VALUE_DTYPES[case]
    if constraint.multiplier is None:
        # No table: the penalty and its violation are the value's.
        assert result.constraints["c"].max_violation.dtype == value_dtype
        return
    # The tables keep their dtype; the dual side (violations included) is computed in it.
    for table in (constraint.multiplier, constraint.slack):
        assert table is None or table.dtype == F32
    torch.testing.assert_close(
        constraint.multiplier.detach().cpu(), torch.full((2,), 2.0), atol=tolerance, rtol=0
    )
    assert result.constraints["c"].max_violation.dtype == F32
    assert result.constraints["c"].multiplier_norm is not None
    assert result.constraints["c"].multiplier_norm.dtype == F32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("indexed", [False, True], ids=["dense", "indexed"])
@pytest.mark.parametrize("treatment", ["slack", "projection", "augmented-slack"])
@pytest.mark.parametrize("case", list(VALUE_DTYPES))
def test_values_of_another_dtype_converge_on_cuda(case: str, treatment: str, indexed: bool) -> None:
    test_values_of_another_dtype_converge(case, SimultaneousGDA, treatment, indexed, "cuda")


def test_scales_take_the_multipliers_dtype(device: str) -> None:
    """Failed before: measured in the value's dtype (float64 scales of float32 multipliers)."""
    problem = Box("projection", False, "float64").to(device)
    optimizer = _method(problem, ExtraGradient, scaling=True)
    optimizer.step(problem)
    scales = optimizer.state_dict()["formulation"]["scales"]["constraints"]
    assert scales["c"].dtype == F32 and scales["c"].device.type == device


def test_a_value_beyond_the_multipliers_dtype_is_named(device: str) -> None:
    """A float64 value that float32 cannot hold: the message says so."""
    problem = Box("projection", False, "float64").to(device)
    optimizer = _method(problem, SimultaneousGDA)
    values = torch.tensor([0.5, 1e300], dtype=torch.float64, device=device)

    def huge() -> ProblemState:
        state = problem()
        return ProblemState(state.objective, {"c": state.constraints["c"] * 0 + values})

    before = failure_state(problem, optimizer)
    message = (
        "constraint 'c' has 1 value(s) beyond the range of torch.float32, first 1e+300 at (1,), "
        "the dtype of its multipliers (problem.to(dtype) sets it)"
    )
    with pytest.raises(NonFiniteError, match=f"^{re.escape(message)}$"):
        optimizer.step(huge)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


BAD_DTYPES = [
    ("rows-slack", lambda p: IndexedValue(p.x[p.indices] > 1, p.indices), torch.bool),
    ("rows-penalty", lambda p: IndexedValue(p.x[p.indices] > 1, p.indices), torch.bool),
    ("cap-projection", lambda p: (p.x.sum() > 5), torch.bool),
    ("cap-penalty", lambda p: (p.x.sum() > 5), torch.bool),
    ("pair-equality", lambda p: torch.ones(2, dtype=torch.int64), torch.int64),
    ("cap-slack", lambda p: torch.complex(p.x.sum(), p.x.sum()), torch.complex64),
    ("rows-equality", lambda p: IndexedValue(torch.complex(p.x[p.indices], p.x[p.indices]), p.indices), torch.complex64),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "make", "dtype"), BAD_DTYPES, ids=[f"{name}-{dtype}" for name, _, dtype in BAD_DTYPES]
)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_non_float_values_are_refused(method: type, name: str, make: Any, dtype: Any) -> None:
    """Failed before: a boolean or integer value was accepted (the multipliers stepped
    along a value with no gradient), except for an indexed slack, whose index_copy_
    crashed; a complex one failed deep inside the step ("must be real number, not
    complex", "clamp is not supported for complex types")."""
    problem = Every()
    optimizer = _method(problem, method)
    optimizer.step(problem)
    problem.changes = {name: make}
    before = failure_state(problem, optimizer)
    message = (
        f"constraint '{name}': value has dtype {dtype}; a constraint value must be a real "
        "floating-point tensor (float16, bfloat16, float32 or float64)"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", [7, -1])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_an_indexed_penalty_index_out_of_range_is_named(
    method: type, index: int, device: str
) -> None:
    """Failed before: accepted (no table is read with a penalised constraint's indices)."""
    problem = Every().to(device)
    optimizer = _method(problem, method)
    optimizer.step(problem)
    indices = torch.tensor([0, index, 3], device=device)
    problem.changes = {"rows-penalty": lambda p: IndexedValue(p.x[:3] - 1, indices)}
    before = failure_state(problem, optimizer)
    message = f"constraint 'rows-penalty': index {index} out of range for num_samples={NUM_SAMPLES}"
    with pytest.raises(IndexError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


# Item 12: constraints absent from an evaluation.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("absent", ["left-out", "empty-batch"])
@pytest.mark.parametrize("name", Every.INDEXED)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_an_indexed_constraint_absent_from_a_batch_enters_nothing(
    method: type, name: str, absent: str, device: str
) -> None:
    """Failed before: an empty batch raised ZeroDivisionError (the penalty: failed while the
    result was built, after the update), and a left-out constraint was refused."""
    _check_absent(method, name, None if absent == "left-out" else _empty, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", Every.DENSE)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_dense_constraint_left_out_enters_nothing(method: type, name: str, device: str) -> None:
    """Failed before: "the closure returned no value for constraint ..."."""
    _check_absent(method, name, None, device)


def _check_absent(method: type, name: str, value: Any, device: str) -> None:
    """A step with ``name`` absent: its tables do not move, it has no figures, and every
    other figure is the step's without it."""
    problem = Every().to(device)
    warm_up = _method(problem, method)
    for _ in range(3):
        warm_up.step(problem)
    # A fresh optimizer like the reference's: OptimisticGDA's step depends on its last.
    optimizer = _method(problem, method)
    # The same step, on a copy of the problem that does not declare `name`.
    reference = _without(problem, {name}).to(device)
    reference_optimizer = _method(reference, method)
    tables = _tables(problem, name)
    problem.changes = {name: value}
    result = optimizer.step(problem)
    expected = reference_optimizer.step(reference)
    assert_bitwise_equal(tables, _tables(problem, name))
    assert name not in result.constraints and result.constraints.get(name) is None
    with pytest.raises(KeyError, match="not observed in this step"):
        result.constraints[name]
    assert set(result.constraints) == set(expected.constraints)
    torch.testing.assert_close(problem.x.detach(), reference.x.detach(), rtol=0, atol=0)
    for field in ("objective", "lagrangian", "max_violation", "mean_violation"):
        torch.testing.assert_close(getattr(result, field), getattr(expected, field), rtol=0, atol=0)


def _without(problem: Every, names: set[str]) -> ConstrainedProblem:
    """A problem with ``problem``'s parameters and tables, without the constraints ``names``."""

    class Without(ConstrainedProblem):
        INDEXED = Every.INDEXED

        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(problem.x.detach().clone())
            self.indices = problem.indices
            for other, constraint in problem.constraint_items():
                if other in names:
                    continue
                spec = constraint.spec
                added = self._add(
                    other, spec.kind, spec.sense, spec.shape, spec.num_samples, spec.treatment,
                    spec.slack_margin, spec.penalty_weight,
                )  # fmt: skip
                added.load_state_dict(constraint.state_dict())

        def forward(self) -> ProblemState:
            state = Every.values(self)  # type: ignore[arg-type]
            constraints = {key: v for key, v in state.constraints.items() if key not in names}
            return ProblemState(state.objective, constraints)

    return Without()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_step_that_observes_no_constraint(method: type, device: str) -> None:
    """Failed before: refused. Every constraint absent: no multiplier moves, the violations
    are 0, the parameters step along the objective alone."""
    problem = Every().to(device)
    _method(problem, method).step(problem)
    # Fresh: OptimisticGDA's first step extrapolates nowhere.
    optimizer = _method(problem, method)
    tables = {name: _tables(problem, name) for name in problem.declared()}
    problem.changes = dict.fromkeys(problem.declared())
    for name in Every.INDEXED:
        problem.changes[name] = _empty
    x = problem.x.detach().clone()
    result = optimizer.step(problem)
    assert float(result.max_violation) == 0.0 and float(result.mean_violation) == 0.0
    assert len(result.constraints) == 0
    assert_bitwise_equal(tables, {name: _tables(problem, name) for name in problem.declared()})
    # Plain gradient descent on sum (x - 2)^2 (extra-gradient: twice, from x and x').
    if method is ExtraGradient:
        moved = x - 0.1 * 2 * ((x - 0.1 * 2 * (x - 2)) - 2)
    else:
        moved = x - 0.1 * 2 * (x - 2)
    torch.testing.assert_close(problem.x.detach(), moved)
    assert kkt(problem).primal_feasibility == 0.0


class Rate(ConstrainedProblem):
    """A logistic model whose mean predicted probability on the positives of a batch must
    be at least 0.9: batches without a positive leave the constraint out, as they must (its
    mean over no sample is NaN)."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.features = torch.randn(64, 3, generator=generator).to(device)
        self.labels = (self.features[:, 0] > 1.0).float()
        self.linear = nn.Linear(3, 1)
        self.add_inequality("recall", ">=", treatment="projection")
        self.to(device)

    def forward(self, indices: Tensor) -> ProblemState:
        logits = self.linear(self.features[indices]).squeeze(-1)
        labels = self.labels[indices]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        positives = labels > 0
        if not bool(positives.any()):
            return ProblemState(loss, {})
        return ProblemState(loss, {"recall": torch.sigmoid(logits[positives]).mean() - 0.9})


def test_a_rate_constraint_is_left_out_of_batches_without_the_class(device: str) -> None:
    """Failed before: a batch without positives could only return a NaN (refused) or
    leave the constraint out (refused)."""
    torch.manual_seed(0)
    problem = Rate(device)
    optimizer = _method(problem, ExtraGradient, lr=0.5)
    absent = 0
    for epoch in range(60):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch)).to(device)
        for indices in order.split(4):
            result = optimizer.step(lambda indices=indices: problem(indices))
            absent += "recall" not in result.constraints
    assert absent > 0
    with torch.no_grad():
        positives = problem.labels > 0
        probabilities = torch.sigmoid(problem.linear(problem.features).squeeze(-1))
    assert float(probabilities[positives].mean()) > 0.85


def test_the_penalty_update_windows_skip_steps_where_the_constraint_is_absent(
    device: str,
) -> None:
    """Failed before: refused. A window where the constraint is never observed leaves its
    coefficient as it is; the next observed window is compared with the last observed one."""
    problem = Every().to(device)
    rule = AugmentedLagrangian(penalty=1.0, growth=2.0, shrink=0.5, window=2, max_penalty=1e6)
    optimizer = _method(problem, SimultaneousGDA, lr=1e-6, formulation=rule)
    penalties = []
    # The violation barely moves at this learning rate: a window that observes the
    # constraint doubles its coefficient, except the first (compared with infinity).
    for observed in (True, True, False, False, True, True, False, True):
        problem.changes = {} if observed else {"pair-equality": None}
        optimizer.step(problem)
        penalties.append(optimizer.state_dict()["formulation"]["penalties"]["pair-equality"])
    assert penalties == [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0]


def test_a_constraint_absent_at_the_first_step_keeps_scale_one(device: str) -> None:
    """Failed before: refused."""
    problem = Every().to(device)
    optimizer = _method(problem, SimultaneousGDA, lr=1e-3, scaling=True)
    problem.changes = {"pair-equality": None, "rows-projection": _empty}
    optimizer.step(problem)
    scales = optimizer.state_dict()["formulation"]["scales"]["constraints"]
    for name in ("pair-equality", "rows-projection"):
        assert torch.equal(scales[name].cpu(), torch.ones((), dtype=F32))
    # Measured: the gradients of sum(x) - 5 and of 4 (x_i - 1).
    assert torch.equal(scales["cap-slack"].cpu(), torch.ones((), dtype=F32))
    assert torch.equal(scales["rows-equality"].cpu(), torch.tensor(4.0))
    problem.changes = {}
    optimizer.step(problem)  # observed now, in the units fixed at the first step
    assert torch.equal(
        optimizer.state_dict()["formulation"]["scales"]["constraints"]["pair-equality"].cpu(),
        torch.ones((), dtype=F32),
    )


def test_kkt_leaves_out_absent_constraints(device: str) -> None:
    """Failed before: refused. The residuals are those of the problem without them."""
    problem = Every().to(device)
    with torch.no_grad():
        problem.x.copy_(torch.tensor([3.0, -2.0, 1.0, 0.5, 2.0]))
        for constraint in problem.declared().values():
            if constraint.multiplier is not None:
                constraint.multiplier.fill_(0.5)
    problem.changes = {"cap-slack": None, "rows-projection": _empty}
    residuals = kkt(problem)
    assert residuals == kkt(_without(problem, {"cap-slack", "rows-projection"}).to(device))
    problem.changes = {}
    assert kkt(problem) != residuals


SAME_BATCH = "both evaluations of one step must use the same batch"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["rows-slack", "rows-equality", "cap-projection"])
@pytest.mark.parametrize("first", [True, False], ids=["only-first", "only-second"])
def test_extra_gradient_needs_the_same_constraints_twice(
    name: str, first: bool, device: str
) -> None:
    """A constraint observed by one evaluation of a step and not the other is refused (with
    multipliers: the step compares the two evaluations' terms)."""
    problem = Every().to(device)
    optimizer = _method(problem, ExtraGradient)
    optimizer.step(problem)
    calls: list[None] = []

    def closure() -> ProblemState:
        calls.append(None)
        observed = (len(calls) == 1) == first
        problem.changes = {} if observed else {name: None}
        return problem()

    before = failure_state(problem, optimizer)
    if first:
        message = (
            f"constraint '{name}': the closure returned no value for it on its second call "
            f"(left out, or of size zero) but one on its first; {SAME_BATCH}"
        )
    else:
        message = (
            f"constraint '{name}': the closure returned a value for it on its second call but "
            f"none on its first (left out, or of size zero); {SAME_BATCH}"
        )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.step(closure)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


@pytest.mark.parametrize("name", ["rows-penalty", "cap-penalty"])
@pytest.mark.parametrize("first", [True, False], ids=["only-first", "only-second"])
def test_an_evaluation_observes_what_the_first_one_observed(name: str, first: bool) -> None:
    """With the first evaluation's :meth:`Evaluation.observed`, a penalised constraint is
    checked too."""
    problem = Every()
    problem.changes = {} if first else {name: None}
    start = evaluate(problem, problem, UndoLog())
    problem.changes = {name: None} if first else {}
    with pytest.raises(ValueError, match=f"^constraint '{name}': .*{SAME_BATCH}$"):
        evaluate(problem, problem, UndoLog(), start.observed())


@pytest.mark.parametrize("first", [True, False], ids=["only-first", "only-second"])
def test_extra_gradient_needs_the_same_penalised_constraints_twice(first: bool) -> None:
    problem = Every()
    optimizer = _method(problem, ExtraGradient)
    calls: list[None] = []

    def closure() -> ProblemState:
        calls.append(None)
        observed = (len(calls) == 1) == first
        problem.changes = {} if observed else {"cap-penalty": None}
        return problem()

    with pytest.raises(ValueError, match=f"^constraint 'cap-penalty': .*{SAME_BATCH}$"):
        optimizer.step(closure)
