"""The convergence benchmark's output: records, the table and the figures.

Each run becomes a JSON :func:`record`; :func:`markdown` writes the table with a summary
per method, and :func:`figure` draws a problem's gap and violation against the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lagrange_opt.problems import relative_gap

from .runs import Trace

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOLERANCES = {"steps_1e4": 1e-4, "steps_1e6": 1e-6}
"""The record's ``steps_*`` keys and their tolerances."""


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
    lower_bound: float | None = None,
) -> Figure:
    """Relative gap (objective where f* is unknown, with its lower bound if known) and max
    violation against the step, one line per method: the figure, for the caller to show
    or save (``figure(...).savefig(path, dpi=90)`` is what the command line writes).

    A :class:`matplotlib.figure.Figure` made without pyplot: no global state, no backend
    to choose, nothing to close."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    floor, ceiling = 1e-16, 1e4
    colors = matplotlib.colormaps["tab20"].colors
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
    return fig
