"""The guarantees of docs/reliability.md on a CUDA device (skipped without one)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers import QuadraticProgram, assert_bitwise_equal, snapshot
from torch import Tensor, nn

from lagrange_opt import (
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    NonFiniteError,
    ProblemState,
    default_optimizer,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


class DropoutNet(ConstrainedProblem):
    """A network with dropout and batch normalisation, every output constrained >= 0."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 2)
        )
        # More rows of data than constrained samples: an index past the table is still a
        # valid row of the data, so only the table's check can catch it.
        self.register_buffer("data", torch.randn(64, 4, generator=generator))
        self.register_buffer("targets", torch.randn(64, 2, generator=generator) - 0.5)
        self.add_inequality("positive", ">=", shape=(2,), num_samples=32)
        self.fail = False
        self.outputs: list[Tensor] = []

    def forward(self, indices: Tensor) -> ProblemState:
        pred = self.net(self.data[indices])
        self.outputs.append(pred.detach())
        objective = (pred - self.targets[indices]).square().mean()
        if self.fail:
            objective = objective * math.nan
        return ProblemState(objective, {"positive": IndexedValue(pred, indices)})


def _state(problem: nn.Module, optimizer: Any) -> dict[str, Any]:
    return {
        **snapshot(problem, optimizer),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(),
    }


def test_a_failed_step_on_cuda_changes_nothing_the_generators_included() -> None:
    torch.manual_seed(0)
    problem = DropoutNet().cuda()
    optimizer = default_optimizer(problem)
    indices = torch.arange(16, device="cuda")
    for _ in range(3):
        optimizer.step(lambda: problem(indices))
    problem.fail = True
    before = _state(problem, optimizer)
    with pytest.raises(NonFiniteError, match=r"^objective is not finite: nan$"):
        optimizer.step(lambda: problem(indices))
    assert_bitwise_equal(before, _state(problem, optimizer))


def test_same_randomness_on_cuda_gives_both_evaluations_the_same_dropout() -> None:
    torch.manual_seed(0)
    problem = DropoutNet().cuda()
    optimizer = default_optimizer(problem)
    indices = torch.arange(16, device="cuda")
    for step in range(3):
        problem.outputs.clear()
        result = optimizer.step(lambda: problem(indices))
        assert len(problem.outputs) == result.evaluations
        masks = [output == 0 for output in problem.outputs]
        assert all(torch.equal(masks[0], mask) for mask in masks)
        assert int(problem.net[1].num_batches_tracked) == step + 1


def test_an_index_out_of_range_on_cuda_raises_instead_of_a_device_assertion() -> None:
    problem = DropoutNet().cuda()
    optimizer = ExtraGradient(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=0.01),
        torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    indices = torch.tensor([0, 40], device="cuda")
    with pytest.raises(
        IndexError, match=r"^constraint 'positive': index 40 out of range for num_samples=32$"
    ):
        optimizer.step(lambda: problem(indices))
    torch.cuda.synchronize()  # a device-side assertion would surface here


@pytest.mark.parametrize("treatment", ["slack", "projection"])
def test_the_default_solves_the_qp_on_cuda(treatment: str) -> None:
    problem = QuadraticProgram(treatment=treatment).cuda()
    optimizer = default_optimizer(problem)
    for _ in range(400):
        optimizer.step(problem)
    assert problem.x.tolist() == pytest.approx(QuadraticProgram.solution, abs=1e-6)
    multiplier = problem.constraints["sum"].multiplier.detach()
    assert float(multiplier) == pytest.approx(QuadraticProgram.multiplier, abs=1e-5)
