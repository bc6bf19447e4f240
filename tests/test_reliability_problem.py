"""The problem's side of issue 22: a loaded box checked as a declared one (nothing loads
when it is refused), a box assigned to an attribute registered once, bounds out of the
parameter's dtype range named, NumPy scalars as bounds, ``kkt()`` without side effects,
a ProblemState passed for a closure, and the sample named in a non-finite value."""

from __future__ import annotations

import copy
import fractions
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_bitwise_equal
from torch import Tensor, nn

from lagrange_opt import (
    ConstrainedProblem,
    IndexedValue,
    NonFiniteError,
    ProblemState,
    Proxy,
    default_optimizer,
    kkt,
)

F16 = torch.float16
F64 = torch.float64
INF = math.inf
NAN = math.nan


class Boxed(ConstrainedProblem):
    """min ||x - a||^2 s.t. sum(x) <= 1, x in [0, 1]^3, its box kept as ``self.box``
    (the how-to's pattern)."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.full((3,), 0.5, dtype=dtype))
        self.register_buffer("a", torch.tensor([2.0, -1.0, 0.5], dtype=dtype))
        self.add_inequality("cap", "<=")
        self.box = self.add_bounds(self.x, lower=0.0, upper=1.0)

    def forward(self) -> ProblemState:
        return ProblemState((self.x - self.a).square().sum(), {"cap": self.x.sum() - 1.0})


def _state(problem: nn.Module) -> dict[str, Tensor]:
    return copy.deepcopy(problem.state_dict())


# ---------------------------------------------------------------------------------------
# Item 12: a loaded box is checked as add_bounds checks a declared one, before anything
# loads; the box assigned to an attribute is in the state dict once.

WHERE = "the box of parameter 'x' (shape (3,), torch.float32): "

BAD_LOADED_BOXES: list[tuple[str, str, Any, type[Exception], str]] = [
    ("crossed", "lower", torch.tensor([0.0, 2.0, 0.0]), ValueError, "lower bound 2.0 > upper bound 1.0 at (1,)"),
    ("crossed, both sides", "upper", torch.tensor([1.0, 1.0, -1.0]), ValueError, "lower bound 0.0 > upper bound -1.0 at (2,)"),
    ("NaN lower", "lower", torch.tensor([0.0, NAN, 0.0]), ValueError, "'parameter_bounds.0.lower' has NaN at (1,)"),
    ("NaN upper", "upper", torch.tensor([NAN, 1.0, 1.0]), ValueError, "'parameter_bounds.0.upper' has NaN at (0,)"),
    ("lower inf", "lower", torch.tensor([0.0, 0.0, INF]), ValueError, "'parameter_bounds.0.lower' has inf at (2,): it can never be met"),
    ("upper -inf", "upper", torch.tensor([1.0, -INF, 1.0]), ValueError, "'parameter_bounds.0.upper' has -inf at (1,): it can never be met"),
    ("another dtype", "upper", torch.ones(3, dtype=F64), TypeError, "'parameter_bounds.0.upper' has dtype torch.float64, the box torch.float32 (problem.to(dtype) sets the box's)"),
    ("another shape", "lower", torch.zeros(4), ValueError, "'parameter_bounds.0.lower' has shape (4,), the box (3,)"),
    ("not a tensor", "lower", 0.0, TypeError, "'parameter_bounds.0.lower' must be a tensor, got float"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "side", "bound", "error", "message"),
    BAD_LOADED_BOXES,
    ids=[case[0] for case in BAD_LOADED_BOXES],
)
def test_a_loaded_box_is_checked_before_anything_loads(
    case: str, side: str, bound: Any, error: type[Exception], message: str
) -> None:
    # A checkpoint of a run that moved x and the multiplier, its box then corrupted.
    source = Boxed()
    with torch.no_grad():
        source.x.fill_(0.25)
        source.constraints["cap"].multiplier.fill_(3.0)
    checkpoint = source.state_dict()
    checkpoint[f"parameter_bounds.0.{side}"] = bound
    if case == "crossed, both sides":
        checkpoint["parameter_bounds.0.lower"] = torch.zeros(3)

    problem = Boxed()
    before = _state(problem)
    with pytest.raises(error, match=f"^{re.escape(WHERE + message)}$"):
        problem.load_state_dict(checkpoint)
    assert_bitwise_equal(problem.state_dict(), before)  # not x, not the multiplier


def test_a_box_loaded_on_its_own_is_checked() -> None:
    box = Boxed().box
    before = _state(box)
    bad = {"lower": torch.tensor([0.0, NAN, 0.0]), "upper": torch.ones(3)}
    message = "the box: 'lower' has NaN at (1,)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        box.load_state_dict(bad)
    assert_bitwise_equal(box.state_dict(), before)


def test_a_good_box_loads_and_is_projected_onto() -> None:
    source = Boxed()
    lower, upper = torch.tensor([0.1, -INF, 0.2]), torch.tensor([0.5, 0.7, INF])
    with torch.no_grad():
        source.box.lower.copy_(lower)
        source.box.upper.copy_(upper)
    problem = Boxed()
    problem.load_state_dict(source.state_dict())
    assert torch.equal(problem.box.lower, lower) and torch.equal(problem.box.upper, upper)
    with torch.no_grad():
        problem.x.fill_(5.0)
    problem.project_bounds_()
    assert problem.x.tolist() == [0.5, 0.699999988079071, 5.0]


def test_a_box_assigned_to_an_attribute_is_registered_once() -> None:
    problem = Boxed()
    assert problem.box is problem.parameter_bounds[0]
    box_keys = sorted(key for key in problem.state_dict() if key.endswith(("lower", "upper")))
    assert box_keys == ["parameter_bounds.0.lower", "parameter_bounds.0.upper"]
    assert [name for name, module in problem.named_modules() if module is problem.box] == [
        "parameter_bounds.0"
    ]
    # The attribute follows the box through a move, a copy and a reassignment.
    problem.to(F64)
    assert problem.box.lower.dtype == F64 and problem.box is problem.parameter_bounds[0]
    copied = copy.deepcopy(problem)
    assert copied.box is copied.parameter_bounds[0] and copied.box is not problem.box
    problem.box = problem.parameter_bounds[0]
    assert "box" not in problem._modules


def _aliased_checkpoint(problem: Boxed, alias_lower: Tensor) -> dict[str, Tensor]:
    """The state dict that a problem wrote while ``self.box`` was registered as a module
    too: the box under both names."""
    state = dict(problem.state_dict())
    state["box.lower"] = alias_lower
    state["box.upper"] = state["parameter_bounds.0.upper"].clone()
    return state


def test_a_checkpoint_with_the_box_under_two_names_loads_when_they_agree() -> None:
    source = Boxed()
    with torch.no_grad():
        source.box.lower.fill_(0.25)
    checkpoint = _aliased_checkpoint(source, torch.full((3,), 0.25))
    problem = Boxed()
    problem.load_state_dict(checkpoint)  # strict: the copy is taken, not unexpected
    assert problem.box.lower.tolist() == [0.25, 0.25, 0.25]
    assert "box.lower" in checkpoint  # the caller's dict is left as it was


def test_a_checkpoint_with_the_box_under_two_names_is_refused_when_they_differ() -> None:
    source = Boxed()
    checkpoint = _aliased_checkpoint(source, torch.full((3,), 0.25))
    problem = Boxed()
    with torch.no_grad():
        problem.x.fill_(0.75)
    before = _state(problem)
    message = (
        f"{WHERE}'box.lower' and 'parameter_bounds.0.lower' hold different values for the "
        "same bound"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        problem.load_state_dict(checkpoint)
    assert_bitwise_equal(problem.state_dict(), before)


class ModelBox(ConstrainedProblem):
    """A box kept as an attribute of a submodule: registered there, so loaded through
    both names."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.w = nn.Parameter(torch.zeros(2))
        self.model.box = self.add_bounds(self.model.w, lower=-1.0, upper=1.0)

    def forward(self) -> ProblemState:
        return ProblemState(self.model.w.sum(), {})


def test_a_box_registered_under_a_submodule_must_agree_with_itself() -> None:
    problem = ModelBox()
    state = problem.state_dict()
    assert "model.box.lower" in state and "parameter_bounds.0.lower" in state
    problem.load_state_dict(state)  # the two agree
    state["model.box.upper"] = torch.full((2,), 0.5)
    message = (
        "the box of parameter 'model.w' (shape (2,), torch.float32): 'model.box.upper' and "
        "'parameter_bounds.0.upper' hold different values for the same bound"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        problem.load_state_dict(state)
    assert problem.model.box.upper.tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------
# Item 13: a number bound beyond the parameter's dtype is named; NumPy scalars are numbers.


class Half(ConstrainedProblem):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=F16))

    def forward(self) -> ProblemState:
        raise NotImplementedError


def _beyond(side: str, value: str) -> str:
    none = "-inf" if side == "lower" else "inf"
    return (
        f"the {side} bound {value} of parameter 'w' (shape (3,), torch.float16) is beyond the "
        "range of its dtype torch.float16 (largest finite value 65504.0); give a bound within "
        f"it, or {none} (None) for no bound"
    )


BEYOND_RANGE: list[tuple[str, dict[str, Any], str]] = [
    ("lower -1e6", {"lower": -1e6}, _beyond("lower", "-1000000.0")),
    ("upper 1e6", {"upper": 1e6}, _beyond("upper", "1000000.0")),
    ("just above the largest", {"lower": 0.0, "upper": 65505.0}, _beyond("upper", "65505.0")),
    ("numpy float32", {"lower": np.float32(-1e6)}, _beyond("lower", "-1000000.0")),
    ("int too large for a float", {"upper": 10**400}, _beyond("upper", str(10**400))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "bounds", "message"), BEYOND_RANGE, ids=[case[0] for case in BEYOND_RANGE]
)
def test_a_bound_beyond_the_parameters_dtype_is_named(
    case: str, bounds: dict[str, Any], message: str
) -> None:
    problem = Half()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        problem.add_bounds(problem.w, **bounds)
    assert len(problem.parameter_bounds) == 0


def test_the_largest_finite_bound_and_infinities_are_accepted() -> None:
    problem = Half()
    box = problem.add_bounds(problem.w, lower=-INF, upper=65504.0)
    assert box.lower.tolist() == [-INF] * 3 and box.upper.tolist() == [65504.0] * 3


NUMBER_BOUNDS: list[tuple[str, Any, float]] = [
    ("numpy float32", np.float32(0.25), 0.25),
    ("numpy float64", np.float64(-0.5), -0.5),
    ("numpy float16", np.float16(0.125), 0.125),
    ("numpy int64", np.int64(-2), -2.0),
    ("fraction", fractions.Fraction(1, 4), 0.25),
]


@pytest.mark.parametrize(
    ("case", "bound", "expected"), NUMBER_BOUNDS, ids=[case[0] for case in NUMBER_BOUNDS]
)
def test_numpy_scalars_are_numbers(case: str, bound: Any, expected: float) -> None:
    problem = Boxed()
    x = nn.Parameter(torch.full((2,), -9.0))
    box = problem.add_bounds(x, lower=bound)
    assert box.lower.dtype == torch.float32 and box.lower.tolist() == [expected] * 2
    assert x.tolist() == [expected] * 2


def test_a_numpy_bool_is_not_a_number() -> None:
    problem = Boxed()
    x = nn.Parameter(torch.zeros(2))
    message = "the lower bound must be a number or a tensor, got bool"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        problem.add_bounds(x, lower=np.bool_(True))


# ---------------------------------------------------------------------------------------
# Item 11: kkt() has no side effects: the generators and the running statistics are put
# back, so that a step after it is the step alone.


class Network(ConstrainedProblem):
    """A classifier with batch normalisation and dropout, its mean logit at most 0.1."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("inputs", torch.randn(32, 4, generator=generator))
        self.register_buffer("labels", (self.inputs.sum(1) > 0).float())
        self.model = nn.Sequential(
            nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1)
        )
        self.add_inequality("mean", "<=")

    def forward(self) -> ProblemState:
        logits = self.model(self.inputs).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, self.labels)
        return ProblemState(loss, {"mean": logits.mean() - 0.1})


def _train(problem: Network, steps: int, with_kkt: bool) -> tuple[list[float], Tensor]:
    """Steps of the default method, with ``kkt()`` before each or not: the residuals and
    the generator's state at the end."""
    optimizer = default_optimizer(problem)
    torch.manual_seed(7)
    residuals = []
    for _ in range(steps):
        if with_kkt:
            residuals.append(kkt(problem).stationarity)
        optimizer.step(problem)
    return residuals, torch.get_rng_state()


def test_kkt_then_a_step_is_the_step_alone() -> None:
    alone, checked = Network(), Network()
    checked.load_state_dict(alone.state_dict())
    _, rng_alone = _train(alone, 4, with_kkt=False)
    residuals, rng_checked = _train(checked, 4, with_kkt=True)
    assert all(math.isfinite(r) and r > 0 for r in residuals)
    # The parameters, the multipliers and the running statistics (and the count of
    # batches they saw: one update a step), bitwise; the generator where the steps alone
    # leave it.
    assert_bitwise_equal(checked.state_dict(), alone.state_dict())
    assert checked.model[1].num_batches_tracked.item() == 4
    assert torch.equal(rng_checked, rng_alone)


def test_kkt_changes_nothing_and_repeats_exactly() -> None:
    problem = Network()
    torch.manual_seed(3)
    before, rng = _state(problem), torch.get_rng_state()
    first = kkt(problem)
    assert_bitwise_equal(problem.state_dict(), before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(param.grad is None for param in problem.parameters())
    assert kkt(problem) == first  # the same dropout masks, the same statistics
    assert problem.training  # evaluated in the mode it is in


def test_kkt_that_raises_changes_nothing() -> None:
    problem = Network()
    torch.manual_seed(3)
    before, rng = _state(problem), torch.get_rng_state()

    def failing() -> ProblemState:
        problem()
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match=r"^out of memory$"):
        kkt(problem, failing)
    assert_bitwise_equal(problem.state_dict(), before)
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------------------------------
# Extra (a): the problem's value passed where a closure is expected is named as that
# mistake.

MISTAKE = (
    "a ProblemState, the problem's value, where a closure is expected (a function that "
    "evaluates the problem): pass a function, e.g. lambda: problem(idx)"
)

NOT_CLOSURES: list[tuple[str, Callable[[Boxed], Any], str]] = [
    ("step(problem())", lambda p: default_optimizer(p).step(p()), f"step() got {MISTAKE}"),
    ("step([problem(), problem()])", lambda p: default_optimizer(p).step([p(), p()]), f"step(), micro-batch 0: got {MISTAKE}"),
    ("step(objective)", lambda p: default_optimizer(p).step(p().objective), "step() takes a closure (a function that evaluates the problem, e.g. lambda: problem(idx)), got Tensor"),
    ("kkt(problem, problem())", lambda p: kkt(p, p()), f"kkt() got {MISTAKE}"),
    ("kkt(problem, [problem])", lambda p: kkt(p, [p]), "kkt() takes a closure (a function that evaluates the problem, e.g. lambda: problem(idx)), got list"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "call", "message"), NOT_CLOSURES, ids=[case[0] for case in NOT_CLOSURES]
)
def test_a_value_passed_for_a_closure_is_named(
    case: str, call: Callable[[Boxed], Any], message: str
) -> None:
    problem = Boxed()
    before = _state(problem)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        call(problem)
    assert_bitwise_equal(problem.state_dict(), before)


# ---------------------------------------------------------------------------------------
# Extra (b): a non-finite value of an indexed constraint names the sample (the data at
# fault), not only the row of the batch.

BATCH = [5, 11, 17, 3]  # row 2 is sample 17


class PerSample(ConstrainedProblem):
    """A per-sample constraint ``w * data[i] <= 1`` on a batch of four samples (the
    first step measures the scales: a NaN in row 2 reaches the gradient of row 0 too)."""

    def __init__(self, data: Tensor, proxy: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.data = data  # not a buffer: problem.to(dtype) leaves the data's dtype
        self.proxy = proxy
        self.add_inequality("rows", "<=", num_samples=20)

    def forward(self) -> ProblemState:
        indices = torch.tensor(BATCH)
        value = self.w * self.data[indices] - 1
        entry = Proxy(value.detach(), value) if self.proxy else value
        return ProblemState(self.w.square(), {"rows": IndexedValue(entry, indices)})


def _data(sample_value: float, dtype: torch.dtype = torch.float32) -> Tensor:
    data = torch.zeros(20, dtype=dtype)
    data[17] = sample_value
    return data


def _half_tables(problem: PerSample) -> PerSample:
    """The multiplier table in float16, the parameter and the value wider."""
    problem.constraints.to(F16)
    return problem


BAD_SAMPLES: list[tuple[str, Callable[[], PerSample], str]] = [
    ("NaN in the data", lambda: PerSample(_data(NAN)), "constraint 'rows' has 1 non-finite value(s), first nan at (2,), sample index 17"),
    ("inf in a proxy's true value", lambda: PerSample(_data(INF), proxy=True), "constraint 'rows': its true value has 1 non-finite value(s), first inf at (2,), sample index 17"),
    ("beyond the multipliers' dtype", lambda: _half_tables(PerSample(_data(1e6, F64))), "constraint 'rows' has 1 value(s) beyond the range of torch.float16, first 999999.0 at (2,), sample index 17, the dtype of its multipliers (problem.to(dtype) sets it)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "build", "message"), BAD_SAMPLES, ids=[case[0] for case in BAD_SAMPLES]
)
def test_a_non_finite_indexed_value_names_its_sample(
    case: str, build: Callable[[], PerSample], message: str
) -> None:
    problem = build()
    optimizer = default_optimizer(problem)
    before = _state(problem)
    with pytest.raises(NonFiniteError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(problem.state_dict(), before)
