"""The fused update for plain SGD is the stock ``optimizer.step()``, applied directly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import METHODS, build_mixed, train_mixed
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lagrange_opt.updates.optimizer_group import OptimizerGroup
from lagrange_opt.updates.side_update import sgd_step_sizes


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))]


def test_step_sizes_of_plain_sgd_are_signed_learning_rates() -> None:
    first, second = _params()
    optimizer = torch.optim.SGD([{"params": [first]}, {"params": [second], "lr": 0.5}], lr=0.1)
    assert sgd_step_sizes(optimizer) == [-0.1, -0.5]
    ascent = torch.optim.SGD(_params(), lr=0.2, maximize=True)
    assert sgd_step_sizes(ascent) == [0.2]


def test_a_group_of_plain_sgds_has_its_members_step_sizes() -> None:
    """Failed before: a group of two SGDs took its members' own steps, so that the
    adaptive step redid what it interpolates for one SGD with the same two groups, and the
    two runs parted (tests/test_training_loop.py, two optimizers against two groups)."""
    first, second = _params()
    group = OptimizerGroup(
        [torch.optim.SGD([first], lr=0.1), torch.optim.SGD([second], lr=0.5, maximize=True)]
    )
    assert sgd_step_sizes(group) == [-0.1, 0.5]
    with_adam = OptimizerGroup(
        [torch.optim.SGD([first], lr=0.1), torch.optim.Adam([second], lr=0.5)]
    )
    assert sgd_step_sizes(with_adam) is None
    # A member's scheduler wraps that member's step(), which must then run.
    member = torch.optim.SGD([second], lr=0.5)
    scheduled = OptimizerGroup([torch.optim.SGD([first], lr=0.1), member])
    torch.optim.lr_scheduler.StepLR(member, step_size=1)
    assert sgd_step_sizes(scheduled) is None
    hooked = OptimizerGroup([torch.optim.SGD([first], lr=0.1)])
    handle = hooked.register_step_post_hook(lambda *_: None)
    assert sgd_step_sizes(hooked) is None
    handle.remove()


@pytest.mark.parametrize(
    "build",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-4),
        lambda p: torch.optim.SGD(p, lr=torch.tensor(0.1)),
        lambda p: torch.optim.Adam(p, lr=0.1),
    ],
    ids=["momentum", "weight-decay", "tensor-lr", "adam"],
)
def test_other_optimizers_take_their_own_step(build: Any) -> None:
    assert sgd_step_sizes(build(_params())) is None


def test_step_hooks_send_sgd_through_its_own_step() -> None:
    optimizer = torch.optim.SGD(_params(), lr=0.1)
    handle = optimizer.register_step_post_hook(lambda *_: None)
    assert sgd_step_sizes(optimizer) is None
    handle.remove()
    assert sgd_step_sizes(optimizer) == [-0.1]
    global_handle = register_optimizer_step_pre_hook(lambda *_: None)
    try:
        assert sgd_step_sizes(optimizer) is None
    finally:
        global_handle.remove()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_fused_sgd_update_equals_the_stock_step(method: type, device: str) -> None:
    # Every kind of constraint state (indexed slacks with repeated indices, a projected
    # multiplier, an equality, a dense slack), float64 so that only rounding can differ:
    # index_add_ sums a repeated row's entries one by one, the stock path sums them first.
    fused_problem, fused = build_mixed(method, "plain-sgd", dtype=torch.float64, device=device)
    stock_problem, stock = build_mixed(method, "hooked-sgd", dtype=torch.float64, device=device)
    assert sgd_step_sizes(fused.primal_optimizer) is not None
    assert sgd_step_sizes(stock.primal_optimizer) is None
    train_mixed(fused_problem, fused, range(300))
    train_mixed(stock_problem, stock, range(300))
    fused_state, stock_state = fused_problem.state_dict(), stock_problem.state_dict()
    assert fused_state.keys() == stock_state.keys()
    moved = fused_state["constraints.nonnegative.multiplier"].count_nonzero()
    assert moved > 10, "the indexed multipliers never moved: the test would prove nothing"
    for key, value in fused_state.items():
        torch.testing.assert_close(value, stock_state[key], rtol=1e-10, atol=1e-12, msg=key)
