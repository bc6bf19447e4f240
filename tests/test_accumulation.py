"""Gradient accumulation (docs/training.md): a step over micro-batches equals the step over
their whole batch, for every method, formulation and treatment, dense and indexed."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from helpers import CASES, DEVICES, METHODS_BY_NAME, assert_bitwise_equal, snapshot
from torch import Tensor, nn

from lagrange_opt import (
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
    default_optimizer,
)

SAMPLES = 8


class Accumulated(ConstrainedProblem):
    """A linear model with a bare offset, a dense equality, a dense inequality and an
    indexed inequality (the last two with ``treatment``), over fixed data."""

    def __init__(self, treatment: str, device: str) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.model = nn.Linear(3, 2)
        self.offset = nn.Parameter(torch.zeros(2))
        self.register_buffer("X", torch.randn(SAMPLES, 3, generator=generator))
        self.register_buffer("Y", torch.randn(SAMPLES, 2, generator=generator) - 1.0)
        weight = 2.0 if treatment == "penalty" else None
        self.add_equality("balance")
        self.add_inequality("floor", ">=", shape=(2,), treatment=treatment, penalty_weight=weight)
        self.add_inequality(
            "nonnegative", ">=", num_samples=SAMPLES, treatment=treatment, penalty_weight=weight
        )
        self.to(device=device, dtype=torch.float64)

    def forward(self, indices: Tensor) -> ProblemState:
        pred = self.model(self.X[indices]) + self.offset
        mean = pred.mean(0)
        return ProblemState(
            (pred - self.Y[indices]).square().mean(),
            {
                "balance": mean[0] - mean[1] - 0.1,
                "floor": mean - 0.2,
                "nonnegative": IndexedValue(pred[:, 0] + 0.2, indices),
            },
        )


def build(method: str, formulation: str, problem: Accumulated) -> ConstrainedOptimizer:
    if method == "default":
        return default_optimizer(problem)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.05)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True)
    return METHODS_BY_NAME[method](problem, primal, dual, formulation=formulation)  # type: ignore[arg-type]


def batches(device: str) -> list[Tensor]:
    """Each step's batch of 8, some samples drawn twice."""
    generator = torch.Generator().manual_seed(1)
    full = [torch.tensor([0, 1, 2, 3, 3, 4, 5, 0])]
    full += [torch.randint(0, SAMPLES, (8,), generator=generator) for _ in range(5)]
    return [batch.to(device) for batch in full]


def micro(problem: Accumulated, batch: Tensor, count: int) -> list[Any]:
    return [lambda part=part: problem(part) for part in batch.chunk(count)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_micro_batches_take_the_whole_batch_step(
    device: str, count: int, case: tuple[str, str, str]
) -> None:
    method, formulation, treatment = case
    whole = Accumulated(treatment, device)
    accumulated = copy.deepcopy(whole)
    reference = build(method, formulation, whole)
    optimizer = build(method, formulation, accumulated)
    for batch in batches(device):
        expected = reference.step(lambda batch=batch: whole(batch))
        result = optimizer.step(micro(accumulated, batch, count))
        assert result.evaluations == expected.evaluations
        torch.testing.assert_close(result.max_violation, expected.max_violation)
    moved = False
    for (name, mine), theirs in zip(accumulated.state_dict().items(), whole.state_dict().values()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10, msg=name)
        if "multiplier" in name and mine.dtype.is_floating_point:
            moved |= bool(mine.abs().sum() > 0)
    assert moved, "the multipliers must have moved"


def test_a_failing_micro_batch_changes_nothing() -> None:
    problem = Accumulated("slack", "cpu")
    optimizer = build("extragradient", "augmented", problem)
    batch = batches("cpu")[0]
    optimizer.step(micro(problem, batch, 2))
    before = snapshot(problem, optimizer)
    calls = {"n": 0}

    def failing() -> ProblemState:
        calls["n"] += 1
        if calls["n"] == 3:  # the second pass of the first evaluation
            raise RuntimeError("micro-batch failed")
        return problem(batch[4:])

    with pytest.raises(RuntimeError, match="micro-batch failed"):
        optimizer.step([lambda: problem(batch[:4]), failing])
    assert_bitwise_equal(snapshot(problem, optimizer), before)


def test_micro_batches_must_be_closures() -> None:
    # A constraint absent from one micro-batch is no error (issue 22, item 8:
    # tests/test_reliability_ranks.py).
    problem = Accumulated("projection", "cpu")
    optimizer = build("simultaneous", "lagrangian", problem)
    batch = batches("cpu")[0]
    with pytest.raises(ValueError, match="gradient accumulation needs at least one micro-batch"):
        optimizer.step([])
    with pytest.raises(
        TypeError, match=re.escape("micro-batch 1: a closure must be callable, got int")
    ):
        optimizer.step([lambda: problem(batch[:4]), 3])  # type: ignore[list-item]


def test_dropout_masks_are_replayed() -> None:
    """The second pass draws each micro-batch's first-pass masks: with dropout, a step over
    one micro-batch equals the step over the same batch given as one closure."""

    class Dropped(Accumulated):
        def forward(self, indices: Tensor) -> ProblemState:
            state = super().forward(indices)
            noise = nn.functional.dropout(torch.ones(2, dtype=torch.float64), 0.5)
            return ProblemState(state.objective * noise.sum(), state.constraints)

    whole = Dropped("projection", "cpu")
    accumulated = copy.deepcopy(whole)
    reference = build("extragradient", "augmented", whole)
    optimizer = build("extragradient", "augmented", accumulated)
    for batch in batches("cpu"):
        torch.manual_seed(int(batch.sum()))
        reference.step(lambda batch=batch: whole(batch))
        torch.manual_seed(int(batch.sum()))
        optimizer.step([lambda batch=batch: accumulated(batch)])
    for mine, theirs in zip(accumulated.state_dict().values(), whole.state_dict().values()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


def test_normalisation_statistics_are_updated_once_per_micro_batch() -> None:
    """As in a plain accumulation loop: each micro-batch's forward pass updates the running
    statistics once (the first pass, without a graph, leaves them as they were)."""

    class Normalised(Accumulated):
        def __init__(self) -> None:
            super().__init__("projection", "cpu")
            self.norm = nn.BatchNorm1d(3, dtype=torch.float64)

        def forward(self, indices: Tensor) -> ProblemState:
            pred = self.model(self.norm(self.X[indices])) + self.offset
            return ProblemState(
                (pred - self.Y[indices]).square().mean(),
                {"nonnegative": IndexedValue(pred[:, 0] + 0.2, indices)},
            )

    problem = Normalised()
    expected = copy.deepcopy(problem.norm)
    batch = batches("cpu")[0]
    for part in batch.chunk(4):
        expected(problem.X[part])
    optimizer = build("simultaneous", "augmented", problem)
    optimizer.step(micro(problem, batch, 4))
    assert torch.equal(problem.norm.running_mean, expected.running_mean)
    assert torch.equal(problem.norm.running_var, expected.running_var)
    assert int(problem.norm.num_batches_tracked) == 4


def test_the_hook_and_the_scaler_act_on_the_accumulated_gradients() -> None:
    """Clipping sees the whole batch's gradient (once per evaluation) and the loss scale
    reaches every micro-batch's backward pass: equal to the whole batch's step with both."""
    runs = []
    for count in (1, 4):
        problem = Accumulated("slack", "cpu")
        calls: list[int] = []

        def clip(problem: Accumulated = problem, calls: list[int] = calls) -> None:
            calls.append(1)
            nn.utils.clip_grad_norm_([*problem.model.parameters(), problem.offset], 0.05)

        optimizer = ExtraGradient(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=0.05),
            torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
            gradient_hook=clip,
            grad_scaler=torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=2),
        )
        for batch in batches("cpu"):
            if count == 1:
                optimizer.step(lambda batch=batch, problem=problem: problem(batch))
            else:
                optimizer.step(micro(problem, batch, count))
        assert len(calls) == 2 * len(batches("cpu"))
        runs.append(problem.state_dict())
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, rtol=0, atol=1e-10, msg=name)
