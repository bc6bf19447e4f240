"""Per-sample constraints on minibatches: the self-tuned margin, the stiffer per-sample
penalty, the method-of-multipliers step of the batch's rows, and the default with the
user's primal optimizer."""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import pytest
import torch
from helpers import assert_bitwise_equal

import lagrange_opt.updates.side_update as updates
from benchmarks import networks
from lagrange_opt import (
    AugmentedLagrangian,
    SimultaneousGDA,
    calibrated_offset,
    default_optimizer,
)
from lagrange_opt.maths.augmented import next_margin
from lagrange_opt.problems import (
    NonNegativePredictions,
    PositiveOutputs,
    regression_data,
    regression_network,
)


def _nonnegative_linear(num_samples: int = 64) -> NonNegativePredictions:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(num_samples, 3, generator=generator, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) - 1.0
    return NonNegativePredictions(X, y)


def test_margin_rule_by_hand() -> None:
    rule = AugmentedLagrangian(margin_rate=0.5, margin_decay=0.25)
    margin = torch.tensor(0.2)
    # Violated: grows by rate times the worst value.
    assert float(next_margin(rule, margin, torch.tensor(0.1))) == pytest.approx(0.25)
    # Satisfied: shrinks by rate times decay times the slack of the worst row.
    assert float(next_margin(rule, margin, torch.tensor(-0.4))) == pytest.approx(0.15)
    # Never below zero.
    assert float(next_margin(rule, margin, torch.tensor(-10.0))) == 0.0


def test_margin_decays_to_zero_on_a_deterministic_problem() -> None:
    """Full batches: the active rows settle at g = -m, the margin decays, and the solution
    is the problem's own (the one SLSQP finds, within the KKT test's tolerance)."""
    problem = _nonnegative_linear()
    optimizer = default_optimizer(problem)
    margins = []
    for _ in range(3000):
        result = optimizer.step(problem)
        margins.append(float(optimizer._formulation._margins.margins["nonnegative"]))
    assert max(margins) > 1e-3  # the first steps were infeasible: the margin moved
    assert margins[-1] < 1e-7
    assert float(result.max_violation) < 1e-6
    with torch.no_grad():
        predictions = problem.predict(problem.X)
    assert float(predictions.min()) > -1e-6


def test_margin_shifts_the_rows_the_augmented_lagrangian_sees() -> None:
    """At w = 0, b = 0 every prediction is 0: on the boundary, no violation, and without a
    margin no multiplier moves. With a margin m each row sees g + m = m > 0 and its
    multiplier ascends by lr * m, while the violation reported stays the row's own, 0."""
    moved = []
    for margin in (None, 0.5):
        problem = _nonnegative_linear(8)
        optimizer = SimultaneousGDA(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=0.1),
            torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
            formulation=AugmentedLagrangian(margin_rate=0.1),
        )
        if margin is not None:
            value = torch.tensor(margin, dtype=torch.float64)
            optimizer._formulation._margins.margins["nonnegative"] = value
            optimizer._formulation.set_scales(None)  # rebuilds the rules
            rule = optimizer._formulation.current().rules["nonnegative"]
            assert rule.margin is value
            assert rule.penalty == 1.0  # off by default outside default_optimizer
        result = optimizer.step(problem)
        assert float(result.max_violation) == 0.0
        moved.append(problem.constraints["nonnegative"].multiplier.detach().clone())
    assert torch.equal(moved[0], torch.zeros(8, dtype=torch.float64))
    assert torch.equal(moved[1], torch.full((8,), 0.1 * 0.5, dtype=torch.float64))


def test_batch_rows_take_the_method_of_multipliers_step_whatever_the_factor() -> None:
    """The per-sample rows' dual group updates at factor 1 (the method of multipliers)
    while the primal factor is below 1, and the rows outside the batch do not move."""
    problem = _nonnegative_linear()
    optimizer = default_optimizer(problem)
    batch = torch.arange(16)
    for _ in range(5):
        optimizer.step(lambda: problem(batch))
    multipliers = problem.constraints["nonnegative"].multiplier
    assert torch.equal(multipliers.detach()[16:], torch.zeros(48, dtype=torch.float64))
    assert optimizer.step_factor < 1.0
    groups = optimizer.dual_optimizer.param_groups
    assert len(groups) == 1 and groups[0]["params"] == [multipliers]
    seen: list[float] = []
    real = updates._size_of

    def size_of(opt: torch.optim.Optimizer, sizes: list[float]) -> dict[int, float]:
        if opt is optimizer.dual_optimizer:
            seen.extend(sizes)
        return real(opt, sizes)

    factor = optimizer.step_factor
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(updates, "_size_of", size_of)
        optimizer.step(lambda: problem(batch))
    # Each try of the extrapolation moves them as the other multipliers, by min(t, 1/2)
    # (what the backtracking test measures; a rejected try halves t); the update, by the
    # method of multipliers' step.
    *extrapolations, update = seen
    assert extrapolations[0] == min(factor, 0.5)
    assert all(size < 1.0 for size in extrapolations)
    assert update == 1.0


def test_margin_state_round_trips_bitwise() -> None:
    data = regression_data(64)
    network = regression_network(hidden=8)
    problem = PositiveOutputs(network, 64)
    optimizer = default_optimizer(problem)
    for start in range(0, 64, 16):
        indices = torch.arange(start, start + 16)
        optimizer.step(
            functools.partial(problem, data.inputs[indices], data.targets[indices], indices)
        )
    state = optimizer.state_dict()
    margins = state["formulation"]["margins"]
    assert set(margins["margins"]) == {"nonnegative"}
    assert margins["recent"]["nonnegative"].shape == (4,)  # one epoch of 4 batches
    fresh = default_optimizer(PositiveOutputs(regression_network(hidden=8), 64))
    fresh.load_state_dict(state)
    assert_bitwise_equal(fresh.state_dict()["formulation"], state["formulation"])


CORRUPT_MARGIN_STATES = [
    ("margins", lambda t: torch.tensor(-1.0), "Invalid margin of constraint 'nonnegative': -1.0"),
    ("margins", lambda t: torch.tensor(math.nan), "Invalid margin of constraint 'nonnegative': nan"),
    ("margins", lambda t: torch.tensor(math.inf), "Invalid margin of constraint 'nonnegative': inf"),
    ("rows", lambda t: t.fill_(-1.0), "Invalid row margins of constraint 'nonnegative': negative or not finite"),
    ("rows", lambda t: t.fill_(math.inf), "Invalid row margins of constraint 'nonnegative': negative or not finite"),
    ("previous", lambda t: t.fill_(math.nan), "Invalid last values of constraint 'nonnegative': NaN"),
    ("previous", lambda t: t[:10], "the margins' previous table of constraint 'nonnegative' has shape (10,), not one row per sample"),
]  # fmt: skip


@pytest.mark.parametrize(("part", "corrupt", "message"), CORRUPT_MARGIN_STATES)
def test_a_corrupt_margin_state_is_refused_and_nothing_loads(
    part: str, corrupt: Any, message: str
) -> None:
    problem = _nonnegative_linear()
    optimizer = default_optimizer(problem)
    for _ in range(3):
        optimizer.step(problem)
    before = optimizer.state_dict()
    state = optimizer.state_dict()
    state["step_factor"] = 0.5  # a valid part that must not load either
    tables = state["formulation"]["margins"][part]
    tables["nonnegative"] = corrupt(tables["nonnegative"].clone())
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizer.load_state_dict(state)
    assert_bitwise_equal(optimizer.state_dict(), before)


def test_default_with_the_users_primal_optimizer() -> None:
    problem = PositiveOutputs(regression_network(hidden=8), 64)
    adam = torch.optim.Adam(problem.primal_parameters(), lr=1e-3)
    optimizer = default_optimizer(problem, primal_optimizer=adam)
    assert isinstance(optimizer, SimultaneousGDA)
    assert optimizer.primal_optimizer is adam
    assert optimizer._formulation.penalty_steps_dual
    assert [group["lr"] for group in optimizer.dual_optimizer.param_groups] == [0.1]
    with pytest.raises(
        ValueError, match=r"^lr is the default.s own SGD rate: set it on primal_optimizer$"
    ):
        default_optimizer(problem, lr=0.5, primal_optimizer=adam)


@pytest.mark.parametrize("primal", ["sgd", "adam"])
def test_default_meets_every_output_constraint_on_minibatches(primal: str) -> None:
    """The package's own question, as the network suite's `positive-32-b64` row (seed 0):
    784-32-32-2, 1,024 samples, batches of 64, 40 epochs; every training output >= -1e-3 at
    the final iterate, within 20 % of the feasible bound's MSE."""
    result = networks.run_job(networks.Job("positive-32-b64", primal, "default", 0, 1))
    train, _ = networks.TASKS["positive-32-b64"].data(0)
    bound = float((train.targets.clamp(min=0) - train.targets).square().mean())
    assert float((train.targets < 0).float().mean()) > 0.25  # the constraint binds
    assert result["violated"] == 0.0
    assert result["loss"] < 1.25 * bound
    assert result["calls_per_step"] <= 2.1


def test_a_calibrated_offset_makes_held_out_outputs_feasible() -> None:
    """The recipe of docs/stochastic.md on the suite's small network with Adam: 80 % of the
    training samples constrained, 20 % to calibrate, held-out outputs below 0 at most 1 %
    (measured: 2.4 % without the offset, 0.05 % with it, an offset of 0.010)."""
    data = regression_data(2048)
    constrained, calibration, held_out = slice(0, 819), slice(819, 1024), slice(1024, 2048)
    torch.manual_seed(0)
    network = regression_network(hidden=32)
    problem = networks.OffsetOutputs(network, 819)
    adam = torch.optim.Adam(problem.primal_parameters(), lr=1e-3)
    optimizer = default_optimizer(problem, primal_optimizer=adam)
    inputs, targets = data.inputs[constrained], data.targets[constrained]
    generator = torch.Generator().manual_seed(1)

    def train(epochs: int) -> None:
        for _ in range(epochs):
            for indices in torch.randperm(819, generator=generator).split(256):
                optimizer.step(
                    functools.partial(problem, inputs[indices], targets[indices], indices)
                )

    def held_out_negative() -> float:
        with torch.no_grad():
            return float((network(data.inputs[held_out]) < 0).float().mean())

    train(150)
    before = held_out_negative()
    with torch.no_grad():
        problem.offset = calibrated_offset(network(data.inputs[calibration]), fraction=0.005)
    train(30)
    after = held_out_negative()
    assert before > 0.01  # the default alone leaves more than 1 % negative here
    assert problem.offset > 0
    assert after <= 0.01
    with torch.no_grad():
        assert float(network(inputs).min()) >= problem.offset - 1e-3  # the training rows


@pytest.mark.parametrize(
    ("values", "fraction", "message"),
    [
        (torch.ones(4), 0.0, "Invalid fraction: 0.0"),
        (torch.ones(4), 1.0, "Invalid fraction: 1.0"),
        (torch.ones(0), 0.01, "no calibration value: the calibration split is empty"),
        (torch.tensor([1.0, float("nan")]), 0.01, "1 of the 2 calibration values are not finite"),
    ],
)
def test_calibrated_offset_refuses_bad_input(
    values: torch.Tensor, fraction: float, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        calibrated_offset(values, fraction)
