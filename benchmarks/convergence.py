"""Convergence benchmark: every method on problems with known solutions, side by side.

    python -m benchmarks.convergence --out DIR [--quick] [--problems P ...] [--methods M ...]

writes ``DIR/convergence.json`` (one record per problem and method), ``DIR/convergence.md``
(the table) and ``DIR/<problem>.png`` (relative gap and max violation against the step).

A run's ``steps_1e4`` (``steps_1e6``) is the first step count after which both the relative
gap (absolute where f* = 0) and the max violation stay at or below 1e-4 (1e-6) until the end
of the run; ``solved`` says whether the final point has a relative gap and a max violation
at or below 1e-6. Both are measured at the start point of every step and once after the
last step. ``evaluations_per_step`` is the number of closure calls (problem evaluations) over
the number of steps: 2 for extra-gradient, more where the adaptive step rejected an
extrapolation, one more in all on the first step of a scaled method; Cooper's counts are its
own calls to ``compute_cmp_state``. ``kkt`` holds the final point's KKT residuals
(:func:`lagrange_opt.kkt`, on all the data) for lagrange_opt's methods. On the network
problem, where no optimum is known, ``gap_to_bound`` is the final training MSE minus a lower
bound of every feasible fit's (the MSE of ``max(target, 0)``, which no fit with non-negative
outputs can beat), and ``fraction_violated`` the fraction of training outputs below -1e-3.

When a full-batch run ends before its budget:

- **Solved**: once the point has met the solved criterion (relative gap and max violation
  <= 1e-6) at the start of 1,000 consecutive steps, the KKT residuals of the current point
  are computed; if every one is <= 1e-6 the run ends, otherwise it goes on and they are
  computed again after 1,000 more consecutive solved steps (a run that leaves the solved
  set starts counting again). For Cooper the residuals are those of its multipliers.
- **Stalled**: its objective and max violation have stayed at one value (to 1e-15,
  relative) for 1,000 steps: the iterates are at a fixed point and the rest of the run
  would repeat it.
- **Diverged**: the objective or a constraint is not finite (the trace ends with NaN).

Minibatch runs (the network) take their whole budget unless they diverge. Learning rates
are per problem, the same for every fixed-step method; Cooper takes them too. The
``default-*`` methods take none: they run :func:`lagrange_opt.default_optimizer` as a user
would, and ``default-adam-projection`` the same configuration with Adam (lr 1e-3) as the
primal optimizer.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from lagrange_opt import (
    DEFAULT_DUAL_LR,
    DEFAULT_LR,
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    KKTResiduals,
    NuPI,
    OptimisticGDA,
    SimultaneousGDA,
    Treatment,
    default_optimizer,
    kkt,
)
from lagrange_opt.demo import NEGATIVE_TOLERANCE
from lagrange_opt.problems import (
    HOCK_SCHITTKOWSKI,
    NonlinearProgram,
    NonNegativeLeastSquares,
    NonNegativePredictions,
    PositiveOutputs,
    max_violation,
    relative_gap,
)

from . import references
from .cooper_adapter import CooperMethod, Scheme

TOLERANCES = {"steps_1e4": 1e-4, "steps_1e6": 1e-6}

SOLVED_TOLERANCE = 1e-6
"""The solved criterion's tolerance on the relative gap, the max violation and (to end a
run) the KKT residuals."""

Args = tuple[Any, ...]

STALL_WINDOW = 1_000
"""Steps at one fixed point after which a full-batch run ends."""

SOLVED_WINDOW = 1_000
"""Consecutive solved steps after which a full-batch run checks the KKT residuals."""

HS_LR = 0.01
HS_DUAL_LR = 0.05
"""The Hock-Schittkowski problems' fixed learning rates (primal and slacks, dual): those the
benchmark chose for plain SGD (docs/benchmarks.md). They are no longer the package defaults,
which now belong to :func:`lagrange_opt.default_optimizer`'s adaptive step."""


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


class Final(NamedTuple):
    """A run's figures on all the data at its end."""

    objective: float
    max_violation: float
    fraction_violated: float | None = None


class Benchmark(NamedTuple):
    """A problem of the suite with its learning rates and step budgets.

    Attributes:
        name: The problem's name in the table.
        build: Builds a fresh problem for a treatment and penalty weight.
        f_star: The optimal value, ``None`` if unknown.
        lr: Primal learning rate (plain SGD), for every fixed-step method.
        dual_lr: Dual learning rate (plain SGD ascent).
        slack_lr: The slacks' learning rate (slack treatment only).
        steps: Step budget; ``quick_steps`` with ``--quick``.
        quick_steps: Step budget of a quick run.
        batches: The closure arguments of step ``k`` (a minibatch), for a budget.
        final: The objective, max violation and fraction of violated outputs on all the
            data, after the run.
        reference: SLSQP's objective and max violation, or ``None`` where it does not apply.
        reparametrised: Builds the problem with a positive output map (``exp``,
            ``softplus``), for the methods that need no constraint.
        batch_size: Samples per step of an indexed problem. lagrange_opt averages an indexed
            constraint's terms over the batch where Cooper sums them, so Cooper's multipliers
            are lagrange_opt's divided by the batch size, and Cooper gets the equivalent
            dual learning rate ``dual_lr / batch_size``.
        lower_bound: A lower bound of every feasible point's objective, where no optimum is
            known.
        full_args: The closure arguments that evaluate all the data (for the KKT residuals).
    """

    name: str
    build: Callable[[Treatment, float | None], ConstrainedProblem]
    f_star: float | None
    lr: float
    dual_lr: float
    slack_lr: float
    steps: int
    quick_steps: int
    batches: Callable[[int], Sequence[Args]] | None = None
    final: Callable[[ConstrainedProblem], Final] | None = None
    reference: Callable[[], tuple[float, float]] | None = None
    reparametrised: Callable[[str], ConstrainedProblem] | None = None
    batch_size: int | None = None
    lower_bound: float | None = None
    full_args: Args = ()


def _no_batches(steps: int) -> Sequence[Args]:
    return [()] * steps


def _hock_schittkowski(name: str, quick: bool) -> Benchmark:
    definition = HOCK_SCHITTKOWSKI[name]
    return Benchmark(
        name=name,
        build=lambda treatment, weight: NonlinearProgram(definition, treatment, weight),
        f_star=definition.f_star,
        lr=HS_LR,
        dual_lr=HS_DUAL_LR,
        slack_lr=HS_LR,
        steps=50_000,
        quick_steps=200,
        reference=lambda: references.slsqp(NonlinearProgram(definition, "projection")),
    )


def _nnls(quick: bool) -> Benchmark:
    X, y = references.diabetes()
    f_star = references.nnls_objective(X, y)
    return Benchmark(
        name="nnls-diabetes",
        build=lambda treatment, weight: NonNegativeLeastSquares(X, y, treatment, weight),
        f_star=f_star,
        lr=0.05,
        dual_lr=0.05,
        slack_lr=0.001,
        steps=50_000,
        quick_steps=300,
        reference=lambda: references.slsqp(NonNegativeLeastSquares(X, y, "projection")),
    )


@functools.cache
def _per_sample_reference() -> tuple[float, float]:
    X, y = references.per_sample_data()
    return references.slsqp(NonNegativePredictions(X, y, "projection"))


def _per_sample(quick: bool) -> Benchmark:
    X, y = references.per_sample_data()
    # f* is SLSQP's optimum: computed once per process, it also serves as the reference run.
    reference = _per_sample_reference()
    return Benchmark(
        name="nonnegative-linear",
        build=lambda treatment, weight: NonNegativePredictions(X, y, treatment, weight),
        batch_size=X.shape[0],
        f_star=reference[0],
        lr=0.05,
        dual_lr=0.05 * X.shape[0],
        slack_lr=0.05,
        steps=50_000,
        quick_steps=300,
        reference=lambda: reference,
    )


def network_lower_bound(targets: Tensor) -> float:
    """The MSE of predicting ``max(target, 0)``: no fit whose every output is ``>= 0`` has a
    lower MSE, since each output's squared error is smallest at the target clipped to
    ``[0, inf)``.

    Example:
        >>> network_lower_bound(torch.tensor([[1.0, -2.0], [0.5, -1.0]]))
        1.25
    """
    return float((targets.clamp(min=0) - targets).square().mean())


def _network(quick: bool) -> Benchmark:
    data = references.network_data(quick)
    num_samples = data.inputs.shape[0]
    batch_size = 256
    hidden = 64 if quick else 784

    def build(treatment: Treatment, weight: float | None) -> ConstrainedProblem:
        network = references.network(hidden)
        return PositiveOutputs(network, num_samples, treatment, weight)

    def reparametrised(output: str) -> ConstrainedProblem:
        activation = nn.Softplus() if output == "softplus" else references.Exp()
        network = nn.Sequential(references.network(hidden), activation)
        return PositiveOutputs(network, num_samples, "projection")

    def batches(steps: int) -> Sequence[Args]:
        generator = torch.Generator().manual_seed(0)
        chosen: list[Args] = []
        while len(chosen) < steps:
            for indices in torch.randperm(num_samples, generator=generator).split(batch_size):
                chosen.append((data.inputs[indices], data.targets[indices], indices))
        return chosen[:steps]

    def final(problem: ConstrainedProblem) -> Final:
        assert isinstance(problem, PositiveOutputs)
        with torch.no_grad():
            predictions = problem.network(data.inputs)
            loss = nn.functional.mse_loss(predictions, data.targets)
        return Final(
            float(loss),
            float((-predictions).clamp(min=0).max()),
            float((predictions < -NEGATIVE_TOLERANCE).double().mean()),
        )

    return Benchmark(
        name="positive-outputs",
        build=build,
        f_star=None,
        lr=0.05,
        dual_lr=1.0,
        slack_lr=0.005,
        batch_size=batch_size,
        steps=600,
        quick_steps=30,
        batches=batches,
        final=final,
        reparametrised=reparametrised,
        lower_bound=network_lower_bound(data.targets),
        full_args=(data.inputs, data.targets, torch.arange(num_samples)),
    )


BENCHMARKS: dict[str, Callable[[bool], Benchmark]] = {
    **{name: functools.partial(_hock_schittkowski, name) for name in HOCK_SCHITTKOWSKI},
    "nnls-diabetes": _nnls,
    "nonnegative-linear": _per_sample,
    "positive-outputs": _network,
}
"""The problem set: each entry builds its benchmark, quick (``True``) or full."""


# Methods. Each runs one benchmark for a number of steps and returns its trace.

Runner = Callable[[Benchmark, int], Trace | None]

Step = Callable[[Args], tuple[Tensor, Tensor, int]]
"""One step on a batch: the objective and max violation at its start, and its closure calls."""


def _sgd_primal(problem: ConstrainedProblem, benchmark: Benchmark) -> torch.optim.Optimizer:
    slacks = problem.slack_parameters()
    slack_ids = {id(slack) for slack in slacks}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in problem.primal_parameters() if id(p) not in slack_ids]}
    ]
    if slacks:
        groups.append({"params": slacks, "lr": benchmark.slack_lr})
    return torch.optim.SGD(groups, lr=benchmark.lr)


def _sgd_pair(
    problem: ConstrainedProblem, benchmark: Benchmark
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    primal = _sgd_primal(problem, benchmark)
    multipliers = problem.dual_parameters()
    dual = (
        torch.optim.SGD(multipliers, lr=benchmark.dual_lr, maximize=True) if multipliers else None
    )
    return primal, dual


def _solved(objective: float, violation: float, f_star: float) -> bool:
    gap = relative_gap(objective, f_star)
    return gap <= SOLVED_TOLERANCE and violation <= SOLVED_TOLERANCE


def _diverged(error: Exception) -> bool:
    """Whether a step's exception says the method diverged: a non-finite objective or
    constraint (``ValueError``), or an adaptive step that found no acceptable step size."""
    if isinstance(error, RuntimeError):
        return "adaptive step was rejected" in str(error)
    return isinstance(error, ValueError)


def _run(
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
    batches = (benchmark.batches or _no_batches)(steps)
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


def _run_method(
    problem: ConstrainedProblem, optimizer: ConstrainedOptimizer, benchmark: Benchmark, steps: int
) -> Trace:
    def step(args: Args) -> tuple[Tensor, Tensor, int]:
        result = optimizer.step(lambda: problem(*args))
        return result.objective, result.max_violation, result.evaluations

    def residuals() -> KKTResiduals:
        return kkt(problem, lambda: problem(*benchmark.full_args))

    return _run(problem, step, benchmark, steps, residuals)


def lagrange_method(method: type[ConstrainedOptimizer], treatment: Treatment) -> Runner:
    """A lagrange_opt method with one inequality treatment, at the benchmark's rates."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build(treatment, None)
        return _run_method(
            problem, method(problem, *_sgd_pair(problem, benchmark)), benchmark, steps
        )

    return run


def augmented_method(treatment: Treatment) -> Runner:
    """Extra-gradient on the augmented Lagrangian (default settings: penalty 1, fixed),
    fixed steps at the benchmark's rates."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build(treatment, None)
        optimizer = ExtraGradient(problem, *_sgd_pair(problem, benchmark), formulation="augmented")
        return _run_method(problem, optimizer, benchmark, steps)

    return run


def default_method(treatment: Treatment) -> Runner:
    """:func:`lagrange_opt.default_optimizer` as a user would call it: no per-problem
    setting at all."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build(treatment, None)
        return _run_method(problem, default_optimizer(problem), benchmark, steps)

    return run


def default_adam_method(treatment: Treatment) -> Runner:
    """The default configuration (augmented Lagrangian, scaling, adaptive extra-gradient
    step, SGD lr 1 on the multipliers) with Adam at lr 1e-3 as the primal optimizer."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build(treatment, None)
        multipliers = problem.dual_parameters()
        dual = torch.optim.SGD(multipliers, lr=1.0, maximize=True) if multipliers else None
        optimizer = ExtraGradient(
            problem, torch.optim.Adam(problem.primal_parameters(), lr=1e-3), dual,
            formulation="augmented", scaling=True, step_size="adaptive",
        )  # fmt: skip
        return _run_method(problem, optimizer, benchmark, steps)

    return run


NUPI_KP = 5.0
"""nuPI's proportional gain beside fixed-step simultaneous descent-ascent (``ki = 1``,
``nu = 0``; Cooper's nuPI too): the best of 0, 0.1, 0.5, 1, 2, 3, 5 and 10 on the
Hock-Schittkowski set within 2,000 steps (docs/benchmarks.md)."""

DEFAULT_NUPI_KP = 0.5
"""nuPI's proportional gain in the default configuration: there 0 and 0.5 solve the most
(1 and 5 fewer), and 0 is the default itself (docs/benchmarks.md)."""


def _nupi(problem: ConstrainedProblem, lr: float, kp: float) -> NuPI | None:
    multipliers = problem.dual_parameters()
    return NuPI(multipliers, lr=lr, kp=kp, maximize=True) if multipliers else None


def nupi_method(treatment: Treatment, kp: float = NUPI_KP) -> Runner:
    """Simultaneous descent-ascent with :class:`lagrange_opt.NuPI` on the multipliers, at
    the benchmark's rates."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build(treatment, None)
        primal = _sgd_primal(problem, benchmark)
        dual = _nupi(problem, benchmark.dual_lr, kp)
        return _run_method(problem, SimultaneousGDA(problem, primal, dual), benchmark, steps)

    return run


def default_nupi_method(treatment: Treatment) -> Runner:
    """The default configuration with :class:`lagrange_opt.NuPI` (``kp = DEFAULT_NUPI_KP``)
    in place of its SGD ascent on the multipliers, at the default's rates."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build(treatment, None)
        optimizer = ExtraGradient(
            problem, torch.optim.SGD(problem.primal_parameters(), lr=DEFAULT_LR),
            _nupi(problem, DEFAULT_DUAL_LR, DEFAULT_NUPI_KP), formulation="augmented", scaling=True,
            step_size="adaptive", same_randomness=True,
        )  # fmt: skip
        return _run_method(problem, optimizer, benchmark, steps)

    return run


def penalty_method(weight: float) -> Runner:
    """Gradient descent on ``f + weight * violation**2`` (no multipliers)."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build("penalty", weight)
        optimizer = SimultaneousGDA(problem, *_sgd_pair(problem, benchmark))
        return _run_method(problem, optimizer, benchmark, steps)

    return run


def reparametrised_method(output: str) -> Runner:
    """Plain gradient descent with a positive output map: no constraint is ever violated."""

    def run(benchmark: Benchmark, steps: int) -> Trace | None:
        if benchmark.reparametrised is None:
            return None
        problem = benchmark.reparametrised(output)
        # Outputs are positive, so the projected multipliers stay exactly zero and the step
        # is the unconstrained gradient step.
        optimizer = SimultaneousGDA(problem, *_sgd_pair(problem, benchmark))
        return _run_method(problem, optimizer, benchmark, steps)

    return run


def cooper_method(scheme: Scheme) -> Runner:
    """Cooper 1.0.1: its extrapolation or simultaneous optimizer on the Lagrangian, the
    simultaneous one with its nuPI (``kp = NUPI_KP``), or its augmented Lagrangian (penalty
    coefficient 1, alternating primal-dual updates), with projected multipliers
    (:mod:`benchmarks.cooper_adapter`)."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build("projection", None)
        scale = benchmark.batch_size or 1
        method = CooperMethod(problem, scheme, benchmark.lr, benchmark.dual_lr / scale, kp=NUPI_KP)

        def step(args: Args) -> tuple[Tensor, Tensor, int]:
            result = method.step(*args)
            return result.objective, result.max_violation, result.evaluations

        def residuals() -> KKTResiduals:
            return method.kkt(benchmark.full_args, scale)

        return _run(problem, step, benchmark, steps, residuals, report_kkt=False)

    return run


def slsqp_method(benchmark: Benchmark, steps: int) -> Trace | None:
    """scipy's SLSQP, the exact reference (one point: its answer)."""
    if benchmark.reference is None:
        return None
    start = time.perf_counter()
    objective, violation = benchmark.reference()
    seconds = time.perf_counter() - start
    return Trace(np.array([objective]), np.array([violation]), seconds)


METHODS: dict[str, Runner] = {
    "default-projection": default_method("projection"),
    "default-slack": default_method("slack"),
    "default-adam-projection": default_adam_method("projection"),
    "augmented-projection": augmented_method("projection"),
    "augmented-slack": augmented_method("slack"),
    "extragradient-slack": lagrange_method(ExtraGradient, "slack"),
    "extragradient-projection": lagrange_method(ExtraGradient, "projection"),
    "simultaneous-slack": lagrange_method(SimultaneousGDA, "slack"),
    "simultaneous-projection": lagrange_method(SimultaneousGDA, "projection"),
    "alternating-slack": lagrange_method(AlternatingGDA, "slack"),
    "alternating-projection": lagrange_method(AlternatingGDA, "projection"),
    "optimistic-slack": lagrange_method(OptimisticGDA, "slack"),
    "optimistic-projection": lagrange_method(OptimisticGDA, "projection"),
    "nupi-slack": nupi_method("slack"),
    "nupi-projection": nupi_method("projection"),
    "default-nupi-projection": default_nupi_method("projection"),
    **{f"penalty-{weight:g}": penalty_method(weight) for weight in (1.0, 10.0, 100.0, 1000.0)},
    "exp": reparametrised_method("exp"),
    "softplus": reparametrised_method("softplus"),
    "cooper-extrapolation": cooper_method("extrapolation"),
    "cooper-simultaneous": cooper_method("simultaneous"),
    "cooper-augmented": cooper_method("augmented"),
    "cooper-nupi": cooper_method("nupi"),
    "slsqp": slsqp_method,
}

EXTERNAL_METHODS = (
    "cooper-extrapolation", "cooper-simultaneous", "cooper-augmented", "cooper-nupi", "slsqp",
)  # fmt: skip
"""The methods that are not lagrange_opt's: their records have no KKT residuals."""


def reports_kkt(method: str) -> bool:
    """Whether a method's records carry the final KKT residuals (lagrange_opt's methods)."""
    return method not in EXTERNAL_METHODS


# Measurement, records and output.


def gaps(trace: Trace, f_star: float | None) -> np.ndarray | None:
    """Relative (or absolute, where f* = 0) gap at every recorded point."""
    if f_star is None:
        return None
    gap = np.abs(trace.objective - f_star)
    return gap if f_star == 0 else gap / abs(f_star)


def steps_to(gap: np.ndarray | None, violation: np.ndarray, tolerance: float) -> int | None:
    """The first step count after which gap and violation stay <= tolerance to the end."""
    if gap is None:
        return None
    good = (gap <= tolerance) & (violation <= tolerance)
    if not good[-1]:
        return None
    bad = np.flatnonzero(~good)
    return 0 if bad.size == 0 else int(bad[-1]) + 1


def record(
    problem: str,
    method: str,
    trace: Trace,
    f_star: float | None,
    lower_bound: float | None = None,
) -> dict[str, Any]:
    """The JSON record of one run (``lower_bound``: the problem's, where it has one)."""
    gap = gaps(trace, f_star)
    objective = float(trace.objective[-1])
    violation = float(trace.max_violation[-1])
    iterative = method != "slsqp"
    steps = {
        key: steps_to(gap, trace.max_violation, tolerance) if iterative else None
        for key, tolerance in TOLERANCES.items()
    }
    rel_gap = None if f_star is None else relative_gap(objective, f_star)
    solved = None
    if rel_gap is not None:
        solved = bool(math.isfinite(rel_gap) and rel_gap <= 1e-6 and violation <= 1e-6)
    per_step = trace.evaluations_per_step if iterative else None
    gap_to_bound = None
    if lower_bound is not None and math.isfinite(objective):
        gap_to_bound = objective - lower_bound
    return {
        "problem": problem,
        "method": method,
        "objective": _finite_or_none(objective),
        "f_star": f_star,
        "rel_gap": None if rel_gap is None else _finite_or_none(rel_gap),
        "max_violation": _finite_or_none(violation),
        **steps,
        "evaluations_per_step": None if per_step is None else round(float(per_step), 4),
        "seconds": round(trace.seconds, 3),
        "solved": solved,
        "kkt": None if trace.kkt is None else {k: float(v) for k, v in trace.kkt._asdict().items()},
        "gap_to_bound": gap_to_bound,
        "fraction_violated": trace.fraction_violated,
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


REPARAMETRISED_ONLY = ("exp", "softplus")
NETWORK_PROBLEMS = ("positive-outputs",)


def applies(problem: str, method: str) -> bool:
    """Whether a method runs on a problem: reparametrisations need a network's output, and
    SLSQP needs a problem small enough for a dense solver."""
    if method in REPARAMETRISED_ONLY or method == "slsqp":
        return (problem in NETWORK_PROBLEMS) == (method != "slsqp")
    return True


class JobResult(NamedTuple):
    """One run's outcome, with what its record and figure need from the benchmark."""

    problem: str
    method: str
    trace: Trace | None
    f_star: float | None
    lower_bound: float | None


def run_one(problem: str, method: str, quick: bool, max_steps: int | None = None) -> JobResult:
    """Runs one method on one problem in this process; ``max_steps`` caps the budget of a
    full-batch problem."""
    benchmark = BENCHMARKS[problem](quick)
    steps = benchmark.quick_steps if quick else benchmark.steps
    if max_steps is not None and benchmark.batches is None:
        steps = min(steps, max_steps)
    trace = METHODS[method](benchmark, steps)
    return JobResult(problem, method, trace, benchmark.f_star, benchmark.lower_bound)


def _job(job: tuple[str, str, bool, int | None]) -> JobResult:
    torch.set_num_threads(1)
    return run_one(*job)


def run_all(
    problems: Sequence[str],
    methods: Sequence[str],
    quick: bool,
    workers: int,
    max_steps: int | None = None,
) -> Iterator[JobResult]:
    """Runs every (problem, method) pair on ``workers`` processes, yielding as they finish;
    ``max_steps`` caps the budget of every full-batch problem."""
    jobs = [
        (problem, method, quick, max_steps)
        for problem in problems
        for method in methods
        if applies(problem, method)
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from tqdm(pool.map(_job, jobs), total=len(jobs), desc="runs", unit="run")


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


COLUMNS = [
    ("problem", "problem"), ("method", "method"), ("objective", "objective"),
    ("f_star", "f_star"), ("rel_gap", "rel_gap"), ("max_violation", "max_violation"),
    ("steps_1e4", "steps_1e4"), ("steps_1e6", "steps_1e6"),
    ("evals/step", "evaluations_per_step"), ("kkt (max)", "kkt"),
    ("gap_to_bound", "gap_to_bound"), ("fraction_violated", "fraction_violated"),
    ("seconds", "seconds"), ("solved", "solved"),
]  # fmt: skip
"""The table's columns: header, record key."""


def _row_cell(entry: dict[str, Any], key: str) -> str:
    value = entry[key]
    if key == "kkt" and value is not None:
        value = max(value.values())
    return _cell(value, 7 if key in ("objective", "f_star") else 3)


def summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: problems solved of those with a known f*, the median and worst
    ``steps_1e6`` over the solved ones, and the mean evaluations per step over its runs."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for entry in records:
        methods.setdefault(entry["method"], []).append(entry)
    rows = []
    for method, entries in methods.items():
        known = [entry for entry in entries if entry["solved"] is not None]
        solved = [entry for entry in known if entry["solved"]]
        steps = [entry["steps_1e6"] for entry in solved if entry["steps_1e6"] is not None]
        per_step = [
            entry["evaluations_per_step"]
            for entry in entries
            if entry["evaluations_per_step"] is not None
        ]
        rows.append(
            {
                "method": method,
                "solved": len(solved),
                "known": len(known),
                "median_steps_1e6": float(np.median(steps)) if steps else None,
                "worst_steps_1e6": max(steps) if steps else None,
                "mean_evaluations_per_step": float(np.mean(per_step)) if per_step else None,
            }
        )
    return rows


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """The table of records, and per method the count of solved problems with the median
    and worst steps to 1e-6 and the mean evaluations per step."""
    lines = [
        "| " + " | ".join(header for header, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for entry in records:
        lines.append("| " + " | ".join(_row_cell(entry, key) for _, key in COLUMNS) + " |")
    lines += [
        "",
        "| method | solved (rel_gap and max_violation <= 1e-6) | median steps_1e6 "
        "| worst steps_1e6 | mean evals/step |",
        "|---|---|---|---|---|",
    ]
    for row in summary(records):
        solved = f"{row['solved']} / {row['known']}" if row["known"] else "-"
        cells = [
            row["method"],
            solved,
            _cell(row["median_steps_1e6"], 6),
            _cell(row["worst_steps_1e6"]),
            _cell(row["mean_evaluations_per_step"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(
    problem: str,
    traces: dict[str, Trace],
    f_star: float | None,
    path: Path,
    lower_bound: float | None = None,
) -> None:
    """Relative gap (objective where f* is unknown, with its lower bound if known) and max
    violation against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor, ceiling = 1e-16, 1e4
    colors = plt.get_cmap("tab20").colors
    styles = ("-", "--", ":")
    for index, (method, trace) in enumerate(traces.items()):
        if trace.objective.size < 2:
            continue
        steps = np.arange(trace.objective.size)
        # Thin long traces: a figure needs a few thousand points, not 50,000.
        stride = max(1, steps.size // 4000)
        gap = gaps(trace, f_star)
        first = trace.objective if gap is None else np.clip(gap, floor, ceiling)
        violation = np.clip(trace.max_violation, floor, ceiling)
        style = {
            "color": colors[index % len(colors)],
            "linestyle": styles[(index // len(colors)) % len(styles)],
            "linewidth": 1,
        }
        left.plot(steps[::stride], first[::stride], label=method, **style)
        right.plot(steps[::stride], violation[::stride], **style)
    if f_star is None and lower_bound is not None:
        left.axhline(lower_bound, color="black", linewidth=1, linestyle=":", label="lower bound")
    left.set_title("relative gap" if f_star else ("absolute gap" if f_star == 0 else "objective"))
    right.set_title("max violation")
    for axes in (left, right) if f_star is not None else (right,):
        axes.set_yscale("log")
        axes.set_ylim(floor / 10, ceiling * 10)
    for axes in (left, right):
        axes.set_xlabel("step")
        axes.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=6, ncol=2)
    fig.suptitle(problem)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    suite_names = list(BENCHMARKS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="short budgets, small network")
    parser.add_argument("--problems", nargs="+", choices=suite_names, default=suite_names)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap on every full-batch problem's budget"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    records = []
    traces: dict[str, dict[str, Trace]] = {problem: {} for problem in args.problems}
    f_stars: dict[str, float | None] = {}
    lower_bounds: dict[str, float | None] = {}
    for result in run_all(args.problems, args.methods, args.quick, args.workers, args.max_steps):
        f_stars[result.problem] = result.f_star
        lower_bounds[result.problem] = result.lower_bound
        if result.trace is None:
            continue
        traces[result.problem][result.method] = result.trace
        records.append(
            record(result.problem, result.method, result.trace, result.f_star, result.lower_bound)
        )

    (args.out / "convergence.json").write_text(json.dumps(records, indent=1) + "\n")
    (args.out / "convergence.md").write_text(markdown(records))
    for problem in args.problems:
        figure(
            problem, traces[problem], f_stars.get(problem), args.out / f"{problem}.png",
            lower_bounds.get(problem),
        )  # fmt: skip
    print(markdown(records))


if __name__ == "__main__":
    main()
