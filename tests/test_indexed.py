"""Indexed (per-sample) constraints: only the batch's rows are read, updated and stepped."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import METHODS
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from lagrange_opt import ConstrainedProblem, IndexedValue, ProblemState, SimultaneousGDA


class PerSample(ConstrainedProblem):
    def __init__(self, num_samples: int, treatment: str = "slack") -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -0.25]))
        self.add_inequality(
            "rows",
            ">=",
            num_samples=num_samples,
            shape=(2,),
            treatment=treatment,  # type: ignore[arg-type]
        )

    def values(self, indices: Tensor) -> Tensor:
        return self.w * (indices.to(self.w.dtype)[:, None] % 7 - 3)

    def forward(self, indices: Tensor) -> ProblemState:
        return ProblemState(
            self.w.square().sum(), {"rows": IndexedValue(self.values(indices), indices)}
        )


def _adam(problem: PerSample, lr: float = 0.1) -> tuple[Any, Any]:
    return (
        torch.optim.Adam(problem.primal_parameters(), lr=lr),
        torch.optim.Adam(problem.dual_parameters(), lr=lr, maximize=True),
    )


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_rows_outside_the_batch_are_untouched(method: type, device: str) -> None:
    problem = PerSample(50).to(device)
    optimizer = method(problem, *_adam(problem))
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        batch = torch.randperm(50, generator=generator)[:8].to(device)
        optimizer.step(lambda batch=batch: problem(batch))
    constraint = problem.constraints["rows"]
    assert constraint.slack is not None
    tables = [constraint.multiplier, constraint.slack]
    states = [
        optimizer.dual_optimizer.state[constraint.multiplier],
        optimizer.primal_optimizer.state[constraint.slack],
    ]
    before = [t.detach().clone() for t in tables]
    before_state = [{k: v.clone() for k, v in s.items()} for s in states]
    batch = torch.tensor([3, 17, 42], device=device)
    optimizer.step(lambda: problem(batch))
    outside = torch.ones(50, dtype=torch.bool, device=device)
    outside[batch] = False
    for table, old in zip(tables, before):
        assert torch.equal(table.detach()[outside], old[outside])
        assert not torch.equal(table.detach()[batch], old[batch])
    for state, old_state in zip(states, before_state):
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].shape == (50, 2)
            assert torch.equal(state[key][outside], old_state[key][outside])


def test_row_step_is_torch_adam_on_the_rows(device: str) -> None:
    # Bitwise on every device: the rows are stepped by the same stock optimizer.step() as the
    # reference, on the same device.
    problem = PerSample(20, treatment="projection").to(device)
    optimizer = SimultaneousGDA(problem, *_adam(problem, lr=0.3))
    multiplier = problem.constraints["rows"].multiplier
    reference = nn.Parameter(torch.zeros(3, 2, device=device))
    reference_optimizer = torch.optim.Adam([reference], lr=0.3, maximize=True)
    batches = [torch.tensor([1, 4, 9], device=device), torch.tensor([1, 4, 9], device=device)]
    for batch in batches:
        values = problem.values(batch).detach()
        optimizer.step(lambda batch=batch: problem(batch))
        reference.grad = -values  # the residual of value >= 0 is g = -value
        reference_optimizer.step()
        reference.data.clamp_(min=0)
        assert torch.equal(multiplier.detach()[batches[0]], reference.detach())


def test_repeated_indices_add_their_gradients(device: str) -> None:
    problem = PerSample(10, treatment="projection").to(device)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=1.0, maximize=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD(problem.primal_parameters(), lr=0.1), dual)
    with torch.no_grad():
        problem.w.copy_(torch.tensor([-1.0, 1.0]))
    batch = torch.tensor([5, 5, 1], device=device)
    residual = -problem.values(batch).detach()
    optimizer.step(lambda: problem(batch))
    multiplier = problem.constraints["rows"].multiplier.detach()
    torch.testing.assert_close(multiplier[5], (2 * residual[0]).clamp(min=0))
    torch.testing.assert_close(multiplier[1], residual[2].clamp(min=0))
    assert torch.count_nonzero(multiplier[[0, 2, 3, 4, 6, 7, 8, 9]]) == 0


def test_each_row_slack_starts_from_its_first_observed_value(device: str) -> None:
    problem = PerSample(10).to(device)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=1e-300)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=1e-300, maximize=True)
    optimizer = SimultaneousGDA(problem, primal, dual)
    batch = torch.tensor([0, 6, 2], device=device)
    values = problem.values(batch).detach()
    optimizer.step(lambda: problem(batch))
    constraint = problem.constraints["rows"]
    assert constraint.slack is not None and constraint.slack_seen is not None
    torch.testing.assert_close(constraint.slack.detach()[batch].square(), values.clamp(min=1e-2))
    assert constraint.slack_seen.cpu().tolist() == [
        True,
        False,
        True,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    assert torch.count_nonzero(constraint.slack.detach()[[1, 3, 4, 5, 7, 8, 9]]) == 0


class _LargeTensorOps(TorchDispatchMode):
    """Records every operation that reads or writes a tensor of at least `size` elements."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        flat = torch.utils._pytree.tree_leaves((args, kwargs, out))
        if any(isinstance(t, Tensor) and t.numel() >= self.size for t in flat):
            self.ops.append(str(func.overloadpacket.__name__))
        return out


def _sgd(problem: PerSample, lr: float = 0.1) -> tuple[Any, Any]:
    return (
        torch.optim.SGD(problem.primal_parameters(), lr=lr),
        torch.optim.SGD(problem.dual_parameters(), lr=lr, maximize=True),
    )


# Row reads (index, index_select), row writes (index_copy_, index_put_, index_fill_,
# index_add_) and O(1) views are the only operations allowed on a whole table.
ROW_OPS = {
    "detach",
    "index",
    "index_select",
    "index_copy_",
    "index_put_",
    "index_fill_",
    "index_add_",
}


@pytest.mark.parametrize("treatment", ["slack", "projection"])
@pytest.mark.parametrize("base", [_adam, _sgd], ids=["adam", "sgd"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_step_never_works_on_whole_tables(
    method: type, base: Any, treatment: str, device: str
) -> None:
    num_samples = 100_000
    problem = PerSample(num_samples, treatment).to(device)
    optimizer = method(problem, *base(problem))
    batch = torch.tensor([5, 99_999, 12_345, 5], device=device)
    optimizer.step(lambda: problem(batch))  # creates the optimizers' state tables
    recorder = _LargeTensorOps(num_samples)
    with recorder:
        optimizer.step(lambda: problem(batch))
    assert recorder.ops, "the recorder saw nothing"
    assert set(recorder.ops) <= ROW_OPS, recorder.ops
