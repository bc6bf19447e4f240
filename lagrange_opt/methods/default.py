"""The default configuration, chosen by the convergence benchmark (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import distributed as dist

from lagrange_opt.maths.augmented import AugmentedLagrangian
from lagrange_opt.methods.base import GradientHook, PrimalOptimizer
from lagrange_opt.methods.extragradient import ExtraGradient
from lagrange_opt.methods.gda import SimultaneousGDA
from lagrange_opt.problem.constrained_problem import ConstrainedProblem

DEFAULT_LR = 1.0
"""Primal learning rate of :func:`default_optimizer` (plain SGD) at step factor 1."""

DEFAULT_DUAL_LR = 1.0
"""Dual learning rate of :func:`default_optimizer` (plain SGD ascent) at step factor 1."""

DEFAULT_AUGMENTED = AugmentedLagrangian(sample_penalty=16.0, margin_rate=1.0, runaway_check=10)
"""The default's augmented Lagrangian: per-sample (indexed) inequalities get a penalty 16
times stiffer and self-tuned margins (docs/stochastic.md), and every 10 steps a check that
the run is not leaving the constraint set; the rest is :class:`AugmentedLagrangian`'s
defaults."""

USER_PRIMAL_DUAL_LR = 0.1
"""Dual learning rate of :func:`default_optimizer` with the user's primal optimizer: a tenth
of the method of multipliers' step (the multipliers' gradient carries the penalty ``c``)."""


@overload
def default_optimizer(
    problem: ConstrainedProblem,
    lr: float = ...,
    dual_lr: float = ...,
    *,
    primal_optimizer: None = None,
    process_group: dist.ProcessGroup | Literal["default"] | None = None,
    gradient_hook: GradientHook | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> ExtraGradient: ...


@overload
def default_optimizer(
    problem: ConstrainedProblem,
    lr: float = ...,
    dual_lr: float = ...,
    *,
    primal_optimizer: PrimalOptimizer,
    process_group: dist.ProcessGroup | Literal["default"] | None = None,
    gradient_hook: GradientHook | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> SimultaneousGDA: ...


def default_optimizer(
    problem: ConstrainedProblem,
    lr: float = DEFAULT_LR,
    dual_lr: float = DEFAULT_DUAL_LR,
    *,
    primal_optimizer: PrimalOptimizer | None = None,
    process_group: dist.ProcessGroup | Literal["default"] | None = None,
    gradient_hook: GradientHook | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> ExtraGradient | SimultaneousGDA:
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

    Per-sample (indexed) inequalities evaluated on minibatches get a stiffer penalty, a
    method-of-multipliers step of their batch's rows that does not follow ``t`` and a
    self-tuned margin (:class:`AugmentedLagrangian`, docs/stochastic.md): the final
    iterate then meets them on the training samples under minibatch noise.

    **With your own primal optimizer** (``primal_optimizer=``: Adam at its usual rate, with
    a learning-rate scheduler if you use one), the method is simultaneous descent-ascent
    (one closure call per step) on the same augmented Lagrangian with the same scaling,
    margins and penalty rule; the multipliers ascend by a tenth of the method of
    multipliers' step (:data:`USER_PRIMAL_DUAL_LR`). Use it to train networks; the
    backtracking default (SGD) is for problems where you want the solution to solver
    precision with nothing to choose.

    Args:
        problem: The problem; its primal parameters (slacks included; under the augmented
            Lagrangian they take no step) get ``lr``, its multipliers ``dual_lr``.
        lr: Primal learning rate at step factor 1 (plain SGD); not used with
            ``primal_optimizer``.
        dual_lr: Dual learning rate at step factor 1, before the penalty coefficient
            (with ``primal_optimizer``: :data:`USER_PRIMAL_DUAL_LR` unless given).
        primal_optimizer: Your optimizer (or a list of them) over
            ``problem.primal_parameters()``; ``None``: the backtracking extra-gradient
            with plain SGD.
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
    if primal_optimizer is not None:
        if lr != DEFAULT_LR:
            raise ValueError("lr is the default's own SGD rate: set it on primal_optimizer")
        given = dual_lr != DEFAULT_DUAL_LR
        return SimultaneousGDA(
            problem, primal_optimizer,
            _dual_optimizer(problem, dual_lr if given else USER_PRIMAL_DUAL_LR),
            formulation=DEFAULT_AUGMENTED._replace(penalty_dual_step=True), scaling=True,
            process_group=process_group, gradient_hook=gradient_hook, grad_scaler=grad_scaler,
        )  # fmt: skip
    dual = _dual_optimizer(problem, dual_lr)
    return ExtraGradient(
        problem, torch.optim.SGD(problem.primal_parameters(), lr=lr), dual,
        formulation=DEFAULT_AUGMENTED, scaling=True, step_size="adaptive",
        same_randomness=True,
        process_group=process_group, gradient_hook=gradient_hook, grad_scaler=grad_scaler,
    )  # fmt: skip


def _dual_optimizer(problem: ConstrainedProblem, lr: float) -> torch.optim.SGD | None:
    """Plain SGD ascent on the multipliers: the dense ones in one group, the per-sample
    tables in another (each step of the default moves them by its own rule)."""
    indexed = {
        id(constraint.multiplier)
        for _, constraint in problem.constraint_items()
        if constraint.spec.indexed
    }
    multipliers = problem.dual_parameters()
    groups = [
        {"params": [p for p in multipliers if (id(p) in indexed) == per_sample]}
        for per_sample in (False, True)
    ]
    groups = [group for group in groups if group["params"]]
    return torch.optim.SGD(groups, lr=lr, maximize=True) if groups else None
