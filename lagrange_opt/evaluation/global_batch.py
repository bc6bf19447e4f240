"""An indexed constraint's batch over every rank, and a dense value averaged over the ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class GlobalBatch:
    """An indexed constraint's batch over every rank, in rank order.

    Attributes:
        indices: Every rank's indices, concatenated.
        standard: Every rank's value in standard form, detached, in the table's dtype.
        local: This rank's entries within them (empty on a rank that did not observe it).
        share: The batch's entries per rank (``len(indices) / world_size``): each rank's
            cotangents are divided by it, not by the rank's own entries, so that DDP's
            average of the ranks' gradients is the whole batch's mean whatever the ranks'
            shares (equal to dividing by the rank's entries for equal shards).
    """

    __slots__ = ("indices", "local", "share", "standard")

    def __init__(self, indices: Tensor, standard: Tensor, local: slice, share: float) -> None:
        self.indices = indices
        self.standard = standard
        self.local = local
        self.share = share


class Substitute(torch.autograd.Function):
    """The averaged value in the forward pass, the cotangent times ``scale`` in the
    backward pass: the cotangent of the average reaches the rank's own value, scaled by
    ``world_size / ranks that observed it`` (1 where every rank did), so that DDP's average
    over every rank is the average over those ranks."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, replacement: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return replacement.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        scale: float = ctx.scale
        return (grad if scale == 1.0 else grad * scale), None, None
