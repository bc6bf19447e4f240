"""Catching a run that leaves the constraint set for an objective unbounded below.

Off the constraint set some objectives fall without bound (a cubic, a product of free
variables). The augmented Lagrangian holds them only once the penalty coefficient is large
enough, and the penalty-update rule grows it once a window (hundreds of steps): long enough
for the iterates to reach 1e200 first. So every :attr:`AugmentedLagrangian.runaway_check`
steps the method compares the objective and each constraint's largest violation (in the
scaled units) with the previous check's; a constraint whose violation grew past 1 and by
:data:`RUNAWAY_GROWTH` while the objective fell has its penalty grown at once, and where it
is at its maximum already the run stops: the next step raises, naming the constraint and
the figures, before it changes anything.
"""

from __future__ import annotations

from typing import NamedTuple

RUNAWAY_GROWTH = 4.0
"""The growth of a violation over one check's interval that, with a falling objective and a
violation above 1 in the scaled units, counts as running away."""


class Reading(NamedTuple):
    """The figures of one check: the objective and each constraint's largest scaled
    violation, at the point a step started from."""

    objective: float
    violations: dict[str, float]


def running_away(before: Reading, after: Reading, name: str) -> bool:
    """Whether constraint ``name`` ran away between two checks.

    .. math::

        v_\\text{after} > \\max(1, \\; 4 v_\\text{before}) \\quad\\text{and}\\quad
        f_\\text{after} < f_\\text{before}

    Example:
        >>> before = Reading(-10.0, {"c": 0.5})
        >>> running_away(before, Reading(-1e3, {"c": 30.0}), "c")
        True
        >>> running_away(before, Reading(-1e3, {"c": 0.9}), "c")
        False
        >>> running_away(before, Reading(5.0, {"c": 30.0}), "c")
        False
    """
    if name not in before.violations or name not in after.violations:
        return False
    previous, current = before.violations[name], after.violations[name]
    grew = current > max(1.0, RUNAWAY_GROWTH * previous)
    return grew and after.objective < before.objective


def diagnosis(before: Reading, after: Reading, name: str, steps: int, penalty: float) -> str:
    """What the error of a stopped run says."""
    return (
        f"the run is leaving the constraint set: over the last {steps} steps the objective "
        f"fell from {before.objective:.4g} to {after.objective:.4g} while the largest "
        f"violation of constraint '{name}' grew from {before.violations[name]:.4g} to "
        f"{after.violations[name]:.4g} (scaled units), with its penalty coefficient at its "
        f"maximum, {penalty:g}. The objective is unbounded below off the constraint set "
        "(or the start is far from it): bound the variables (add_bounds), start nearer the "
        "constraints, or raise AugmentedLagrangian.max_penalty"
    )
