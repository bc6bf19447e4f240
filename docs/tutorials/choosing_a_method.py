# %% [markdown]
# # Choosing a method with the benchmark
#
# The package offers several saddle-point methods (extra-gradient, simultaneous,
# alternating and optimistic descent-ascent, on the plain or the augmented Lagrangian)
# and `default_optimizer`, which picks its own step. Which one to use on a given kind of
# problem is an empirical question, and the repository has a benchmark to answer it: the
# convergence benchmark in `benchmarks/convergence.py` runs methods on problems whose
# solutions are known and measures how fast each gets there.
#
# From the command line it runs a whole suite and writes a table and figures
# ([benchmarks](../benchmarks.md) shows them for every method and problem):
#
# ```bash
# python -m benchmarks.convergence --problems hs071 hs076 --max-steps 2000 --out results \
#     --methods default-projection extragradient-projection cooper-extrapolation \
#     simultaneous-projection slsqp
# ```
#
# This tutorial does the same from Python, on two problems and five methods, and explains
# how to read the results.

# %%
import sys
from pathlib import Path

# benchmarks/ is a directory of the repository, not an installed package: make the
# repository's root importable when this file is run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.convergence import run_one
from benchmarks.methods import applies
from benchmarks.report import gaps, record, summary

# %% [markdown]
# ## The problems and the methods
#
# Two problems from the Hock-Schittkowski collection, a standard test set for nonlinear
# programming with published optima (`lagrange_opt.problems.HOCK_SCHITTKOWSKI`, described
# in [the Hock-Schittkowski page](../hock_schittkowski.md)):
#
# - **hs071**: 4 variables, a quartic objective, one equality (a sum of squares equal to
#   40), one inequality (a product at least 25) and bounds on every variable. Nonconvex.
# - **hs076**: 4 variables, a convex quadratic objective, three linear inequalities and
#   non-negativity bounds. A convex QP.
#
# Five methods, by their names in `METHODS`:
#
# - `default-projection`: `default_optimizer(problem)`, with no setting at all;
# - `extragradient-projection`: `ExtraGradient` with fixed SGD steps (0.01 primal, 0.05
#   dual, the rates the benchmark uses for every fixed-step method on these problems);
# - `cooper-extrapolation`: the Cooper library's extra-gradient at the same rates, for
#   comparison with another implementation;
# - `simultaneous-projection`: simultaneous descent-ascent at the same rates, one
#   evaluation per step;
# - `slsqp`: scipy's SLSQP, a sequential quadratic programming solver, as the reference.
#
# Each problem's benchmark holds its problem, known optimum `f_star`, learning rates and
# step budget (50,000 steps, or 200 with `quick=True`). The budget here is capped at 2,000
# steps, as `--max-steps 2000` does, to keep the run short.

# %%
PROBLEMS = ("hs071", "hs076")
METHOD_NAMES = (
    "default-projection",
    "extragradient-projection",
    "cooper-extrapolation",
    "simultaneous-projection",
    "slsqp",
)
MAX_STEPS = 2000

# %% [markdown]
# ## Running it
#
# `run_one(problem, method, quick, max_steps)` builds the benchmark, runs one method on it
# and returns its `Trace` (the objective and the largest violation at the start of every
# step and after the last) with the problem's `f_star`.
# A run stops before its budget once it is solved and `kkt(problem).converged(1e-6)` holds
# (checked after 1,000 solved steps), or once its iterates no longer change.
# `record(...)` turns a trace into the row that the command line writes to
# `convergence.json`. The command line runs the pairs in a process pool; here they run one
# after another, in this process.

# %%
records: list[dict] = []
traces = {}
f_stars = {}
for problem_name in PROBLEMS:
    for method in METHOD_NAMES:
        if not applies(problem_name, method):
            continue
        run = run_one(problem_name, method, quick=False, max_steps=MAX_STEPS)
        f_stars[problem_name] = run.f_star
        traces[problem_name, method] = run.trace
        records.append(record(problem_name, method, run.trace, run.f_star))


def cell(value: object) -> str:
    """A table cell: '-' for a missing value, 2 significant digits for a float."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2g}" if value == 0 or abs(value) >= 1e-2 else f"{value:.1e}"
    return str(value)


header = ("problem", "method", "rel_gap", "max_viol", "steps_1e6", "evals/step", "kkt", "solved")
print(f"{header[0]:<8}{header[1]:<26}" + "".join(f"{h:>11}" for h in header[2:]))
for row in records:
    largest_kkt = None if row["kkt"] is None else max(row["kkt"].values())
    evaluations = row["evaluations_per_step"]
    cells = [cell(row["rel_gap"]), cell(row["max_violation"]), cell(row["steps_1e6"])]
    cells += ["-" if evaluations is None else f"{evaluations:.3f}"]
    cells += [cell(largest_kkt), cell(row["solved"])]
    print(f"{row['problem']:<8}{row['method']:<26}" + "".join(f"{c:>11}" for c in cells))

# %% [markdown]
# ## Reading the columns
#
# - **`rel_gap`**: $|f - f^*| / |f^*|$ at the final point, the relative distance of the
#   objective from the known optimum. On hs071 every method that converges, SLSQP
#   included, stops at 6.4e-10: that is the precision of the published optimum,
#   17.0140173, not of the solvers.
# - **`max_viol`**: the largest violation of any constraint at the final point, in the
#   constraint's own units (bounds are kept by projection and never violated).
# - **`solved`**: both of the above at or below $10^{-6}$ at the end. This is the
#   benchmark's criterion for a method having found the solution.
# - **`steps_1e6`**: the first step after which the gap and the violation *stay* at or
#   below $10^{-6}$ until the end of the run, so a method that passes through the optimum
#   and leaves it again does not count. It measures speed, but in steps: compare it with
#   the next column.
# - **`evals/step`**: closure calls (forward and backward passes of your model) per step.
#   Extra-gradient evaluates twice per step; simultaneous descent-ascent once. The
#   default's first step makes one more call, to measure the problem's scale, and its
#   backtracking may add calls where it rejects a step: here 2.002 and 2.004. The cost of
#   reaching the solution is about `steps_1e6` times this figure.
# - **`kkt`**: the largest of the KKT residuals at the final point (stationarity of the
#   Lagrangian, primal and dual feasibility, complementarity), from `lagrange_opt.kkt`. It
#   certifies the *multipliers* too, not only the point. Only the package's own methods
#   report it; SLSQP and Cooper show "-".
#
# Per method, `summary(records)` counts the problems solved and gives the median and worst
# `steps_1e6` over them: the figures that [benchmarks](../benchmarks.md) tabulates for the
# whole suite.

# %%
per_method = {row["method"]: row for row in summary(records)}
for method, row in per_method.items():
    median = row["median_steps_1e6"]
    print(
        f"{method:<26} solved {row['solved']} / {row['known']}, "
        f"median steps_1e6 {'-' if median is None else f'{median:g}'}"
    )
default_solved = per_method["default-projection"]["solved"]
steps_to_1e6 = {(row["problem"], row["method"]): row["steps_1e6"] for row in records}

# %% [markdown]
# ## The figure
#
# The relative gap at the start of every step, on a logarithmic scale, one panel per
# problem. SLSQP has no iterates in the trace, only its answer, drawn as a horizontal line.

# %%
figure, panels = plt.subplots(1, len(PROBLEMS), figsize=(11, 4), sharey=True)
for axes, problem_name in zip(panels, PROBLEMS):
    for index, method in enumerate(METHOD_NAMES):
        trace = traces.get((problem_name, method))
        if trace is None:
            continue
        gap = np.clip(gaps(trace, f_stars[problem_name]), 1e-16, 1e4)
        if len(gap) == 1:  # SLSQP: its answer only
            axes.axhline(gap[0], color=f"C{index}", linestyle=":", label=method)
        else:
            # Cooper takes the same iterates as extra-gradient: dashed, so both show.
            style = "--" if method.startswith("cooper") else "-"
            axes.plot(np.arange(len(gap)), gap, f"C{index}", linestyle=style, label=method)
    axes.axhline(1e-6, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_title(f"{problem_name}: relative gap")
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
panels[0].legend(fontsize=8)
figure.tight_layout()

# %% [markdown]
# ## What to conclude
#
# - **The default solves both, without a learning rate**, in about a hundred steps, where
#   fixed-step extra-gradient at the benchmark's tuned rates needs five (hs071) to thirty
#   (hs076) times as many, at the same two evaluations per step. Its runs end early,
#   once they have stayed solved for the 1,000 steps that the stopping rule waits for.
# - **Cooper's extra-gradient follows the same iterates** as the package's fixed-step
#   extra-gradient: the two implementations compute the same method, and the same
#   `steps_1e6`.
# - **Simultaneous descent-ascent**, at half the cost per step, does not solve either
#   within the budget: on hs071 it is far from the optimum, with the equality still
#   violated. One evaluation per step is no saving if the method does not converge.
# - **SLSQP is the reference** for small dense problems like these: it solves both in a few
#   milliseconds. It needs the whole problem at once (every constraint, dense derivatives)
#   and does not apply to a network trained on minibatches, which is what the package's
#   methods are for.
#
# Two problems are not a benchmark: run the suite, or the problems that resemble yours,
# before drawing a general conclusion. The [choosing a method](../how-to/choose-a-method.md)
# guide summarises what the whole suite says.
