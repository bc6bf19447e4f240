"""The finiteness checks' reduction (evaluation/finiteness.py, updates/rollback.py): one
number per tensor, finite if every entry is, through the fused norm and through its
public fallback alike."""

from __future__ import annotations

import math

import pytest
import torch

from lagrange_opt.evaluation.finiteness import finite_numbers
from lagrange_opt.updates.rollback import all_finite, first_non_finite_tensor

INF, NAN = math.inf, math.nan

CASES = [
    ("ones", torch.ones(3), True),
    ("nan", torch.tensor([1.0, NAN, 2.0]), False),
    ("inf", torch.tensor([INF, 1.0]), False),
    ("minus-inf", torch.tensor([[1.0], [-INF]]), False),
    ("float16", torch.full((4,), 100.0, dtype=torch.float16), True),
    ("float64-nan", torch.tensor([NAN], dtype=torch.float64), False),
    ("scalar", torch.tensor(-3.0), True),
    ("empty", torch.empty(0), True),
]  # fmt: skip
"""(name, tensor, whether every entry is finite)."""


@pytest.fixture(params=[True, False], ids=["fused", "public"])
def fused(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if not request.param:
        monkeypatch.delattr(torch, "_foreach_norm")
    return bool(request.param)


def test_one_number_per_tensor_finite_where_every_entry_is(fused: bool) -> None:
    tensors = [tensor for _, tensor, _ in CASES]
    numbers = finite_numbers(tensors)
    assert [bool(torch.isfinite(number)) for number in numbers] == [ok for _, _, ok in CASES]
    assert all(number.ndim == 0 for number in numbers)


def test_parameters_are_read_under_no_grad(fused: bool) -> None:
    weight = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        (number,) = finite_numbers([weight])
        assert all_finite([weight])
    assert number.grad_fn is None and torch.isfinite(number)


def test_all_finite_reads_tensors_and_numbers_together(fused: bool) -> None:
    finite = [torch.randn(5), torch.randn(2, 2, dtype=torch.float64), torch.ones(3).half()]
    assert all_finite(finite, [torch.tensor(1.0)])
    assert not all_finite(finite, [torch.tensor(NAN)])
    for name, tensor, ok in CASES:
        assert all_finite([*finite, tensor]) == ok, name


def test_an_overflowing_norm_is_sent_to_the_search(fused: bool) -> None:
    # Finite entries whose reduction overflows read "not finite"; the detailed search,
    # which checks entry by entry, then finds no culprit and lets them pass.
    large = torch.full((4,), 1e30)
    assert not all_finite([torch.ones(2), large])
    assert first_non_finite_tensor([torch.ones(2), large]) is None
