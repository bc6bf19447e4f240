"""The default configuration, chosen by the convergence benchmark (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import distributed as dist

from ._extragradient import ExtraGradient
from ._optimizers import GradientHook
from ._problem import ConstrainedProblem

DEFAULT_LR = 1.0
"""Primal learning rate of :func:`default_optimizer` (plain SGD) at step factor 1."""

DEFAULT_DUAL_LR = 1.0
"""Dual learning rate of :func:`default_optimizer` (plain SGD ascent) at step factor 1."""


def default_optimizer(
    problem: ConstrainedProblem,
    lr: float = DEFAULT_LR,
    dual_lr: float = DEFAULT_DUAL_LR,
    *,
    process_group: dist.ProcessGroup | Literal["default"] | None = None,
    gradient_hook: GradientHook | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> ExtraGradient:
    """The configuration that needs no tuning: extra-gradient on the augmented Lagrangian,
    with a backtracking step, gradient-based scaling at the first step and the
    penalty-update rule (docs/core.md; docs/benchmarks.md has what it solves).

    With :math:`z = (x, \\lambda)`, the operator :math:`F` of the scaled augmented
    Lagrangian and a step factor :math:`t` that the backtracking chooses each step:

    .. math::

        z_{k+1/2} = P(z_k - t D F(z_k)), \\qquad z_{k+1} = P(z_k - t D F(z_{k+1/2})),
        \\qquad D = \\operatorname{diag}(\\eta_x, \\eta_\\lambda c \\min(1, 1/(2t)))

    where :math:`P` projects the bounded parameters onto their boxes and inequality
    multipliers onto :math:`\\ge 0`. Every evaluation of a step draws the same random
    numbers (dropout masks) and the running statistics of normalisation layers are updated
    once per step (``same_randomness=True``): the backtracking test then compares the
    operator at two points, not two draws.

    Args:
        problem: The problem; its primal parameters (slacks included; under the augmented
            Lagrangian they take no step) get ``lr``, its multipliers ``dual_lr``.
        lr: Primal learning rate at step factor 1 (plain SGD).
        dual_lr: Dual learning rate at step factor 1, before the penalty coefficient.
        process_group: Data-parallel training over this ``torch.distributed`` process group
            (``"default"``: the default group; docs/distributed.md): the scales are
            measured on the whole batch, the backtracking test is rank 0's and the
            penalty-update rule reads the whole batch's violations, so every rank takes
            the same step.
        gradient_hook: Runs after every backward pass, before the gradients are used
            (gradient clipping; docs/training.md).
        grad_scaler: Loss scaling for float16 autocast, driven by the step
            (docs/training.md).

    Example:
        >>> from lagrange_opt import default_optimizer
        >>> from lagrange_opt.problems import HOCK_SCHITTKOWSKI, NonlinearProgram
        >>> problem = NonlinearProgram(HOCK_SCHITTKOWSKI["hs071"], treatment="slack")
        >>> optimizer = default_optimizer(problem)
        >>> for _ in range(500):
        ...     result = optimizer.step(problem)
        >>> [round(v, 4) for v in problem.x.tolist()]
        [1.0, 4.743, 3.8211, 1.3794]
    """
    multipliers = problem.dual_parameters()
    dual = torch.optim.SGD(multipliers, lr=dual_lr, maximize=True) if multipliers else None
    return ExtraGradient(
        problem, torch.optim.SGD(problem.primal_parameters(), lr=lr), dual,
        formulation="augmented", scaling=True, step_size="adaptive", same_randomness=True,
        process_group=process_group, gradient_hook=gradient_hook, grad_scaler=grad_scaler,
    )  # fmt: skip
