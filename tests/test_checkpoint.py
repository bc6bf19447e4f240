"""Checkpoints restore exactly: 200 steps straight equal 100 + save + load + 100, bitwise."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from helpers import METHODS
from torch import Tensor, nn

from lagrange_opt import ConstrainedProblem, IndexedValue, ProblemState

NUM_SAMPLES = 64


class Mixed(ConstrainedProblem):
    """A model outside the problem, an indexed slack inequality, a dense projected one and
    an equality: every kind of state the optimizers keep."""

    def __init__(self, model: nn.Module, data: Tensor, targets: Tensor) -> None:
        super().__init__()
        self.model = model
        self.data = data
        self.targets = targets
        self.add_inequality("nonnegative", ">=", num_samples=NUM_SAMPLES)
        self.add_inequality("weight_norm", "<=", treatment="projection")
        self.add_equality("mean", shape=(1,))
        self.add_inequality("bias", ">=", shape=(2,))

    def forward(self, indices: Tensor) -> ProblemState:
        predictions = self.model(self.data[indices])
        first = predictions[:, 0]
        weight = self.model.weight
        return ProblemState(
            (predictions - self.targets[indices]).square().mean(),
            {
                "nonnegative": IndexedValue(first, indices),
                "weight_norm": weight.square().sum() - 1.0,
                "mean": predictions.mean().reshape(1) - 0.1,
                "bias": self.model.bias + 0.05,
            },
        )


def _build(method: type, base: str, seed: int = 0) -> tuple[Mixed, Any]:
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(NUM_SAMPLES, 4, generator=generator)
    targets = torch.randn(NUM_SAMPLES, 2, generator=generator) - 0.5
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    problem = Mixed(model, data, targets)
    primal_params = [*model.parameters(), *problem.slack_parameters()]
    if base == "sgd":
        primal = torch.optim.SGD(primal_params, lr=0.01, momentum=0.5)
        dual = torch.optim.SGD(problem.dual_parameters(), lr=0.01, momentum=0.5, maximize=True)
    else:
        primal = torch.optim.Adam(primal_params, lr=0.01)
        dual = torch.optim.Adam(problem.dual_parameters(), lr=0.01, maximize=True)
    return problem, method(problem, primal, dual)


def _batch(step: int) -> Tensor:
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randperm(NUM_SAMPLES, generator=generator)[:16]


def _train(problem: Mixed, optimizer: Any, steps: range) -> None:
    for step in steps:
        indices = _batch(step)
        optimizer.step(lambda indices=indices: problem(indices))


def _roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_bitwise_equal(left: Any, right: Any) -> None:
    if isinstance(left, Tensor):
        assert isinstance(right, Tensor)
        assert left.dtype == right.dtype and left.shape == right.shape
        assert torch.equal(left, right), "tensors differ"
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            _assert_bitwise_equal(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right):
            _assert_bitwise_equal(a, b)
    else:
        assert left == right


@pytest.mark.parametrize("base", ["sgd", "adam"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_resume_is_bitwise_identical(method: type, base: str) -> None:
    straight_problem, straight = _build(method, base)
    _train(straight_problem, straight, range(200))

    first_problem, first = _build(method, base)
    _train(first_problem, first, range(100))
    saved = _roundtrip({"problem": first_problem.state_dict(), "optimizer": first.state_dict()})

    resumed_problem, resumed = _build(method, base, seed=7)  # other initial values
    resumed_problem.load_state_dict(saved["problem"])
    resumed.load_state_dict(saved["optimizer"])
    _train(resumed_problem, resumed, range(100, 200))

    _assert_bitwise_equal(straight_problem.state_dict(), resumed_problem.state_dict())
    _assert_bitwise_equal(straight.state_dict(), resumed.state_dict())


def test_problem_state_dict_holds_multipliers_and_slacks() -> None:
    problem, _ = _build(METHODS[0], "sgd")
    keys = set(problem.state_dict())
    assert {
        "constraints.nonnegative.multiplier",
        "constraints.nonnegative.slack",
        "constraints.nonnegative.slack_seen",
        "constraints.weight_norm.multiplier",
        "constraints.mean.multiplier",
        "constraints.bias.slack",
    } <= keys
    assert "constraints.weight_norm.slack" not in keys
    assert problem.state_dict()["constraints.nonnegative.slack"].shape == (NUM_SAMPLES,)


def test_problem_to_moves_multipliers_and_slacks() -> None:
    problem, _ = _build(METHODS[0], "sgd")
    problem.to(torch.float64)
    constraint = problem.constraints["nonnegative"]
    assert constraint.multiplier.dtype == torch.float64
    assert constraint.slack is not None and constraint.slack.dtype == torch.float64
    assert constraint.slack_seen is not None and constraint.slack_seen.dtype == torch.bool


def test_loading_another_methods_state_fails() -> None:
    _, extra = _build(METHODS[0], "sgd")
    _, simultaneous = _build(METHODS[1], "sgd")
    with pytest.raises(ValueError, match="state_dict is from ExtraGradient, not SimultaneousGDA"):
        simultaneous.load_state_dict(extra.state_dict())
