"""Closures that differentiate their own outputs (``torch.autograd.grad`` with
``create_graph=True``): constraints on a model's derivatives work with every method, the
default, micro-batches and rollback."""

from __future__ import annotations

import pytest
import torch

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    OptimisticGDA,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)

SAMPLES = 32


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, 2, generator=generator, dtype=torch.float64)
    # Decreasing in the second feature: a model free to fit it has a negative slope there.
    targets = inputs[:, 0] ** 3 - inputs[:, 1] + 0.1 * torch.randn(SAMPLES, generator=generator)
    return inputs, targets.to(torch.float64)


class Monotone(ConstrainedProblem):
    """Least squares with every training point's derivative along feature 2 >= 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        ).double()
        self.inputs, self.targets = _data()
        self.add_inequality("slope", ">=", num_samples=SAMPLES)
        self.calls = 0

    def forward(self, indices: torch.Tensor) -> ProblemState:
        self.calls += 1
        points = self.inputs[indices].clone().requires_grad_(True)
        outputs = self.net(points).squeeze(-1)
        (slopes,) = torch.autograd.grad(outputs.sum(), points, create_graph=True)
        loss = (outputs - self.targets[indices]).square().mean()
        return ProblemState(loss, {"slope": IndexedValue(slopes[:, 1], indices)})


def _method(name: str, problem: Monotone) -> ConstrainedOptimizer:
    if name == "default":
        return default_optimizer(problem)
    if name == "default-adam":
        adam = torch.optim.Adam(problem.primal_parameters(), lr=1e-2)
        return default_optimizer(problem, primal_optimizer=adam)
    method = {
        "extragradient": ExtraGradient, "simultaneous": SimultaneousGDA,
        "alternating": AlternatingGDA, "optimistic": OptimisticGDA,
    }[name]  # fmt: skip
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.05)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True)
    return method(problem, primal, dual)


METHODS = ["extragradient", "simultaneous", "alternating", "optimistic", "default", "default-adam"]


@pytest.mark.parametrize("name", METHODS)
def test_micro_batches_take_the_whole_batch_step(name: str) -> None:
    whole, parts = Monotone(), Monotone()
    whole_method, parts_method = _method(name, whole), _method(name, parts)
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        batch = torch.randperm(SAMPLES, generator=generator)[:16]
        first, second = batch[:8], batch[8:]
        whole_method.step(lambda batch=batch: whole(batch))
        parts_method.step([lambda: parts(first), lambda: parts(second)])  # noqa: B023 (called now)
    for ours, theirs in zip(whole.state_dict().values(), parts.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_the_default_makes_the_derivative_constraint_hold() -> None:
    problem = Monotone()
    optimizer = default_optimizer(problem)
    everything = torch.arange(SAMPLES)
    start = problem(everything)
    assert float(start.constraints["slope"].value.min()) < -0.05  # violated at the start
    # Measured: the slopes stay above -1e-4 from step 29 on (through step 600).
    for _ in range(50):
        optimizer.step(lambda: problem(everything))
    slopes = problem(everything).constraints["slope"].value
    assert float(slopes.min()) >= -1e-4


def test_a_step_that_fails_at_the_extrapolated_point_changes_nothing() -> None:
    problem = Monotone()
    optimizer = _method("extragradient", problem)
    batch = torch.arange(16)
    optimizer.step(lambda: problem(batch))
    before = {key: value.clone() for key, value in problem.state_dict().items()}
    calls = problem.calls

    def failing() -> ProblemState:
        if problem.calls == calls + 1:  # the second evaluation of the step
            raise RuntimeError("data loader failed")
        return problem(batch)

    with pytest.raises(RuntimeError, match="data loader failed"):
        optimizer.step(failing)
    for key, value in problem.state_dict().items():
        assert torch.equal(value, before[key]), key
