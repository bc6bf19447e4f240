"""Gradient-based scaling of the objective and the constraints, measured once.

As in IPOPT (Wachter and Biegler 2006, Sec. 3.8) and ALGENCAN, each function is divided by
the largest entry of its gradient at the first point, if that is above one:

.. math::

    s_f = \\max(1, \\lVert \\nabla f(x_0) \\rVert_\\infty), \\qquad
    s_{g_i} = \\max(1, \\lVert \\nabla g_i(x_0) \\rVert_\\infty)

so that a first step of unit size moves no variable by more than its unit. A dense
constraint gets one scale per element (up to :data:`MAX_ROWS` elements, each a backward
pass; a larger one gets the largest of its first :data:`MAX_ROWS` as one scale); an indexed
constraint one scale, the largest over its first rows in the batch (its rows are samples of
one kind).

A constraint not observed at the first step (left out of the closure's result, or with no
sample in the batch) keeps the scale 1 for the whole run: measuring it later would cost a
closure call at a step of its own, and change its units mid-run. The scales are tensors
in the dtype of the constraint's multipliers (the dual side's, see :mod:`._evaluation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._formulation import Scales
from ._problem import ConstrainedProblem, ProblemState
from ._validation import NonFiniteError, check_state

MAX_ROWS = 64
"""Constraint elements whose gradients are measured one by one."""


def _grad_inf_norm(label: str, output: Tensor, params: Sequence[Tensor]) -> float:
    """``max(1, ||d output / d params||_inf)``."""
    if not bool(torch.isfinite(output.detach())):
        raise NonFiniteError(f"{label} is not finite at the first point: {float(output.detach())}")
    if not output.requires_grad:
        return 1.0
    grads = torch.autograd.grad(output, params, retain_graph=True, allow_unused=True)
    largest = max(
        (float(grad.abs().amax()) for grad in grads if grad is not None and grad.numel()),
        default=0.0,
    )
    if not largest < float("inf"):
        raise NonFiniteError(f"the gradient of {label} at the first point is not finite")
    return max(1.0, largest)


def measure_scales(
    problem: ConstrainedProblem, closure: Callable[[], ProblemState], params: Sequence[Tensor]
) -> Scales:
    """Calls the closure once and measures every scale from its gradients.

    Args:
        problem: The problem.
        closure: Evaluates it (the first step's batch).
        params: The primal parameters the gradients are taken with respect to.

    Returns:
        The objective's scale and, for every constraint with multipliers, its scales, in
        its multipliers' dtype and on their device (1 for a constraint not observed).

    Raises:
        NonFiniteError: If a value or a gradient at the first point is not finite, naming
            the objective or the constraint element.
    """
    params = [param for param in params if param.requires_grad]
    with torch.enable_grad():
        objective, checked = check_state(problem, closure())
        objective_scale = _grad_inf_norm("the objective", objective, params)
        scales = {
            name: torch.ones((), dtype=multiplier.dtype, device=multiplier.device)
            for name, constraint in problem.constraint_items()
            if (multiplier := constraint.multiplier) is not None
        }
        for name, constraint, value, indices in checked:
            multiplier = constraint.multiplier
            if multiplier is None:
                continue
            flat = value.reshape(-1)
            rows = [
                _grad_inf_norm(f"constraint '{name}' (element {i})", flat[i], params)
                for i in range(min(MAX_ROWS, flat.numel()))
            ]
            if indices is None and flat.numel() <= MAX_ROWS:
                scale = torch.tensor(rows, dtype=multiplier.dtype).reshape(value.shape)
            else:
                scale = torch.tensor(max(rows), dtype=multiplier.dtype)
            scales[name] = scale.to(multiplier.device)
    return Scales(objective_scale, scales)
