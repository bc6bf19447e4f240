"""Issue 22, items 1-5, 10 and 14: what a step and a load accept, and what a failed step
leaves.

Every test here failed before its fix: a corrupt checkpoint loaded (in part, or whole with
a value that breaks the next step), NuPI's per-group gains and a learning rate turned
negative between steps were stepped with, a non-finite value at the extrapolated point
was retried as a Lipschitz rejection, a failed adaptive step changed the base rates in
the state dict, and a float16 step committed an infinite multiplier.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import (
    METHODS,
    QuadraticProgram,
    assert_bitwise_equal,
    build_mixed,
    failure_state,
    train_mixed,
)
from torch import nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    NonFiniteError,
    NuPI,
    OptimisticGDA,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)


def _pair(problem: ConstrainedProblem, lr: float = 0.1) -> tuple[Any, Any]:
    return (
        torch.optim.SGD(problem.primal_parameters(), lr=lr),
        torch.optim.SGD(problem.dual_parameters(), lr=lr, maximize=True),
    )


def _adaptive(problem: ConstrainedProblem, **options: Any) -> ExtraGradient:
    return ExtraGradient(problem, *_pair(problem), step_size="adaptive", **options)


# ---------------------------------------------------------------------------------------
# Items 1 and 2: a checkpoint is checked whole before anything loads, each number as the
# constructor checks it.


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def corrupt(state: dict[str, Any]) -> None:
        for key in path[:-1]:
            state = state[key]
        state[path[-1]] = value

    return corrupt


BAD_STEP_STATES: list[tuple[str, Callable[[dict[str, Any]], None], type[Exception], str]] = [
    ("factor -1", _set(("step_factor",), -1.0), ValueError,
     "Invalid step factor in state_dict: -1.0 (expected in (0, 1e+06])"),
    ("factor 0", _set(("step_factor",), 0.0), ValueError,
     "Invalid step factor in state_dict: 0.0 (expected in (0, 1e+06])"),
    ("factor nan", _set(("step_factor",), math.nan), ValueError,
     "Invalid step factor in state_dict: nan (expected in (0, 1e+06])"),
    ("factor inf", _set(("step_factor",), math.inf), ValueError,
     "Invalid step factor in state_dict: inf (expected in (0, 1e+06])"),
    ("factor above max", _set(("step_factor",), 2e6), ValueError,
     "Invalid step factor in state_dict: 2000000.0 (expected in (0, 1e+06])"),
    ("factor str", _set(("step_factor",), "a"), TypeError,
     "step factor in state_dict must be a float, got str"),
    ("base lr -1", _set(("base_lrs", 1), -1.0), ValueError,
     "Invalid learning rate in state_dict['base_lrs'][1] (the dual optimizer's param group "
     "0): -1.0"),
    ("base lr nan", _set(("base_lrs", 0), math.nan), ValueError,
     "Invalid learning rate in state_dict['base_lrs'][0] (the primal optimizer's param "
     "group 0): nan"),
    ("base lr None", _set(("base_lrs", 0), None), TypeError,
     "learning rate in state_dict['base_lrs'][0] (the primal optimizer's param group 0) "
     "must be a float, got NoneType"),
    ("base lrs not a list", _set(("base_lrs",), 0.1), TypeError,
     "base_lrs in state_dict must be a list, got float"),
    ("dual group lr -1", _set(("dual", "param_groups", 0, "lr"), -1.0), ValueError,
     "Invalid learning rate in the dual optimizer (param group 0): -1.0"),
    ("primal group lr inf", _set(("primal", "param_groups", 0, "lr"), math.inf), ValueError,
     "Invalid learning rate in the primal optimizer (param group 0): inf"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "corrupt", "error", "message"), BAD_STEP_STATES, ids=[r[0] for r in BAD_STEP_STATES]
)
def test_a_corrupt_step_state_is_refused_and_loads_nothing(
    case: str, corrupt: Callable[[dict[str, Any]], None], error: type, message: str
) -> None:
    problem = QuadraticProgram()
    optimizer = _adaptive(problem, formulation="augmented")
    for _ in range(3):
        optimizer.step(problem)
    saved = optimizer.state_dict()
    corrupt(saved)
    fresh_problem = QuadraticProgram()
    fresh = _adaptive(fresh_problem, formulation="augmented")
    fresh.step(fresh_problem)  # its formulation's count of steps differs from the saved one
    before = failure_state(fresh_problem, fresh)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        fresh.load_state_dict(saved)
    assert_bitwise_equal(before, failure_state(fresh_problem, fresh))
    # What the checks accept loads: the uncorrupted state.
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.state_dict()["formulation"]["steps"] == 3


def test_a_fixed_steps_factor_is_one() -> None:
    problem = QuadraticProgram()
    optimizer = ExtraGradient(problem, *_pair(problem))
    saved = optimizer.state_dict()
    saved["step_factor"] = 2.0
    message = "Invalid step factor in state_dict: 2.0 (expected 1 with a fixed step)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.load_state_dict(saved)
    assert optimizer.step_factor == 1.0


@pytest.mark.parametrize("value", [-1, 1.5, "3", True])
def test_a_corrupt_loss_scaling_count_is_refused_and_loads_nothing(value: object) -> None:
    def build() -> tuple[QuadraticProgram, ExtraGradient]:
        problem = QuadraticProgram(dtype=torch.float32)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=100)
        return problem, ExtraGradient(problem, *_pair(problem), grad_scaler=scaler)

    problem, optimizer = build()
    for _ in range(3):
        optimizer.step(problem)
    saved = optimizer.state_dict()
    saved["steps_without_skip"] = value
    fresh_problem, fresh = build()
    fresh.step(fresh_problem)
    before = failure_state(fresh_problem, fresh)
    message = f"Invalid steps_without_skip in state_dict: {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fresh.load_state_dict(saved)
    assert_bitwise_equal(before, failure_state(fresh_problem, fresh))


def test_a_nupi_group_loaded_with_a_bad_gain_is_refused_and_loads_nothing() -> None:
    problem = QuadraticProgram(treatment="projection")
    dual = NuPI(problem.dual_parameters(), lr=0.1, kp=1.0, maximize=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD(problem.primal_parameters(), lr=0.1), dual)
    for _ in range(3):
        optimizer.step(problem)
    saved = optimizer.state_dict()
    saved["dual"]["param_groups"][0]["ki"] = -1.0
    before = failure_state(problem, optimizer)
    message = "Invalid ki value in the dual optimizer (param group 0): -1.0"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.load_state_dict(saved)
    assert_bitwise_equal(before, failure_state(problem, optimizer))
    assert dual.param_groups[0]["ki"] == 1.0


# ---------------------------------------------------------------------------------------
# Item 3: NuPI's gains are checked per group: when a group is added (by the constructor
# or add_param_group) and at every step.

BAD_GROUPS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"ki": -1.0}, ValueError, "Invalid ki value in param group 1: -1.0"),
    ({"ki": math.nan}, ValueError, "Invalid ki value in param group 1: nan"),
    ({"kp": -0.5}, ValueError, "Invalid kp value in param group 1: -0.5"),
    ({"kp": "a"}, TypeError, "kp in param group 1 must be a float, got str"),
    ({"nu": 1.5}, ValueError, "Invalid nu value in param group 1: 1.5"),
    ({"nu": math.nan}, ValueError, "Invalid nu value in param group 1: nan"),
    ({"lr": -1.0}, ValueError, "Invalid learning rate in param group 1: -1.0"),
    ({"maximize": 1}, TypeError, "maximize in param group 1 must be a bool, got int"),
]


@pytest.mark.parametrize(
    ("settings", "error", "message"), BAD_GROUPS, ids=[str(case[0]) for case in BAD_GROUPS]
)
def test_a_nupi_group_with_bad_settings_is_refused_when_added(
    settings: dict[str, Any], error: type, message: str
) -> None:
    first, second = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        NuPI([{"params": [first]}, {"params": [second], **settings}], lr=0.1)
    optimizer = NuPI([first], lr=0.1)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        optimizer.add_param_group({"params": [second], **settings})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize(
    ("settings", "error", "message"), BAD_GROUPS, ids=[str(case[0]) for case in BAD_GROUPS]
)
def test_a_nupi_group_edited_between_steps_is_refused_before_anything_moves(
    settings: dict[str, Any], error: type, message: str
) -> None:
    first, second = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = NuPI([{"params": [first]}, {"params": [second]}], lr=0.1, kp=1.0)
    for param in (first, second):
        param.grad = torch.ones(2)
    optimizer.step()
    values = [first.detach().clone(), second.detach().clone()]
    states = [optimizer.state[p]["xi"].clone() for p in (first, second)]
    optimizer.param_groups[1].update(settings)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        optimizer.step()
    assert_bitwise_equal(values, [first.detach(), second.detach()])
    assert_bitwise_equal(states, [optimizer.state[p]["xi"] for p in (first, second)])


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_nupi_gain_edited_between_steps_stops_the_method_by_name(method: type) -> None:
    problem = QuadraticProgram(treatment="projection")
    dual = NuPI(problem.dual_parameters(), lr=0.1, kp=1.0, maximize=True)
    optimizer = method(problem, torch.optim.SGD(problem.primal_parameters(), lr=0.1), dual)
    for _ in range(3):
        optimizer.step(problem)
    dual.param_groups[0]["ki"] = -1.0
    before = failure_state(problem, optimizer)
    message = "Invalid ki value in the dual optimizer (param group 0): -1.0"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


# ---------------------------------------------------------------------------------------
# Item 4: a learning rate is checked at every step, as when the method was built.


def _build(method: str, problem: ConstrainedProblem) -> ConstrainedOptimizer:
    if method == "default":
        return default_optimizer(problem)
    return {m.__name__: m for m in METHODS}[method](problem, *_pair(problem))


@pytest.mark.parametrize("side", ["primal", "dual"])
@pytest.mark.parametrize("method", [*(m.__name__ for m in METHODS), "default"])
def test_a_learning_rate_turned_negative_by_a_scheduler_is_refused_by_name(
    method: str, side: str
) -> None:
    problem = QuadraticProgram()
    optimizer = _build(method, problem)
    target = optimizer.primal_optimizer if side == "primal" else optimizer.dual_optimizer
    assert target is not None
    base = target.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(target, lambda epoch: 1.0 - epoch)
    for _ in range(2):
        optimizer.step(problem)
        scheduler.step()
    assert target.param_groups[0]["lr"] == -base
    before = failure_state(problem, optimizer)
    message = f"Invalid learning rate in the {side} optimizer (param group 0): {-base}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_learning_rate_set_between_steps_is_refused(value: float) -> None:
    problem, optimizer = build_mixed(SimultaneousGDA, "adam")
    train_mixed(problem, optimizer, range(2))
    optimizer.primal_optimizer.param_groups[0]["lr"] = value
    before = failure_state(problem, optimizer)
    message = f"Invalid learning rate in the primal optimizer (param group 0): {value}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        train_mixed(problem, optimizer, range(2, 3))
    assert_bitwise_equal(before, failure_state(problem, optimizer))


# ---------------------------------------------------------------------------------------
# Item 5: a non-finite value at the extrapolated point is no Lipschitz rejection.


class Capped(ConstrainedProblem):
    """min ||x - 2||^2 s.t. sum(x) <= 1 ('cap'); the value of 'cap' is NaN on the closure
    call ``poison_on`` (counted from 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.add_inequality("cap", "<=", treatment="projection")
        self.calls = 0
        self.poison_on: int | None = None

    def forward(self) -> ProblemState:
        self.calls += 1
        cap = self.x.sum() - 1.0
        if self.calls == self.poison_on:
            cap = cap * math.nan
        return ProblemState((self.x - 2).square().sum(), {"cap": cap})


@pytest.mark.parametrize("build", ["adaptive", "default"])
def test_a_non_finite_value_at_the_extrapolated_point_raises_at_once(build: str) -> None:
    problem = Capped()
    optimizer = _adaptive(problem) if build == "adaptive" else default_optimizer(problem)
    for _ in range(3):
        optimizer.step(problem)
    before = {**failure_state(problem, optimizer), "factor": optimizer.step_factor}
    problem.calls = 0
    problem.poison_on = 2  # the start is finite, the extrapolated point is not
    message = "constraint 'cap' has 1 non-finite value(s), first nan at ()"
    with pytest.raises(NonFiniteError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert problem.calls == 2
    assert_bitwise_equal(
        before, {**failure_state(problem, optimizer), "factor": optimizer.step_factor}
    )


# ---------------------------------------------------------------------------------------
# Item 14: a failed adaptive step leaves the base rates of the state dict as they were.


class Failing(QuadraticProgram):
    """Raises on the closure call ``fail_on`` (counted from 1)."""

    def __init__(self) -> None:
        super().__init__(treatment="projection")
        self.calls = 0
        self.fail_on: int | None = None

    def forward(self) -> ProblemState:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("closure failed")
        return super().forward()


@pytest.mark.parametrize("fail_on", [1, 2])
def test_a_failed_adaptive_step_keeps_the_base_rates_it_found(fail_on: int) -> None:
    problem = Failing()
    optimizer = _adaptive(problem)
    for _ in range(3):
        optimizer.step(problem)
    # A scheduler changes the rates between steps; the failed step reads them and must
    # put back what it changed: the state dict's bases too.
    for group in optimizer.param_groups:
        group["lr"] = 0.05
    before = {**failure_state(problem, optimizer), "factor": optimizer.step_factor}
    problem.calls, problem.fail_on = 0, fail_on
    with pytest.raises(RuntimeError, match=r"^closure failed$"):
        optimizer.step(problem)
    assert_bitwise_equal(
        before, {**failure_state(problem, optimizer), "factor": optimizer.step_factor}
    )
    assert [group["lr"] for group in optimizer.param_groups] == [0.05, 0.05]
    # The next step takes the scheduled rates as its bases.
    problem.fail_on = None
    optimizer.step(problem)
    assert optimizer.state_dict()["base_lrs"] == [0.05, 0.05]


# ---------------------------------------------------------------------------------------
# Item 10: what a step writes is checked before it commits.


class Rows(ConstrainedProblem):
    """A float16 indexed equality whose value is ``levels[call]`` on each closure call of a
    step (then the last): rows first stepped with a small residual make Adam divide by 0
    (its moments start at 0 for rows not yet seen, and eps=1e-8 is 0 in float16)."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(4))
        self.add_equality("rows", num_samples=4)
        self.to(torch.float16)
        self.levels = [1.0]
        self.calls = 0

    def forward(self, indices: torch.Tensor) -> ProblemState:
        level = self.levels[min(self.calls, len(self.levels) - 1)]
        self.calls += 1
        value = IndexedValue(self.x[indices] * 0 + level, indices)
        return ProblemState((self.x - 1).square().sum(), {"rows": value})


WRITES = [
    (SimultaneousGDA, [1e-4]),
    (AlternatingGDA, [1e-4]),
    (OptimisticGDA, [1e-4]),
    (ExtraGradient, [1e-4]),  # the extrapolation writes it
    (ExtraGradient, [1.0, 1e-4]),  # the step's update from the saved point writes it
]


@pytest.mark.parametrize(
    ("method", "levels"), WRITES, ids=[f"{m.__name__}-{levels}" for m, levels in WRITES]
)
def test_a_step_that_writes_a_non_finite_multiplier_is_rolled_back(
    method: type, levels: list[float]
) -> None:
    problem = Rows()
    dual = torch.optim.Adam(problem.dual_parameters(), lr=0.01, maximize=True)
    optimizer = method(problem, torch.optim.SGD(problem.primal_parameters(), lr=0.1), dual)
    optimizer.step(lambda: problem(torch.tensor([0, 1])))  # Adam's state starts
    before = failure_state(problem, optimizer)
    problem.levels, problem.calls = levels, 0
    message = (
        "the update wrote 2 non-finite value(s), first inf at (0,) into the batch's rows of "
        "the multipliers of constraint 'rows' (torch.float16): the step was rolled back (in "
        "float16 an update overflows past 65504, and an eps below 6e-8, such as Adam's "
        "default 1e-8, rounds to 0)"
    )
    with pytest.raises(NonFiniteError, match=f"^{re.escape(message)}$"):
        optimizer.step(lambda: problem(torch.tensor([2, 3])))
    assert_bitwise_equal(before, failure_state(problem, optimizer))
    assert bool(torch.isfinite(problem.constraints["rows"].multiplier).all())


class Edge(ConstrainedProblem):
    """min -x0 / 10 s.t. x1 <= 1, in float16, from x0 = 65000: a step of plain SGD (the
    direct update) at rate 1e4 takes x0 past float16's largest value, 65504."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([65000.0, 0.0], dtype=torch.float16))
        self.add_inequality("cap", "<=", treatment="projection")
        self.to(torch.float16)

    def forward(self) -> ProblemState:
        return ProblemState(-self.x[0] * 0.1, {"cap": self.x[1] - 1})


OVERFLOW_TAIL = (
    "(in float16 an update overflows past 65504, and an eps below 6e-8, such as Adam's "
    "default 1e-8, rounds to 0)"
)
OVERFLOWS = [
    *(
        (method, "the update wrote 1 non-finite value(s), first inf at (0,) into parameter "
         f"'x' (torch.float16): the step was rolled back {OVERFLOW_TAIL}")
        for method in (SimultaneousGDA, AlternatingGDA, OptimisticGDA)
    ),
    # Extra-gradient's extrapolation overflows first: named where it is evaluated.
    (ExtraGradient, "the gradient of parameter 'x' has 1 non-finite value(s), first inf at "
     "(0,) times the learning rate at the point the step started from: a finite value with "
     "an infinite derivative (sqrt or log at 0?) or an overflow in backward; or its "
     "optimizer's update overflowed (in float16 past 65504, or an eps below 6e-8, such as "
     "Adam's default 1e-8, rounds to 0)"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "message"), OVERFLOWS, ids=[m.__name__ for m, _ in OVERFLOWS])
def test_a_step_that_overflows_a_parameter_is_rolled_back(method: type, message: str) -> None:
    problem = Edge()
    optimizer = method(problem, *_pair(problem, lr=1e4))
    before = failure_state(problem, optimizer)
    with pytest.raises(NonFiniteError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


# Extra-gradient with a fixed step reads its two evaluations with what its update wrote, once
# (docs/performance.md); a failure of that read is found after the update overwrote what
# names the culprit, and the step is replayed with a read per evaluation.


class NanOnCall(ConstrainedProblem):
    """``x``'s square, ``x >= 1``; the constraint is NaN at the listed closure calls, and
    from call ``slope_from`` on the objective has an infinite derivative (``sqrt`` at 0)."""

    def __init__(self, nan_calls: set[int], slope_from: int | None = None) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([2.0, 0.0]))
        self.add_inequality("low", ">=", shape=(2,))
        self.nan_calls = nan_calls
        self.slope_from = slope_from
        self.calls = 0

    def forward(self) -> ProblemState:
        self.calls += 1
        value = self.x - 1
        if self.calls in self.nan_calls:
            value = value * torch.tensor([1.0, math.nan])
        objective = self.x.square().sum()
        if self.slope_from is not None and self.calls >= self.slope_from:
            objective = objective + (self.x[1] - self.x[1].detach()).sqrt()
        return ProblemState(objective, {"low": value})


def _fixed_extragradient(problem: ConstrainedProblem) -> ExtraGradient:
    return ExtraGradient(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )


NAN_VALUE = "constraint 'low' has 1 non-finite value(s), first nan at (1,)"
REPLAYS = [
    # (what is at fault, NaN calls, slope from, calls of the failing step, message); the
    # first step makes calls 1 and 2, the second 3 and 4, its replay 5 and 6.
    ("start value", {3, 5}, None, 3, NAN_VALUE),
    ("extrapolated value", {4, 6}, None, 4, NAN_VALUE),
    ("start gradient", set(), 3, 4,
     "the gradient of parameter 'x' has 1 non-finite value(s), first -inf at (1,) times the "
     "learning rate at the point the step started from"),
    ("not deterministic", {4}, None, 4, NAN_VALUE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("nan_calls", "slope_from", "calls", "message"),
    [case[1:] for case in REPLAYS], ids=[case[0] for case in REPLAYS],
)  # fmt: skip
def test_a_failed_read_of_extragradient_names_the_culprit(
    nan_calls: set[int], slope_from: int | None, calls: int, message: str
) -> None:
    """The second step fails: the error is the one the checks read at once would raise (an
    infinite gradient at the start moves the point to infinity, which the extrapolated
    evaluation sees first; a NaN the replay does not see again is named from the first
    pass), and the step changes nothing."""
    problem = NanOnCall(nan_calls, slope_from)
    optimizer = _fixed_extragradient(problem)
    optimizer.step(problem)
    before = failure_state(problem, optimizer)
    with pytest.raises(NonFiniteError, match=f"^{re.escape(message)}") as caught:
        optimizer.step(problem)
    assert problem.calls - 2 == calls
    # One error, not the first pass's read chained to the replay's.
    assert caught.value.__suppress_context__
    assert_bitwise_equal(before, failure_state(problem, optimizer))


class FaultInStep(ConstrainedProblem):
    """``x``'s square, ``x >= 1``; once ``fault`` is set: a NaN constraint value at the
    step's first call (``"start"``) or second (``"extrapolated"``), or an infinite
    derivative of the objective (``"slope"``, ``sqrt`` at 0) at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([2.0, 0.0]))
        self.add_inequality("low", ">=", shape=(2,))
        self.fault: str | None = None
        self.calls = 0

    def forward(self) -> ProblemState:
        self.calls += 1
        value = self.x - 1
        nan_call = {"start": 1, "extrapolated": 2}.get(self.fault or "")
        if nan_call == self.calls:
            value = value * torch.tensor([1.0, math.nan])
        objective = self.x.square().sum()
        if self.fault == "slope":
            objective = objective + (self.x[1] - self.x[1].detach()).sqrt()
        return ProblemState(objective, {"low": value})


ADAPTIVE_FAULTS = [
    ("start", NAN_VALUE),
    ("extrapolated", NAN_VALUE),
    ("slope", "the gradient of parameter 'x' has 1 non-finite value(s), first inf at (1,): a "
     "finite value with an infinite derivative"),
]  # fmt: skip


@pytest.mark.parametrize(("fault", "message"), ADAPTIVE_FAULTS, ids=[f for f, _ in ADAPTIVE_FAULTS])
def test_the_adaptive_step_reads_its_checks_with_its_test(fault: str, message: str) -> None:
    """The adaptive step reads both evaluations' checks with its test (one host read): a
    fault is named as at once, with two closure calls (no retry, no replay), and the step
    changes nothing."""
    problem = FaultInStep()
    optimizer = ExtraGradient(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        step_size="adaptive",
    )
    optimizer.step(problem)
    before = failure_state(problem, optimizer)
    problem.fault, problem.calls = fault, 0
    with pytest.raises(NonFiniteError, match=f"^{re.escape(message)}"):
        optimizer.step(problem)
    assert problem.calls == 2
    assert_bitwise_equal(before, failure_state(problem, optimizer))
