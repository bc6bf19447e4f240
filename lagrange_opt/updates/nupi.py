"""nuPI: a proportional-integral controller on the Lagrange multipliers.

Gradient ascent on a multiplier is an integral controller: the multiplier is the sum of
the constraint's past residuals, so it keeps growing while the constraint is violated
and overshoots once it is satisfied; the iterates oscillate around the feasible boundary.
Sohrabi et al. (ICML 2024, "On PI controllers for updating Lagrange multipliers in
constrained optimization") add a proportional term on a smoothed residual, which reacts
to the residual's change and damps the oscillation.

This module imports from the package only :mod:`..maths.hyperparameters` (which imports nothing
from it): :mod:`.rows` lists :class:`NuPI` among the optimizers whose state is elementwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from lagrange_opt.maths.hyperparameters import check_learning_rate, check_real

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def check_settings(settings: Mapping[str, Any], where: str = "") -> None:
    """Checks NuPI's settings: the constructor's defaults, each param group when it is
    added (its own ``lr``, ``ki``, ``kp``, ``nu`` or the defaults) and each group at every
    step (a user or a scheduler may edit a group between steps). A few reads of host-side
    numbers.

    Args:
        settings: The defaults or a param group.
        where: Names the group in the messages (``" in param group 1"``; empty for the
            constructor's arguments).

    Raises:
        TypeError: If a setting is not a number (``maximize`` not a bool).
        ValueError: If ``lr``, ``ki`` or ``kp`` is negative or not finite, or ``nu`` is
            not in ``[0, 1)``: ``Invalid ki value in param group 1: -1.0``.
    """
    lr = check_real("lr", settings["lr"], where)
    ki = check_real("ki", settings["ki"], where)
    kp = check_real("kp", settings["kp"], where)
    nu = check_real("nu", settings["nu"], where)
    maximize = settings["maximize"]
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize{where} must be a bool, got {type(maximize).__name__}")
    check_learning_rate(lr, where)
    if not (math.isfinite(ki) and ki >= 0.0):
        raise ValueError(f"Invalid ki value{where}: {ki}")
    if not (math.isfinite(kp) and kp >= 0.0):
        raise ValueError(f"Invalid kp value{where}: {kp}")
    if not (0.0 <= nu < 1.0):
        raise ValueError(f"Invalid nu value{where}: {nu}")


class NuPI(torch.optim.Optimizer):
    """The nuPI update of Sohrabi et al. (2024): a PI controller on each multiplier entry.

    With :math:`e_t` the ascent direction of the parameter (its gradient with
    ``maximize=True``, the negated gradient otherwise; for a multiplier, the constraint's
    residual) and :math:`\\xi` an exponential average of it:

    .. math::

        \\xi_t = \\nu \\xi_{t-1} + (1 - \\nu) e_t, \\qquad
        \\lambda_{t+1} = \\lambda_t + \\eta \\left(\\kappa_i e_t
            + \\kappa_p (\\xi_t - \\xi_{t-1})\\right), \\qquad \\xi_{-1} = 0

    ``ki`` is the integral gain (``kp=0, ki=1`` is gradient ascent, ``torch.optim.SGD``
    with ``maximize=True``), ``kp`` the proportional gain and ``nu`` the smoothing of the
    residual that the proportional term reads (``nu=0``: the raw residual; then with
    ``kp=ki`` the step is the optimistic ascent :math:`\\lambda + \\eta \\kappa_i (2 e_t -
    e_{t-1})`). The average starts at zero, so the first step's proportional term is
    :math:`\\kappa_p (1 - \\nu) e_0`: an entry the optimizer has not stepped yet has
    :math:`\\xi = 0`, which is also what the rows of an indexed multiplier table not yet
    seen in a batch hold (the methods step a table's batch rows only, with their rows of
    ``state["xi"]``).

    The state is one tensor per parameter, ``state["xi"]``, of the parameter's shape: the
    optimizer can step a few rows of a table alone. A parameter without a gradient is not
    stepped and its average does not decay. Projection onto :math:`\\lambda \\ge 0` (for
    inequality multipliers) is the method's, after this step; the average is not
    projected.

    Args:
        params: The parameters (the multipliers: ``problem.dual_parameters()``), or param
            groups; each group may set its own ``lr``, ``ki``, ``kp`` and ``nu``.
        lr: The learning rate :math:`\\eta`, ``>= 0`` (0 is the start of a warm-up).
        ki: The integral gain :math:`\\kappa_i`, ``>= 0``.
        kp: The proportional gain :math:`\\kappa_p`, ``>= 0``.
        nu: The smoothing :math:`\\nu` of the proportional term, in ``[0, 1)``.
        maximize: Ascend along the gradient (what a dual optimizer must do); otherwise
            descend.

    Example:
        >>> import torch
        >>> from lagrange_opt import NuPI
        >>> multiplier = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        >>> optimizer = NuPI([multiplier], lr=0.5, ki=1.0, kp=2.0, nu=0.5, maximize=True)
        >>> for residual in (1.0, 1.0, -1.0):
        ...     multiplier.grad = torch.tensor([residual], dtype=torch.float64)
        ...     optimizer.step()
        ...     print(multiplier.item(), optimizer.state[multiplier]["xi"].item())
        1.0 0.5
        1.75 0.75
        0.375 -0.125
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        *,
        ki: float = 1.0,
        kp: float = 0.0,
        nu: float = 0.0,
        maximize: bool = False,
    ) -> None:
        defaults = {"lr": lr, "ki": ki, "kp": kp, "nu": nu, "maximize": maximize}
        check_settings(defaults)
        for key in ("lr", "ki", "kp", "nu"):
            defaults[key] = float(defaults[key])
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group (its own settings, else the defaults), checked first: a group
        refused is not added.

        Raises:
            TypeError, ValueError: As :func:`check_settings`, naming the group's index.
        """
        where = f" in param group {len(self.param_groups)}"
        check_settings({**self.defaults, **param_group}, where)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Takes one step on every parameter with a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (optional, as in torch).

        Returns:
            The closure's loss, or ``None``.

        Raises:
            TypeError, ValueError: If a group's settings are invalid (:func:`check_settings`),
                before anything moves.
        """
        # Every group is checked before any moves: a group edited since it was added
        # raises here with nothing stepped.
        for index, group in enumerate(self.param_groups):
            check_settings(group, f" in param group {index}")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, ki, kp, nu = group["lr"], group["ki"], group["kp"], group["nu"]
            maximize = group["maximize"]
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("NuPI does not support sparse gradients")
                error = grad if maximize else -grad
                state = self.state[param]
                xi = state.get("xi")
                if xi is None:
                    xi = state["xi"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                smoothed = torch.mul(xi, nu).add_(error, alpha=1.0 - nu)
                update = torch.mul(error, ki)
                if kp != 0.0:
                    # The proportional term reads the change of the smoothed residual.
                    update.add_(smoothed - xi, alpha=kp)
                param.add_(update, alpha=lr)
                xi.copy_(smoothed)
        return loss
