"""Convergence benchmark: every method on problems with known solutions, side by side.

    python -m benchmarks.convergence --out DIR [--quick] [--problems P ...] [--methods M ...]

writes ``DIR/convergence.json`` (one record per problem and method), ``DIR/convergence.md``
(the table) and ``DIR/<problem>.png`` (relative gap and max violation against the step).

A run's ``steps_1e4`` (``steps_1e6``) is the first step count after which both the relative
gap (absolute where f* = 0) and the max violation stay at or below 1e-4 (1e-6) until the end
of the run; ``solved`` says whether ``steps_1e6`` exists. Both are measured at the start point
of every step and once after the last step. A full-batch run ends before its budget once its
objective and max violation have stayed at one value (to 1e-15, relative) for 1,000 steps:
the iterates are at a fixed point and the rest of the run would repeat it. Learning rates
are per problem, the same for every method; Cooper takes them too.
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
    SimultaneousGDA,
    Treatment,
)
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
from .cooper_adapter import CooperMethod

TOLERANCES = {"steps_1e4": 1e-4, "steps_1e6": 1e-6}

Args = tuple[Any, ...]

STALL_WINDOW = 1_000


class Trace(NamedTuple):
    """A run's objective and max violation at the start of every step and at the end."""

    objective: np.ndarray
    max_violation: np.ndarray
    seconds: float


class Benchmark(NamedTuple):
    """A problem of the suite with its learning rates and step budgets.

    Attributes:
        name: The problem's name in the table.
        build: Builds a fresh problem for a treatment and penalty weight.
        f_star: The optimal value, ``None`` if unknown.
        lr: Primal learning rate (plain SGD), for every method.
        dual_lr: Dual learning rate (plain SGD ascent).
        slack_lr: The slacks' learning rate (slack treatment only).
        steps: Step budget; ``quick_steps`` with ``--quick``.
        quick_steps: Step budget of a quick run.
        batches: The closure arguments of step ``k`` (a minibatch), for a budget.
        final: The objective and max violation on all the data, after the run.
        reference: SLSQP's objective and max violation, or ``None`` where it does not apply.
        reparametrised: Builds the problem with a positive output map (``exp``,
            ``softplus``), for the methods that need no constraint.
        batch_size: Samples per step of an indexed problem. lagrange_opt averages an indexed
            constraint's terms over the batch where Cooper sums them, so Cooper's multipliers
            are lagrange_opt's divided by the batch size, and Cooper gets the equivalent
            dual learning rate ``dual_lr / batch_size``.
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
    final: Callable[[ConstrainedProblem], tuple[float, float]] | None = None
    reference: Callable[[], tuple[float, float]] | None = None
    reparametrised: Callable[[str], ConstrainedProblem] | None = None
    batch_size: int | None = None


def _no_batches(steps: int) -> Sequence[Args]:
    return [()] * steps


def _hock_schittkowski(name: str, quick: bool) -> Benchmark:
    definition = HOCK_SCHITTKOWSKI[name]
    return Benchmark(
        name=name,
        build=lambda treatment, weight: NonlinearProgram(definition, treatment, weight),
        f_star=definition.f_star,
        lr=DEFAULT_LR,
        dual_lr=DEFAULT_DUAL_LR,
        slack_lr=DEFAULT_LR,
        steps=50_000,
        quick_steps=500,
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
        quick_steps=1_000,
        reference=lambda: references.slsqp(NonNegativeLeastSquares(X, y, "projection")),
    )


def _per_sample(quick: bool) -> Benchmark:
    X, y = references.per_sample_data()
    # f* is SLSQP's optimum: computed once, it also serves as the reference run.
    reference = references.slsqp(NonNegativePredictions(X, y, "projection"))
    return Benchmark(
        name="nonnegative-linear",
        build=lambda treatment, weight: NonNegativePredictions(X, y, treatment, weight),
        batch_size=X.shape[0],
        f_star=reference[0],
        lr=0.05,
        dual_lr=0.05 * X.shape[0],
        slack_lr=0.05,
        steps=50_000,
        quick_steps=1_000,
        reference=lambda: reference,
    )


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

    def final(problem: ConstrainedProblem) -> tuple[float, float]:
        assert isinstance(problem, PositiveOutputs)
        with torch.no_grad():
            predictions = problem.network(data.inputs)
            loss = nn.functional.mse_loss(predictions, data.targets)
        return float(loss), float((-predictions).clamp(min=0).max())

    return Benchmark(
        name="positive-outputs",
        build=build,
        f_star=None,
        lr=0.05,
        dual_lr=1.0,
        slack_lr=0.005,
        batch_size=batch_size,
        steps=600,
        quick_steps=50,
        batches=batches,
        final=final,
        reparametrised=reparametrised,
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


def _sgd_pair(
    problem: ConstrainedProblem, benchmark: Benchmark
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    slacks = problem.slack_parameters()
    slack_ids = {id(slack) for slack in slacks}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in problem.primal_parameters() if id(p) not in slack_ids]}
    ]
    if slacks:
        groups.append({"params": slacks, "lr": benchmark.slack_lr})
    primal = torch.optim.SGD(groups, lr=benchmark.lr)
    multipliers = problem.dual_parameters()
    dual = (
        torch.optim.SGD(multipliers, lr=benchmark.dual_lr, maximize=True) if multipliers else None
    )
    return primal, dual


def _run(
    problem: ConstrainedProblem,
    step: Callable[[Args], tuple[Tensor, Tensor]],
    benchmark: Benchmark,
    steps: int,
) -> Trace:
    batches = (benchmark.batches or _no_batches)(steps)
    objectives: list[Tensor] = []
    violations: list[Tensor] = []
    start = time.perf_counter()
    try:
        for count, args in enumerate(batches, start=1):
            objective, violation = step(args)
            objectives.append(objective)
            violations.append(violation)
            if (
                benchmark.batches is None
                and count % STALL_WINDOW == 0
                and _stalled(objectives, violations)
            ):
                break
    except ValueError:
        # A non-finite objective or constraint: the method diverged; the trace ends here.
        objectives.append(torch.tensor(math.nan))
        violations.append(torch.tensor(math.nan))
    seconds = time.perf_counter() - start
    if benchmark.final is not None:
        final = benchmark.final(problem)
    else:
        with torch.no_grad():
            state = problem()
            final = float(state.objective), max_violation(problem, state)
    objective = torch.stack([o.double() for o in objectives]).numpy()
    violation = torch.stack([v.double() for v in violations]).numpy()
    return Trace(np.append(objective, final[0]), np.append(violation, final[1]), seconds)


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
    def step(args: Args) -> tuple[Tensor, Tensor]:
        result = optimizer.step(lambda: problem(*args))
        return result.objective, result.max_violation

    return _run(problem, step, benchmark, steps)


def lagrange_method(method: type[ConstrainedOptimizer], treatment: Treatment) -> Runner:
    """A lagrange_opt method with one inequality treatment."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build(treatment, None)
        return _run_method(
            problem, method(problem, *_sgd_pair(problem, benchmark)), benchmark, steps
        )

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


def cooper_method(scheme: str) -> Runner:
    """Cooper 1.0.1's extrapolation or simultaneous optimizer, projected multipliers."""

    def run(benchmark: Benchmark, steps: int) -> Trace:
        problem = benchmark.build("projection", None)
        dual_lr = benchmark.dual_lr / (benchmark.batch_size or 1)
        method = CooperMethod(problem, scheme, benchmark.lr, dual_lr)  # type: ignore[arg-type]

        def step(args: Args) -> tuple[Tensor, Tensor]:
            result = method.step(*args)
            return result.objective, result.max_violation

        return _run(problem, step, benchmark, steps)

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
    "extragradient-slack": lagrange_method(ExtraGradient, "slack"),
    "extragradient-projection": lagrange_method(ExtraGradient, "projection"),
    "simultaneous-slack": lagrange_method(SimultaneousGDA, "slack"),
    "simultaneous-projection": lagrange_method(SimultaneousGDA, "projection"),
    "alternating-slack": lagrange_method(AlternatingGDA, "slack"),
    "alternating-projection": lagrange_method(AlternatingGDA, "projection"),
    **{f"penalty-{weight:g}": penalty_method(weight) for weight in (1.0, 10.0, 100.0, 1000.0)},
    "exp": reparametrised_method("exp"),
    "softplus": reparametrised_method("softplus"),
    "cooper-extrapolation": cooper_method("extrapolation"),
    "cooper-simultaneous": cooper_method("simultaneous"),
    "slsqp": slsqp_method,
}


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


def record(problem: str, method: str, trace: Trace, f_star: float | None) -> dict[str, Any]:
    """The JSON record of one run."""
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
    return {
        "problem": problem,
        "method": method,
        "objective": _finite_or_none(objective),
        "f_star": f_star,
        "rel_gap": None if rel_gap is None else _finite_or_none(rel_gap),
        "max_violation": _finite_or_none(violation),
        **steps,
        "seconds": round(trace.seconds, 3),
        "solved": solved,
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


def _job(job: tuple[str, str, bool]) -> tuple[str, str, Trace | None, float | None]:
    problem, method, quick = job
    torch.set_num_threads(1)
    benchmark = BENCHMARKS[problem](quick)
    steps = benchmark.quick_steps if quick else benchmark.steps
    return problem, method, METHODS[method](benchmark, steps), benchmark.f_star


def run_all(
    problems: Sequence[str], methods: Sequence[str], quick: bool, workers: int
) -> Iterator[tuple[str, str, Trace | None, float | None]]:
    """Runs every (problem, method) pair on ``workers`` processes, yielding as they finish."""
    jobs = [
        (problem, method, quick)
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


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """The table of records, and the count of solved problems per method."""
    columns = [
        "problem", "method", "objective", "f_star", "rel_gap", "max_violation",
        "steps_1e4", "steps_1e6", "seconds", "solved",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in records:
        cells = [
            _cell(entry[column], 7 if column in ("objective", "f_star") else 3)
            for column in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    solved: dict[str, list[int]] = {}
    for entry in records:
        if entry["solved"] is not None:
            counts = solved.setdefault(entry["method"], [0, 0])
            counts[0] += int(entry["solved"])
            counts[1] += 1
    lines += ["", "| method | solved (rel_gap and max_violation <= 1e-6) |", "|---|---|"]
    lines += [f"| {method} | {done} / {total} |" for method, (done, total) in solved.items()]
    return "\n".join(lines) + "\n"


def figure(problem: str, traces: dict[str, Trace], f_star: float | None, path: Path) -> None:
    """Relative gap (objective where f* is unknown) and max violation against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor, ceiling = 1e-16, 1e4
    colors = plt.get_cmap("tab20").colors
    for index, (method, trace) in enumerate(traces.items()):
        if trace.objective.size < 2:
            continue
        steps = np.arange(trace.objective.size)
        # Thin long traces: a figure needs a few thousand points, not 50,000.
        stride = max(1, steps.size // 4000)
        gap = gaps(trace, f_star)
        first = trace.objective if gap is None else np.clip(gap, floor, ceiling)
        violation = np.clip(trace.max_violation, floor, ceiling)
        style = {"color": colors[index % len(colors)], "linewidth": 1}
        left.plot(steps[::stride], first[::stride], label=method, **style)
        right.plot(steps[::stride], violation[::stride], **style)
    left.set_title("relative gap" if f_star else ("absolute gap" if f_star == 0 else "objective"))
    right.set_title("max violation")
    for axes in (left, right) if f_star is not None else (right,):
        axes.set_yscale("log")
        axes.set_ylim(floor / 10, ceiling * 10)
    for axes in (left, right):
        axes.set_xlabel("step")
        axes.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=7, ncol=2)
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
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    records = []
    traces: dict[str, dict[str, Trace]] = {problem: {} for problem in args.problems}
    f_stars: dict[str, float | None] = {}
    for problem, method, trace, f_star in run_all(
        args.problems, args.methods, args.quick, args.workers
    ):
        f_stars[problem] = f_star
        if trace is None:
            continue
        traces[problem][method] = trace
        records.append(record(problem, method, trace, f_star))

    (args.out / "convergence.json").write_text(json.dumps(records, indent=1) + "\n")
    (args.out / "convergence.md").write_text(markdown(records))
    for problem in args.problems:
        figure(problem, traces[problem], f_stars.get(problem), args.out / f"{problem}.png")
    print(markdown(records))


if __name__ == "__main__":
    main()
