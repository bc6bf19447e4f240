"""Proxy constraints (issue 12): the true value drives the dual side and the figures, the
surrogate the primal gradient (Cotter et al., ALT 2019; docs/proxy.md).

- A proxy whose surrogate equals its value is a plain value: bitwise the same run, for
  every method, formulation and treatment, and with micro-batches.
- With another true value, the first step's multiplier update is the hand-computed one from
  the true value and the primal step the one from the surrogate, for every treatment and
  both formulations; the violations reported are the true value's.
- A true value with no gradient path is accepted; a surrogate without one is refused; bad
  shapes, dtypes and non-finite entries are named, saying which part is at fault, and the
  step that raised changes nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import spawned
import torch
from helpers import assert_bitwise_equal, failure_state, snapshot
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    AugmentedLagrangian,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    NonFiniteError,
    ProblemState,
    Proxy,
    SimultaneousGDA,
    default_optimizer,
    kkt,
)

F64 = torch.float64
NUM_SAMPLES = 12

# A proxy of a plain value: the same tensor twice, or the same value computed twice.
Wrap = Callable[[Callable[[], Tensor], str], Any]
WRAPS: dict[str, Wrap] = {
    "plain": lambda compute, name: compute(),
    "same-tensor": lambda compute, name: Proxy(value := compute(), value),
    "computed-twice": lambda compute, name: Proxy(compute(), compute()),
}


class HeldByHand:
    """A plain value whose forward value is the one its step's first call returned (the
    gradient the live one's): a proxy's measurement once per step, written by hand."""

    def __init__(self) -> None:
        self.first: dict[str, Tensor] = {}

    def __call__(self, compute: Callable[[], Tensor], name: str) -> Tensor:
        value = compute()
        held = self.first.setdefault(name, value.detach().clone())
        return held + (value - value.detach())


class Network(ConstrainedProblem):
    """A linear model with an indexed inequality (non-negative first output), a dense
    inequality and an equality, each returned through ``wrap``."""

    def __init__(self, treatment: str, wrap: Wrap, device: str = "cpu") -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randn(NUM_SAMPLES, 3, generator=generator).to(device)
        self.targets = (torch.randn(NUM_SAMPLES, 2, generator=generator) - 0.5).to(device)
        torch.manual_seed(0)
        self.model = nn.Linear(3, 2).to(device)
        weight = 1.0 if treatment == "penalty" else None
        options: dict[str, Any] = {"treatment": treatment, "penalty_weight": weight}
        self.add_inequality("nonnegative", ">=", num_samples=NUM_SAMPLES, **options)
        self.add_inequality("norm", "<=", **options)
        self.add_equality("mean", shape=(1,))
        self.to(device)  # the multiplier and slack tables too
        self.wrap = wrap

    def forward(self, indices: Tensor) -> ProblemState:
        predictions = self.model(self.data[indices])
        wrap = self.wrap
        return ProblemState(
            (predictions - self.targets[indices]).square().mean(),
            {
                "nonnegative": IndexedValue(
                    wrap(lambda: predictions[:, 0] + 0.0, "nonnegative"), indices
                ),
                "norm": wrap(lambda: self.model.weight.square().sum() - 0.5, "norm"),
                "mean": wrap(lambda: predictions.mean().reshape(1) - 0.1, "mean"),
            },
        )


def _batch(step: int, device: str) -> Tensor:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randint(NUM_SAMPLES, (6,), generator=generator).to(device)


def _optimizer(problem: ConstrainedProblem, method: str, formulation: str) -> Any:
    if method == "default":
        return default_optimizer(problem)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.02, momentum=0.5)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.05, maximize=True)
    cls = {"extragradient": ExtraGradient, "simultaneous": SimultaneousGDA}.get(
        method, AlternatingGDA
    )
    return cls(problem, primal, dual, formulation=formulation)


RUNS = [
    (method, formulation, treatment)
    for method in ("extragradient", "simultaneous", "alternating")
    for formulation in ("lagrangian", "augmented")
    for treatment in ("slack", "projection", "penalty")
] + [("default", "augmented", treatment) for treatment in ("slack", "projection", "penalty")]


def _run(case: tuple[str, str, str], wrap: str, device: str, micro: bool = False) -> Any:
    method, formulation, treatment = case
    by_hand = HeldByHand()
    problem = Network(treatment, by_hand if wrap == "held-by-hand" else WRAPS[wrap], device)
    optimizer = _optimizer(problem, method, formulation)
    figures = []
    for step in range(15):
        by_hand.first.clear()
        batch = _batch(step, device)
        if micro:
            halves = batch.split(3)
            result = optimizer.step([lambda half=half: problem(half) for half in halves])
        else:
            result = optimizer.step(lambda batch=batch: problem(batch))
        figures.append(
            (result.lagrangian, result.max_violation, result.mean_violation,
             {name: tuple(figures) for name, figures in result.constraints.items()})
        )  # fmt: skip
    return snapshot(problem, optimizer), figures


ONE_EVALUATION = ("simultaneous", "alternating")
"""The methods that evaluate once per step: a proxy's measurement is the only one."""


@pytest.mark.parametrize("wrap", ["same-tensor", "computed-twice"])
@pytest.mark.parametrize("case", RUNS, ids="-".join)
def test_a_proxy_of_the_value_itself_is_the_plain_run(
    case: tuple[str, str, str], wrap: str, device: str
) -> None:
    """One tensor as both parts is a plain value; two are a proxy, which a method that
    evaluates twice per step measures at the step's start (the next test)."""
    reference = "plain" if wrap == "same-tensor" or case[0] in ONE_EVALUATION else "held-by-hand"
    assert_bitwise_equal(_run(case, reference, device), _run(case, wrap, device))


@pytest.mark.parametrize("case", [case for case in RUNS if case[0] not in ONE_EVALUATION],
                         ids="-".join)  # fmt: skip
def test_a_proxy_is_measured_at_the_start_of_the_step(case: tuple[str, str, str]) -> None:
    """Extra-gradient's extrapolated evaluation (and the default's retries) read the true
    value of the step's first evaluation, the gradient of their own: the same run as a
    plain value held by hand, and not the plain run."""
    held = _run(case, "held-by-hand", "cpu")
    assert_bitwise_equal(held, _run(case, "computed-twice", "cpu"))
    with pytest.raises(AssertionError, match="differ"):
        assert_bitwise_equal(held, _run(case, "plain", "cpu"))


@pytest.mark.parametrize(
    "case",
    [("simultaneous", "lagrangian", "slack"), ("extragradient", "augmented", "projection"),
     ("default", "augmented", "penalty")],
    ids="-".join,
)  # fmt: skip
def test_a_proxy_of_the_value_itself_with_micro_batches(case: tuple[str, str, str]) -> None:
    """Micro-batches combine a proxy's true values and measure them once per step too."""
    if case[0] in ONE_EVALUATION:
        plain = _run(case, "plain", "cpu", micro=True)
        assert_bitwise_equal(plain, _run(case, "computed-twice", "cpu", micro=True))
    else:
        whole, _ = _run(case, "computed-twice", "cpu")
        micro, _ = _run(case, "computed-twice", "cpu", micro=True)
        torch.testing.assert_close(micro["problem"], whole["problem"], rtol=1e-6, atol=1e-7)


# The first step by hand: min 1/2 ||x||^2 s.t. g(x) <= 0, where the true g is a step
# function of x and the surrogate the linear a'x - b.

X0 = (1.0, -2.0)
A = (1.0, 2.0)
B = 0.5
LAMBDA0 = 0.5
LR, DUAL_LR, PENALTY_WEIGHT, MARGIN = 0.1, 0.2, 3.0, 1e-2


def _true_g(x: Tensor) -> Tensor:
    """0.25 at X0, no gradient path (a comparison); the surrogate there is -3.5."""
    return (x > 0).to(x.dtype).sum() - 0.75


class StepFunction(ConstrainedProblem):
    def __init__(self, treatment: str, kind: str = "inequality", device: str = "cpu") -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(X0, dtype=F64, device=device))
        self.a = torch.tensor(A, dtype=F64, device=device)
        weight = PENALTY_WEIGHT if treatment == "penalty" else None
        if kind == "equality":
            self.add_equality("g", treatment=treatment, penalty_weight=weight)  # type: ignore[arg-type]
        else:
            self.add_inequality(
                "g", "<=", treatment=treatment, penalty_weight=weight,  # type: ignore[arg-type]
                slack_margin=MARGIN,
            )  # fmt: skip
        self.to(device, F64)

    def forward(self) -> ProblemState:
        surrogate = self.a @ self.x - B
        return ProblemState(0.5 * self.x.square().sum(), {"g": Proxy(_true_g(self.x), surrogate)})


def _expected_first_step(treatment: str, kind: str, formulation: str) -> tuple[Tensor, float]:
    """x and the multiplier after one simultaneous step, from the closed forms."""
    x0, a = torch.tensor(X0, dtype=F64), torch.tensor(A, dtype=F64)
    g = float(_true_g(x0))  # the true value: 0.25
    c = 1.0  # the augmented Lagrangian's initial penalty coefficient
    if treatment == "penalty":
        weight, multiplier = 2 * PENALTY_WEIGHT * (abs(g) if kind == "equality" else max(g, 0)), 0.0
    elif formulation == "augmented":
        estimate = LAMBDA0 + c * g
        weight = estimate if kind == "equality" else max(0.0, estimate)
        residual = g if kind == "equality" else max(g, -LAMBDA0 / c)
        multiplier = LAMBDA0 + DUAL_LR * residual
    else:
        weight = LAMBDA0
        slack_square = max(-g, MARGIN) if treatment == "slack" else 0.0
        multiplier = LAMBDA0 + DUAL_LR * (g + slack_square)
        if kind == "inequality":
            multiplier = max(multiplier, 0.0) if treatment == "projection" else multiplier
    # The primal gradient: the objective's, plus the weight times the surrogate's.
    return x0 - LR * (x0 + weight * a), multiplier


@pytest.mark.parametrize(
    ("kind", "treatment"),
    [("inequality", "projection"), ("inequality", "slack"), ("inequality", "penalty"),
     ("equality", "multiplier"), ("equality", "penalty")],
)  # fmt: skip
@pytest.mark.parametrize("formulation", ["lagrangian", "augmented"])
def test_first_step_duals_from_the_true_value_primal_from_the_surrogate(
    kind: str, treatment: str, formulation: str, device: str
) -> None:
    problem = StepFunction(treatment, kind, device)
    constraint = problem.constraints["g"]
    if constraint.multiplier is not None:
        with torch.no_grad():
            constraint.multiplier.fill_(LAMBDA0)
        dual = torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True)
        optimizer = SimultaneousGDA(
            problem, torch.optim.SGD(problem.primal_parameters(), lr=LR), dual,
            formulation=formulation,
        )  # fmt: skip
    else:
        primal = torch.optim.SGD(problem.primal_parameters(), lr=LR)
        optimizer = SimultaneousGDA(problem, primal, formulation=formulation)
    result = optimizer.step(problem)
    x, multiplier = _expected_first_step(treatment, kind, formulation)
    torch.testing.assert_close(problem.x.detach().cpu(), x, rtol=1e-14, atol=1e-14)
    if constraint.multiplier is not None:
        assert float(constraint.multiplier.detach()) == pytest.approx(multiplier, rel=1e-14)
    # The violation reported is the true value's (the surrogate, -3.5, is satisfied).
    assert float(result.max_violation) == 0.25
    assert float(result.constraints["g"].max_violation) == 0.25
    assert kkt(problem).primal_feasibility == 0.25


def test_slack_is_set_from_the_true_value() -> None:
    problem = StepFunction("slack")
    with torch.no_grad():
        problem.x.copy_(torch.tensor([-1.0, -2.0]))  # true g = -0.75, surrogate -5.5
    primal = torch.optim.SGD(problem.primal_parameters(), lr=LR)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True)
    SimultaneousGDA(problem, primal, dual).step(problem)
    slack = problem.constraints["g"].slack
    assert slack is not None
    # Set to sqrt(0.75) from the true value, then unmoved (the multiplier is 0).
    assert float(slack.detach()) == pytest.approx(math.sqrt(0.75), rel=1e-15)
    # Under the augmented Lagrangian, the closed form reads the true value too.
    problem = StepFunction("slack")
    with torch.no_grad():
        problem.x.copy_(torch.tensor([-1.0, -2.0]))
    primal = torch.optim.SGD(problem.primal_parameters(), lr=LR)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True)
    SimultaneousGDA(problem, primal, dual, formulation="augmented").step(problem)
    slack = problem.constraints["g"].slack
    assert slack is not None and float(slack.detach()) == pytest.approx(math.sqrt(0.75), rel=1e-15)


class Rates(ConstrainedProblem):
    """An indexed proxy: per sample, the hard decision ``score > 0`` and its sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.tensor([-1.0, 0.5, -0.2, 2.0]))
        self.add_inequality("positive", ">=", num_samples=4)

    def forward(self, indices: Tensor) -> ProblemState:
        scores = self.scores[indices]
        with torch.no_grad():
            hard = (scores > 0).float() - 0.5
        value = Proxy(hard, torch.sigmoid(scores) - 0.5)
        return ProblemState(scores.square().mean(), {"positive": IndexedValue(value, indices)})


def test_indexed_proxy() -> None:
    problem = Rates()
    multiplier = problem.constraints["positive"].multiplier
    assert multiplier is not None
    with torch.no_grad():
        multiplier.fill_(1.0)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=1.0)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=1.0, maximize=True)
    optimizer = SimultaneousGDA(problem, primal, dual)
    indices = torch.tensor([0, 2, 3])
    scores = problem.scores.detach().clone()
    result = optimizer.step(lambda: problem(indices))
    # Rows 0 and 2 are violated by 0.5 (their true value is -0.5), row 3 satisfied by 0.5.
    assert float(result.max_violation) == 0.5
    assert multiplier.detach().tolist() == [1.5, 1.0, 1.5, 0.5]
    # The primal gradient of row i: (2 s_i - sigmoid'(s_i) * lambda_i) / B.
    chosen = scores[indices]
    derivative = torch.sigmoid(chosen) * (1 - torch.sigmoid(chosen))
    expected = scores.clone()
    expected[indices] -= (2 * chosen - derivative) / 3
    torch.testing.assert_close(problem.scores.detach(), expected)


def test_true_value_of_another_dtype() -> None:
    """A float64 true value with a float32 surrogate: the dual side reads the true value in
    the multipliers' dtype, the gradient reaches the surrogate in its own."""
    problem = StepFunction("projection")
    problem.forward = lambda: ProblemState(  # type: ignore[method-assign]
        0.5 * problem.x.square().sum(),
        {"g": Proxy(_true_g(problem.x), (problem.a @ problem.x - B).float())},
    )
    multiplier_table = problem.declared()["g"].multiplier
    assert multiplier_table is not None
    with torch.no_grad():
        multiplier_table.fill_(LAMBDA0)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=LR)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True)
    SimultaneousGDA(problem, primal, dual).step(problem)
    x, multiplier = _expected_first_step("projection", "inequality", "lagrangian")
    torch.testing.assert_close(problem.x.detach(), x)
    assert float(multiplier_table.detach()) == pytest.approx(multiplier)


def test_proxy_with_micro_batches_equals_the_whole_batch() -> None:
    problem, twin = Rates(), Rates()
    optimizer, twin_optimizer = (
        SimultaneousGDA(
            rates,
            torch.optim.SGD(rates.primal_parameters(), lr=0.5),
            torch.optim.SGD(rates.dual_parameters(), lr=0.5, maximize=True),
            formulation="augmented",
        )
        for rates in (problem, twin)
    )
    for _ in range(5):
        optimizer.step(lambda: problem(torch.arange(4)))
        twin_optimizer.step([lambda: twin(torch.arange(2)), lambda: twin(torch.arange(2, 4))])
    torch.testing.assert_close(twin.state_dict(), problem.state_dict(), rtol=1e-6, atol=1e-7)


# Errors.


class Configurable(ConstrainedProblem):
    """Returns ``make(w)`` for the dense constraint 'rate' and an indexed 'rows'."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.add_inequality("rate", ">=", shape=(2,))
        self.add_inequality("rows", "<=", num_samples=4)
        self.make: Callable[[Tensor], dict[str, Any]] = lambda w: {}

    def forward(self) -> ProblemState:
        values = {
            "rate": Proxy((self.w > 0).float() - 0.5, self.w - 0.5),
            "rows": IndexedValue(Proxy(torch.zeros(2), self.w - 3), torch.tensor([0, 2])),
            **self.make(self.w),
        }
        return ProblemState(self.w.square().sum(), values)


def _rows(true: Tensor, surrogate: Tensor) -> IndexedValue:
    return IndexedValue(Proxy(true, surrogate), torch.tensor([0, 2]))


NAN = math.nan
BAD: list[tuple[str, Callable[[Tensor], dict[str, Any]], type[Exception], str]] = [
    ("true shape", lambda w: {"rate": Proxy(torch.zeros(3), w)}, ValueError,
     "constraint 'rate': true value has shape (3,), declared shape (2,)"),
    ("surrogate shape", lambda w: {"rate": Proxy(torch.zeros(2), w[:1])}, ValueError,
     "constraint 'rate': surrogate has shape (1,), declared shape (2,)"),
    ("indexed true shape", lambda w: {"rows": _rows(torch.zeros(3), w)}, ValueError,
     "constraint 'rows': true value has shape (3,), expected (2,) (2 indices, declared shape ())"),
    ("indexed surrogate shape", lambda w: {"rows": _rows(torch.zeros(2), w.sum())}, ValueError,
     "constraint 'rows': surrogate has shape (), expected (2,) (2 indices, declared shape ())"),
    ("true dtype", lambda w: {"rate": Proxy(w > 0, w)}, TypeError,
     "constraint 'rate': true value has dtype torch.bool; a constraint value must be a real "
     "floating-point tensor (float16, bfloat16, float32 or float64)"),
    ("surrogate dtype", lambda w: {"rate": Proxy(w.detach(), w.long())}, TypeError,
     "constraint 'rate': surrogate has dtype torch.int64; a constraint value must be a real "
     "floating-point tensor (float16, bfloat16, float32 or float64)"),
    ("true not a tensor", lambda w: {"rate": Proxy(0.5, w)}, TypeError,  # type: ignore[arg-type]
     "constraint 'rate': Proxy's true value must be a tensor, got float"),
    ("surrogate not a tensor", lambda w: {"rate": Proxy(w, [1.0, 2.0])}, TypeError,  # type: ignore[arg-type]
     "constraint 'rate': Proxy's surrogate must be a tensor, got list"),
    ("true nan", lambda w: {"rate": Proxy(torch.tensor([0.0, NAN]), w)}, NonFiniteError,
     "constraint 'rate': its true value has 1 non-finite value(s), first nan at (1,)"),
    ("surrogate inf", lambda w: {"rate": Proxy(torch.zeros(2), w / torch.tensor([1.0, 0.0]))},
     NonFiniteError,
     "constraint 'rate': its surrogate has 1 non-finite value(s), first inf at (1,)"),
    ("indexed surrogate nan", lambda w: {"rows": _rows(torch.zeros(2), w * NAN)}, NonFiniteError,
     "constraint 'rows': its surrogate has 2 non-finite value(s), first nan at (0,), sample index 0"),
    ("indexed true inf", lambda w: {"rows": _rows(torch.tensor([-math.inf, 0.0]), w)},
     NonFiniteError,
     "constraint 'rows': its true value has 1 non-finite value(s), first -inf at (0,), sample index 0"),
    ("surrogate without a gradient path", lambda w: {"rate": Proxy(w - 0.5, w.detach())},
     ValueError,
     "constraint 'rate': its surrogate has no gradient path to the parameters (computed under "
     "torch.no_grad() or detached?): the primal step follows the surrogate; only the true "
     "value of a Proxy may be constant"),
    ("indexed proxy without indices", lambda w: {"rows": Proxy(torch.zeros(2), w)}, ValueError,
     "constraint 'rows' is indexed (num_samples=4) but was evaluated without indices: "
     "return IndexedValue(value, indices)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "error", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
@pytest.mark.parametrize("method", ["extragradient", "simultaneous", "default"])
def test_bad_proxies_are_named_and_change_nothing(
    make: Callable[[Tensor], dict[str, Any]], error: type[Exception], message: str, method: str
) -> None:
    problem = Configurable()
    optimizer = _optimizer(problem, method, "augmented")
    for _ in range(2):
        optimizer.step(problem)
    before = failure_state(problem, optimizer)
    problem.make = make
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


LATE = [case for case in BAD if "nan" in case[0] or "inf" in case[0]]


@pytest.mark.parametrize(
    ("make", "error", "message"), [case[1:] for case in LATE], ids=[case[0] for case in LATE]
)
@pytest.mark.parametrize("method", ["extragradient", "default"])
def test_a_bad_proxy_at_the_extrapolated_point_is_named(
    make: Callable[[Tensor], dict[str, Any]], error: type[Exception], message: str, method: str
) -> None:
    """The later evaluations read the start's true value, but their own parts are still
    checked: a non-finite true value or surrogate there is named and changes nothing."""
    problem = Configurable()
    optimizer = _optimizer(problem, method, "augmented")
    optimizer.step(problem)
    before = failure_state(problem, optimizer)
    calls = []

    def second_call_only(w: Tensor) -> dict[str, Any]:
        calls.append(None)
        return make(w) if len(calls) == 2 else {}

    problem.make = second_call_only
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    # A fixed step reads its checks once, after its update, and is replayed to name the
    # culprit (two more calls: here the closure does not repeat its fault, and the first
    # pass's error is raised); the adaptive step reads each evaluation at once.
    assert len(calls) == (4 if method == "extragradient" else 2)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


def test_bad_proxy_in_a_micro_batch_is_named() -> None:
    problem = Configurable()
    optimizer = _optimizer(problem, "simultaneous", "lagrangian")
    before = snapshot(problem, optimizer)
    problem.make = lambda w: {"rate": Proxy(torch.zeros(2), w / torch.tensor([1.0, 0.0]))}
    with pytest.raises(NonFiniteError, match=r"^constraint 'rate': its surrogate has 1 non-f"):
        optimizer.step([problem, problem])
    assert_bitwise_equal(before, snapshot(problem, optimizer))


def test_true_value_without_gradient_path_is_accepted() -> None:
    problem = Configurable()

    def hard(w: Tensor) -> dict[str, Any]:
        with torch.no_grad():
            true = (w > 0).float() - 0.5
        return {"rate": Proxy(true, torch.sigmoid(w) - 0.5)}

    problem.make = hard
    optimizer = _optimizer(problem, "default", "augmented")
    result = optimizer.step(problem)
    assert float(result.constraints["rate"].max_violation) == 0.0
    residuals = kkt(problem)
    assert math.isfinite(residuals.stationarity)


def test_kkt_on_a_non_finite_surrogate_is_infinite() -> None:
    problem = Configurable()
    problem.make = lambda w: {"rate": Proxy(torch.zeros(2), w * NAN)}
    assert kkt(problem).primal_feasibility == math.inf


def test_penalty_update_reads_the_true_violation() -> None:
    """The penalty-update rule reads the true violations: a true value stuck above zero
    grows the penalty while its satisfied surrogate would not."""
    problem = StepFunction("projection")
    config = AugmentedLagrangian(window=2, growth=10.0)
    optimizer = SimultaneousGDA(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=1e-3),
        torch.optim.SGD(problem.dual_parameters(), lr=1e-3, maximize=True),
        formulation=config,
    )
    for _ in range(4):
        optimizer.step(problem)
    formulation = optimizer.state_dict()["formulation"]
    assert formulation["penalties"]["g"] == 10.0
    assert formulation["previous_violations"]["g"] == 0.25


# Data-parallel steps: every rank's true values and surrogates are averaged (dense) or
# gathered (indexed) as plain values are.


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs gloo",
)
def test_two_ranks_equal_one_process_on_the_whole_batch(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from proxy_distributed_worker import CASES as DDP_CASES
    from proxy_distributed_worker import run_case

    # Spawned at the session's start (tests/spawned.py).
    run = spawned.finished(tmp_path_factory, "proxy_distributed")
    assert run.returncodes == [0], run.output(0)
    ranks = [torch.load(run.outdir / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    for case in DDP_CASES:
        reference = run_case(case, None)
        for results in ranks:
            torch.testing.assert_close(results[case], reference, rtol=1e-10, atol=1e-12)
        # The multipliers are bitwise the same on both ranks.
        assert_bitwise_equal(ranks[0][case], ranks[1][case])
