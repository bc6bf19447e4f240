"""The default configuration, chosen by the convergence benchmark (docs/benchmarks.md)."""

from __future__ import annotations

import torch

from ._extragradient import ExtraGradient
from ._problem import ConstrainedProblem

DEFAULT_LR = 1.0
"""Primal learning rate of :func:`default_optimizer` (plain SGD)."""

DEFAULT_DUAL_LR = 1.0
"""Dual learning rate of :func:`default_optimizer` (plain SGD ascent)."""


def default_optimizer(
    problem: ConstrainedProblem, lr: float = DEFAULT_LR, dual_lr: float = DEFAULT_DUAL_LR
) -> ExtraGradient:
    """Extra-gradient with plain SGD on both sides: the configuration that the convergence
    benchmark found to solve the most Hock-Schittkowski problems to 1e-6.

    .. math::

        z_{k+1/2} = z_k - \\eta F(z_k), \\qquad z_{k+1} = z_k - \\eta F(z_{k+1/2}),
        \\qquad \\eta = \\operatorname{diag}(\\eta_x, \\eta_\\lambda)

    Args:
        problem: The problem; its primal parameters (slacks included) get ``lr``, its
            multipliers ``dual_lr``.
        lr: Primal learning rate.
        dual_lr: Dual learning rate.

    Example:
        >>> from lagrange_opt import default_optimizer
        >>> from lagrange_opt.problems import HOCK_SCHITTKOWSKI, NonlinearProgram
        >>> problem = NonlinearProgram(HOCK_SCHITTKOWSKI["hs006"], treatment="projection")
        >>> optimizer = default_optimizer(problem)
        >>> for _ in range(3000):
        ...     result = optimizer.step(problem)
        >>> [round(v, 4) for v in problem.x.tolist()]
        [1.0, 1.0]
    """
    multipliers = problem.dual_parameters()
    dual = torch.optim.SGD(multipliers, lr=dual_lr, maximize=True) if multipliers else None
    return ExtraGradient(
        problem, torch.optim.SGD(problem.primal_parameters(), lr=lr), dual,
        formulation="augmented", scaling=True, step_size="adaptive",
    )  # fmt: skip
