"""The functional Adam/AdamW step gives bitwise the stock ``optimizer.step()`` path's
iterates, and anything non-standard takes the stock path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import METHODS, MIXED_SAMPLES, Mixed, assert_bitwise_equal, mixed_batch
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook

import lagrange_opt.updates.fast_optimizers as fast_optimizers
from lagrange_opt import ExtraGradient
from lagrange_opt.updates.fast_optimizers import add_all_, copy_all, is_fast, plan

Build = Callable[[list[Any], list[Any]], tuple[torch.optim.Optimizer, torch.optim.Optimizer]]


def _two_groups(kind: type, params: list[Any], **options: Any) -> torch.optim.Optimizer:
    # Two param groups with different settings: the functional step must read each one's.
    half = len(params) // 2
    return kind(
        [{"params": params[:half]}, {"params": params[half:], "lr": 0.02, "eps": 1e-6}],
        lr=0.01, **options,
    )  # fmt: skip


BUILDS: dict[str, Build] = {
    "adam": lambda p, d: (
        torch.optim.Adam(p, lr=0.01),
        torch.optim.Adam(d, lr=0.01, maximize=True),
    ),
    "adam-amsgrad-decay-groups": lambda p, d: (
        _two_groups(torch.optim.Adam, p, amsgrad=True, weight_decay=1e-2),
        _two_groups(torch.optim.Adam, d, amsgrad=True, maximize=True, betas=(0.5, 0.9)),
    ),
    "adamw": lambda p, d: (
        torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        torch.optim.AdamW(d, lr=0.01, maximize=True, weight_decay=0.0),
    ),
    "adamw-amsgrad-groups-foreach": lambda p, d: (
        _two_groups(torch.optim.AdamW, p, amsgrad=True, foreach=True),
        _two_groups(torch.optim.AdamW, d, maximize=True, foreach=True, weight_decay=0.0),
    ),
    "adam-amsgrad-groups-fused": lambda p, d: (
        _two_groups(torch.optim.Adam, p, amsgrad=True, fused=True),
        _two_groups(torch.optim.AdamW, d, maximize=True, fused=True, weight_decay=0.0),
    ),
}


def _build(method: type, build: Build, stock: bool) -> tuple[Mixed, Any]:
    """The mixed problem (indexed slacks and multipliers with repeated indices, dense
    ones) with ``build``'s optimizers; ``stock``: a no-op step hook on each, which sends
    them through ``optimizer.step()``."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(MIXED_SAMPLES, 4, generator=generator)
    targets = torch.randn(MIXED_SAMPLES, 2, generator=generator) - 0.5
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    problem = Mixed(model, data, targets)
    primal, dual = build(
        [*model.parameters(), *problem.slack_parameters()], problem.dual_parameters()
    )
    for optimizer in (primal, dual):
        assert is_fast(optimizer)
        if stock:
            optimizer.register_step_pre_hook(lambda *_: None)
            assert not is_fast(optimizer)
    return problem, method(problem, primal, dual)


def _everything(problem: Mixed, optimizer: Any) -> dict[str, Any]:
    return {"problem": problem.state_dict(), "optimizer": optimizer.state_dict()}


def _train(problem: Mixed, optimizer: Any, steps: int) -> None:
    for step in range(steps):
        indices = mixed_batch(step)
        optimizer.step(lambda indices=indices: problem(indices))


@pytest.mark.parametrize("build", BUILDS, ids=str)
@pytest.mark.parametrize("method", [*METHODS, "adaptive"], ids=lambda m: getattr(m, "__name__", m))
def test_the_functional_step_gives_the_stock_iterates_bitwise(method: Any, build: str) -> None:
    def make(stock: bool) -> tuple[Mixed, Any]:
        if method == "adaptive":
            problem, optimizer = _build(ExtraGradient, BUILDS[build], stock)
            adaptive = ExtraGradient(
                problem, optimizer.primal_optimizer, optimizer.dual_optimizer,
                step_size="adaptive",
            )  # fmt: skip
            return problem, adaptive
        return _build(method, BUILDS[build], stock)

    fast_problem, fast = make(stock=False)
    stock_problem, stock = make(stock=True)
    _train(fast_problem, fast, 40)
    _train(stock_problem, stock, 40)
    moved = fast_problem.state_dict()["constraints.nonnegative.multiplier"].count_nonzero()
    assert moved > 10, "the indexed multipliers never moved: the test would prove nothing"
    assert_bitwise_equal(_everything(fast_problem, fast), _everything(stock_problem, stock))


@pytest.mark.parametrize(
    ("build", "kernel"),
    [
        ("adam", "_adam_into"),
        ("adamw-amsgrad-groups-foreach", "adam"),
        ("adam-amsgrad-groups-fused", "adam"),
    ],
)
def test_each_functional_kernel_is_taken(
    monkeypatch: pytest.MonkeyPatch, build: str, kernel: str
) -> None:
    # The CPU's single-tensor loop is written out of place (_adam_into); with foreach or
    # fused asked for, torch's functional adam() steps copies of the state.
    calls = []
    original = getattr(fast_optimizers, kernel)
    monkeypatch.setattr(
        fast_optimizers, kernel, lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    )
    problem, optimizer = _build(ExtraGradient, BUILDS[build], stock=False)
    _train(problem, optimizer, 1)
    assert not calls, "the first step creates the state through step()"
    _train(problem, optimizer, 2)
    assert calls


class Subclass(torch.optim.Adam):
    """An Adam subclass: its step() may differ; it must run."""


def _adam(**options: Any) -> torch.optim.Optimizer:
    param = nn.Parameter(torch.zeros(3))
    return torch.optim.Adam([param], **{"lr": 0.1, **options})


@pytest.mark.parametrize(
    "build",
    [
        lambda: Subclass([nn.Parameter(torch.zeros(3))]),
        lambda: torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9),
        lambda: _adam(lr=torch.tensor(0.1)),
        lambda: _adam(betas=(torch.tensor(0.9), torch.tensor(0.999))),
        lambda: _adam(capturable=True),
        lambda: _adam(differentiable=True),
    ],
    ids=["subclass", "sgd-momentum", "tensor-lr", "tensor-betas", "capturable", "differentiable"],
)  # fmt: skip
def test_anything_non_standard_takes_the_stock_path(build: Any) -> None:
    assert not is_fast(build())


def test_hooks_wrappers_and_missing_state_take_the_stock_path() -> None:
    optimizer = _adam()
    assert is_fast(optimizer)
    handle = optimizer.register_step_post_hook(lambda *_: None)
    assert not is_fast(optimizer)
    handle.remove()
    global_handle = register_optimizer_step_post_hook(lambda *_: None)
    try:
        assert not is_fast(optimizer)
    finally:
        global_handle.remove()
    assert is_fast(optimizer)
    param = optimizer.param_groups[0]["params"][0]
    param.grad = torch.ones(3)
    assert plan(optimizer, []) is None, "no state yet: step() creates it"
    optimizer.step()
    assert plan(optimizer, []) is not None
    state = optimizer.state[param]
    optimizer.param_groups[0]["amsgrad"] = True
    assert plan(optimizer, []) is None, "no max_exp_avg_sq yet"
    optimizer.param_groups[0]["amsgrad"] = False
    step = state["step"]
    state["step"] = float(step)
    assert plan(optimizer, []) is None, "a step count kept as a number"
    state["step"] = step
    assert plan(optimizer, []) is not None
    StepLR(optimizer, step_size=1)  # wraps the instance's step()
    assert not is_fast(optimizer)


@pytest.mark.parametrize("fused", [True, False])
def test_copy_all_with_and_without_the_fused_copy(
    monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    if not fused:
        monkeypatch.delattr(torch, "_foreach_copy_")
    sources = [torch.randn(3), torch.randn(2, 2, dtype=torch.float64), torch.tensor(4.0)]
    targets = [torch.empty_like(source) for source in sources]
    copy_all(targets, sources)
    assert_bitwise_equal(targets, sources)


@pytest.mark.parametrize("fused", [True, False])
def test_add_all_with_and_without_the_fused_add(
    monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    if not fused:
        monkeypatch.delattr(torch, "_foreach_add_")
    tensors = [torch.randn(3), torch.randn(2, 2, dtype=torch.float64), torch.tensor(4.0)]
    targets = [torch.randn_like(tensor) for tensor in tensors]
    expected = [torch.add(target, tensor, alpha=0.3) for target, tensor in zip(targets, tensors)]
    add_all_(targets, tensors, 0.3)
    assert_bitwise_equal(targets, expected)


def test_the_steps_reuse_their_tensors() -> None:
    problem, optimizer = _build(ExtraGradient, BUILDS["adam"], stock=False)
    _train(problem, optimizer, 2)
    primal, weight = optimizer.primal_optimizer, problem.model.weight
    pools = fast_optimizers._pools(primal)
    scratch, spare = pools.scratch[id(weight)], pools.spare[id(weight)]
    state = dict(primal.state[weight])
    _train(problem, optimizer, 1)
    # The extrapolation wrote into the same scratch; the committed step into the spare
    # tensors, which became the state, and the old state the next spare.
    assert all(a is b for a, b in zip(scratch, pools.scratch[id(weight)]))
    assert [primal.state[weight][key] for key in ("exp_avg", "exp_avg_sq", "step")] == spare
    assert [state[key] for key in ("exp_avg", "exp_avg_sq", "step")] == pools.spare[id(weight)]
    assert int(primal.state[weight]["step"]) == int(state["step"]) + 1


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_stock_dual_step_that_raises_after_the_functional_primal_step_changes_nothing(
    method: type,
) -> None:
    problem, optimizer = _build(method, BUILDS["adam-amsgrad-decay-groups"], stock=False)
    _train(problem, optimizer, 3)
    calls = 0

    def fail(*_: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == (2 if method is ExtraGradient else 1):
            raise RuntimeError("hook failed")

    optimizer.dual_optimizer.register_step_post_hook(fail)
    before = copy.deepcopy(_everything(problem, optimizer))
    with pytest.raises(RuntimeError, match="hook failed"):
        _train(problem, optimizer, 1)
    assert_bitwise_equal(before, _everything(problem, optimizer))
