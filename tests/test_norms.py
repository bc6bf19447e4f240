"""The list norms (maths/norms.py): the fused private forms and their public fallbacks give
the same values, bitwise on the CPU, so that the adaptive step's test takes the same
decisions on either path."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bitwise_equal

from lagrange_opt.maths.norms import distances, norms


def _blocks(dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = [(32, 784), (32,), (2, 32), (), (0,)]
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("missing", ["_foreach_norm", "_foreach_sub"])
def test_the_fallbacks_give_the_same_values(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, missing: str
) -> None:
    lefts, rights = _blocks(dtype), [2.0 * block + 1.0 for block in _blocks(dtype)]
    fused = norms(lefts), distances(lefts, rights)
    expected = (
        [torch.linalg.vector_norm(block) for block in lefts],
        [torch.dist(left, right) for left, right in zip(lefts, rights)],
    )
    assert_bitwise_equal(list(fused), list(expected))
    monkeypatch.delattr(torch, missing)
    assert_bitwise_equal([norms(lefts), distances(lefts, rights)], list(expected))


def test_empty_lists() -> None:
    assert norms([]) == [] and distances([], []) == []
