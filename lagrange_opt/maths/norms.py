"""Norms of lists of tensors, one operator call per list where torch has the fused forms.

A step reduces every parameter block: its finiteness checks and the adaptive step's test.
Per block that is an operator call each (on a GPU, a kernel launch each, which is what a
step at network sizes pays for); ``torch._foreach_norm`` and ``torch._foreach_sub``
(private) take the whole list in one call. Where torch lacks them the public per-tensor
forms stand in, with the same values on the CPU (the fused forms run the same kernels
there; ``tests/test_norms.py`` checks both paths bitwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each tensor's 2-norm, as a 0-dim tensor of its dtype.

    .. math::

        n_i = \\lVert t_i \\rVert_2

    The tensors must share one device, and record no gradient (gradients, detached
    values), or the call be made under ``torch.no_grad()``: a context costs more than the
    reduction of a small network's blocks on the CPU.

    Example:
        >>> import torch
        >>> [float(n) for n in norms([torch.tensor([3.0, 4.0]), torch.ones(4)])]
        [5.0, 2.0]
    """
    if not tensors:
        return []
    foreach_norm = getattr(torch, "_foreach_norm", None)
    if foreach_norm is None:
        return [torch.linalg.vector_norm(tensor) for tensor in tensors]
    return list(foreach_norm(list(tensors)))


def distances(lefts: Sequence[Tensor], rights: Sequence[Tensor]) -> list[Tensor]:
    """The 2-norm of each pair's difference.

    .. math::

        d_i = \\lVert a_i - b_i \\rVert_2

    The tensors must share one device and record no gradient, as for :func:`norms`.

    Example:
        >>> import torch
        >>> [float(d) for d in distances([torch.tensor([3.0, 4.0])], [torch.zeros(2)])]
        [5.0]
    """
    if not lefts:
        return []
    foreach_sub = getattr(torch, "_foreach_sub", None)
    if foreach_sub is None:
        return [torch.dist(left, right) for left, right in zip(lefts, rights)]
    return norms(foreach_sub(list(lefts), list(rights)))
