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
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from .methods import METHODS, applies
from .report import figure, markdown, record
from .runs import Trace
from .suite import BENCHMARKS, budget


class JobResult(NamedTuple):
    """One run's outcome, with what its record and figure need from the benchmark."""

    problem: str
    method: str
    trace: Trace | None
    f_star: float | None
    lower_bound: float | None


def run_one(
    problem: str, method: str, quick: bool = False, max_steps: int | None = None
) -> JobResult:
    """Runs one method on one problem in this process, with no pool and no progress bar;
    ``max_steps`` caps the budget of a full-batch problem (:func:`benchmarks.suite.budget`).

    Example (one method on one problem, from Python)::

        result = run_one("hs071", "default-projection", max_steps=500)
        print(record(result.problem, result.method, result.trace, result.f_star))
    """
    benchmark = BENCHMARKS[problem](quick)
    trace = METHODS[method](benchmark, budget(benchmark, quick, max_steps))
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
        drawn = figure(problem, traces[problem], f_stars.get(problem), lower_bounds.get(problem))
        drawn.savefig(args.out / f"{problem}.png", dpi=90)
    print(markdown(records))


if __name__ == "__main__":
    main()
