"""A method's process group: checked, and where its collectives' tensors live."""

from __future__ import annotations

import torch
from torch import distributed as dist
from torch import nn


def device_of(group: dist.ProcessGroup | None, problem: nn.Module) -> torch.device:
    """Where the tensors of the collectives live: the CPU for gloo (which does not take
    CUDA tensors in every collective), else the device of the problem's first parameter
    (NCCL takes CUDA tensors only). Every payload is moved there and back."""
    if dist.get_backend(group) == dist.Backend.GLOO:
        return torch.device("cpu")
    for param in problem.parameters():
        return param.device
    return torch.device("cuda", torch.cuda.current_device())


def is_process_group(value: object) -> bool:
    return dist.is_available() and isinstance(value, dist.ProcessGroup)
