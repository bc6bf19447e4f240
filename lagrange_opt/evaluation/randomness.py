"""What an evaluation changes besides the parameters: the random number generators' states
and the running statistics of normalisation layers (put back by a rollback, replayed by
gradient accumulation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

RngState = tuple[Tensor, list[Tensor] | None]

NORMALIZATION_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
"""Layers whose forward pass updates buffers (their running statistics)."""


def rng_state() -> RngState:
    """The CPU generator's state and, once CUDA is in use, every CUDA device's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: RngState) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def running_statistics(module: nn.Module) -> list[Tensor]:
    """The buffers that the forward passes of ``module``'s normalisation layers update."""
    return [
        buffer
        for layer in module.modules()
        if isinstance(layer, NORMALIZATION_LAYERS)
        for buffer in layer.buffers(recurse=False)
    ]


class Buffers:
    """A copy of some buffers, to put back."""

    def __init__(self, buffers: Sequence[Tensor]) -> None:
        self._saved = [(buffer, buffer.clone()) for buffer in buffers]

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self._saved:
                buffer.copy_(saved)
