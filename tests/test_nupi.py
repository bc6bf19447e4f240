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
    OptimisticGDA,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)
from lagrange_opt.updates.rows import ELEMENTWISE_OPTIMIZERS

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
            optimizer.step(lambda batch=batch, problem=problem: problem(batch))
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
            optimizer.step(lambda batch=batch, problem=problem: problem(batch))
        runs.append(
            (multiplier.detach().clone(), dual.state[multiplier]["xi"].clone(), problem.w.detach())
        )
    assert int(runs[0][0].count_nonzero()) > 0
    assert not torch.equal(runs[0][2], PerSample().w.to(device))  # the primal side moved
    for indexed_value, dense_value in zip(*runs):
        torch.testing.assert_close(indexed_value, dense_value, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Convergence and damping.


def _qp_run(method: type, kp: float, steps: int, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """The QP's x and multiplier after each step (SGD 0.2 on x, NuPI 0.5 on the multiplier)."""
    problem = QuadraticProgram(treatment="projection").to(device)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.2)
    dual = NuPI(problem.dual_parameters(), lr=0.5, kp=kp, maximize=True)
    optimizer = method(problem, primal, dual)
    multiplier = problem.constraints["sum"].multiplier
    xs, multipliers = [], []
    for _ in range(steps):
        optimizer.step(problem)
        xs.append(problem.x.detach().cpu().clone())
        multipliers.append(multiplier.detach().cpu().clone())
    return torch.stack(xs), torch.stack(multipliers)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_nupi_solves_the_quadratic_program(method: type, device: str) -> None:
    xs, multipliers = _qp_run(method, kp=0.5, steps=300, device=device)
    solution = torch.tensor(QuadraticProgram.solution, dtype=torch.float64)
    torch.testing.assert_close(xs[-1], solution, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        multipliers[-1], torch.tensor(QuadraticProgram.multiplier, dtype=torch.float64),
        rtol=0, atol=1e-10,
    )  # fmt: skip


def test_nupi_solves_a_min_norm_problem(device: str) -> None:
    from helpers import MinNorm

    generator = torch.Generator().manual_seed(3)
    A = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    b = torch.randn(2, generator=generator, dtype=torch.float64)
    problem = MinNorm(A.to(device), b.to(device))
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.05)
    dual = NuPI(problem.dual_parameters(), lr=0.05, kp=1.0, nu=0.5, maximize=True)
    optimizer = ExtraGradient(problem, primal, dual)
    # Measured: within 1e-8 (x and multiplier) for good from step 774.
    for _ in range(1200):
        optimizer.step(problem)
    torch.testing.assert_close(
        problem.x.detach().cpu(), torch.linalg.pinv(A) @ b, rtol=0, atol=1e-8
    )
    multiplier = problem.constraints["Ax=b"].multiplier.detach().cpu()
    torch.testing.assert_close(multiplier, -2 * torch.linalg.solve(A @ A.T, b), rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "method", [m for m in METHODS if m is not OptimisticGDA], ids=lambda m: m.__name__
)
def test_the_proportional_term_damps_the_multipliers_oscillation(method: type) -> None:
    """On the QP from x = 0 the multiplier rises past lambda* = 7/3 and oscillates back.
    With kp = 0.5 its overshoot (max_t lambda_t - lambda*) and its excess travel (the
    total variation of lambda_t beyond |lambda_T - lambda_0|: 0 for a monotone path) are
    less than half those of gradient ascent (kp = 0), and it reaches lambda* (to 1e-6, for
    good) no later."""
    (overshoot, excess, settled), (damped, damped_excess, damped_settled) = (
        _multiplier_path(method, kp) for kp in (0.0, 0.5)
    )
    assert overshoot > 0.05  # gradient ascent does overshoot
    assert damped < 0.5 * overshoot
    assert damped_excess < 0.5 * excess
    assert damped_settled <= settled + 10


def test_with_optimism_the_proportional_term_adds_travel() -> None:
    """OptimisticGDA's extrapolation already reacts to the residual's change, as a
    proportional term does: kp = 0.5 on top lowers the overshoot less than half and makes
    the multiplier travel back and forth several times more (docs/dual.md)."""
    (overshoot, excess, _), (damped, damped_excess, _) = (
        _multiplier_path(OptimisticGDA, kp) for kp in (0.0, 0.5)
    )
    assert 0.5 * overshoot < damped < overshoot
    assert damped_excess > 3 * excess


def _multiplier_path(method: type, kp: float) -> tuple[float, float, int]:
    """The QP's multiplier over 300 steps from 0: its overshoot past lambda*, its excess
    travel, and the step after which it stays within 1e-6 of lambda*."""
    _, multipliers = _qp_run(method, kp=kp, steps=300)
    path = torch.cat([torch.zeros(1, dtype=torch.float64), multipliers])
    overshoot = float((path - QuadraticProgram.multiplier).max())
    excess = float((path[1:] - path[:-1]).abs().sum() - (path[-1] - path[0]).abs())
    error = (path - QuadraticProgram.multiplier).abs()
    settled = max(i for i in range(len(error)) if error[i] > 1e-6) + 1
    return overshoot, excess, settled


# ---------------------------------------------------------------------------------------
# Checkpoints and rollback.


def _mixed(method: type, seed: int = 0, device: str = "cpu") -> tuple[Any, Any]:
    """The helpers' Mixed problem (an indexed slack inequality, a dense projected one, an
    equality, a dense slack inequality) with NuPI on the multipliers."""
    from helpers import Mixed

    generator = torch.Generator().manual_seed(0)
    data = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    targets = torch.randn(64, 2, generator=generator, dtype=torch.float64) - 0.5
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    problem = Mixed(model, data.to(device), targets.to(device)).to(device, torch.float64)
    primal = torch.optim.SGD(
        [*model.parameters(), *problem.slack_parameters()], lr=0.01, momentum=0.5
    )
    dual = NuPI(problem.dual_parameters(), lr=0.05, kp=0.5, nu=0.3, maximize=True)
    return problem, method(problem, primal, dual)


def _train(problem: Any, optimizer: Any, steps: range) -> None:
    from helpers import mixed_batch

    for step in steps:
        indices = mixed_batch(step, problem.data.device)
        optimizer.step(lambda indices=indices: problem(indices))


def _roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_resume_is_bitwise_identical(method: type, device: str) -> None:
    with deterministic(device):
        straight_problem, straight = _mixed(method, device=device)
        _train(straight_problem, straight, range(40))

        first_problem, first = _mixed(method, device=device)
        _train(first_problem, first, range(20))
        saved = _roundtrip({"problem": first_problem.state_dict(), "optimizer": first.state_dict()})
        assert any("xi" in entry for entry in saved["optimizer"]["dual"]["state"].values())

        resumed_problem, resumed = _mixed(method, seed=7, device=device)
        resumed_problem.load_state_dict(saved["problem"])
        resumed.load_state_dict(saved["optimizer"])
        _train(resumed_problem, resumed, range(20, 40))

    assert_bitwise_equal(straight_problem.state_dict(), resumed_problem.state_dict())
    assert_bitwise_equal(straight.state_dict(), resumed.state_dict())


def _snapshot(problem: nn.Module, optimizer: Any) -> dict[str, Any]:
    return copy.deepcopy({"problem": problem.state_dict(), "optimizer": optimizer.state_dict()})


def test_a_closure_raising_in_the_second_evaluation_changes_nothing(device: str) -> None:
    """ExtraGradient: the extrapolation moved the multipliers (and would have read NuPI's
    state); the closure then raises at the extrapolated point."""
    from helpers import mixed_batch

    problem, optimizer = _mixed(ExtraGradient, device=device)
    _train(problem, optimizer, range(5))
    before = _snapshot(problem, optimizer)
    calls = []
    indices = mixed_batch(5, device)

    def closure() -> ProblemState:
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("second evaluation failed")
        return problem(indices)

    with pytest.raises(RuntimeError, match=r"^second evaluation failed$"):
        optimizer.step(closure)
    assert len(calls) == 2
    assert_bitwise_equal(before, _snapshot(problem, optimizer))
    # And the next step is the one an untroubled run takes.
    reference, reference_optimizer = _mixed(ExtraGradient, device=device)
    _train(reference, reference_optimizer, range(6))
    optimizer.step(lambda: problem(indices))
    assert_bitwise_equal(_snapshot(reference, reference_optimizer), _snapshot(problem, optimizer))


class Poisoned(PerSample):
    """Once armed, the objective has a finite value and a NaN gradient (sqrt(|u|) at u = 0):
    found by the check after backward, which AlternatingGDA runs after its dual step."""

    armed = False

    def forward(self, indices: Tensor) -> ProblemState:
        state = super().forward(indices)
        objective = state.objective
        if self.armed:
            objective = objective + (self.w[0] - self.w[0].detach()).abs().sqrt()
        return ProblemState(objective, state.constraints)


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "dense"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_nan_found_after_the_dual_step_changes_nothing(
    method: type, indexed: bool, device: str
) -> None:
    problem = Poisoned(indexed=indexed).to(device)
    optimizer, dual, multiplier = _per_sample_optimizer(method, problem)
    batch = torch.tensor([1, 2, 5, 9]) if indexed else torch.arange(NUM_SAMPLES)
    batch = batch.to(device)
    for _ in range(3):
        optimizer.step(lambda: problem(batch))
    assert bool((dual.state[multiplier]["xi"] != 0).any())
    problem.armed = True
    before = _snapshot(problem, optimizer)
    with pytest.raises(NonFiniteError, match="nan"):
        optimizer.step(lambda: problem(batch))
    assert_bitwise_equal(before, _snapshot(problem, optimizer))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_dual_step_hook_that_raises_changes_nothing(method: type, device: str) -> None:
    """NuPI's step ran (on copies of its state) and its post-hook raises."""
    problem, optimizer = _mixed(method, device=device)
    _train(problem, optimizer, range(3))
    armed = []

    def hook(*_: Any) -> None:
        if armed:
            raise RuntimeError("hook failed")

    optimizer.dual_optimizer.register_step_post_hook(hook)
    _train(problem, optimizer, range(3, 5))
    before = _snapshot(problem, optimizer)
    armed.append(True)
    with pytest.raises(RuntimeError, match=r"^hook failed$"):
        _train(problem, optimizer, range(5, 6))
    assert_bitwise_equal(before, _snapshot(problem, optimizer))


# ---------------------------------------------------------------------------------------
# Learning-rate schedules on the dual side.


def _dual(kind: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, maximize=True)
    return NuPI(params, lr=lr, ki=1.0, kp=0.8, nu=0.4, maximize=True)


def _gains(kind: str) -> dict[str, float]:
    return {"ki": 1.0, "kp": 0.0, "nu": 0.0} if kind == "sgd" else {"ki": 1.0, "kp": 0.8, "nu": 0.4}


SCHEDULES: dict[str, tuple[Callable[[torch.optim.Optimizer], Any], Callable[[int], float]]] = {
    # name: (the scheduler, the factor on the learning rate at step t)
    "warm-up": (
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, k / 4)),
        lambda t: min(1.0, t / 4),
    ),
    "exponential": (
        lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8),
        lambda t: 0.8**t,
    ),
    "step": (
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
        lambda t: 0.5 ** (t // 3),
    ),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", ["sgd", "nupi"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_dual_schedule_is_followed(method: type, kind: str, schedule: str, device: str) -> None:
    """The multipliers follow the recursion with the scheduled rate lr_t = 0.4 * f(t),
    without a scheduler warning; under a warm-up from 0 they stay exactly 0 at the first
    step (NuPI's average still takes in that step's residual)."""
    build, factor = SCHEDULES[schedule]
    drive = _drive(4)
    problem = Driven({"h": drive}).to(device)
    dual = _dual(kind, problem.dual_parameters(), lr=0.4)
    scheduler = build(dual)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iterates = torch.stack(_run_driven(method, problem, dual, after_step=scheduler.step))
    lrs = [0.4 * factor(t) for t in range(STEPS)]
    expected = _expected(drive, lrs, **_gains(kind))
    torch.testing.assert_close(iterates, expected, rtol=0, atol=1e-12)
    if schedule == "warm-up":
        assert_bitwise_equal(iterates[0], torch.zeros(3, dtype=torch.float64))
        assert bool((iterates[1] != 0).all())


def _recording(
    problem: ConstrainedProblem, optimizer: ExtraGradient, seen: list[tuple[float, float]]
) -> Callable[[], ProblemState]:
    def closure() -> ProblemState:
        groups = optimizer.param_groups
        seen.append((groups[0]["lr"], groups[-1]["lr"]))
        return problem()

    return closure


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_the_adaptive_step_honours_schedules_on_both_sides(schedule: str, device: str) -> None:
    """default_optimizer (ExtraGradient, adaptive step) with a scheduler on each side:
    between steps each side's lr is the scheduled one (a chained scheduler such as
    ExponentialLR multiplies it and does not compound the step factor into it), and a
    step's first evaluation runs with the scheduled rate times the step factor (the
    multipliers' factor capped at 1/2). Under a warm-up the first step moves nothing."""
    from lagrange_opt import DEFAULT_DUAL_LR, DEFAULT_LR

    build, factor = SCHEDULES[schedule]
    problem = QuadraticProgram(treatment="projection").to(device)
    optimizer = default_optimizer(problem)
    schedulers = [build(optimizer.primal_optimizer), build(optimizer.dual_optimizer)]
    checked = 0
    for step in range(40):
        scheduled = (DEFAULT_LR * factor(step), DEFAULT_DUAL_LR * factor(step))
        lrs = (optimizer.param_groups[0]["lr"], optimizer.param_groups[-1]["lr"])
        assert lrs == pytest.approx(scheduled, rel=1e-12, abs=0)
        step_factor = optimizer.step_factor
        seen: list[tuple[float, float]] = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimizer.step(_recording(problem, optimizer, seen))
        if step == 0 and schedule == "warm-up":
            assert problem.x.detach().cpu().tolist() == [0.0, 0.0]
            assert float(problem.constraints["sum"].multiplier.detach()) == 0.0
        if step > 0:  # the first step's first call measures the scales
            expected = (lrs[0] * step_factor, lrs[1] * min(step_factor, 0.5))
            assert seen[0] == pytest.approx(expected, rel=1e-12, abs=0)
            checked += 1
        for scheduler in schedulers:
            scheduler.step()
    assert checked == 39
    if schedule == "warm-up":
        # After the warm-up the default's own step solves the QP.
        for _ in range(300):
            optimizer.step(problem)
            for scheduler in schedulers:
                scheduler.step()
        solution = torch.tensor(QuadraticProgram.solution, dtype=torch.float64)
        torch.testing.assert_close(problem.x.detach().cpu(), solution, rtol=0, atol=1e-6)


def test_an_lr_set_by_hand_between_adaptive_steps_is_the_new_base() -> None:
    problem = QuadraticProgram(treatment="projection")
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.1)
    dual = NuPI(problem.dual_parameters(), lr=0.2, kp=0.5, maximize=True)
    optimizer = ExtraGradient(problem, primal, dual, step_size="adaptive")
    for _ in range(5):
        optimizer.step(problem)
    primal.param_groups[0]["lr"] = 0.05
    step_factor = optimizer.step_factor
    seen: list[tuple[float, float]] = []
    optimizer.step(_recording(problem, optimizer, seen))
    assert seen[0] == (0.05 * step_factor, 0.2 * min(step_factor, 0.5))
    assert (primal.param_groups[0]["lr"], dual.param_groups[0]["lr"]) == (0.05, 0.2)
    assert optimizer.state_dict()["base_lrs"] == [0.05, 0.2]


# ---------------------------------------------------------------------------------------
# Per-constraint learning rates.


def _two_constraints(device: str) -> tuple[Driven, Tensor, Tensor]:
    drive_a, drive_b = _drive(5, width=2), _drive(6, width=1)
    return Driven({"a": drive_a, "b": drive_b}).to(device), drive_a, drive_b


@pytest.mark.parametrize("kind", ["sgd", "nupi"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_each_constraint_moves_by_its_own_rate(method: type, kind: str, device: str) -> None:
    """Param groups by constraint: the first step moves "a" by 0.5 (ki e + kp (1 - nu) e)
    and "b" by 0.01 ki e (NuPI: "a" with kp = 2 and nu = 0.5, "b" with the defaults kp = 0)."""
    problem, drive_a, drive_b = _two_constraints(device)
    declared = problem.declared()
    a, b = declared["a"].multiplier, declared["b"].multiplier
    assert a is not None and b is not None
    groups: list[dict[str, Any]]
    if kind == "sgd":
        groups = [{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.01}]
        dual: torch.optim.Optimizer = torch.optim.SGD(groups, maximize=True)
        gain_a = 1.0
    else:
        groups = [{"params": [a], "lr": 0.5, "kp": 2.0, "nu": 0.5}, {"params": [b], "lr": 0.01}]
        dual = NuPI(groups, maximize=True)
        gain_a = 1.0 + 2.0 * 0.5
    _run_driven(method, problem, dual, steps=1)
    torch.testing.assert_close(a.detach().cpu(), 0.5 * gain_a * drive_a[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(b.detach().cpu(), 0.01 * drive_b[0], rtol=0, atol=1e-15)


def test_each_constraint_moves_by_its_own_rate_under_the_adaptive_step(device: str) -> None:
    """The adaptive step scales every group's rate by its factor (the multipliers' capped at
    1/2 at the first step's factor 1)."""
    problem, drive_a, drive_b = _two_constraints(device)
    declared = problem.declared()
    a, b = declared["a"].multiplier, declared["b"].multiplier
    assert a is not None and b is not None
    dual = torch.optim.SGD([{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.01}], maximize=True)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.0)
    optimizer = ExtraGradient(problem, primal, dual, step_size="adaptive")
    optimizer.step(lambda: problem(0))
    torch.testing.assert_close(a.detach().cpu(), 0.25 * drive_a[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(b.detach().cpu(), 0.005 * drive_b[0], rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------
# docs/dual.md: every Python block runs and does what it says.

DUAL_DOC = Path(__file__).resolve().parent.parent / "docs" / "dual.md"


def _doc_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DUAL_DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 5
    return blocks


def _run_block(index: int) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(_doc_blocks()[index], str(DUAL_DOC), "exec"), namespace)
    return namespace


def test_the_docs_nupi_example_solves_its_problem() -> None:
    namespace = _run_block(0)
    problem = namespace["problem"]
    assert problem.x.tolist() == pytest.approx([2 / 3, 4 / 3], abs=1e-10)
    assert problem.constraints["sum"].multiplier.item() == pytest.approx(7 / 3, abs=1e-10)


def test_the_docs_warm_up_example_solves_its_problem() -> None:
    namespace = _run_block(1)
    assert namespace["problem"].x.tolist() == pytest.approx([-1.0, -1.0], abs=1e-8)
    assert namespace["multiplier"].item() == pytest.approx(0.5, abs=1e-8)


def test_the_docs_scheduled_default_example_reaches_f_star() -> None:
    namespace = _run_block(2)
    f_star = namespace["problem"].definition.f_star
    assert abs(float(namespace["result"].objective) - f_star) / f_star <= 1e-6
    assert namespace["optimizer"].primal_optimizer.param_groups[0]["lr"] == 1.0


def test_the_docs_per_constraint_example_solves_its_problem() -> None:
    namespace = _run_block(3)
    assert namespace["problem"].x.tolist() == pytest.approx([1.0, 5.0, 5.0], abs=1e-8)
    groups = namespace["dual"].param_groups
    assert [(group["lr"], group["kp"]) for group in groups] == [(0.5, 0.0), (0.05, 0.5)]


def test_the_docs_dual_restart_example_overshoots_less() -> None:
    namespace = _run_block(4)
    # The loop's last run is with restarts: it ends at x = 0.5 and went no lower than 0.42.
    assert namespace["restart"] is True
    assert namespace["problem"].x.item() == pytest.approx(0.5, abs=1e-3)
    assert namespace["lowest"] == pytest.approx(0.42, abs=5e-3)
