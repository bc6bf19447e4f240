"""The augmented Lagrangian's pieces as small pure functions of tensors.

Beside :mod:`.lagrangian`: each constraint in standard form (``h = 0`` or ``g <= 0``) with
multiplier :math:`\\lambda` and penalty coefficient :math:`c > 0` contributes

.. math::

    \\psi_c(h, \\mu) = \\mu h + \\frac{c}{2} h^2, \\qquad
    \\psi_c(g, \\lambda) = \\frac{\\max(0, \\lambda + c g)^2 - \\lambda^2}{2c}

(Hestenes 1969, Powell 1969, Rockafellar 1973). The inequality's term is the equality term
of ``g + s**2 = 0`` minimised over the slack in closed form,
:math:`s^2 = \\max(0, -g - \\lambda / c)`: the slack treatment keeps its meaning with no
stiff slack variable to step. Every function here is finite for every finite input and every
``c > 0``: nothing divides by ``c`` except ``lambda / c``, which only enters a ``max``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class AugmentedLagrangian(NamedTuple):
    """The augmented Lagrangian formulation and its penalty-update rule.

    Every ``window`` steps, the penalty coefficient of a constraint whose largest violation
    over the window is above ``shrink`` times that of the window before is multiplied by
    ``growth``, up to ``max_penalty`` (the classical rule of the method of multipliers,
    Bertsekas 1982, Sec. 2.2). ``growth=1`` keeps ``c`` fixed. As that method grows the
    penalty only once its inner minimisation is done, a dense constraint's coefficient
    grows only in a window where the primal side has settled (:func:`primal_settled`): an
    iterate still sliding along its active constraints leaves a flat violation that says
    nothing about the penalty (hs118, docs/benchmarks.md).

    Between windows, every ``runaway_check`` steps (off by default here, every 10 steps
    in :func:`~lagrange_opt.default_optimizer`), a constraint whose violation grew past
    1 (scaled) and fourfold while the objective fell has its coefficient grown at once, and
    the run stops with a diagnosis if it is at ``max_penalty`` already (:mod:`.runaway`):
    an objective unbounded below off the constraint set is caught before the iterates
    leave every sane range.

    Per-sample (indexed) inequalities evaluated on minibatches have settings of their own
    (docs/stochastic.md), off by default here and on in
    :func:`~lagrange_opt.default_optimizer` (:data:`~lagrange_opt.DEFAULT_AUGMENTED`).
    Their penalty coefficient is ``sample_penalty`` times a dense constraint's: a sample's
    term is averaged over the batch, so its curvature per sample is ``c / B``, and the
    stiffer penalty holds each visited sample nearer its boundary between visits. And each
    such constraint has a self-tuned margin :math:`m \\ge 0` in its own units, each row a
    margin :math:`e_i \\ge 0` of its own (:mod:`..methods.margins`): its rows enter the augmented
    Lagrangian as :math:`g_i + m + e_i`, and after every step

    .. math::

        m \\leftarrow \\max\\bigl(0, \\; m + \\tfrac{\\eta_m}{L} (w^+ - \\rho \\, w^-)\\bigr)

    with :math:`w` the largest :math:`g_i` over the last epoch's batches among the rows
    that were satisfied at their previous visit (positive when one of them drifted into
    violation), :math:`L` the steps of an epoch, :math:`\\eta_m` = ``margin_rate`` (per
    epoch) and :math:`\\rho` = ``margin_decay``. Under minibatch noise the margin grows
    until the worst drifting row of an epoch is feasible, and the decay being slower than
    the growth keeps it there most of the time. On a
    deterministic problem the active rows settle at :math:`g_i = -m`, so :math:`w < 0` and
    the margins decay geometrically to 0: the solution is the problem's own.

    Attributes:
        penalty: The initial penalty coefficient ``c`` of every constraint, in the scaled
            units when the method scales the problem.
        growth: Factor applied to ``c`` when the violation does not shrink.
        shrink: The factor by which the violation must shrink over one window.
        window: Steps per window.
        max_penalty: Upper bound of ``c``.
        sample_penalty: Factor on ``c`` for per-sample (indexed) constraints.
        margin_rate: :math:`\\eta_m`, the margin's rate per epoch (``0``: no margin).
        margin_decay: :math:`\\rho`, the margin's decrease relative to its growth.
        row_margin_decay: The decay of a row's own margin at a visit where it did not
            drift (:func:`..methods.margins.next_row_margins`).
        runaway_check: Steps between two checks that the run is not leaving the
            constraint set for an objective unbounded below (:mod:`.runaway`; ``0``:
            none). Each check reads a few numbers from the device.
        penalty_dual_step: Whether the multipliers' gradient is multiplied by ``c`` (a
            dual learning rate of 1 is then the method of multipliers' step). ``None``:
            the method decides (the adaptive step does, fixed steps do not).
    """

    penalty: float = 1.0
    growth: float = 10.0
    shrink: float = 0.9
    window: int = 500
    max_penalty: float = 100.0
    sample_penalty: float = 1.0
    margin_rate: float = 0.0
    margin_decay: float = 0.2
    row_margin_decay: float = 0.5
    runaway_check: int = 0
    penalty_dual_step: bool | None = None


def check_augmented(config: AugmentedLagrangian) -> AugmentedLagrangian:
    """Validates the settings, one line each, like ``torch.optim``'s constructors.

    Raises:
        ValueError: Naming the invalid setting and its value.
    """
    if not (math.isfinite(config.penalty) and config.penalty > 0):
        raise ValueError(f"Invalid penalty coefficient: {config.penalty}")
    if not (math.isfinite(config.growth) and config.growth >= 1):
        raise ValueError(f"Invalid penalty growth factor: {config.growth}")
    if not (0 < config.shrink < 1):
        raise ValueError(f"Invalid violation shrink factor: {config.shrink}")
    if isinstance(config.window, bool) or not isinstance(config.window, int) or config.window < 1:
        raise ValueError(f"Invalid penalty update window: {config.window}")
    if not (math.isfinite(config.max_penalty) and config.max_penalty >= config.penalty):
        raise ValueError(f"Invalid maximum penalty: {config.max_penalty}")
    if not (math.isfinite(config.sample_penalty) and config.sample_penalty > 0):
        raise ValueError(f"Invalid per-sample penalty factor: {config.sample_penalty}")
    if not (math.isfinite(config.margin_rate) and config.margin_rate >= 0):
        raise ValueError(f"Invalid margin rate: {config.margin_rate}")
    if not (0 < config.margin_decay <= 1):
        raise ValueError(f"Invalid margin decay: {config.margin_decay}")
    if not (0 < config.row_margin_decay <= 1):
        raise ValueError(f"Invalid row margin decay: {config.row_margin_decay}")
    check = config.runaway_check
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise ValueError(f"Invalid runaway check interval: {check}")
    if config.penalty_dual_step not in (None, True, False):
        raise ValueError(f"Invalid penalty_dual_step: {config.penalty_dual_step}")
    return config


def augmented_weight(
    standard: Tensor, multiplier: Tensor, penalty: Tensor | float, equality: bool
) -> Tensor:
    """The term's derivative with respect to the constraint value: the multiplier estimate.

    .. math::

        \\frac{\\partial \\psi_c}{\\partial h} = \\mu + c h, \\qquad
        \\frac{\\partial \\psi_c}{\\partial g} = \\max(0, \\lambda + c g)

    Example:
        >>> import torch
        >>> c = torch.tensor(2.0)
        >>> augmented_weight(torch.tensor([-1.0, 0.5]), torch.tensor([1.0, 1.0]), c, False)
        tensor([0., 2.])
    """
    estimate = multiplier + penalty * standard
    return estimate if equality else estimate.clamp(min=0)


def augmented_residual(
    standard: Tensor, multiplier: Tensor, penalty: Tensor | float, equality: bool
) -> Tensor:
    """The term's derivative with respect to the multiplier: the dual ascent direction.

    .. math::

        \\frac{\\partial \\psi_c}{\\partial \\mu} = h, \\qquad
        \\frac{\\partial \\psi_c}{\\partial \\lambda} = \\max(g, -\\lambda / c) = g + s^2

    With the step :math:`\\eta = c` the ascent :math:`\\lambda + \\eta \\max(g, -\\lambda/c)
    = \\max(0, \\lambda + c g)` is the method of multipliers' update.

    Example:
        >>> import torch
        >>> c = torch.tensor(2.0)
        >>> augmented_residual(torch.tensor([-1.0, 0.5]), torch.tensor([1.0, 1.0]), c, False)
        tensor([-0.5000,  0.5000])
    """
    if equality:
        return standard
    return torch.maximum(standard, multiplier.neg() / penalty)


def augmented_value(
    standard: Tensor, multiplier: Tensor, penalty: Tensor | float, equality: bool
) -> Tensor:
    """The term :math:`\\psi_c` elementwise, without cancellation.

    .. math::

        \\psi_c(g, \\lambda) = \\begin{cases} \\lambda g + \\frac{c}{2} g^2 &
        \\lambda + c g \\ge 0 \\\\ -\\frac{\\lambda^2}{2c} & \\text{otherwise} \\end{cases}

    Example:
        >>> import torch
        >>> c = torch.tensor(2.0)
        >>> augmented_value(torch.tensor([-1.0, 0.5]), torch.tensor([1.0, 1.0]), c, False)
        tensor([-0.2500,  0.7500])
    """
    active = multiplier * standard + 0.5 * penalty * standard.square()
    if equality:
        return active
    inactive = multiplier.square().neg() / (2 * penalty)
    return torch.where(multiplier + penalty * standard >= 0, active, inactive)


def closed_form_slack(standard: Tensor, multiplier: Tensor, penalty: Tensor | float) -> Tensor:
    """The slack that minimises the augmented term of ``g + s**2 = 0``.

    .. math::

        s = \\sqrt{\\max(0, -g - \\lambda / c)}

    Example:
        >>> import torch
        >>> zero, one = torch.zeros(2), torch.tensor(1.0)
        >>> closed_form_slack(torch.tensor([-4.0, 1.0]), zero, one)
        tensor([2., 0.])
    """
    return (standard.neg() - multiplier / penalty).clamp(min=0).sqrt()


def primal_settled(
    config: AugmentedLagrangian, previous: float, move: float, distance: float
) -> bool:
    """Whether the primal side has settled for the current multipliers, so that a window's
    flat violation may grow the penalty (the method of multipliers grows it only once the
    inner problem is approximately solved): the primal iterate's movement over the window
    shrank by ``shrink`` against the window before, or is within the constraint's largest
    scaled violation (its distance to the boundary, to first order). An iterate still
    travelling as far as before, and farther than it is off the constraint, is sliding
    along its active constraints: the violation it leaves says nothing about the penalty.

    Args:
        config: The rule's settings (``shrink``).
        previous: The primal movement over the previous window (``inf`` before the first).
        move: The primal movement over the window that ends.
        distance: The constraint's largest scaled violation over that window.

    Example:
        >>> rule = AugmentedLagrangian()
        >>> primal_settled(rule, previous=1.0, move=0.99, distance=1e-3)
        False
        >>> primal_settled(rule, 1.0, 0.5, 1e-3), primal_settled(rule, 1.0, 1e-4, 1e-3)
        (True, True)
    """
    return move <= config.shrink * previous or move <= distance


def grown_penalty(
    config: AugmentedLagrangian,
    penalty: float,
    previous: float,
    current: float,
    settled: bool = True,
) -> float:
    """The penalty coefficient after one window of the update rule.

    .. math::

        c \\leftarrow \\min(\\gamma c, c_{\\max}) \\quad \\text{if} \\quad
        v_\\text{window} > \\tau \\, v_\\text{previous window}
        \\ \\text{and the primal side has settled}

    Args:
        config: The rule's settings (``growth`` :math:`\\gamma`, ``shrink`` :math:`\\tau`).
        penalty: The coefficient now.
        previous: The largest violation over the previous window (``inf`` before the first).
        current: The largest violation over the window that ends.
        settled: Whether the primal side has settled (:func:`primal_settled`): the
            penalty grows only then.

    Example:
        >>> rule = AugmentedLagrangian(growth=10.0)
        >>> grown_penalty(rule, 1.0, previous=1e-3, current=0.95e-3)
        10.0
        >>> grown_penalty(rule, 1.0, previous=1e-3, current=1e-4)
        1.0
    """
    if not settled or current == 0.0 or current <= config.shrink * previous:
        return penalty
    return min(penalty * config.growth, config.max_penalty)


def next_margin(
    config: AugmentedLagrangian, margin: Tensor, worst: Tensor, steps_per_epoch: int = 1
) -> Tensor:
    """The self-tuned margin of a per-sample constraint after one step.

    .. math::

        m \\leftarrow \\max\\bigl(0, \\; m + \\tfrac{\\eta_m}{L} (w^+ - \\rho \\, w^-)\\bigr)

    Args:
        config: The settings (``margin_rate`` :math:`\\eta_m`, ``margin_decay``
            :math:`\\rho`).
        margin: The margin now, a 0-dim tensor.
        worst: :math:`w`, the largest standard-form value (``g``, without the margin) over
            the last epoch's batches of the rows satisfied at their previous visit.
        steps_per_epoch: :math:`L`: the rate is per epoch.

    Example:
        >>> import torch
        >>> rule = AugmentedLagrangian(margin_rate=0.1, margin_decay=0.3)
        >>> next_margin(rule, torch.tensor(0.0), torch.tensor(0.5))
        tensor(0.0500)
        >>> next_margin(rule, torch.tensor(0.05), torch.tensor(-0.05))
        tensor(0.0485)
    """
    change = torch.where(worst > 0, worst, worst * config.margin_decay)
    return (margin + (config.margin_rate / steps_per_epoch) * change).clamp(min=0)


def shifted(standard: Tensor, margin: Tensor | None) -> Tensor:
    """A constraint's standard form as the augmented Lagrangian sees it: ``g + m``.

    Example:
        >>> import torch
        >>> shifted(torch.tensor([-1.0, 0.5]), torch.tensor(0.25))
        tensor([-0.7500,  0.7500])
    """
    return standard if margin is None else standard + margin
