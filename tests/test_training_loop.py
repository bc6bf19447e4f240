"""The hooks of a real training loop (docs/training.md): gradient clipping, several primal
optimizers, mixed precision with loss scaling; on every available device."""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import DEVICES, QuadraticProgram, assert_bitwise_equal, snapshot
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ExtraGradient,
    NonFiniteError,
    OptimizerGroup,
    SimultaneousGDA,
    default_optimizer,
)
from lagrange_opt.problems import PositiveOutputs

SAMPLES = 32


def network_problem(
    device: str,
    dtype: torch.dtype = torch.float64,
    treatment: str = "projection",
    target_scale: float = 1.0,
) -> tuple[PositiveOutputs, Tensor, Tensor]:
    """A 4-8-2 network whose every output on every sample is constrained ``>= 0``, with
    targets that pull some outputs below 0; its data."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    problem = PositiveOutputs(network, SAMPLES, treatment=treatment)  # type: ignore[arg-type]
    inputs = torch.randn(SAMPLES, 4, generator=generator)
    targets = (torch.randn(SAMPLES, 2, generator=generator) - 0.5) * target_scale
    problem.to(device=device, dtype=dtype)
    return problem, inputs.to(device, dtype), targets.to(device, dtype)


def closure_of(problem: PositiveOutputs, inputs: Tensor, targets: Tensor) -> Callable[[], Any]:
    indices = torch.arange(SAMPLES, device=inputs.device)
    return lambda: problem(inputs, targets, indices)


BUILDERS: dict[str, Callable[..., ConstrainedOptimizer]] = {
    "simultaneous": lambda problem, primal, dual, **kw: SimultaneousGDA(
        problem, primal, dual, **kw
    ),
    "alternating": lambda problem, primal, dual, **kw: AlternatingGDA(problem, primal, dual, **kw),
    "extragradient": lambda problem, primal, dual, **kw: ExtraGradient(problem, primal, dual, **kw),
    "adaptive": lambda problem, primal, dual, **kw: ExtraGradient(
        problem, primal, dual, formulation="augmented", step_size="adaptive", **kw
    ),
}


def build(
    method: str, problem: PositiveOutputs, lr: float = 0.05, **options: Any
) -> ConstrainedOptimizer:
    primal = torch.optim.SGD(problem.primal_parameters(), lr=lr)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=lr, maximize=True)
    return BUILDERS[method](problem, primal, dual, **options)


# Gradient clipping.


def _network_move(problem: PositiveOutputs, before: list[Tensor]) -> float:
    moves = [param.detach() - old for param, old in zip(problem.network.parameters(), before)]
    return float(torch.linalg.vector_norm(torch.cat([move.flatten() for move in moves])))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(BUILDERS))
def test_gradient_hook_clips_every_evaluation(device: str, method: str) -> None:
    """The hook runs once after every backward pass, before the update reads the gradients:
    with SGD every step moves the network by at most ``lr * max_norm``, while without the
    hook it moves further."""
    max_norm, lr = 0.05, 0.05
    moves = {}
    for clipped in (False, True):
        problem, inputs, targets = network_problem(device)
        calls: list[Tensor] = []

        def clip(problem: PositiveOutputs = problem, calls: list[Tensor] = calls) -> None:
            calls.append(torch.nn.utils.clip_grad_norm_(problem.network.parameters(), max_norm))

        optimizer = build(method, problem, lr=lr, gradient_hook=clip if clipped else None)
        closure = closure_of(problem, inputs, targets)
        largest = 0.0
        for _ in range(5):
            before = [param.detach().clone() for param in problem.network.parameters()]
            factor = optimizer.step_factor if isinstance(optimizer, ExtraGradient) else 1.0
            count = len(calls)
            result = optimizer.step(closure)
            largest = max(largest, _network_move(problem, before) / (lr * factor))
            if clipped:
                assert len(calls) - count == result.evaluations
        moves[clipped] = largest
    assert moves[True] <= max_norm * (1 + 1e-9)
    assert moves[False] > 2 * max_norm


def test_clipped_simultaneous_step_is_the_clipped_gradient_step() -> None:
    """The first step's primal move is ``-lr`` times the clipped gradient of the Lagrangian
    (multipliers 0 at the start, so the objective's gradient)."""
    problem, inputs, targets = network_problem("cpu")
    loss = nn.functional.mse_loss(problem.network(inputs), targets)
    grads = torch.autograd.grad(loss, list(problem.network.parameters()))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    max_norm = float(norm) / 4
    start = [param.detach().clone() for param in problem.network.parameters()]
    optimizer = build(
        "simultaneous",
        problem,
        gradient_hook=lambda: torch.nn.utils.clip_grad_norm_(
            problem.network.parameters(), max_norm
        ),
    )
    optimizer.step(closure_of(problem, inputs, targets))
    for param, before, grad in zip(problem.network.parameters(), start, grads):
        torch.testing.assert_close(param.detach(), before - 0.05 * grad * (max_norm / norm))


@pytest.mark.parametrize("method", list(BUILDERS))
def test_a_gradient_hook_that_raises_changes_nothing(method: str) -> None:
    problem, inputs, targets = network_problem("cpu")
    calls = {"n": 0}

    def hook() -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # the second step, whatever its evaluations
            raise RuntimeError("hook failed")

    optimizer = build(method, problem, gradient_hook=hook)
    closure = closure_of(problem, inputs, targets)
    while calls["n"] < 2:
        optimizer.step(closure)
    calls["n"] = 3
    before = snapshot(problem, optimizer)
    with pytest.raises(RuntimeError, match="hook failed"):
        optimizer.step(closure)
    assert_bitwise_equal(snapshot(problem, optimizer), before)


def test_a_gradient_hook_that_makes_a_gradient_nan_is_named() -> None:
    problem, inputs, targets = network_problem("cpu")

    def poison() -> None:
        first = next(problem.network.parameters())
        assert first.grad is not None
        first.grad[0, 0] = math.nan

    optimizer = build("simultaneous", problem, gradient_hook=poison)
    with pytest.raises(
        NonFiniteError, match=re.escape("the gradient of parameter 'network.0.weight'")
    ):
        optimizer.step(closure_of(problem, inputs, targets))


def test_gradient_hook_must_be_callable() -> None:
    problem = QuadraticProgram()
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.1)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    with pytest.raises(TypeError, match=re.escape("gradient_hook must be callable, got float")):
        SimultaneousGDA(problem, primal, dual, gradient_hook=1.0)  # type: ignore[arg-type]


# Several primal optimizers.


def _encoder_head(problem: PositiveOutputs) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    encoder = list(problem.network[0].parameters())
    head = [*problem.network[2].parameters(), *problem.slack_parameters()]
    return encoder, head


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(BUILDERS))
def test_two_sgd_optimizers_equal_one_with_two_groups(device: str, method: str) -> None:
    problem, inputs, targets = network_problem(device)
    encoder, head = _encoder_head(problem)
    group = [torch.optim.SGD(encoder, lr=0.05), torch.optim.SGD(head, lr=0.02)]
    reference, _, _ = network_problem(device)
    ref_encoder, ref_head = _encoder_head(reference)
    single = torch.optim.SGD(
        [{"params": ref_encoder, "lr": 0.05}, {"params": ref_head, "lr": 0.02}]
    )
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.05, maximize=True)
    ref_dual = torch.optim.SGD(reference.dual_parameters(), lr=0.05, maximize=True)
    optimizer = BUILDERS[method](problem, group, dual)
    expected = BUILDERS[method](reference, single, ref_dual)
    assert isinstance(optimizer.primal_optimizer, OptimizerGroup)
    for _ in range(10):
        optimizer.step(closure_of(problem, inputs, targets))
        expected.step(closure_of(reference, inputs, targets))
    for mine, theirs in zip(problem.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_adam_encoder_sgd_head_equals_a_hand_written_loop(device: str) -> None:
    """Simultaneous descent-ascent with Adam on the encoder and SGD on the head is the
    loop a user would write by hand: one backward of the Lagrangian, every optimizer steps."""
    problem, inputs, targets = network_problem(device)
    encoder, head = _encoder_head(problem)
    optimizer = SimultaneousGDA(
        problem,
        [torch.optim.Adam(encoder, lr=0.01), torch.optim.SGD(head, lr=0.05, momentum=0.9)],
        torch.optim.SGD(problem.dual_parameters(), lr=0.05, maximize=True),
    )
    reference, _, _ = network_problem(device)
    ref_encoder, ref_head = _encoder_head(reference)
    adam = torch.optim.Adam(ref_encoder, lr=0.01)
    sgd = torch.optim.SGD(ref_head, lr=0.05, momentum=0.9)
    multiplier = reference.declared()["nonnegative"].multiplier
    assert multiplier is not None
    for _ in range(10):
        optimizer.step(closure_of(problem, inputs, targets))
        predictions = reference.network(inputs)
        loss = nn.functional.mse_loss(predictions, targets)
        # g = -prediction <= 0; each sample's term averaged over the batch.
        lagrangian = loss + (multiplier * -predictions).sum() / SAMPLES
        adam.zero_grad()
        sgd.zero_grad()
        lagrangian.backward()
        with torch.no_grad():
            multiplier.add_(-predictions.detach(), alpha=0.05).clamp_(min=0)
        adam.step()
        sgd.step()
    for mine, theirs in zip(problem.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", list(BUILDERS))
def test_an_optimizer_group_checkpoints_and_rolls_back(method: str) -> None:
    problem, inputs, targets = network_problem("cpu", treatment="slack")

    def make(problem: PositiveOutputs) -> ConstrainedOptimizer:
        encoder, head = _encoder_head(problem)
        return BUILDERS[method](
            problem,
            [torch.optim.Adam(encoder, lr=0.01), torch.optim.Adam(head, lr=0.02)],
            torch.optim.SGD(problem.dual_parameters(), lr=0.05, maximize=True),
        )

    optimizer = make(problem)
    closure = closure_of(problem, inputs, targets)
    for _ in range(3):
        optimizer.step(closure)
    saved = snapshot(problem, optimizer)
    group = optimizer.primal_optimizer
    assert isinstance(group, OptimizerGroup)
    handle = group.optimizers[1].register_step_post_hook(
        lambda *_: (_ for _ in ()).throw(ValueError("late"))
    )
    with pytest.raises(ValueError, match="late"):
        optimizer.step(closure)
    assert_bitwise_equal(snapshot(problem, optimizer), saved)
    handle.remove()
    for _ in range(3):
        optimizer.step(closure)
    resumed_problem = copy.deepcopy(problem)
    resumed_problem.load_state_dict(saved["problem"])
    resumed = make(resumed_problem)
    resumed.load_state_dict(copy.deepcopy(saved["optimizer"]))
    resumed_closure = closure_of(resumed_problem, inputs, targets)
    for _ in range(3):
        resumed.step(resumed_closure)
    assert_bitwise_equal(snapshot(resumed_problem, resumed), snapshot(problem, optimizer))


def _with_lr(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(params, lr=0.1)
    optimizer.param_groups[0]["lr"] = lr  # torch checks only at build
    return optimizer


BAD_GROUPS: list[tuple[Callable[[list[nn.Parameter]], Any], type[Exception], str]] = [
    (lambda params: [], ValueError, "an optimizer group needs at least one optimizer"),
    (
        lambda params: [torch.optim.SGD(params, lr=0.1), torch.optim.SGD(params[:1], lr=0.1)],
        ValueError,
        "a parameter of shape (8, 4) is in two optimizers of the group (the second is optimizer 1)",
    ),
    (
        lambda params: params,
        TypeError,
        "the primal optimizer must be a torch.optim.Optimizer or a list of them, got list of "
        "Parameter",
    ),
    (
        lambda params: [torch.optim.SGD(params[:2], lr=0.1), _with_lr(params[2:], math.inf)],
        ValueError,
        "Invalid learning rate in the primal (group member 1) optimizer (param group 0): inf",
    ),
    (
        lambda params: [torch.optim.LBFGS(params)],
        TypeError,
        "the primal (group member 0) optimizer LBFGS needs a closure in step()",
    ),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD_GROUPS)
def test_bad_groups_are_refused(
    make: Callable[[list[nn.Parameter]], Any], error: type[Exception], message: str
) -> None:
    problem, _, _ = network_problem("cpu")
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    with pytest.raises(error, match=re.escape(message)):
        SimultaneousGDA(problem, make(problem.primal_parameters()), dual)


def test_a_group_refuses_new_param_groups_and_wrong_checkpoints() -> None:
    problem, _, _ = network_problem("cpu")
    encoder, head = _encoder_head(problem)
    group = OptimizerGroup([torch.optim.SGD(encoder, lr=0.1), torch.optim.SGD(head, lr=0.1)])
    with pytest.raises(TypeError, match="add the param group to one of the group's optimizers"):
        group.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    with pytest.raises(
        ValueError, match=re.escape("state_dict holds 1 optimizer states; this group has 2")
    ):
        group.load_state_dict({"optimizers": [group.optimizers[0].state_dict()]})


def test_an_indexed_slack_in_a_non_elementwise_member_is_refused() -> None:
    problem, _, _ = network_problem("cpu", treatment="slack")
    encoder, head = _encoder_head(problem)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    with pytest.raises(
        TypeError, match="constraint 'nonnegative' is indexed: the primal optimizer"
    ):
        SimultaneousGDA(
            problem, [torch.optim.SGD(encoder, lr=0.1), torch.optim.Adafactor(head)], dual
        )


# Mixed precision and loss scaling.


def _scaler(device: str, **options: Any) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(BUILDERS))
def test_an_overflowing_step_is_skipped_and_changes_nothing(device: str, method: str) -> None:
    """A scale so large that the scaled gradients overflow float32: the step is skipped,
    nothing moves, the scale backs off; once it fits, every step equals the unscaled run's
    bitwise (a power of two scales exactly)."""
    problem, inputs, targets = network_problem(device, dtype=torch.float32, target_scale=30.0)
    reference = copy.deepcopy(problem)
    scaler = _scaler(device, init_scale=2.0**127, growth_interval=1000)
    optimizer = build(method, problem, grad_scaler=scaler)
    expected = build(method, reference)
    closure = closure_of(problem, inputs, targets)
    before = snapshot(problem, optimizer)
    result = optimizer.step(closure)
    assert result.skipped
    assert result.evaluations >= 1 and math.isfinite(float(result.objective))
    assert scaler.get_scale() == 2.0**126
    after = snapshot(problem, optimizer)
    assert_bitwise_equal(after["problem"], before["problem"])
    assert_bitwise_equal(after["optimizer"]["primal"], before["optimizer"]["primal"])
    skipped = 1
    for _ in range(200):
        if not optimizer.step(closure).skipped:
            break
        skipped += 1
    else:
        pytest.fail("the scale never backed off enough")
    assert scaler.get_scale() == 2.0 ** (127 - skipped)
    reference_closure = closure_of(reference, inputs, targets)
    expected.step(reference_closure)
    for _ in range(4):
        assert not optimizer.step(closure).skipped
        expected.step(reference_closure)
    for mine, theirs in zip(problem.parameters(), reference.parameters()):
        assert torch.equal(mine, theirs)


def test_the_scale_grows_after_its_interval_and_checkpoints() -> None:
    problem, inputs, targets = network_problem("cpu", dtype=torch.float32)
    scaler = _scaler("cpu", init_scale=4.0, growth_interval=3)
    optimizer = build("extragradient", problem, grad_scaler=scaler)
    closure = closure_of(problem, inputs, targets)
    for _ in range(2):
        optimizer.step(closure)
    assert scaler.get_scale() == 4.0
    state = copy.deepcopy(optimizer.state_dict())
    assert state["steps_without_skip"] == 2
    optimizer.step(closure)
    assert scaler.get_scale() == 8.0
    assert optimizer.state_dict()["steps_without_skip"] == 0
    optimizer.load_state_dict(state)
    assert optimizer.state_dict()["steps_without_skip"] == 2
    unscaled = build("extragradient", problem)
    with pytest.raises(
        ValueError, match="state_dict and this optimizer disagree on having a grad_scaler"
    ):
        unscaled.load_state_dict(state)


def test_a_value_that_is_not_finite_still_raises_under_loss_scaling() -> None:
    problem, inputs, targets = network_problem("cpu", dtype=torch.float32)
    optimizer = build("simultaneous", problem, grad_scaler=_scaler("cpu"))
    bad = targets.clone()
    bad[3, 0] = math.nan
    with pytest.raises(NonFiniteError, match="objective is not finite"):
        optimizer.step(closure_of(problem, inputs, bad))


def test_a_disabled_scaler_is_no_scaler_and_a_wrong_one_is_refused() -> None:
    problem, inputs, targets = network_problem("cpu")
    reference = copy.deepcopy(problem)
    optimizer = build("simultaneous", problem, grad_scaler=_scaler("cpu", enabled=False))
    expected = build("simultaneous", reference)
    for _ in range(3):
        optimizer.step(closure_of(problem, inputs, targets))
        expected.step(closure_of(reference, inputs, targets))
    assert_bitwise_equal(problem.state_dict(), reference.state_dict())
    with pytest.raises(
        TypeError, match=re.escape("grad_scaler must be a torch.amp.GradScaler, got float")
    ):
        build("simultaneous", problem, grad_scaler=1.0)


AUTOCAST = [("cpu", torch.bfloat16)] + (
    [("cuda", torch.float16), ("cuda", torch.bfloat16)] if torch.cuda.is_available() else []
)


AUTOCAST_RUNS: dict[str, tuple[Callable[..., ConstrainedOptimizer], int]] = {
    "extragradient": (
        lambda problem, **kw: build(
            "extragradient", problem, lr=0.1, formulation="augmented", **kw
        ),
        300,
    ),
    "default": (default_optimizer, 150),
}


def _autocast_run(device: str, dtype: torch.dtype | None, run: str) -> tuple[float, float]:
    """The final loss and smallest prediction of an AUTOCAST_RUNS run, under autocast to
    ``dtype`` (with a scaler for float16), or in float32 (``None``)."""
    make, steps = AUTOCAST_RUNS[run]
    problem, inputs, targets = network_problem(device, dtype=torch.float32)
    scaler = _scaler(device) if dtype == torch.float16 else None
    optimizer = make(problem, grad_scaler=scaler)
    closure = closure_of(problem, inputs, targets)
    skips = []
    for _ in range(steps):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            skips.append(optimizer.step(closure).skipped)
    # float16's first steps may overflow the scaler's initial scale, and only those (4
    # with the default: its per-sample penalty, 16 times stiffer, makes the first
    # gradients larger, and the scale halves once more).
    skipped = sum(skips)
    assert skipped <= (4 if scaler is not None else 0)
    assert not any(skips[skipped:])
    with torch.no_grad():
        predictions = problem.network(inputs)
    return float(nn.functional.mse_loss(predictions, targets)), float(predictions.min())


@functools.cache
def _float32_run(device: str, run: str) -> tuple[float, float]:
    """The float32 run of ``run``, made once and shared by the autocast dtypes."""
    return _autocast_run(device, None, run)


@pytest.mark.parametrize("run", list(AUTOCAST_RUNS))
@pytest.mark.parametrize(("device", "dtype"), [*AUTOCAST, ("cpu", torch.float16)])
def test_autocast_training_matches_float32(device: str, dtype: torch.dtype, run: str) -> None:
    """Extra-gradient (fixed step; the default's configuration) trained under autocast
    (with a scaler for float16) ends within the precision's tolerance of the float32 run."""
    loss32, min32 = _float32_run(device, run)
    loss_low, min_low = _autocast_run(device, dtype, run)
    # bfloat16 keeps 8 bits of mantissa: the runs agree to a few of its units.
    assert abs(loss_low - loss32) <= 5e-3, (loss32, loss_low)
    assert abs(min_low - min32) <= 2e-2, (min32, min_low)
    assert min32 > -0.1, "the run must have moved towards the feasible set"


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize("method", list(BUILDERS))
def test_every_evaluation_under_autocast_sees_the_moved_parameters(
    device: str, dtype: torch.dtype, method: str
) -> None:
    """Autocast caches its casts of the parameters for the whole region, which holds the
    step: the step clears the cache before each evaluation, so that a run equals, bitwise,
    one under autocast without a cache (extra-gradient would otherwise evaluate its
    extrapolated point with the start point's casts)."""
    runs = []
    for cache_enabled in (True, False):
        problem, inputs, targets = network_problem(device, dtype=torch.float32)
        optimizer = build(method, problem, lr=0.1)
        closure = closure_of(problem, inputs, targets)
        with torch.autocast(device, dtype=dtype, cache_enabled=cache_enabled):
            for _ in range(5):
                optimizer.step(closure)
        runs.append(problem.state_dict())
    assert_bitwise_equal(runs[0], runs[1])
