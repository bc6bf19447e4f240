"""Checks that a convergence benchmark's output is complete and valid (CI runs it).

    python -m benchmarks.check_convergence DIR

Every applicable (problem, method) pair has exactly one record with the documented keys and
types, the table names every problem, and every problem has a non-empty figure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .convergence import BENCHMARKS, METHODS, applies

KEYS = {
    "problem": (str,),
    "method": (str,),
    "objective": (float, type(None)),
    "f_star": (float, type(None)),
    "rel_gap": (float, type(None)),
    "max_violation": (float, type(None)),
    "steps_1e4": (int, type(None)),
    "steps_1e6": (int, type(None)),
    "seconds": (float, int),
    "solved": (bool, type(None)),
}


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
            and (not math.isfinite(value) or (key not in ("objective", "f_star") and value < 0))
        ):
            errors.append(f"{label}: {key} = {value}")
    if errors:
        return errors
    if entry["f_star"] is None and entry["solved"] is not None:
        errors.append(f"{label}: solved without a known f*")
    if entry["solved"] and entry["method"] != "slsqp" and entry["steps_1e6"] is None:
        errors.append(f"{label}: solved but steps_1e6 is null")
    if entry["steps_1e4"] is None and entry["steps_1e6"] is not None:
        errors.append(f"{label}: reached 1e-6 but not 1e-4")
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
