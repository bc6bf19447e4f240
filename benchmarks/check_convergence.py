"""Checks that a convergence benchmark's output is complete and valid (CI runs it).

    python -m benchmarks.check_convergence DIR

Every applicable (problem, method) pair has exactly one record with the documented keys and
types, the table names every problem, and every problem has a non-empty figure. The keys
added with the KKT stop: ``evaluations_per_step`` (``>= 1``; null for SLSQP, and for a run
that diverged on its first step), ``kkt`` (four finite non-negative residuals for
lagrange_opt's methods, or null where the final point gives none; always null for Cooper and
SLSQP), ``gap_to_bound`` (only on a problem with a lower bound, null elsewhere; negative only
for an infeasible fit) and ``fraction_violated`` (in ``[0, 1]``; the network only).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .methods import METHODS, NETWORK_PROBLEMS, applies, reports_kkt
from .suite import BENCHMARKS

KEYS = {
    "problem": (str,),
    "method": (str,),
    "objective": (float, type(None)),
    "f_star": (float, type(None)),
    "rel_gap": (float, type(None)),
    "max_violation": (float, type(None)),
    "steps_1e4": (int, type(None)),
    "steps_1e6": (int, type(None)),
    "evaluations_per_step": (float, int, type(None)),
    "seconds": (float, int),
    "solved": (bool, type(None)),
    "kkt": (dict, type(None)),
    "gap_to_bound": (float, type(None)),
    "fraction_violated": (float, type(None)),
}

KKT_KEYS = ("stationarity", "primal_feasibility", "dual_feasibility", "complementarity")

SIGNED = ("objective", "f_star", "gap_to_bound")
"""The numbers that may be negative."""


def problems_in(entry: dict[str, Any]) -> list[str]:
    """What is wrong with one record (empty if nothing)."""
    label = f"{entry.get('problem')}/{entry.get('method')}"
    if set(entry) != set(KEYS):
        return [f"{label}: keys {sorted(entry)}, expected {sorted(KEYS)}"]
    errors = []
    for key, types in KEYS.items():
        value = entry[key]
        if isinstance(value, bool) and bool not in types:
            errors.append(f"{label}: {key} is a bool")
        elif not isinstance(value, types):
            errors.append(f"{label}: {key} has type {type(value).__name__}")
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (not math.isfinite(value) or (key not in SIGNED and value < 0))
        ):
            errors.append(f"{label}: {key} = {value}")
    if errors:
        return errors
    errors += _new_keys_problems(label, entry)
    if entry["f_star"] is None and entry["solved"] is not None:
        errors.append(f"{label}: solved without a known f*")
    if entry["solved"] and entry["method"] != "slsqp" and entry["steps_1e6"] is None:
        errors.append(f"{label}: solved but steps_1e6 is null")
    if entry["steps_1e4"] is None and entry["steps_1e6"] is not None:
        errors.append(f"{label}: reached 1e-6 but not 1e-4")
    return errors


def _new_keys_problems(label: str, entry: dict[str, Any]) -> list[str]:
    """What is wrong with the evaluations, KKT and lower-bound keys of a well-typed record."""
    errors = []
    method = entry["method"]
    per_step = entry["evaluations_per_step"]
    if method == "slsqp" and per_step is not None:
        errors.append(f"{label}: evaluations_per_step for SLSQP")
    if per_step is not None and per_step < 1:
        errors.append(f"{label}: evaluations_per_step = {per_step} < 1")
    residuals = entry["kkt"]
    if residuals is not None:
        if not reports_kkt(method):
            errors.append(f"{label}: kkt residuals for a method that is not lagrange_opt's")
        elif sorted(residuals) != sorted(KKT_KEYS):
            errors.append(f"{label}: kkt keys {sorted(residuals)}, expected {sorted(KKT_KEYS)}")
        else:
            for key, value in residuals.items():
                if isinstance(value, bool) or not isinstance(value, (float, int)):
                    errors.append(f"{label}: kkt {key} has type {type(value).__name__}")
                elif not (math.isfinite(value) and value >= 0):
                    errors.append(f"{label}: kkt {key} = {value}")
    fraction = entry["fraction_violated"]
    if fraction is not None and not 0 <= fraction <= 1:
        errors.append(f"{label}: fraction_violated = {fraction}")
    network = entry["problem"] in NETWORK_PROBLEMS
    for key in ("gap_to_bound", "fraction_violated"):
        if not network and entry[key] is not None:
            errors.append(f"{label}: {key} on a problem without a lower bound")
        if network and entry[key] is None and entry["objective"] is not None:
            errors.append(f"{label}: {key} is null")
    return errors


def check(directory: Path) -> list[str]:
    """Every error found in ``directory``'s output."""
    records = json.loads((directory / "convergence.json").read_text())
    errors = [error for entry in records for error in problems_in(entry)]
    found = [(entry.get("problem"), entry.get("method")) for entry in records]
    expected = [
        (problem, method)
        for problem in BENCHMARKS
        for method in METHODS
        if applies(problem, method)
    ]
    if sorted(found, key=str) != sorted(expected, key=str):
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected), key=str)
        errors.append(f"records: missing {missing}, unexpected {extra}, {len(found)} in all")
    table = (directory / "convergence.md").read_text()
    for problem in BENCHMARKS:
        if f"| {problem} |" not in table:
            errors.append(f"convergence.md: no row for {problem}")
        figure = directory / f"{problem}.png"
        if not figure.is_file() or figure.stat().st_size == 0:
            errors.append(f"{figure}: missing or empty")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    errors = check(parser.parse_args().directory)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("convergence output: complete and valid")


if __name__ == "__main__":
    main()
