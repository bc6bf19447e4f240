"""The convergence benchmark's methods: each runs one benchmark for a budget of steps.

:data:`METHODS` maps a name to a :data:`Runner`: lagrange_opt's methods at the benchmark's
learning rates, the default as a user calls it, penalties, reparametrised outputs, Cooper
1.0.1 and scipy's SLSQP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

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
from lagrange_opt.problems import check_state, max_violation, standard_form

from .cooper_adapter import CooperMethod, Scheme
from .runs import Trace, run_trace
from .suite import Args, Benchmark

Runner = Callable[[Benchmark, int], Trace | None]
"""Runs a method on a benchmark for a number of steps and returns its trace (``None``: the
method does not apply)."""


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


def _run_method(
    problem: ConstrainedProblem, optimizer: ConstrainedOptimizer, benchmark: Benchmark, steps: int
) -> Trace:
    def step(args: Args) -> tuple[Tensor, Tensor, int]:
        result = optimizer.step(lambda: problem(*args))
        return result.objective, result.max_violation, result.evaluations

    def residuals() -> KKTResiduals:
        return kkt(problem, lambda: problem(*benchmark.full_args))

    return run_trace(problem, step, benchmark, steps, residuals)


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

        return run_trace(problem, step, benchmark, steps, residuals, report_kkt=False)

    return run


def humancompatible_method(scheme: Literal["alm", "nupi"]) -> Runner:
    """humancompatible-train 0.4.2's ALM or nuPI (:mod:`benchmarks.humancompatible_adapter`)
    at the peer's default dual step (0.01), with plain SGD at the benchmark's primal rate,
    bounded parameters projected after each step (as for Cooper); ``None`` where the peer
    does not install (it needs Python 3.11). Equalities come first in the peer's dense
    vector of duals, in a group of their own."""

    def run(benchmark: Benchmark, steps: int) -> Trace | None:
        try:
            from .humancompatible_adapter import HumanCompatibleMethod
        except ImportError:
            return None
        problem = benchmark.build("projection", None)
        _, checked = check_state(problem, problem(*benchmark.full_args))
        constraints = [constraint for _, constraint, _, _ in checked]
        indexed = any(constraint.spec.indexed for constraint in constraints)
        if indexed and len(constraints) > 1:
            raise ValueError("the adapter takes one per-sample constraint, or dense ones")
        # Equalities first: the order of the peer's groups.
        constraints.sort(key=lambda constraint: constraint.spec.kind != "equality")
        sizes = [constraint.multiplier.numel() for constraint in constraints]  # type: ignore[union-attr]
        equalities = sum(
            size for size, constraint in zip(sizes, constraints)
            if constraint.spec.kind == "equality"
        )  # fmt: skip
        params = list(problem.primal_parameters())
        primal = _sgd_primal(problem, benchmark)
        # A problem with bounds only has no duals: the peer's loop is then the primal step.
        method = (
            HumanCompatibleMethod(params, primal, scheme, sum(sizes), equalities=equalities)
            if constraints
            else None
        )
        scale = benchmark.batch_size or 1

        def step(args: Args) -> tuple[Tensor, Tensor, int]:
            state = problem(*args)
            objective, checked = check_state(problem, state)
            by_name = {name: (value, indices) for name, _, value, indices in checked}
            standards = []
            for constraint in constraints:
                value, indices = by_name[constraint.spec.name]
                standards.append((standard_form(value, constraint.spec), indices))
            violation = max_violation(problem, state)
            if method is None:
                primal.zero_grad()
                objective.backward()
                primal.step()
            elif indexed:
                method.step(objective, *standards[0])
            else:
                vector = torch.cat([standard.reshape(-1) for standard, _ in standards])
                method.step(objective, vector, None)
            problem.project_bounds_()
            return objective.detach(), torch.tensor(violation), 1

        def residuals() -> KKTResiduals:
            # The peer's duals in the problem's own multipliers (per-sample ones summed over
            # the batch by the peer, averaged by lagrange_opt: times the batch size).
            duals = method.multipliers.split(sizes) if method is not None else ()
            with torch.no_grad():
                for constraint, dual in zip(constraints, duals):
                    factor = scale if constraint.spec.indexed else 1.0
                    multiplier = constraint.multiplier
                    assert multiplier is not None
                    multiplier.copy_(dual.reshape(multiplier.shape) * factor)
            return kkt(problem, lambda: problem(*benchmark.full_args))

        return run_trace(problem, step, benchmark, steps, residuals, report_kkt=False)

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
    "hct-alm": humancompatible_method("alm"),
    "hct-nupi": humancompatible_method("nupi"),
    "slsqp": slsqp_method,
}

EXTERNAL_METHODS = (
    "cooper-extrapolation", "cooper-simultaneous", "cooper-augmented", "cooper-nupi",
    "hct-alm", "hct-nupi", "slsqp",
)  # fmt: skip
"""The methods that are not lagrange_opt's: their records have no KKT residuals."""


def reports_kkt(method: str) -> bool:
    """Whether a method's records carry the final KKT residuals (lagrange_opt's methods)."""
    return method not in EXTERNAL_METHODS


REPARAMETRISED_ONLY = ("exp", "softplus")
NETWORK_PROBLEMS = ("positive-outputs",)


def applies(problem: str, method: str) -> bool:
    """Whether a method runs on a problem: reparametrisations need a network's output, and
    SLSQP needs a problem small enough for a dense solver."""
    if method in REPARAMETRISED_ONLY or method == "slsqp":
        return (problem in NETWORK_PROBLEMS) == (method != "slsqp")
    return True
