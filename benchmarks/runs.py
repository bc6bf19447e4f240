"""One run of a method on a benchmark: the step loop, its stopping rules and its trace.

See :mod:`benchmarks.convergence` for the rules: a full-batch run ends once solved (with
its KKT residuals below the tolerance), once stalled at a fixed point, or when it diverges.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lagrange_opt import ConstrainedProblem, KKTResiduals
from lagrange_opt.problems import max_violation, relative_gap

from .suite import Args, Benchmark, Final, no_batches

SOLVED_TOLERANCE = 1e-6
"""The solved criterion's tolerance on the relative gap, the max violation and (to end a
run) the KKT residuals."""

STALL_WINDOW = 1_000
"""Steps at one fixed point after which a full-batch run ends."""

SOLVED_WINDOW = 1_000
"""Consecutive solved steps after which a full-batch run checks the KKT residuals."""


class Trace(NamedTuple):
    """A run's objective and max violation at the start of every step and at the end.

    Attributes:
        objective: The objective at the start of every step, then at the end.
        max_violation: The max violation at the same points.
        seconds: Wall-clock time of the steps.
        evaluations_per_step: Closure calls over steps taken (``None``: no step taken).
        kkt: The final point's KKT residuals (lagrange_opt's methods only).
        fraction_violated: The fraction of training outputs below ``-1e-3`` at the end
            (the network only).
    """

    objective: np.ndarray
    max_violation: np.ndarray
    seconds: float
    evaluations_per_step: float | None = None
    kkt: KKTResiduals | None = None
    fraction_violated: float | None = None


Step = Callable[[Args], tuple[Tensor, Tensor, int]]
"""One step on a batch: the objective and max violation at its start, and its closure calls."""


def _solved(objective: float, violation: float, f_star: float) -> bool:
    gap = relative_gap(objective, f_star)
    return gap <= SOLVED_TOLERANCE and violation <= SOLVED_TOLERANCE


def _diverged(error: Exception) -> bool:
    """Whether a step's exception says the method diverged: a non-finite objective or
    constraint (``ValueError``), or an adaptive step that found no acceptable step size."""
    if isinstance(error, RuntimeError):
        return "adaptive step was rejected" in str(error)
    return isinstance(error, ValueError)


def run_trace(
    problem: ConstrainedProblem,
    step: Step,
    benchmark: Benchmark,
    steps: int,
    residuals: Callable[[], KKTResiduals] | None = None,
    report_kkt: bool = True,
) -> Trace:
    """Runs ``step`` over the budget's batches, with the stopping rules of the module
    docstring; ``residuals`` gives the current point's KKT residuals (recorded in the trace
    if ``report_kkt``)."""
    batches = (benchmark.batches or no_batches)(steps)
    full_batch = benchmark.batches is None
    watch = full_batch and benchmark.f_star is not None and residuals is not None
    objectives: list[Tensor] = []
    violations: list[Tensor] = []
    evaluations = taken = 0
    streak, next_check = 0, SOLVED_WINDOW
    start = time.perf_counter()
    for count, args in enumerate(batches, start=1):
        try:
            objective, violation, calls = step(args)
        except (ValueError, RuntimeError) as error:
            if not _diverged(error):
                raise
            # The method diverged; the trace ends here.
            objectives.append(torch.tensor(math.nan))
            violations.append(torch.tensor(math.nan))
            break
        objectives.append(objective)
        violations.append(violation)
        evaluations += calls
        taken += 1
        objective_value, violation_value = float(objective), float(violation)
        if not (math.isfinite(objective_value) and math.isfinite(violation_value)):
            break
        if watch:
            assert benchmark.f_star is not None and residuals is not None
            if _solved(objective_value, violation_value, benchmark.f_star):
                streak += 1
            else:
                streak, next_check = 0, SOLVED_WINDOW
            if streak >= next_check:
                if _converged(residuals):
                    break
                next_check += SOLVED_WINDOW
        if full_batch and count % STALL_WINDOW == 0 and _stalled(objectives, violations):
            break
    seconds = time.perf_counter() - start
    if benchmark.final is not None:
        final = benchmark.final(problem)
    else:
        with torch.no_grad():
            state = problem(*benchmark.full_args)
            final = Final(float(state.objective), max_violation(problem, state))
    objective_trace = torch.stack([o.double() for o in objectives]).numpy()
    violation_trace = torch.stack([v.double() for v in violations]).numpy()
    residual = None
    if report_kkt and residuals is not None and math.isfinite(final.objective):
        residual = _finite_residuals(residuals)
    return Trace(
        np.append(objective_trace, final.objective),
        np.append(violation_trace, final.max_violation),
        seconds,
        evaluations / taken if taken else None,
        residual,
        final.fraction_violated,
    )


def _finite_residuals(residuals: Callable[[], KKTResiduals]) -> KKTResiduals | None:
    """The residuals, or ``None`` where the point gives no finite ones."""
    try:
        values = residuals()
    except ValueError:
        return None
    return values if all(math.isfinite(value) for value in values) else None


def _converged(residuals: Callable[[], KKTResiduals]) -> bool:
    values = _finite_residuals(residuals)
    return values is not None and values.converged(SOLVED_TOLERANCE)


def _stalled(objectives: list[Tensor], violations: list[Tensor]) -> bool:
    """Whether the last ``STALL_WINDOW`` points are one fixed point (to 1e-15, relative):
    deterministic steps from there on change nothing, so the run can end."""
    for values in (objectives, violations):
        window = torch.stack(values[-STALL_WINDOW:]).double()
        scale = max(1.0, float(window.abs().max()))
        if not float(window.max() - window.min()) <= 1e-15 * scale:
            return False
    return True
