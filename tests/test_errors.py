"""Bad input: each error names what is wrong, and a step that raised changes nothing."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import METHODS, QuadraticProgram, assert_bitwise_equal, failure_state, snapshot
from torch import Tensor, nn

from lagrange_opt import ConstrainedProblem, ExtraGradient, IndexedValue, ProblemState

NUM_SAMPLES = 8


class Configurable(ConstrainedProblem):
    """A problem whose forward returns whatever the test puts in `self.make`."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.add_inequality("rows", ">=", num_samples=NUM_SAMPLES, shape=(2,), treatment="slack")
        self.add_equality("pair", shape=(2,))
        self.add_inequality("cap", "<=", treatment="projection")
        self.make: Callable[[Configurable], Any] = Configurable.valid
        self.calls = 0

    def valid(self) -> ProblemState:
        device = self.w.device
        indices = torch.tensor([0, 3, 5], device=device)
        rows = self.w[:2].expand(3, 2) * torch.arange(1.0, 4.0, device=device)[:, None]
        return ProblemState(
            self.w.square().sum(),
            {"rows": IndexedValue(rows, indices), "pair": self.w[:2] - 1, "cap": self.w.sum() - 2},
        )

    def forward(self) -> Any:
        self.calls += 1
        return self.make(self)


def _with(**changes: Any) -> Callable[[Configurable], ProblemState]:
    def make(problem: Configurable) -> ProblemState:
        state = Configurable.valid(problem)
        constraints = dict(state.constraints)
        objective = changes.get("objective", state.objective)
        for name, value in changes.items():
            if name == "objective":
                continue
            if value is None:
                constraints.pop(name)
            else:
                constraints[name] = value
        return ProblemState(objective, constraints)

    return make


def _rows(value: Tensor, indices: list[int]) -> IndexedValue:
    return IndexedValue(value, torch.tensor(indices))


BAD_STATES: list[tuple[str, Callable[[Configurable], Any], type[Exception], str]] = [
    ("wrong type", lambda p: (p.w.sum(), {}), TypeError,
     "the closure must return a ProblemState, got tuple"),
    ("objective float", _with(objective=1.0), TypeError, "objective must be a tensor, got float"),
    ("objective shape", _with(objective=torch.ones(2)), ValueError,
     "objective must be a scalar, got shape (2,)"),
    ("objective nan", _with(objective=torch.tensor(math.nan)), ValueError,
     "objective is not finite: nan"),
    ("objective inf", _with(objective=torch.tensor(math.inf)), ValueError,
     "objective is not finite: inf"),
    ("constraint nan", _with(pair=torch.tensor([0.0, math.nan])), ValueError,
     "constraint 'pair' has 1 non-finite value(s), first nan at (1,)"),
    ("indexed inf", _with(rows=_rows(torch.tensor([[0.0, 1], [2, -math.inf], [3, 4]]), [0, 1, 2])),
     ValueError, "constraint 'rows' has 1 non-finite value(s), first -inf at (1, 1), sample index 1"),
    ("shape", _with(pair=torch.zeros(3)), ValueError,
     "constraint 'pair': value has shape (3,), declared shape (2,)"),
    ("indexed shape", _with(rows=_rows(torch.zeros(3, 3), [0, 1, 2])), ValueError,
     "constraint 'rows': value has shape (3, 3), expected (3, 2) (3 indices, declared shape (2,))"),
    ("no indices", _with(rows=torch.zeros(3, 2)), ValueError,
     "constraint 'rows' is indexed (num_samples=8) but was evaluated without indices: "
     "return IndexedValue(value, indices)"),
    ("index too large", _with(rows=_rows(torch.zeros(2, 2), [1, 8])), IndexError,
     "constraint 'rows': index 8 out of range for num_samples=8"),
    ("negative index", _with(rows=_rows(torch.zeros(2, 2), [-1, 2])), IndexError,
     "constraint 'rows': index -1 out of range for num_samples=8"),
    ("float indices", _with(rows=IndexedValue(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))),
     TypeError, "constraint 'rows': indices must be an integer tensor, got torch.float32"),
    ("2-D indices", _with(rows=IndexedValue(torch.zeros(2, 2), torch.tensor([[0], [1]]))),
     ValueError, "constraint 'rows': indices must be 1-D, got shape (2, 1)"),
    ("indices on dense", _with(pair=_rows(torch.zeros(1, 2), [0])), ValueError,
     "constraint 'pair' is not indexed: return its value as a tensor, not IndexedValue"),
    ("value not tensor", _with(cap=0.5), TypeError, "constraint 'cap': value must be a tensor, got float"),
    ("undeclared", _with(extra=torch.zeros(())), ValueError,
     "the closure returned undeclared constraint(s) ['extra']; declared: ['rows', 'pair', 'cap']"),
]  # fmt: skip


def _build(method: type, base: str, device: str = "cpu") -> tuple[Configurable, Any]:
    problem = Configurable().to(device)
    primal_params = problem.primal_parameters()
    if base == "adam":
        primal = torch.optim.Adam(primal_params, lr=0.1)
        dual = torch.optim.Adam(problem.dual_parameters(), lr=0.1, maximize=True)
    elif base == "plain-sgd":
        primal = torch.optim.SGD(primal_params, lr=0.1)
        dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    else:
        primal = torch.optim.SGD(primal_params, lr=0.1, momentum=0.9)
        dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, momentum=0.9, maximize=True)
    return problem, method(problem, primal, dual)


@pytest.mark.parametrize(
    ("case", "make", "error", "message"), BAD_STATES, ids=[c[0] for c in BAD_STATES]
)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_bad_closure_result_is_named_and_changes_nothing(
    method: type, case: str, make: Any, error: type, message: str
) -> None:
    problem, optimizer = _build(method, "adam")
    for _ in range(2):
        optimizer.step(problem)
    before = failure_state(problem, optimizer)
    problem.make = make
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, failure_state(problem, optimizer))


@pytest.mark.parametrize("base", ["sgd", "plain-sgd", "adam"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("warm", [False, True], ids=["first-step", "after-steps"])
def test_a_step_that_raised_changes_nothing(
    method: type, base: str, warm: bool, device: str
) -> None:
    problem, optimizer = _build(method, base, device)
    if warm:
        for _ in range(3):
            optimizer.step(problem)
    before = snapshot(problem, optimizer)
    problem.make = _with(pair=torch.tensor([math.nan, 0.0], device=device))
    with pytest.raises(ValueError, match=r"^constraint 'pair'"):
        optimizer.step(problem)
    assert_bitwise_equal(before, snapshot(problem, optimizer))


@pytest.mark.parametrize("base", ["sgd", "plain-sgd", "adam"])
@pytest.mark.parametrize("warm", [False, True], ids=["first-step", "after-steps"])
def test_extra_gradient_failing_at_the_extrapolated_point_changes_nothing(
    base: str, warm: bool, device: str
) -> None:
    problem, optimizer = _build(ExtraGradient, base, device)
    if warm:
        for _ in range(3):
            optimizer.step(problem)
    before = snapshot(problem, optimizer)
    weights = problem.w.detach().clone()

    def nan_on_second_call(p: Configurable) -> ProblemState:
        state = Configurable.valid(p)
        if p.calls % 2 == 0:
            return ProblemState(state.objective * math.nan, state.constraints)
        return state

    problem.make = nan_on_second_call
    problem.calls = 0
    with pytest.raises(ValueError, match=r"^objective is not finite: nan$"):
        optimizer.step(problem)
    # The step's one read fails after its update: the step is replayed with a read per
    # evaluation (two more calls), which names the value at fault.
    assert problem.calls == 4
    assert torch.equal(problem.w.detach(), weights)
    assert_bitwise_equal(before, snapshot(problem, optimizer))


DIVERGED = (
    "read in this step have {} non-finite value(s), first inf at {}: the dual iteration diverged"
)


@pytest.mark.parametrize(
    ("constraint", "row", "message"),
    [
        # The batch reads rows 0, 3 and 5: row 3 is its second entry, two values wide.
        (
            "rows",
            3,
            "the multipliers of constraint 'rows' " + DIVERGED.format(2, "(1, 0), sample index 3"),
        ),
        ("pair", 1, "the multipliers of constraint 'pair' " + DIVERGED.format(1, "(1,)")),
    ],
)
def test_diverged_multipliers_are_named(
    constraint: str, row: int, message: str, device: str
) -> None:
    problem, optimizer = _build(ExtraGradient, "plain-sgd", device)
    with torch.no_grad():
        problem.constraints[constraint].multiplier[row] = math.inf
    before = snapshot(problem, optimizer)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.step(problem)
    assert_bitwise_equal(before, snapshot(problem, optimizer))


def test_rows_outside_the_batch_are_not_read(device: str) -> None:
    problem, optimizer = _build(ExtraGradient, "plain-sgd", device)
    with torch.no_grad():
        problem.constraints["rows"].multiplier[1] = math.inf
    result = optimizer.step(problem)
    assert math.isfinite(float(result.lagrangian))


def test_extra_gradient_needs_the_same_batch_twice() -> None:
    problem, optimizer = _build(ExtraGradient, "sgd")

    def other_batch(p: Configurable) -> ProblemState:
        state = Configurable.valid(p)
        indices = torch.tensor([0, 3, 5]) if p.calls % 2 else torch.tensor([1, 2, 4])
        rows = state.constraints["rows"]
        assert isinstance(rows, IndexedValue)
        return ProblemState(
            state.objective, {**state.constraints, "rows": IndexedValue(rows.value, indices)}
        )

    problem.make = other_batch
    before = snapshot(problem, optimizer)
    with pytest.raises(
        ValueError,
        match=r"^constraint 'rows': the closure returned other indices on its second call; "
        r"both evaluations of one step must use the same batch$",
    ):
        optimizer.step(problem)
    assert_bitwise_equal(before, snapshot(problem, optimizer))


def _with_rows_indices(make_indices: Callable[[Configurable], Tensor]) -> Any:
    """A ``Configurable.make`` whose indexed constraint 'rows' takes the given indices."""

    def make(p: Configurable) -> ProblemState:
        state = Configurable.valid(p)
        rows = state.constraints["rows"]
        assert isinstance(rows, IndexedValue)
        indexed = IndexedValue(rows.value, make_indices(p))
        return ProblemState(state.objective, {**state.constraints, "rows": indexed})

    return make


def test_the_same_indices_tensor_twice_is_not_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    # A comparison reads the device (on a GPU it waits for the queue): the same tensor,
    # unwritten, needs none.
    problem, optimizer = _build(ExtraGradient, "sgd")
    indices = torch.tensor([0, 3, 5])
    problem.make = _with_rows_indices(lambda p: indices)

    def refused(*args: Any) -> bool:
        raise AssertionError("the indices were compared")

    monkeypatch.setattr(torch, "equal", refused)
    result = optimizer.step(problem)
    assert math.isfinite(float(result.lagrangian))


def _optimizers(problem: ConstrainedProblem, **overrides: Any) -> tuple[Any, Any]:
    primal = overrides.get("primal") or torch.optim.SGD(problem.primal_parameters(), lr=0.1)
    dual = overrides.get("dual") or torch.optim.SGD(
        problem.dual_parameters(), lr=0.1, maximize=True
    )
    return primal, dual


def test_dual_optimizer_must_maximize() -> None:
    problem = QuadraticProgram()
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the dual optimizer must maximize: build it with maximize=True "
            "(param group 0 has maximize=False)"
        ),
    ):
        ExtraGradient(
            problem, *_optimizers(problem, dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1))
        )


def test_primal_optimizer_must_minimize() -> None:
    problem = QuadraticProgram()
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.1, maximize=True)
    with pytest.raises(
        ValueError,
        match=re.escape("the primal optimizer must minimize (param group 0 has maximize=True)"),
    ):
        ExtraGradient(problem, *_optimizers(problem, primal=primal))


def test_slack_missing_from_primal_optimizer() -> None:
    problem = QuadraticProgram()
    primal = torch.optim.SGD([problem.x], lr=0.1)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the slack of constraint 'sum' is not in the primal optimizer: add problem.slack_parameters() to it"
        ),
    ):
        ExtraGradient(problem, *_optimizers(problem, primal=primal))


def test_multiplier_in_primal_optimizer() -> None:
    problem = QuadraticProgram()
    primal = torch.optim.SGD(list(problem.parameters()), lr=0.1)
    with pytest.raises(
        ValueError, match="the multiplier of constraint 'sum' is in the primal optimizer"
    ):
        ExtraGradient(problem, *_optimizers(problem, primal=primal))


def test_multiplier_missing_from_dual_optimizer() -> None:
    problem = QuadraticProgram()
    dual = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1, maximize=True)
    with pytest.raises(
        ValueError, match="the multiplier of constraint 'sum' is not in the dual optimizer"
    ):
        ExtraGradient(problem, *_optimizers(problem, dual=dual))


def test_foreign_tensor_in_dual_optimizer() -> None:
    problem = QuadraticProgram()
    dual = torch.optim.SGD(
        [*problem.dual_parameters(), nn.Parameter(torch.zeros(3))], lr=0.1, maximize=True
    )
    with pytest.raises(
        ValueError,
        match=re.escape("the dual optimizer holds a tensor of shape (3,) that is not a multiplier"),
    ):
        ExtraGradient(problem, *_optimizers(problem, dual=dual))


def test_not_an_optimizer() -> None:
    problem = QuadraticProgram()
    with pytest.raises(
        TypeError,
        match=re.escape(
            "the primal optimizer must be a torch.optim.Optimizer or a list of them, got list of "
            "Parameter"
        ),
    ):
        ExtraGradient(problem, problem.primal_parameters(), _optimizers(problem)[1])  # type: ignore[arg-type]


class Declarations(ConstrainedProblem):
    def forward(self) -> ProblemState:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda p: p.add_inequality("c", "=>"), "constraint 'c': invalid sense '=>'; use '>=' for value >= 0 or '<=' for value <= 0"),
        (lambda p: p.add_inequality("c", None), "constraint 'c': invalid sense None; use '>=' for value >= 0 or '<=' for value <= 0"),
        (lambda p: p.add_inequality("c", ">=", treatment="exact"), "constraint 'c': invalid treatment 'exact'; expected one of 'slack', 'projection', 'penalty'"),
        (lambda p: p.add_equality("c", treatment="slack"), "constraint 'c': invalid treatment 'slack'; expected one of 'multiplier', 'penalty'"),
        (lambda p: p.add_inequality("c", ">=", treatment="penalty"), "constraint 'c': treatment='penalty' needs a penalty_weight, got None"),
        (lambda p: p.add_equality("c", treatment="penalty", penalty_weight=-1.0), "constraint 'c': invalid penalty_weight: -1.0"),
        (lambda p: p.add_equality("c", treatment="penalty", penalty_weight=math.inf), "constraint 'c': invalid penalty_weight: inf"),
        (lambda p: p.add_inequality("c", ">=", penalty_weight=10.0), "constraint 'c': penalty_weight is only for treatment='penalty', not 'projection'"),
        (lambda p: p.add_inequality("c", ">=", slack_margin=0.0), "constraint 'c': invalid slack_margin: 0.0"),
        (lambda p: p.add_equality("c", shape=(2, 0)), "constraint 'c': invalid shape (2, 0)"),
        (lambda p: p.add_equality("c", num_samples=0), "constraint 'c': invalid num_samples: 0"),
        (lambda p: p.add_equality("a.b"), "invalid constraint name 'a.b': a non-empty string without '.'"),
        (lambda p: [p.add_equality("c"), p.add_equality("c")], "constraint 'c' is already declared"),
    ],
)  # fmt: skip
def test_bad_declarations(declare: Callable[[Declarations], Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        declare(Declarations())
