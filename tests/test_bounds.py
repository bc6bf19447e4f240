"""Bounds by projection: every iterate of every method is in its box (extrapolated points
included), the solutions of bound-constrained problems, bad bounds, and checkpoints."""

from __future__ import annotations

import copy
import io
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    Bounds,
    ConstrainedProblem,
    ExtraGradient,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
    kkt,
)

F64 = torch.float64


class Boxed(ConstrainedProblem):
    """min ||x - a||^2 s.t. 0 <= x <= 1, x1 + x2 + x3 <= 1.2, a = (2, -1, 0.5).

    Without the sum, x = clamp(a, 0, 1) = (1, 0, 0.5); with it, x_i = clamp(a_i - lam/2, 0,
    1) and 1 + 0.5 - lam/2 = 1.2: lam = 0.6, x* = (1, 0, 0.2). Every call records whether x
    was in its box."""

    solution = (1.0, 0.0, 0.2)
    multiplier = 0.6

    def __init__(self, bounded: bool = True) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.full((3,), 0.5, dtype=F64))
        self.register_buffer("a", torch.tensor([2.0, -1.0, 0.5], dtype=F64))
        self.add_inequality("cap", "<=", treatment="projection")
        self.to(F64)  # the multiplier too: float32 rounding would stop it short of 0.6
        if bounded:
            self.add_bounds(self.x, 0.0, 1.0)
        self.inside: list[bool] = []

    def forward(self) -> ProblemState:
        x = self.x.detach()
        self.inside.append(bool(((x >= 0) & (x <= 1)).all()))
        return ProblemState((self.x - self.a).square().sum(), {"cap": self.x.sum() - 1.2})


def _base(base: str, params: list[Tensor], lr: float, maximize: bool) -> torch.optim.Optimizer:
    if base == "sgd":
        return torch.optim.SGD(params, lr=lr, maximize=maximize)
    if base == "momentum":  # through optimizer.step(), not the fused update
        return torch.optim.SGD(params, lr=lr, momentum=0.5, maximize=maximize)
    assert base == "adam", base
    return torch.optim.Adam(params, lr=lr, maximize=maximize)


def _build(config: str, base: str, problem: ConstrainedProblem, lr: float = 0.3) -> Any:
    if config == "default":
        return default_optimizer(problem)
    primal = _base(base, problem.primal_parameters(), lr, maximize=False)
    dual = _base(base, problem.dual_parameters(), lr, maximize=True)
    if config == "extra-fixed":
        return ExtraGradient(problem, primal, dual)
    if config == "extra-adaptive":
        return ExtraGradient(problem, primal, dual, step_size="adaptive")
    if config == "extra-augmented":
        return ExtraGradient(problem, primal, dual, formulation="augmented")
    if config == "simultaneous":
        return SimultaneousGDA(problem, primal, dual)
    assert config == "alternating", config
    return AlternatingGDA(problem, primal, dual)


CONFIGS = [
    (config, base)
    for config in [
        "extra-fixed",
        "extra-adaptive",
        "extra-augmented",
        "simultaneous",
        "alternating",
    ]
    for base in ["sgd", "momentum", "adam"]
] + [("default", "sgd")]


@pytest.mark.parametrize(("config", "base"), CONFIGS, ids=[f"{c}-{b}" for c, b in CONFIGS])
def test_every_evaluated_point_is_in_the_box(config: str, base: str, device: str) -> None:
    # Without the bounds, the same run leaves the box: the check below can fail.
    free = Boxed(bounded=False).to(device)
    free_optimizer = _build(config, base, free)
    for _ in range(20):
        free_optimizer.step(free)
    assert not all(free.inside)

    problem = Boxed().to(device)
    optimizer = _build(config, base, problem)
    low, high = problem.parameter_bounds[0].lower, problem.parameter_bounds[0].upper
    calls = 0
    for _ in range(60):
        result = optimizer.step(problem)
        calls += result.evaluations
        x = problem.x.detach()
        assert bool(((x >= low) & (x <= high)).all()), x
    assert len(problem.inside) == calls
    assert all(problem.inside), problem.inside.index(False)
    if config.startswith("extra") or config == "default":
        assert calls >= 2 * 60  # the extrapolated points were checked too


# Measured: every assertion below holds for good from step 164, 527, 148, 180 and 65.
@pytest.mark.parametrize(
    ("config", "steps"),
    [("extra-fixed", 250), ("extra-adaptive", 600), ("simultaneous", 225),
     ("alternating", 270), ("default", 100)],
)  # fmt: skip
def test_box_and_constraint_solution(config: str, steps: int, device: str) -> None:
    problem = Boxed().to(device)
    optimizer = _build(config, "sgd", problem, lr=0.1)
    for _ in range(steps):
        optimizer.step(problem)
    torch.testing.assert_close(
        problem.x.detach().cpu(), torch.tensor(Boxed.solution, dtype=F64), rtol=0, atol=1e-6
    )
    assert float(problem.constraints["cap"].multiplier.detach()) == pytest.approx(0.6, abs=1e-6)
    assert kkt(problem).converged(1e-6)


class BoxOnly(ConstrainedProblem):
    """min ||x - a||^2 s.t. lower <= x <= upper: x* = clamp(a, lower, upper)."""

    def __init__(self, a: Tensor, lower: Any, upper: Any, start: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.x = nn.Parameter(torch.zeros_like(a) if start is None else start.clone())
        self.box = self.add_bounds(self.x, lower, upper)

    def forward(self) -> ProblemState:
        return ProblemState((self.x - self.a).square().sum(), {})


INF = math.inf


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        (0.0, 1.0),
        (torch.tensor([0.0, 0.0, -INF, -INF, -2.0], dtype=F64),
         torch.tensor([1.0, INF, 0.2, INF, INF], dtype=F64)),
        (None, 0.5),
        (-1.0, None),
        (torch.tensor(0.25, dtype=F64), torch.tensor(0.25, dtype=F64)),  # a fixed variable
    ],
    ids=["scalars", "tensors-with-infinite-sides", "upper-only", "lower-only", "lower-equals-upper"],
)  # fmt: skip
def test_bound_constrained_qp_solution_is_the_clamp(lower: Any, upper: Any, device: str) -> None:
    a = torch.tensor([2.0, -1.0, 0.5, 3.0, -4.0], dtype=F64)
    problem = BoxOnly(a, lower, upper).to(device)
    optimizer = default_optimizer(problem)
    assert optimizer.dual_optimizer is None
    for _ in range(300):
        optimizer.step(problem)
    box = problem.box
    expected = torch.maximum(torch.minimum(a, box.upper.cpu()), box.lower.cpu())
    torch.testing.assert_close(problem.x.detach().cpu(), expected, rtol=0, atol=1e-9)
    residuals = kkt(problem)
    assert residuals.converged(1e-8), residuals


def test_nonnegative_least_squares_reaches_scipy_nnls(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(12, 6, generator=generator, dtype=F64)
    b = torch.randn(12, generator=generator, dtype=F64)
    reference, _ = nnls(A.numpy(), b.numpy())
    assert 0 < int((reference == 0).sum()) < 6  # some bounds active, some not

    class NNLS(ConstrainedProblem):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.ones(6, dtype=F64))
            self.add_bounds(self.x, lower=0.0)

        def forward(self) -> ProblemState:
            return ProblemState((A_device @ self.x - b_device).square().sum(), {})

    A_device, b_device = A.to(device), b.to(device)
    problem = NNLS().to(device)
    optimizer = default_optimizer(problem)
    for _ in range(500):
        optimizer.step(problem)
    np.testing.assert_allclose(problem.x.detach().cpu().numpy(), reference, rtol=0, atol=1e-8)
    assert bool((problem.x.detach() >= 0).all())


def test_projection_at_declaration_is_in_place(device: str) -> None:
    x = nn.Parameter(torch.tensor([[-1.0, 0.5, 3.0], [0.25, -0.1, 7.0]], device=device))
    pointer = x.data_ptr()

    class Holder(ConstrainedProblem):
        def forward(self) -> ProblemState:
            raise NotImplementedError

    problem = Holder()
    bounds = problem.add_bounds(
        x, torch.tensor([0.0, 0.0, -INF], device=device), torch.tensor(2.0, device=device)
    )
    assert isinstance(bounds, Bounds)
    assert x.data_ptr() == pointer and x.requires_grad
    assert bounds.lower.device == x.device and bounds.upper.device == x.device
    assert x.cpu().tolist() == [[0.0, 0.5, 2.0], [0.25, 0.0, 2.0]]
    # Broadcast to the parameter's shape, in buffers of their own.
    assert bounds.lower.shape == (2, 3) and bounds.upper.shape == (2, 3)
    assert bounds.lower.cpu().tolist() == [[0.0, 0.0, -INF], [0.0, 0.0, -INF]]
    assert bounds.upper.cpu().tolist() == [[2.0] * 3] * 2
    assert bounds.lower.is_contiguous() and bounds.lower.stride() == (3, 1)
    assert problem.bounded_parameters() == [(x, bounds)]
    # A parameter outside the problem (a model's) is not registered as the problem's.
    assert list(problem.parameters()) == []


def test_int_bounds_take_the_parameters_dtype() -> None:
    x = nn.Parameter(torch.tensor([-3.0, 5.0], dtype=F64))

    class Holder(ConstrainedProblem):
        def forward(self) -> ProblemState:
            raise NotImplementedError

    bounds = Holder().add_bounds(x, 0, 1)
    assert bounds.lower.dtype == F64 and bounds.upper.dtype == F64
    assert x.tolist() == [0.0, 1.0]


class Declarations(ConstrainedProblem):
    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2, 3))
        self.add_inequality("c", ">=", treatment="slack")
        self.add_equality("e", shape=(2,))

    def forward(self) -> ProblemState:
        raise NotImplementedError


LEAF = "add_bounds takes a leaf tensor that requires grad (a parameter)"

BAD_BOUNDS: list[tuple[str, Callable[[Declarations], Any], type[Exception], str]] = [
    ("not a leaf", lambda p: p.add_bounds(p.x * 2, 0.0), TypeError, LEAF),
    ("no grad", lambda p: p.add_bounds(torch.zeros(3), 0.0), TypeError, LEAF),
    ("not a tensor", lambda p: p.add_bounds([0.0], 0.0), TypeError, LEAF),
    # An integer tensor cannot require grad, so it is refused as not a parameter.
    ("integer dtype", lambda p: p.add_bounds(nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False), 0.0), TypeError, LEAF),
    ("complex dtype", lambda p: p.add_bounds(nn.Parameter(torch.zeros(3, dtype=torch.complex64)), 0.0), TypeError, "add_bounds takes a floating-point parameter, got torch.complex64"),
    ("bounded twice", lambda p: [p.add_bounds(p.x, 0.0), p.add_bounds(p.x, upper=1.0)], ValueError, "the parameter of shape (2, 3) already has bounds: give both sides in one call"),
    ("a multiplier", lambda p: p.add_bounds(p.constraints["e"].multiplier, 0.0), ValueError, "constraint 'e': its multipliers and slacks cannot be bounded"),
    ("a slack", lambda p: p.add_bounds(p.constraints["c"].slack, 0.0), ValueError, "constraint 'c': its multipliers and slacks cannot be bounded"),
    ("no bound", lambda p: p.add_bounds(p.x), ValueError, "add_bounds needs a lower or an upper bound"),
    ("no bound, explicit None", lambda p: p.add_bounds(p.x, None, None), ValueError, "add_bounds needs a lower or an upper bound"),
    ("NaN lower", lambda p: p.add_bounds(p.x, math.nan), ValueError, "the lower bound has NaN"),
    ("NaN in an upper tensor", lambda p: p.add_bounds(p.x, upper=torch.tensor([0.0, math.nan, 1.0])), ValueError, "the upper bound has NaN"),
    ("lower +inf", lambda p: p.add_bounds(p.x, math.inf), ValueError, "the lower bound has inf: it can never be met"),
    ("lower +inf in a tensor", lambda p: p.add_bounds(p.x, torch.tensor([0.0, INF, 0.0])), ValueError, "the lower bound has inf: it can never be met"),
    ("upper -inf", lambda p: p.add_bounds(p.x, upper=-math.inf), ValueError, "the upper bound has -inf: it can never be met"),
    ("dtype mismatch", lambda p: p.add_bounds(p.x, torch.zeros(3, dtype=F64)), TypeError, "the lower bound has dtype torch.float64, the parameter torch.float32"),
    ("dtype mismatch upper", lambda p: p.add_bounds(p.x, 0.0, torch.ones((), dtype=torch.float16)), TypeError, "the upper bound has dtype torch.float16, the parameter torch.float32"),
    ("shape does not broadcast", lambda p: p.add_bounds(p.x, torch.zeros(2)), ValueError, "the lower bound of shape (2,) does not broadcast to the parameter's shape (2, 3)"),
    ("more dimensions", lambda p: p.add_bounds(p.x, upper=torch.ones(1, 2, 3)), ValueError, "the upper bound of shape (1, 2, 3) does not broadcast to the parameter's shape (2, 3)"),
    ("bool bound", lambda p: p.add_bounds(p.x, True), TypeError, "the lower bound must be a number or a tensor, got bool"),
    ("string bound", lambda p: p.add_bounds(p.x, 0.0, "1"), TypeError, "the upper bound must be a number or a tensor, got str"),
    ("lower > upper", lambda p: p.add_bounds(p.x, 1.0, 0.0), ValueError, "lower bound 1.0 > upper bound 0.0 at (0, 0)"),
    ("lower > upper, position", lambda p: p.add_bounds(p.x, torch.tensor([0.0, 2.0, 0.0]), torch.tensor([[1.0, 3.0, 1.0], [1.0, 1.5, 1.0]])), ValueError, "lower bound 2.0 > upper bound 1.5 at (1, 1)"),
    ("lower > upper, scalar", lambda p: p.add_bounds(nn.Parameter(torch.tensor(0.0)), 1.0, -1.0), ValueError, "lower bound 1.0 > upper bound -1.0 at ()"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "declare", "error", "message"), BAD_BOUNDS, ids=[c[0] for c in BAD_BOUNDS]
)
def test_bad_bounds_are_named(case: str, declare: Any, error: type, message: str) -> None:
    problem = Declarations()
    with torch.no_grad():
        problem.x.fill_(5.0)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        declare(problem)
    # A refused declaration registers nothing and leaves the parameter as it was
    # (bounded twice: the first call's box stays, the second is refused).
    expected = 1 if case == "bounded twice" else 0
    assert len(problem.parameter_bounds) == expected
    assert len(problem.bounded_parameters()) == expected
    if expected == 0:
        assert bool((problem.x.detach() == 5.0).all())


def _roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_bounds_are_in_the_state_dict_and_restore_bitwise(device: str) -> None:
    a = torch.tensor([2.0, -1.0, 0.5], dtype=F64, device=device)
    lower = torch.tensor([0.1, -INF, 1 / 3], dtype=F64, device=device)
    upper = torch.tensor([math.pi, 0.7, INF], dtype=F64, device=device)
    problem = BoxOnly(a, lower, upper)
    state = problem.state_dict()
    assert {"parameter_bounds.0.lower", "parameter_bounds.0.upper"} <= set(state)
    saved = _roundtrip(state)

    other = BoxOnly(a, 0.0, 1.0)  # another box, same shape
    other.load_state_dict(saved)
    assert torch.equal(other.box.lower, lower) and torch.equal(other.box.upper, upper)
    assert torch.equal(other.box.lower.view(torch.int64), lower.view(torch.int64)) and torch.equal(
        other.box.upper.view(torch.int64), upper.view(torch.int64)
    )
    # The loaded box is the one projected onto.
    with torch.no_grad():
        other.x.fill_(5.0)
    other.project_bounds_()
    assert other.x.cpu().tolist() == [math.pi, 0.7, 5.0]
    with torch.no_grad():
        other.x.fill_(-5.0)
    other.project_bounds_()
    assert other.x.cpu().tolist() == [0.1, -5.0, 1 / 3]


def test_a_deep_copy_projects_its_own_parameter() -> None:
    problem = Boxed()
    copied = copy.deepcopy(problem)
    [(param, bounds)] = copied.bounded_parameters()
    assert param is copied.x and bounds is copied.parameter_bounds[0]
    with torch.no_grad():
        copied.x.fill_(7.0)
        problem.x.fill_(-7.0)
    copied.project_bounds_()
    assert copied.x.tolist() == [1.0, 1.0, 1.0]
    assert problem.x.tolist() == [-7.0, -7.0, -7.0]


def test_a_bound_that_requires_grad_is_stored_detached() -> None:
    problem = Declarations()
    lower = nn.Parameter(torch.full((3,), -1.0))
    bounds = problem.add_bounds(problem.x, lower=lower)
    assert not bounds.lower.requires_grad and bounds.lower.grad_fn is None
    copied = copy.deepcopy(problem)
    assert torch.equal(copied.parameter_bounds[0].lower, bounds.lower)
