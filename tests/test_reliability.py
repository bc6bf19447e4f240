"""Failures after the closure returned, and inputs refused when a method is built (issue 10).

Every test here failed before its fix: a step that raised in a later phase left something
changed, a non-finite gradient was stepped along, or a misbuilt optimizer was accepted.
"""

from __future__ import annotations

import math
import re
import warnings
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
    mixed_batch,
    snapshot,
    train_mixed,
)
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    NonFiniteError,
    ProblemState,
    default_optimizer,
)
from lagrange_opt.updates.rows import RowView, step_optimizer


def _pair(problem: ConstrainedProblem, lr: float = 0.1, dual_lr: float = 0.1) -> tuple[Any, Any]:
    return (
        torch.optim.SGD(problem.primal_parameters(), lr=lr),
        torch.optim.SGD(problem.dual_parameters(), lr=dual_lr, maximize=True),
    )


def _optimizers(problem: ConstrainedProblem, base: str) -> tuple[Any, Any]:
    """Plain SGD (``"sgd"``, the direct update) or Adam on both sides."""
    if base != "adam":
        return _pair(problem)
    return (
        torch.optim.Adam(problem.primal_parameters(), lr=0.1),
        torch.optim.Adam(problem.dual_parameters(), lr=0.1, maximize=True),
    )


def _rng_state(device: str) -> Tensor:
    """The state of the generator that draws on ``device``."""
    return torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()


def _set_rng_state(device: str, state: Tensor) -> None:
    if device == "cuda":
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


class Indexed(ConstrainedProblem):
    """Two indexed constraints on one parameter vector: a row each per sample."""

    def __init__(self, treatment: str = "projection") -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(4))
        self.add_inequality("low", ">=", num_samples=4, treatment=treatment)  # type: ignore[arg-type]
        self.add_inequality("high", "<=", num_samples=4, treatment=treatment)  # type: ignore[arg-type]

    def forward(self, indices: Tensor) -> ProblemState:
        x = self.x[indices]
        return ProblemState(
            (self.x - 2).square().sum(),
            {"low": IndexedValue(x - 0.5, indices), "high": IndexedValue(x - 1.0, indices)},
        )


# Inputs refused when a method is built (items 1, 5, 13), as data: a row builds the
# optimizers of a problem; the method must raise the error, with the message, and change
# nothing.


def _sgd(params: Any, lr: float = 0.1, **options: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, **options)


def _with_lr(optimizer: torch.optim.Optimizer, lr: float) -> torch.optim.Optimizer:
    optimizer.param_groups[0]["lr"] = lr  # torch refuses some at construction
    return optimizer


Build = Callable[[ConstrainedProblem], tuple[Any, Any]]

BAD_BUILDS: list[tuple[str, Callable[[], ConstrainedProblem], Build, type[Exception], str]] = [
    *(
        (f"{side} lr {lr}", QuadraticProgram,
         lambda p, side=side, lr=lr: (
             _with_lr(_sgd(p.primal_parameters()), lr) if side == "primal" else _sgd(p.primal_parameters()),
             _with_lr(_sgd(p.dual_parameters(), maximize=True), lr) if side == "dual"
             else _sgd(p.dual_parameters(), maximize=True),
         ),
         ValueError, re.escape(f"Invalid learning rate in the {side} optimizer (param group 0): {lr}"))
        for side in ("primal", "dual") for lr in (-1.0, math.inf, math.nan)
    ),
    ("dual sgd weight decay", QuadraticProgram,
     lambda p: (_sgd(p.primal_parameters(), weight_decay=0.1),
                _sgd(p.dual_parameters(), weight_decay=0.1, maximize=True)),
     ValueError, re.escape(
         "Invalid weight decay in the dual optimizer (param group 0): 0.1; it pulls the "
         "multipliers towards 0, so the iteration converges to a biased, infeasible point: "
         "build it with weight_decay=0")),
    ("dual adamw default decay", QuadraticProgram,
     lambda p: (_sgd(p.primal_parameters()),
                torch.optim.AdamW(p.dual_parameters(), lr=0.1, maximize=True)),
     ValueError, re.escape("Invalid weight decay in the dual optimizer (param group 0): 0.01;")),
    ("lbfgs", QuadraticProgram,
     lambda p: (torch.optim.LBFGS(p.primal_parameters()), _sgd(p.dual_parameters(), maximize=True)),
     TypeError, re.escape("the primal optimizer LBFGS needs a closure in step(): the methods")),
    ("adafactor on indexed multipliers", Indexed,
     lambda p: (_sgd(p.primal_parameters()),
                torch.optim.Adafactor(p.dual_parameters(), lr=0.1, maximize=True)),
     TypeError, re.escape(
         "constraint 'low' is indexed: the dual optimizer steps only the batch's rows of its "
         "table, which needs elementwise state, and Adafactor is not known to keep it; use "
         "one of SGD, Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta, Rprop")),
    ("adafactor on indexed slacks", lambda: Indexed(treatment="slack"),
     lambda p: (torch.optim.Adafactor(p.primal_parameters(), lr=0.1),
                _sgd(p.dual_parameters(), maximize=True)),
     TypeError, re.escape("constraint 'low' is indexed: the primal optimizer steps only")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "make_problem", "build", "error", "pattern"),
    BAD_BUILDS,
    ids=[r[0] for r in BAD_BUILDS],
)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_bad_build_is_refused_and_changes_nothing(
    method: type, case: str, make_problem: Any, build: Build, error: type, pattern: str
) -> None:
    problem = make_problem()
    primal, dual = build(problem)
    before = {**snapshot(problem, primal), "dual": dual.state_dict()}
    with pytest.raises(error, match=f"^{pattern}"):
        method(problem, primal, dual)
    assert_bitwise_equal(before, {**snapshot(problem, primal), "dual": dual.state_dict()})


# 1. The row stepping's own failures.


class RowSum(torch.optim.Optimizer):
    """Keeps one number per parameter (not per entry): not elementwise."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {"lr": 0.1})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                state["total"] = param.grad.sum().reshape(1) + state.get("total", 0)
                param.add_(param.grad, alpha=-group["lr"])


def test_row_stepping_leaves_every_table_whole_when_a_state_is_not_elementwise() -> None:
    tables = [nn.Parameter(torch.arange(10.0).reshape(5, 2) + k) for k in range(2)]
    originals = [table.detach().clone() for table in tables]
    optimizer = RowSum(tables)
    rows = torch.tensor([1, 3])
    views = [
        RowView(table, rows, table.detach()[rows].clone(), torch.ones(2, 2), project=False)
        for table in tables
    ]
    with pytest.raises(TypeError, match=r"^RowSum keeps state 'total' of shape \(1,\) for rows"):
        step_optimizer(optimizer, views, commit_state=True)
    for table, original in zip(tables, originals):
        assert table.data.shape == (5, 2)
        assert torch.equal(table.data, original)
        assert table.grad is None
    assert not optimizer.state


# 2. A finite value whose gradient is not finite.


class Root(ConstrainedProblem):
    """sqrt(x0) >= 0.5 at x = 0: a finite value with an infinite derivative."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2))
        self.add_inequality("root", ">=")
        self.add_equality("sum")

    def forward(self) -> ProblemState:
        return ProblemState(
            (self.x - 1).square().sum(),
            {"root": self.x[0].sqrt() - 0.5, "sum": 10 * self.x.sum()},
        )


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_an_infinite_gradient_raises_naming_the_parameter_and_changes_nothing(
    method: type, device: str
) -> None:
    problem = Root().to(device)
    optimizer = method(problem, *_pair(problem))
    before = failure_state(problem, optimizer)
    with pytest.raises(
        NonFiniteError,
        match=r"^the gradient of parameter 'x' has 1 non-finite value\(s\), first (-?inf|nan) at \(0,\)",
    ):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_an_overflow_in_backward_raises_and_changes_nothing(method: type, device: str) -> None:
    problem = Root().to(device)
    problem.x.data.fill_(1.0)
    problem.x.data[1] = -1.0  # the sum is 0: its term, multiplier * 0, is finite
    with torch.no_grad():
        problem.constraints["sum"].multiplier.fill_(3e38)
    optimizer = method(problem, *_pair(problem))
    before = failure_state(problem, optimizer)
    with pytest.raises(NonFiniteError, match=r"^the gradient of parameter 'x' has 2 non-finite"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


# 3. A constraint declared after the method was built.


class Growing(QuadraticProgram):
    def forward(self) -> ProblemState:
        state = super().forward()
        values = dict(state.constraints)
        if "late" in self.constraints:
            values["late"] = self.x[0] - 0.25
        return ProblemState(state.objective, values)


@pytest.mark.parametrize("base", ["sgd", "adam"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_constraint_declared_after_the_method_is_built_raises_and_nothing_moves(
    method: type, base: str
) -> None:
    problem = Growing()
    optimizer = method(problem, *_optimizers(problem, base))
    optimizer.step(problem)
    problem.add_inequality("late", "<=")
    before = failure_state(problem, optimizer)
    with pytest.raises(
        RuntimeError,
        match=re.escape(
            "constraint(s) ['late'] were declared after this optimizer was built, so no "
            "optimizer steps their multipliers: build the optimizers and the method again"
        ),
    ):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


# 7 and 8. Failures after the closure returned: in backward, in an optimizer's step.


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, value: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        raise RuntimeError("backward failed")


class Bomb(QuadraticProgram):
    """The QP whose constraint's backward raises once armed."""

    armed = False

    def forward(self) -> ProblemState:
        state = super().forward()
        value = state.constraints["sum"]
        assert isinstance(value, Tensor)
        if self.armed:
            value = _FailingBackward.apply(value)
        return ProblemState(state.objective, {"sum": value})


@pytest.mark.parametrize("treatment", ["slack", "projection"])
@pytest.mark.parametrize("warm", [False, True], ids=["first-step", "after-steps"])
@pytest.mark.parametrize("base", ["plain-sgd", "adam"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_backward_that_raises_changes_nothing(
    method: type, base: str, warm: bool, treatment: str, device: str
) -> None:
    problem = Bomb(treatment=treatment).to(device)
    optimizer = method(problem, *_optimizers(problem, base))
    for _ in range(3 if warm else 0):
        optimizer.step(problem)
    problem.armed = True
    before = failure_state(problem, optimizer)
    with pytest.raises(RuntimeError, match=r"^backward failed$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


class FailingSGD(torch.optim.SGD):
    """SGD that raises after its update on the armed call: parameters and momentum changed."""

    fail_on_call: int | None = None

    def step(self, closure: Any = None) -> Any:
        result = super().step(closure)
        if self.fail_on_call is not None:
            self.fail_on_call -= 1
            if self.fail_on_call == 0:
                raise RuntimeError("step failed")
        return result


class Countdown:
    """A step hook that raises on its n-th call."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def __call__(self, *_: Any) -> None:
        self.calls -= 1
        if self.calls == 0:
            raise RuntimeError("hook failed")


def _arm(optimizer: torch.optim.Optimizer, failure: str, call: int) -> str:
    """Makes the optimizer's ``call``-th step of the next method step fail; the message."""
    if failure == "step":
        assert isinstance(optimizer, FailingSGD)
        optimizer.fail_on_call = call
        return "^step failed$"
    if failure == "pre-hook":
        optimizer.register_step_pre_hook(Countdown(call))
    else:
        optimizer.register_step_post_hook(Countdown(call))
    return "^hook failed$"


def _mixed_with_failing_sgd(method: type, device: str) -> tuple[Any, Any]:
    problem, _ = build_mixed(method, "plain-sgd", device=device)
    primal = FailingSGD(
        [*problem.model.parameters(), *problem.slack_parameters()], lr=0.01, momentum=0.5
    )
    dual = FailingSGD(problem.dual_parameters(), lr=0.05, momentum=0.5, maximize=True)
    return problem, method(problem, primal, dual)


# ExtraGradient steps each optimizer twice: to the extrapolated point, then for good.
OPTIMIZER_CALLS = [(method, 1) for method in METHODS] + [(ExtraGradient, 2)]


@pytest.mark.parametrize("failure", ["step", "pre-hook", "post-hook"])
@pytest.mark.parametrize("side", ["primal", "dual"])
@pytest.mark.parametrize(
    ("method", "call"), OPTIMIZER_CALLS, ids=[f"{m.__name__}-call{c}" for m, c in OPTIMIZER_CALLS]
)
def test_an_optimizer_step_that_raises_changes_nothing(
    method: type, call: int, side: str, failure: str, device: str
) -> None:
    problem, optimizer = _mixed_with_failing_sgd(method, device)
    train_mixed(problem, optimizer, range(3))
    failing = optimizer.primal_optimizer if side == "primal" else optimizer.dual_optimizer
    message = _arm(failing, failure, call)
    before = failure_state(problem, optimizer)
    with pytest.raises(RuntimeError, match=message):
        train_mixed(problem, optimizer, range(3, 4))
    assert_bitwise_equal(before, failure_state(problem, optimizer))


# 9. Running statistics and randomness.


class Normalised(ConstrainedProblem):
    """A network with batch normalisation and dropout; records the dropout masks drawn."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1)
        )
        self.data = torch.randn(16, 3).to(device)  # drawn on the CPU: the same everywhere
        self.add_inequality("positive", ">=", num_samples=16)
        self.to(device)
        self.masks: list[Tensor] = []
        self.fail_on_call: int | None = None
        self.calls = 0

    def forward(self) -> ProblemState:
        self.calls += 1
        hidden = self.net[1](self.net[0](self.data))
        dropped = self.net[2](hidden)
        self.masks.append(dropped == 0)
        pred = self.net[3](dropped).squeeze(-1)
        objective = (pred - 1).square().mean()
        if self.calls == self.fail_on_call:
            objective = objective * math.nan
        indices = torch.arange(16, device=pred.device)
        return ProblemState(objective, {"positive": IndexedValue(pred, indices)})


def _normalised_method(
    same_randomness: bool, adaptive: bool = False, device: str = "cpu"
) -> tuple[Normalised, Any]:
    problem = Normalised(device)
    optimizer = ExtraGradient(
        problem, *_pair(problem, lr=0.01),
        step_size="adaptive" if adaptive else "fixed", same_randomness=same_randomness,
    )  # fmt: skip
    return problem, optimizer


@pytest.mark.parametrize("failing_call", [1, 2], ids=["start", "extrapolated"])
def test_a_failed_step_puts_back_running_statistics_and_the_generator(
    failing_call: int, device: str
) -> None:
    problem, optimizer = _normalised_method(same_randomness=False, device=device)
    optimizer.step(problem)
    problem.fail_on_call = problem.calls + failing_call
    before = failure_state(problem, optimizer)
    with pytest.raises(NonFiniteError, match=r"^objective is not finite: nan$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


def test_same_randomness_gives_every_evaluation_the_same_draws_and_one_statistics_update(
    device: str,
) -> None:
    problem, optimizer = _normalised_method(same_randomness=True, device=device)
    norm = problem.net[1]
    for step in range(3):
        reference = Normalised(device)
        reference.load_state_dict(problem.state_dict())
        rng = _rng_state(device)  # dropout draws from the generator of the device
        reference()  # one forward at the point the step starts from
        after_one_forward = _rng_state(device)
        _set_rng_state(device, rng)
        problem.masks.clear()
        optimizer.step(problem)
        first, second = problem.masks
        assert torch.equal(first, second)
        assert int(norm.num_batches_tracked) == step + 1
        assert torch.equal(norm.running_mean, reference.net[1].running_mean)
        assert torch.equal(norm.running_var, reference.net[1].running_var)
        assert torch.equal(_rng_state(device), after_one_forward)


def test_without_same_randomness_each_evaluation_draws_and_updates_the_statistics(
    device: str,
) -> None:
    problem, optimizer = _normalised_method(same_randomness=False, device=device)
    optimizer.step(problem)
    first, second = problem.masks
    assert not torch.equal(first, second)
    assert int(problem.net[1].num_batches_tracked) == 2


def test_same_randomness_holds_over_the_adaptive_steps_retries(device: str) -> None:
    problem, optimizer = _normalised_method(same_randomness=True, adaptive=True, device=device)
    for _ in range(5):
        problem.masks.clear()
        result = optimizer.step(problem)
        assert len(problem.masks) == result.evaluations
        assert all(torch.equal(problem.masks[0], mask) for mask in problem.masks)
    assert int(problem.net[1].num_batches_tracked) == 5


def test_same_randomness_must_be_a_bool() -> None:
    problem = QuadraticProgram()
    with pytest.raises(TypeError, match=r"^same_randomness must be a bool, got int$"):
        ExtraGradient(problem, *_pair(problem), same_randomness=1)  # type: ignore[arg-type]


# 10. load_state_dict is all or nothing.


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_state_dict_whose_dual_part_is_bad_loads_nothing(method: type) -> None:
    problem, optimizer = build_mixed(method, "adam")
    train_mixed(problem, optimizer, range(3))
    saved = optimizer.state_dict()
    fresh_problem, fresh = build_mixed(method, "adam", seed=1)
    train_mixed(fresh_problem, fresh, range(2))
    before = snapshot(fresh_problem, fresh)
    saved["dual"]["param_groups"] = saved["dual"]["param_groups"] * 2
    with pytest.raises(ValueError, match="different number of parameter groups"):
        fresh.load_state_dict(saved)
    assert_bitwise_equal(before, snapshot(fresh_problem, fresh))


# 13. A zero learning rate (the refused ones are in BAD_BUILDS).


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_zero_learning_rate_warm_up_start_is_accepted(method: type, device: str) -> None:
    problem = QuadraticProgram(treatment="projection").to(device)
    primal, dual = _pair(problem, lr=0.0, dual_lr=0.0)
    optimizer = method(problem, primal, dual)
    optimizer.step(problem)
    assert problem.x.cpu().tolist() == [0.0, 0.0]
    for group in (*primal.param_groups, *dual.param_groups):
        group["lr"] = 0.1
    for _ in range(500):
        optimizer.step(problem)
    assert problem.x.cpu().tolist() == pytest.approx(QuadraticProgram.solution, abs=1e-4)


# 14. Learning-rate schedulers over the direct SGD update.


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_scheduler_over_plain_sgd_gives_no_warning_and_schedules(
    method: type, device: str
) -> None:
    problem, optimizer = build_mixed(method, "plain-sgd", device=device)
    schedulers = [
        torch.optim.lr_scheduler.StepLR(side, step_size=2, gamma=0.5)
        for side in (optimizer.primal_optimizer, optimizer.dual_optimizer)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(4):
            optimizer.step(lambda step=step: problem(mixed_batch(step, device)))
            for scheduler in schedulers:
                scheduler.step()
    assert optimizer.primal_optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 4)


def test_the_scheduled_direct_update_equals_the_plain_one(device: str) -> None:
    """The wrapped step() takes the stock path; its iterates are the direct update's (up
    to the order in which repeated indices' residuals are summed)."""
    runs = []
    for scheduled in (False, True):
        problem, optimizer = build_mixed(ExtraGradient, "plain-sgd", device=device)
        if scheduled:
            for side in (optimizer.primal_optimizer, optimizer.dual_optimizer):
                torch.optim.lr_scheduler.LambdaLR(side, lambda _: 1.0)
        train_mixed(problem, optimizer, range(5))
        runs.append(problem.state_dict())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-7)


# The default method: the same guarantees.


def test_the_default_method_rolls_back_a_failed_extrapolation(device: str) -> None:
    problem = Bomb().to(device)
    optimizer = default_optimizer(problem)
    for _ in range(3):
        optimizer.step(problem)
    problem.armed = True
    before = {**failure_state(problem, optimizer), "factor": optimizer.step_factor}
    with pytest.raises(RuntimeError, match=r"^backward failed$"):
        optimizer.step(problem)
    assert_bitwise_equal(
        before, {**failure_state(problem, optimizer), "factor": optimizer.step_factor}
    )


def test_alternating_keeps_its_dual_step_only_when_the_step_succeeds(device: str) -> None:
    problem = Bomb(treatment="projection").to(device)
    optimizer = AlternatingGDA(problem, *_pair(problem))
    optimizer.step(problem)
    multiplier = problem.constraints["sum"].multiplier.detach().clone()
    problem.armed = True
    with pytest.raises(RuntimeError):
        optimizer.step(problem)
    assert torch.equal(problem.constraints["sum"].multiplier.detach(), multiplier)
    problem.armed = False
    optimizer.step(problem)
    assert not torch.equal(problem.constraints["sum"].multiplier.detach(), multiplier)


def test_the_defaults_first_step_measures_scales_without_a_trace(device: str) -> None:
    """The scaling's extra call draws what the step's evaluations draw and leaves the
    running statistics as one plain forward pass would."""
    problem = Normalised(device)
    optimizer = default_optimizer(problem)
    for step in range(3):
        problem.masks.clear()
        result = optimizer.step(problem)
        assert len(problem.masks) == result.evaluations
        assert all(torch.equal(problem.masks[0], mask) for mask in problem.masks)
        assert int(problem.net[1].num_batches_tracked) == step + 1


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_dual_step_that_raises_after_the_direct_primal_update_changes_nothing(
    method: type, device: str
) -> None:
    """The primal side (plain SGD, updated directly) moves before the dual side's stock
    step() raises: the primal move is undone too."""
    problem, optimizer = build_mixed(method, "plain-sgd", device=device)
    train_mixed(problem, optimizer, range(3))
    optimizer.dual_optimizer.register_step_pre_hook(Countdown(1))
    before = failure_state(problem, optimizer)
    with pytest.raises(RuntimeError, match=r"^hook failed$"):
        train_mixed(problem, optimizer, range(3, 4))
    assert_bitwise_equal(before, failure_state(problem, optimizer))
