"""Bounds on parameters, kept by projection (declared with
:meth:`~lagrange_opt.ConstrainedProblem.add_bounds`)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn


class Bounds(nn.Module):
    """A box ``lower <= param <= upper`` on one parameter, kept by projection.

    Its buffers are in the state of the problem that declared it, once
    (``parameter_bounds.<i>.lower``, ``...upper``), and a loaded box is checked as a declared
    one is (see :meth:`~lagrange_opt.ConstrainedProblem.add_bounds`) before anything loads.

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

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A box loaded on its own (box.load_state_dict) is checked here; within a problem's
        # load the problem has checked every box before anything loaded.
        where = f"the box '{prefix[:-1]}'" if prefix else "the box"
        check_loaded_box(self, state_dict, prefix, where)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _beyond_range(side: str, value: object, param: Tensor, label: str) -> ValueError:
    largest = torch.finfo(param.dtype).max
    return ValueError(
        f"the {side} bound {value!r} of {label} is beyond the range of its dtype "
        f"{param.dtype} (largest finite value {largest}); give a bound within it, or "
        f"{'-inf' if side == 'lower' else 'inf'} (None) for no bound"
    )


def bound_tensor(side: str, bound: Any, param: Tensor, fill: float, label: str) -> Tensor:
    """A bound as a tensor of the parameter's shape, dtype and device.

    Args:
        side: ``"lower"`` or ``"upper"``.
        bound: ``None``, a real number (a Python or NumPy scalar) or a tensor of the
            parameter's dtype.
        param: The parameter.
        fill: The bound where there is none (``-inf`` below, ``inf`` above).
        label: Names the parameter in an error message.
    """
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
    elif isinstance(bound, numbers.Real) and not isinstance(bound, bool):
        # numbers.Real takes NumPy's scalars (numpy.float32 is no Python float) and
        # fractions; torch.full's own overflow error names neither bound nor parameter.
        try:
            value = float(bound)
        except OverflowError:  # an int too large for a float
            raise _beyond_range(side, bound, param, label) from None
        if math.isfinite(value) and abs(value) > torch.finfo(param.dtype).max:
            raise _beyond_range(side, value, param, label)
        expanded = torch.full(shape, value, dtype=param.dtype, device=param.device)
    else:
        raise TypeError(
            f"the {side} bound must be a number or a tensor, got {type(bound).__name__}"
        )
    if bool(torch.isnan(expanded).any()):
        raise ValueError(f"the {side} bound has NaN")
    if bool((expanded == -fill).any()):
        raise ValueError(f"the {side} bound has {-fill}: it can never be met")
    return expanded.clone()


def crossing(lower: Tensor, upper: Tensor) -> str | None:
    """Where ``lower > upper`` first, as ``"lower bound 1.0 > upper bound 0.0 at (0,)"``,
    or ``None`` if nowhere."""
    crossed = (lower > upper).nonzero()
    if not crossed.shape[0]:
        return None
    position = tuple(int(i) for i in crossed[0])
    return (
        f"lower bound {float(lower[position])} > upper bound {float(upper[position])} at {position}"
    )


def _first(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def check_loaded_box(box: Bounds, state_dict: dict[str, Any], prefix: str, where: str) -> None:
    """Raises unless the box that ``state_dict`` holds under ``prefix`` is one that
    :func:`bound_tensor` and ``add_bounds`` accept: tensors of the box's shape and dtype
    (loading would cast another dtype silently), no NaN, no lower bound of ``inf`` or
    upper bound of ``-inf``, and lower at most upper everywhere. A side missing from
    ``state_dict`` keeps its current bound (checked against the other side).

    Args:
        box: The box to be loaded into.
        state_dict: The state being loaded.
        prefix: The box's prefix in ``state_dict``.
        where: Names the box and its parameter in an error message.
    """
    sides: dict[str, Tensor] = {}
    for side, current, never in (("lower", box.lower, math.inf), ("upper", box.upper, -math.inf)):
        key = prefix + side
        if key not in state_dict:
            sides[side] = current
            continue
        loaded = state_dict[key]
        if not isinstance(loaded, Tensor):
            raise TypeError(f"{where}: '{key}' must be a tensor, got {type(loaded).__name__}")
        if loaded.shape != current.shape:
            raise ValueError(
                f"{where}: '{key}' has shape {tuple(loaded.shape)}, the box {tuple(current.shape)}"
            )
        if loaded.dtype != current.dtype:
            raise TypeError(
                f"{where}: '{key}' has dtype {loaded.dtype}, the box {current.dtype} "
                "(problem.to(dtype) sets the box's)"
            )
        if bool(torch.isnan(loaded).any()):
            raise ValueError(f"{where}: '{key}' has NaN at {_first(torch.isnan(loaded))}")
        if bool((loaded == never).any()):
            raise ValueError(
                f"{where}: '{key}' has {never} at {_first(loaded == never)}: it can never be met"
            )
        sides[side] = loaded.to(current.device)
    crossed = crossing(sides["lower"], sides["upper"])
    if crossed is not None:
        raise ValueError(f"{where}: {crossed}")
