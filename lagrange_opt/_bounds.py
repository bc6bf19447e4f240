"""Bounds on parameters, kept by projection (declared with
:meth:`~lagrange_opt.ConstrainedProblem.add_bounds`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Bounds(nn.Module):
    """A box ``lower <= param <= upper`` on one parameter, kept by projection.

    Attributes:
        lower: Lower bounds, the parameter's shape, ``-inf`` where there is none.
        upper: Upper bounds, the parameter's shape, ``inf`` where there is none.
    """

    lower: Tensor
    upper: Tensor

    def __init__(self, lower: Tensor, upper: Tensor) -> None:
        super().__init__()
        self.register_buffer("lower", lower)
        self.register_buffer("upper", upper)

    def project_(self, param: Tensor) -> None:
        """Clamps ``param`` onto the box, in place."""
        with torch.no_grad():
            torch.clamp(param, self.lower, self.upper, out=param)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.lower.shape)}"


def bound_tensor(side: str, bound: Any, param: Tensor, fill: float) -> Tensor:
    """A bound as a tensor of the parameter's shape, dtype and device."""
    shape = tuple(param.shape)
    if bound is None:
        return torch.full(shape, fill, dtype=param.dtype, device=param.device)
    if isinstance(bound, Tensor):
        if bound.dtype != param.dtype:
            raise TypeError(
                f"the {side} bound has dtype {bound.dtype}, the parameter {param.dtype}"
            )
        try:
            expanded = bound.detach().to(param.device).expand(shape)
        except RuntimeError:
            raise ValueError(
                f"the {side} bound of shape {tuple(bound.shape)} does not broadcast to the "
                f"parameter's shape {shape}"
            ) from None
    elif isinstance(bound, (int, float)) and not isinstance(bound, bool):
        expanded = torch.full(shape, float(bound), dtype=param.dtype, device=param.device)
    else:
        raise TypeError(
            f"the {side} bound must be a number or a tensor, got {type(bound).__name__}"
        )
    if bool(torch.isnan(expanded).any()):
        raise ValueError(f"the {side} bound has NaN")
    if bool((expanded == -fill).any()):
        raise ValueError(f"the {side} bound has {-fill}: it can never be met")
    return expanded.clone()
