"""The parameters an optimizer steps."""

from __future__ import annotations

import torch
from torch import nn


def params_of(optimizer: torch.optim.Optimizer | None) -> list[nn.Parameter]:
    if optimizer is None:
        return []
    return [param for group in optimizer.param_groups for param in group["params"]]
