"""nuPI as the dual optimizer: its update against closed forms, indexed tables, convergence
and damping, checkpoints, rollback, learning-rate schedules on the dual side (and under the
adaptive step) and per-constraint learning rates.

Most tests run on a :class:`Driven` problem: its primal variable never moves (learning
rate 0), so the residual sequence :math:`e_t` is known in advance and the multipliers'
iterates can be written by hand.
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    METHODS,
    QuadraticProgram,
    assert_bitwise_equal,
    deterministic,
)
from torch import Tensor, nn

from lagrange_opt import (
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    NonFiniteError,
    NuPI,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)
from lagrange_opt._rows import ELEMENTWISE_OPTIMIZERS

STEPS = 12

# ---------------------------------------------------------------------------------------
# Problems and hand-written recursions.


class Driven(ConstrainedProblem):
    """Constraints whose values are given sequences: ``value_t = x + drive[t]`` with ``x``
    held at 0 by a primal learning rate of 0, so the residuals are known in advance.

    Args:
        drives: Per constraint name, a ``(steps, n)`` tensor of values.
        sense: ``None`` for equalities (residual = value), ``">="`` for projected
            inequalities (residual = -value).
    """

    def __init__(self, drives: dict[str, Tensor], sense: str | None = None) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.drives = drives
        for name, drive in drives.items():
            if sense is None:
                self.add_equality(name, shape=(drive.shape[1],))
            else:
                self.add_inequality(name, ">=", shape=(drive.shape[1],), treatment="projection")
        self.to(torch.float64)

    def forward(self, t: int) -> ProblemState:
        values = {name: self.x + drive[t].to(self.x.device) for name, drive in self.drives.items()}
        return ProblemState(self.x.square(), values)


def _drive(seed: int, width: int = 3, steps: int = STEPS) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(steps, width, generator=generator, dtype=torch.float64)


def _pi_recursion(
    errors: Sequence[float],
    lrs: Sequence[float],
    ki: float,
    kp: float,
    nu: float,
    project: bool = False,
) -> list[float]:
    """One entry's nuPI iterates, in plain floats (xi_{-1} = 0, lambda_0 = 0)."""
    lam, xi, iterates = 0.0, 0.0, []
    for error, lr in zip(errors, lrs):
        smoothed = nu * xi + (1 - nu) * error
        lam = lam + lr * (ki * error + kp * (smoothed - xi))
        if project:
            lam = max(lam, 0.0)
        xi = smoothed
        iterates.append(lam)
    return iterates


def _run_driven(
    method: type,
    problem: Driven,
    dual: torch.optim.Optimizer,
    steps: int = STEPS,
    after_step: Callable[[], None] | None = None,
) -> list[Tensor]:
    """The multipliers of the problem's first constraint after each step."""
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.0)
    optimizer = method(problem, primal, dual)
    multiplier = next(iter(problem.declared().values())).multiplier
    iterates = []
    for t in range(steps):
        optimizer.step(lambda t=t: problem(t))
        iterates.append(multiplier.detach().cpu().clone())
        if after_step is not None:
            after_step()
    return iterates


def _expected(
    drive: Tensor,
    lrs: Sequence[float],
    ki: float,
    kp: float,
    nu: float,
    sign: float = 1.0,
    project: bool = False,
) -> Tensor:
    columns = [
        _pi_recursion([sign * float(v) for v in drive[:, j]], lrs, ki, kp, nu, project)
        for j in range(drive.shape[1])
    ]
    return torch.tensor(columns, dtype=torch.float64).T


# ---------------------------------------------------------------------------------------
# Arguments.

BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
    ({"lr": math.inf}, ValueError, "Invalid learning rate: inf"),
    ({"lr": math.nan}, ValueError, "Invalid learning rate: nan"),
    ({"ki": -0.5}, ValueError, "Invalid ki value: -0.5"),
    ({"ki": math.inf}, ValueError, "Invalid ki value: inf"),
    ({"kp": -1.0}, ValueError, "Invalid kp value: -1.0"),
    ({"kp": math.nan}, ValueError, "Invalid kp value: nan"),
    ({"nu": 1.5}, ValueError, "Invalid nu value: 1.5"),
    ({"nu": 1.0}, ValueError, "Invalid nu value: 1.0"),
    ({"nu": -0.1}, ValueError, "Invalid nu value: -0.1"),
    ({"nu": math.nan}, ValueError, "Invalid nu value: nan"),
    ({"lr": torch.tensor(0.1)}, TypeError, "lr must be a float, got Tensor"),
    ({"kp": True}, TypeError, "kp must be a float, got bool"),
    ({"nu": "0.5"}, TypeError, "nu must be a float, got str"),
    ({"maximize": 1}, TypeError, "maximize must be a bool, got int"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"), BAD_ARGUMENTS, ids=[str(case[0]) for case in BAD_ARGUMENTS]
)
def test_invalid_arguments_are_refused(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        NuPI([nn.Parameter(torch.zeros(2))], **kwargs)


def test_valid_edges_are_accepted() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    optimizer = NuPI(params, lr=0.0, ki=0.0, kp=0.0, nu=0.0)
    assert optimizer.defaults == {"lr": 0.0, "ki": 0.0, "kp": 0.0, "nu": 0.0, "maximize": False}
    NuPI(params, lr=1, ki=2, kp=3, nu=0.999)


def test_a_descending_nupi_is_refused_as_the_dual_optimizer() -> None:
    problem = QuadraticProgram(treatment="projection")
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"the dual optimizer must maximize: build it with"):
        SimultaneousGDA(problem, primal, NuPI(problem.dual_parameters(), lr=0.1))


def test_nupi_steps_rows_alone() -> None:
    assert NuPI in ELEMENTWISE_OPTIMIZERS


# ---------------------------------------------------------------------------------------
# Closed forms.


@pytest.mark.parametrize("formulation", ["lagrangian", "augmented"])
@pytest.mark.parametrize("treatment", ["projection", "slack"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_without_proportional_gain_it_is_gradient_ascent(
    method: type, treatment: str, formulation: str, device: str
) -> None:
    """kp = 0, ki = 1 (any nu): the iterates of SGD with maximize=True, bitwise (the direct
    SGD update and NuPI's both add lr * residual to the multiplier in one operation)."""
    runs = []
    for dual_kind in ("sgd", "nupi"):
        problem = QuadraticProgram(treatment=treatment).to(device)
        primal = torch.optim.SGD(problem.primal_parameters(), lr=0.1)
        dual: torch.optim.Optimizer
        if dual_kind == "sgd":
            dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True)
        else:
            dual = NuPI(problem.dual_parameters(), lr=0.5, ki=1.0, kp=0.0, nu=0.7, maximize=True)
        optimizer = method(problem, primal, dual, formulation=formulation)
        for _ in range(60):
            optimizer.step(problem)
        runs.append(problem.state_dict())
    assert_bitwise_equal(runs[0], runs[1])


@pytest.mark.parametrize(("kp", "nu"), [(0.7, 0.0), (0.7, 0.5), (3.0, 0.9)])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_the_iterates_are_the_pi_recursion(method: type, kp: float, nu: float, device: str) -> None:
    """Equality multipliers on known residuals: lambda_t is the hand-written recursion
    xi_t = nu xi_{t-1} + (1 - nu) e_t, lambda_{t+1} = lambda_t + lr (ki e_t + kp (xi_t -
    xi_{t-1})), xi_{-1} = 0, to 1e-12."""
    drive = _drive(0)
    problem = Driven({"h": drive}).to(device)
    dual = NuPI(problem.dual_parameters(), lr=0.3, ki=0.8, kp=kp, nu=nu, maximize=True)
    iterates = torch.stack(_run_driven(method, problem, dual))
    expected = _expected(drive, [0.3] * STEPS, ki=0.8, kp=kp, nu=nu)
    torch.testing.assert_close(iterates, expected, rtol=0, atol=1e-12)
    state = dual.state[problem.constraints["h"].multiplier]
    assert set(state) == {"xi"}
    xi = torch.zeros(3, dtype=torch.float64)
    for t in range(STEPS):
        xi = nu * xi + (1 - nu) * drive[t]
    torch.testing.assert_close(state["xi"].cpu(), xi, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_with_raw_residuals_and_equal_gains_it_is_optimistic_ascent(
    method: type, device: str
) -> None:
    """nu = 0, kp = ki: lambda_{t+1} = lambda_t + lr ki (2 e_t - e_{t-1}), e_{-1} = 0."""
    drive = _drive(1)
    problem = Driven({"h": drive}).to(device)
    dual = NuPI(problem.dual_parameters(), lr=0.2, ki=1.5, kp=1.5, nu=0.0, maximize=True)
    iterates = torch.stack(_run_driven(method, problem, dual))
    lam, previous, expected = torch.zeros(3, dtype=torch.float64), 0.0 * drive[0], []
    for t in range(STEPS):
        lam = lam + 0.2 * 1.5 * (2 * drive[t] - previous)
        previous = drive[t]
        expected.append(lam)
    torch.testing.assert_close(iterates, torch.stack(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_inequality_multipliers_are_projected_after_the_step_and_the_average_is_not(
    method: type, device: str
) -> None:
    """A projected ``>=`` inequality: lambda_{t+1} = max(0, lambda_t + lr (...)), with the
    residual -value and xi the plain average of the residuals (the method projects the
    multipliers after NuPI's step; NuPI itself does not)."""
    drive = _drive(2)
    problem = Driven({"g": drive}, sense=">=").to(device)
    dual = NuPI(problem.dual_parameters(), lr=0.4, ki=1.0, kp=2.0, nu=0.3, maximize=True)
    iterates = torch.stack(_run_driven(method, problem, dual))
    expected = _expected(drive, [0.4] * STEPS, ki=1.0, kp=2.0, nu=0.3, sign=-1.0, project=True)
    assert bool((expected == 0).any()) and bool((expected > 0).any())
    torch.testing.assert_close(iterates, expected, rtol=0, atol=1e-12)
    xi = dual.state[problem.constraints["g"].multiplier]["xi"].cpu()
    average = torch.zeros(3, dtype=torch.float64)
    for t in range(STEPS):
        average = 0.3 * average + 0.7 * -drive[t]
    torch.testing.assert_close(xi, average, rtol=0, atol=1e-12)


def test_the_stepped_parameter_alone_advances_its_average() -> None:
    first, second = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    optimizer = NuPI([first, second], lr=1.0, kp=1.0, nu=0.5)
    first.grad = torch.tensor([1.0, -2.0])
    optimizer.step()
    assert second not in optimizer.state
    # Descent (maximize=False): e = -grad.
    assert optimizer.state[first]["xi"].tolist() == [-0.5, 1.0]
    assert first.tolist() == [-1.5, 3.0]


# ---------------------------------------------------------------------------------------
# Indexed constraints.

NUM_SAMPLES = 40


class PerSample(ConstrainedProblem):
    """One ``>=`` inequality (or equality) of two entries per sample, on a two-weight model."""

    def __init__(self, indexed: bool = True, treatment: str = "projection") -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -0.25], dtype=torch.float64))
        self.indexed = indexed
        if indexed:
            self.add_inequality(
                "rows",
                ">=",
                num_samples=NUM_SAMPLES,
                shape=(2,),
                treatment=treatment,  # type: ignore[arg-type]
            )
        else:
            self.add_inequality(
                "rows",
                ">=",
                shape=(NUM_SAMPLES, 2),
                treatment=treatment,  # type: ignore[arg-type]
            )
        self.to(torch.float64)

    def values(self, indices: Tensor) -> Tensor:
        return self.w * (indices.to(self.w.dtype)[:, None] % 7 - 3) + 0.1

    def forward(self, indices: Tensor) -> ProblemState:
        values = self.values(indices)
        constraint: Tensor | IndexedValue = (
            IndexedValue(values, indices) if self.indexed else values
        )
        # The dense constraint's term is summed where the indexed one's is averaged over the
        # batch: scaled up with the objective, it gets the primal step of the indexed one
        # from a learning rate divided by the batch size.
        scale = 1 if self.indexed else len(indices)
        return ProblemState(self.w.square().sum() * scale, {"rows": constraint})


def _per_sample_optimizer(
    method: type, problem: PerSample, primal_lr: float = 0.05, **nupi: float
) -> tuple[Any, NuPI, nn.Parameter]:
    settings = {"lr": 0.3, "kp": 1.0, "nu": 0.5, **nupi}
    dual = NuPI(problem.dual_parameters(), maximize=True, **settings)  # type: ignore[arg-type]
    primal = torch.optim.SGD(problem.primal_parameters(), lr=primal_lr)
    optimizer = method(problem, primal, dual)
    return optimizer, dual, problem.constraints["rows"].multiplier


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_only_the_batchs_rows_of_the_state_change(method: type, device: str) -> None:
    problem = PerSample().to(device)
    optimizer, dual, multiplier = _per_sample_optimizer(method, problem)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        batch = torch.randperm(NUM_SAMPLES, generator=generator)[:8].to(device)
        optimizer.step(lambda batch=batch: problem(batch))
    xi = dual.state[multiplier]["xi"]
    assert xi.shape == multiplier.shape
    before = (multiplier.detach().clone(), xi.clone())
    batch = torch.tensor([3, 17, 22], device=device)
    optimizer.step(lambda: problem(batch))
    xi = dual.state[multiplier]["xi"]
    outside = torch.ones(NUM_SAMPLES, dtype=torch.bool, device=device)
    outside[batch] = False
    for table, old in zip((multiplier.detach(), xi), before):
        assert torch.equal(table[outside], old[outside])
        assert not torch.equal(table[batch], old[batch])


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_repeated_indices_step_as_with_sgd(method: type, device: str) -> None:
    """With kp = 0, ki = 1, the iterates of SGD on batches that repeat samples (a sample
    drawn twice steps twice as far), to rounding: SGD's direct update adds each repeat's
    residual in turn, NuPI's row step their sum."""
    runs = []
    for kind in ("sgd", "nupi"):
        problem = PerSample().to(device)
        dual: torch.optim.Optimizer
        if kind == "sgd":
            dual = torch.optim.SGD(problem.dual_parameters(), lr=0.3, maximize=True)
        else:
            dual = NuPI(problem.dual_parameters(), lr=0.3, kp=0.0, nu=0.4, maximize=True)
        optimizer = method(problem, torch.optim.SGD(problem.primal_parameters(), lr=0.05), dual)
        generator = torch.Generator().manual_seed(1)
        for _ in range(30):
            batch = torch.randint(NUM_SAMPLES, (16,), generator=generator).to(device)
            optimizer.step(lambda batch=batch: problem(batch))
        runs.append(problem.state_dict())
    assert int(runs[1]["constraints.rows.multiplier"].count_nonzero()) > 10
    for key, value in runs[0].items():
        torch.testing.assert_close(runs[1][key], value, rtol=0, atol=1e-12, msg=key)


def test_a_repeated_index_steps_on_the_sum_of_its_residuals(device: str) -> None:
    """Sample 5 drawn twice: its row's residual is the sum of the two, e = 2 r, which
    enters both the integral and the proportional term once."""
    problem = PerSample().to(device)
    optimizer, dual, multiplier = _per_sample_optimizer(SimultaneousGDA, problem, nu=0.25)
    with torch.no_grad():
        problem.w.copy_(torch.tensor([-1.0, 1.0]))
    batch = torch.tensor([5, 5, 1], device=device)
    residual = -problem.values(batch).detach()
    optimizer.step(lambda: problem(batch))
    for row, error in ((5, 2 * residual[0]), (1, residual[2])):
        step = 0.3 * (error + 1.0 * 0.75 * error)
        torch.testing.assert_close(multiplier.detach()[row], step.clamp(min=0))
        torch.testing.assert_close(dual.state[multiplier]["xi"][row], 0.75 * error)
    others = [i for i in range(NUM_SAMPLES) if i not in (1, 5)]
    assert int(multiplier.detach()[others].count_nonzero()) == 0
    assert int(dual.state[multiplier]["xi"][others].count_nonzero()) == 0


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_an_indexed_table_on_full_batches_equals_the_dense_constraint(
    method: type, device: str
) -> None:
    """Every sample in every batch: the rows' iterates (multipliers and xi) are the dense
    constraint's, to rounding. An indexed constraint enters the Lagrangian averaged over
    the batch, a dense one summed: the dense run's Lagrangian is the batch size times the
    indexed one's, and its primal learning rate is divided by it."""
    runs = []
    for indexed in (True, False):
        problem = PerSample(indexed=indexed).to(device)
        primal_lr = 0.05 if indexed else 0.05 / NUM_SAMPLES
        optimizer, dual, multiplier = _per_sample_optimizer(method, problem, primal_lr)
        batch = torch.arange(NUM_SAMPLES, device=device)
        for _ in range(25):
            optimizer.step(lambda batch=batch: problem(batch))
        runs.append(
            (multiplier.detach().clone(), dual.state[multiplier]["xi"].clone(), problem.w.detach())
        )
    assert int(runs[0][0].count_nonzero()) > 0
    assert not torch.equal(runs[0][2], PerSample().w.to(device))  # the primal side moved
    for indexed_value, dense_value in zip(*runs):
        torch.testing.assert_close(indexed_value, dense_value, rtol=0, atol=1e-12)
