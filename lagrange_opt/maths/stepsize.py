"""Step-size control for extra-gradient: backtracking on a local Lipschitz estimate.

With :math:`z = (x, \\lambda)`, the operator :math:`F` and step sizes :math:`t \\beta_i` per
element (:math:`\\beta_i` the learning rates the method was built with, :math:`t` the
factor this module controls), the extrapolation :math:`\\bar z = z - t \\beta F(z)` is
accepted when

.. math::

    t \\, \\lVert F(\\bar z) - F(z) \\rVert_{\\beta} \\le \\delta \\,
    \\lVert \\bar z - z \\rVert_{\\beta^{-1}}, \\qquad
    \\lVert v \\rVert_{\\beta}^2 = \\sum_i \\beta_i \\omega_i v_i^2, \\quad
    \\lVert v \\rVert_{\\beta^{-1}}^2 = \\sum_i \\omega_i v_i^2 / \\beta_i

(Khobotov 1987; Iusem and Svaiter 1997), that is when :math:`t L \\le \\delta` for the
local estimate :math:`L = \\lVert F(\\bar z) - F(z) \\rVert_\\beta / \\lVert \\bar z - z
\\rVert_{\\beta^{-1}}`; :math:`\\omega_i` weighs the multipliers by the scaling's units.
The multipliers' factor is capped (:func:`dual_factor`), which enters the metric as a
relative weight :math:`s = t_\\lambda / t` on their :math:`\\beta_i`. A
rejected extrapolation is redone from :math:`z` with a smaller :math:`t`; after an accepted
step :math:`t` grows again, never past what the estimate allows:

.. math::

    t \\leftarrow \\min(\\gamma t, \\; \\sigma \\delta / L) \\text{ (accepted)}, \\qquad
    t \\leftarrow \\min(\\rho t, \\; \\sigma \\delta / L) \\text{ (rejected)}

A rejection by a small margin, :math:`\\delta < t L \\le \\kappa`, of a short move,
:math:`\\lVert \\bar z - z \\rVert \\le \\mu \\lVert z \\rVert` (:math:`\\kappa`, :math:`\\mu`: the
settings ``max_interpolated``, ``max_interpolated_move``), is not redone: the
shorter extrapolation :math:`z_\\theta = z + \\theta (\\bar z - z)` with
:math:`\\theta = \\sigma \\delta / (t L)` lies on the segment already evaluated (the
extrapolation moves along one direction; a projection onto a box keeps the segment's points
feasible), and the operator there is interpolated from the two evaluations:

.. math::

    F(z_\\theta) \\approx (1 - \\theta) F(z) + \\theta F(\\bar z), \\qquad
    t \\leftarrow \\theta t

exact for an affine operator (a quadratic objective with linear constraints, a bilinear
game), and off by :math:`O(\\theta (1 - \\theta) \\lVert \\bar z - z \\rVert^2)` times the
operator's curvature otherwise: hence the bound on the move, relative to the point. The
step then costs two evaluations where a retry costs three: with stochastic batches the local
estimate varies from batch to batch, and most rejections are of this kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from lagrange_opt.maths.hyperparameters import check_real


class AdaptiveStep(NamedTuple):
    """Settings of the backtracking step size.

    Attributes:
        initial: The initial factor ``t`` on the optimizers' learning rates.
        delta: The acceptance threshold :math:`\\delta < 1` on ``t * L``.
        safety: The fraction :math:`\\sigma` of :math:`\\delta / L` that the next factor
            may take, so that the next extrapolation is likely accepted.
        growth: Growth factor :math:`\\gamma` after an accepted step.
        shrink: Shrink factor :math:`\\rho` after a rejected extrapolation.
        max_retries: Rejections allowed in one step before it raises.
        noise: An extrapolation whose move is below ``noise`` times the point's norm is
            accepted: it is rounding error, and shrinking it would not help.
        max_dual_factor: The multipliers' factor is ``min(t, max_dual_factor)``. In the
            augmented Lagrangian's metric an inactive constraint's multiplier block has
            Lipschitz constant 1 (it decays as :math:`\\lambda \\leftarrow (1 - t + t^2)
            \\lambda` under extra-gradient, fastest at ``t = 1/2``): with one factor for
            both sides, it holds ``t`` below 1 however flat the objective, or, where its
            weight in the metric is small, lets ``t`` pass 1, and the extrapolation then
            projects it to zero, where its gradient vanishes: it stops moving.
        max_factor: Upper bound of ``t``: where the operator does not change (a linear
            objective, or a point held at its bounds) ``t`` would otherwise double forever.
        max_interpolated: A rejected extrapolation with :math:`t L` at most this is
            shortened by interpolation (no new evaluation) when the primal step is plain
            SGD; above it, or with another primal optimizer (Adam), it is redone. ``0``
            redoes every rejected extrapolation. (A value or gradient that is not finite
            at the extrapolated point is no rejection: the step raises, naming it.)
        max_interpolated_move: Nor is an extrapolation that moved the point by more than
            this fraction of its norm (in the metric) shortened: over a long segment a
            curved operator is far from its interpolation (``inf``: any move). 0.35 keeps
            the first steps of hs024 (moves of 9-54 %, a cubic that bends over them)
            redone, which ``inf`` or 0.5 interpolate and slow 40-fold; a linear
            classifier under a batch-measured rate constraint moves 7-32 % at every step,
            which 0.1 redid (2.36 closure calls per step; docs/benchmarks.md).
        sample_dual_factor: The factor of a dual param group made of per-sample
            (indexed) multiplier tables only in the step's update, whatever ``t`` (the
            extrapolation, which the test measures, moves them as the other multipliers).
            Under the augmented Lagrangian, 1 makes a visited sample's update the method
            of multipliers' :math:`\\lambda_i \\leftarrow \\max(0, \\lambda_i + c g_i)`: a
            sample is seen once an epoch, and a step tied to ``t`` (small on a network)
            would leave its multiplier behind the noise (docs/stochastic.md). ``None``:
            such groups take the factor of the other multipliers.
    """

    initial: float = 1.0
    delta: float = 0.9
    safety: float = 0.9
    growth: float = 2.0
    shrink: float = 0.5
    max_retries: int = 50
    noise: float = 1e-13
    max_dual_factor: float = 0.5
    max_factor: float = 1e6
    max_interpolated: float = 2.0
    max_interpolated_move: float = 0.35
    sample_dual_factor: float | None = 1.0


def check_adaptive(config: AdaptiveStep) -> AdaptiveStep:
    """Validates the settings, one line each.

    Raises:
        ValueError: Naming the invalid setting and its value.
    """
    if not (math.isfinite(config.initial) and config.initial > 0):
        raise ValueError(f"Invalid initial step factor: {config.initial}")
    if not (0 < config.delta < 1):
        raise ValueError(f"Invalid acceptance threshold delta: {config.delta}")
    if not (0 < config.safety <= 1):
        raise ValueError(f"Invalid safety factor: {config.safety}")
    if not (math.isfinite(config.growth) and config.growth >= 1):
        raise ValueError(f"Invalid step growth factor: {config.growth}")
    if not (0 < config.shrink < 1):
        raise ValueError(f"Invalid step shrink factor: {config.shrink}")
    retries = config.max_retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"Invalid max_retries: {retries}")
    if not (0 <= config.noise < 1):
        raise ValueError(f"Invalid noise level: {config.noise}")
    if not (math.isfinite(config.max_dual_factor) and config.max_dual_factor > 0):
        raise ValueError(f"Invalid max_dual_factor: {config.max_dual_factor}")
    if not (math.isfinite(config.max_factor) and config.max_factor >= config.initial):
        raise ValueError(f"Invalid max_factor: {config.max_factor}")
    if not (math.isfinite(config.max_interpolated) and config.max_interpolated >= 0):
        raise ValueError(f"Invalid max_interpolated: {config.max_interpolated}")
    if not config.max_interpolated_move >= 0:
        raise ValueError(f"Invalid max_interpolated_move: {config.max_interpolated_move}")
    sample = config.sample_dual_factor
    if sample is not None and not (math.isfinite(sample) and sample > 0):
        raise ValueError(f"Invalid sample_dual_factor: {sample}")
    return config


def check_step_factor(config: AdaptiveStep | None, factor: object, where: str = "") -> float:
    """A step factor ``t`` to resume from (a checkpoint's): finite, ``> 0`` and at most
    ``max_factor``, as :func:`check_adaptive` has the initial one; with a fixed step
    (``config`` ``None``), 1.

    Raises:
        TypeError: If it is not a number.
        ValueError: ``Invalid step factor{where}: -1.0``.
    """
    value = check_real("step factor", factor, where)
    upper = 1.0 if config is None else config.max_factor
    lower = 1.0 if config is None else 0.0
    if not (math.isfinite(value) and lower <= value <= upper and value > 0.0):
        expected = "1 with a fixed step" if config is None else f"in (0, {config.max_factor:g}]"
        raise ValueError(f"Invalid step factor{where}: {value} (expected {expected})")
    return value


def dual_factor(config: AdaptiveStep, factor: float) -> float:
    """The multipliers' step factor for the primal factor ``factor``.

    Example:
        >>> dual_factor(AdaptiveStep(), 4.0), dual_factor(AdaptiveStep(), 0.25)
        (0.5, 0.25)
    """
    return min(factor, config.max_dual_factor)


class Trial(NamedTuple):
    """The outcome of testing one extrapolation.

    Attributes:
        accepted: Whether the extrapolation passes the test.
        lipschitz: The local estimate :math:`L` (0 if the operator did not change).
        relative_move: :math:`\\lVert \\bar z - z \\rVert / \\lVert z \\rVert` in the
            metric, measured only for a rejected extrapolation (else ``inf``).
    """

    accepted: bool
    lipschitz: float
    relative_move: float = math.inf


def judge_extrapolation(
    config: AdaptiveStep,
    factor: float,
    operator_change: float,
    point_change: float,
    point_norm: Callable[[], float],
) -> Trial:
    """Tests an extrapolation taken with the step factor ``factor``.

    Args:
        config: The settings.
        factor: The factor ``t`` the extrapolation was taken with.
        operator_change: :math:`\\lVert F(\\bar z) - F(z) \\rVert_\\beta^2`.
        point_change: :math:`\\lVert \\bar z - z \\rVert_{\\beta^{-1}}^2`.
        point_norm: Returns :math:`\\lVert z \\rVert_{\\beta^{-1}}^2`, for the noise level:
            called only if the test fails (it reads every parameter once more), and then
            also gives the move's size relative to the point.

    Example:
        >>> judge_extrapolation(AdaptiveStep(), 1.0, operator_change=4.0, point_change=1.0,
        ...                    point_norm=lambda: 4.0)
        Trial(accepted=False, lipschitz=2.0, relative_move=0.5)
    """
    if not (math.isfinite(operator_change) and math.isfinite(point_change)):
        return Trial(False, math.inf)
    if point_change == 0.0:
        return Trial(True, 0.0)
    lipschitz = math.sqrt(operator_change / point_change)
    if factor * lipschitz <= config.delta:
        return Trial(True, lipschitz)
    norm = point_norm()
    noise_floor = config.noise**2 * (norm + 1.0)
    relative_move = math.sqrt(point_change / norm) if norm > 0.0 else math.inf
    return Trial(point_change <= noise_floor, lipschitz, relative_move)


def next_factor(config: AdaptiveStep, factor: float, trial: Trial) -> float:
    """The factor for the next extrapolation, after ``trial``.

    Example:
        >>> next_factor(AdaptiveStep(), 1.0, Trial(True, 0.5))
        1.62
        >>> next_factor(AdaptiveStep(), 1.0, Trial(False, math.inf))
        0.5
    """
    change = config.growth if trial.accepted else config.shrink
    proposed = min(factor * change, config.max_factor)
    if trial.lipschitz == 0.0 or not math.isfinite(trial.lipschitz):
        return proposed
    return min(proposed, config.safety * config.delta / trial.lipschitz)


def interpolation_weight(config: AdaptiveStep, factor: float, trial: Trial) -> float | None:
    """The fraction :math:`\\theta` of a rejected extrapolation to keep, its operator
    interpolated, or ``None`` if the extrapolation must be redone.

    Example:
        >>> interpolation_weight(AdaptiveStep(), 1.0, Trial(False, 1.2, relative_move=0.01))
        0.675
        >>> interpolation_weight(AdaptiveStep(), 1.0, Trial(False, 3.0, relative_move=0.01))
        >>> interpolation_weight(AdaptiveStep(), 1.0, Trial(False, 1.2, relative_move=0.5))
    """
    if trial.accepted or not math.isfinite(trial.lipschitz):
        return None
    product = factor * trial.lipschitz
    if product > config.max_interpolated or trial.relative_move > config.max_interpolated_move:
        return None
    return config.safety * config.delta / product


def step_size_option(step_size: object) -> AdaptiveStep | None:
    """The adaptive step's settings that a method's ``step_size`` argument names: ``None``
    for ``"fixed"``, the default :class:`AdaptiveStep` for ``"adaptive"``, or the one
    given, checked (:func:`check_adaptive`).

    Raises:
        ValueError: For any other value, or an invalid :class:`AdaptiveStep`.
    """
    if isinstance(step_size, AdaptiveStep):
        return check_adaptive(step_size)
    if step_size == "adaptive":
        return AdaptiveStep()
    if step_size == "fixed":
        return None
    raise ValueError(
        f"invalid step_size {step_size!r}; expected 'fixed', 'adaptive' or an AdaptiveStep"
    )
