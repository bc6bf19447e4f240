"""A cast that costs nothing when there is nothing to cast."""

from __future__ import annotations

import torch
from torch import Tensor


def in_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype``: the tensor itself if it has that dtype, else a cast copy.

    The result of ``tensor.to(dtype)``, without the operator call that ``.to()`` makes
    even when it returns ``tensor`` itself (a dispatch per call on every step; the
    counts of ``benchmarks/op_counts.py``).

    Example:
        >>> import torch
        >>> weights = torch.ones(2)
        >>> in_dtype(weights, torch.float32) is weights
        True
        >>> in_dtype(weights, torch.float64).dtype
        torch.float64
    """
    return tensor if tensor.dtype == dtype else tensor.to(dtype)
