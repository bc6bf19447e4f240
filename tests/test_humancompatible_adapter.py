"""The humancompatible-train adapter: its two schemes on a dense and a per-sample problem."""

from __future__ import annotations

import pytest

pytest.importorskip("humancompatible.train")

import torch

from benchmarks.humancompatible_adapter import SCHEMES, HumanCompatibleMethod, Scheme


@pytest.mark.parametrize("scheme", SCHEMES)
def test_solves_a_one_dimensional_problem_with_the_peer_defaults(scheme: Scheme) -> None:
    """min (x - 2)^2 s.t. x <= 1 has x* = 1, lambda* = 2. With SGD at 0.05 and the peer's
    default dual step (0.01), 1600 steps bring x within 2e-3 of 1 and lambda within 4e-3
    of 2 for both schemes (measured; within the test's bounds for good from step 1062);
    the test asks for 1e-2 and 5e-2."""
    x = torch.nn.Parameter(torch.zeros(1))
    method = HumanCompatibleMethod([x], torch.optim.SGD([x], lr=0.05), scheme, 1)
    for _ in range(1600):
        method.step(((x - 2) ** 2).sum(), x - 1, None)
    assert abs(x.item() - 1.0) < 1e-2
    assert abs(method.multipliers.item() - 2.0) < 5e-2


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_equality_has_a_multiplier_of_either_sign(scheme: Scheme) -> None:
    """min x^2 + y^2 s.t. x + y = 2 (first, an equality), y <= 0.5: x* = 1.5, y* = 0.5,
    mu* = -3 (negative: an inequality's clamp at 0 would stop it), lambda* = 2."""
    point = torch.nn.Parameter(torch.zeros(2))
    primal = torch.optim.SGD([point], lr=0.05)
    method = HumanCompatibleMethod([point], primal, scheme, 2, dual_lr=0.05, equalities=1)
    # Measured: within the bounds below for good from step 524 (nupi; 426 for alm).
    for _ in range(800):
        x, y = point.unbind()
        constraints = torch.stack([x + y - 2, y - 0.5])
        method.step(point.square().sum(), constraints, None)
    torch.testing.assert_close(point.detach(), torch.tensor([1.5, 0.5]), atol=1e-2, rtol=0)
    torch.testing.assert_close(method.multipliers, torch.tensor([-3.0, 2.0]), atol=5e-2, rtol=0)


def _samples(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """64 samples of 3 features whose least-squares targets are mostly negative (the
    unconstrained fit violates pred >= 0 by up to ~3.3)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(64, 3, generator=generator)
    targets = features @ torch.tensor([1.0, -2.0, 0.5]) - 1.0
    return features, targets + 0.1 * torch.randn(64, generator=generator)


def _linear(scheme: Scheme, dual_lr: float) -> tuple[torch.nn.Linear, HumanCompatibleMethod]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    params = list(model.parameters())
    primal = torch.optim.SGD(params, lr=0.01)
    return model, HumanCompatibleMethod(params, primal, scheme, 64, dual_lr)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_per_sample_constraints_become_feasible(scheme: Scheme) -> None:
    """Least squares under pred_i >= 0 for each of 64 samples, batches of 16, SGD at 0.01,
    dual step 0.1, 200 epochs. Measured largest final violation: 0.021 (alm) and 0.021
    (nupi) here, at most 0.033 over six data/shuffle seeds; the test asks for 0.1."""
    features, targets = _samples()
    model, method = _linear(scheme, 0.1)
    generator = torch.Generator().manual_seed(100)
    for _ in range(200):
        for batch in torch.randperm(64, generator=generator).split(16):
            pred = model(features[batch]).squeeze(-1)
            method.step(((pred - targets[batch]) ** 2).mean(), -pred, batch)
    with torch.no_grad():
        pred = model(features).squeeze(-1)
    assert (-pred).clamp(min=0).max().item() < 0.1
    multipliers = method.multipliers
    assert multipliers.shape == (64,)
    assert bool((multipliers >= 0).all()) and bool((multipliers > 0).any())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_only_the_batch_rows_move(scheme: Scheme) -> None:
    """Two steps on disjoint batches: each step changes exactly its own batch's rows (nuPI's
    controller state of the first batch must not leak into the second step)."""
    features, targets = _samples()
    model, method = _linear(scheme, 0.1)
    with torch.no_grad():  # every prediction negative: every constraint violated
        model.weight.zero_()
        model.bias.fill_(-1.0)
    before = method.multipliers
    for batch in (torch.arange(0, 16), torch.arange(16, 32)):
        pred = model(features[batch]).squeeze(-1)
        method.step(((pred - targets[batch]) ** 2).mean(), -pred, batch)
        after = method.multipliers
        outside = torch.ones(64, dtype=torch.bool)
        outside[batch] = False
        assert torch.equal(after[outside], before[outside])
        assert bool((after[batch] > before[batch]).all())
        before = after


def test_rejects_bad_inputs() -> None:
    x = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="scheme"):
        HumanCompatibleMethod([x], torch.optim.SGD([x], lr=0.1), "sgd", 2)  # type: ignore[arg-type]
    method = HumanCompatibleMethod([x], torch.optim.SGD([x], lr=0.1), "alm", 4)
    with pytest.raises(ValueError, match="expected 4"):
        method.step(x.sum(), x, None)
    with pytest.raises(ValueError, match="indices"):
        method.step(x.sum(), x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"equalities must lie in \[0, 4\], got 5"):
        HumanCompatibleMethod([x], torch.optim.SGD([x], lr=0.1), "alm", 4, equalities=5)
