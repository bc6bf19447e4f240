"""Checks the default's claims on a convergence benchmark's output (CI runs it).

    python -m benchmarks.convergence --methods default-projection default-slack \\
        --problems <every problem with a known optimum> --out DIR
    python -m benchmarks.check_default DIR

With either inequality treatment, ``default_optimizer`` solves every problem with a known
optimum (rel_gap and max violation <= 1e-6, held to the end of the run) except the misses
documented in docs/benchmarks.md (:data:`KNOWN_MISSES`), and takes at most 2.3 closure calls
per step on average. A documented miss that starts being solved fails too, so that the list
stays honest; a documented miss may be left out of the run (CI leaves them out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .suite import BENCHMARKS

METHODS = ("default-projection", "default-slack")

KNOWN_MISSES = {
    "hs002": "from x0 every local method (SLSQP, IPOPT, this one) reaches the other local "
    "minimum on the bound, f = 4.9412293",
    "hs046": "a degenerate optimum (singular Hessian): first-order convergence is sublinear, "
    "rel_gap 2.4e-7 and violation 2.8e-6 after 50,000 steps",
    "hs055": "the other local minimum, on the bound x1 <= 1: f = 20/3 against f* = 19/3 "
    "(a KKT point; SLSQP from x0 stops at a third, the feasible segment's maximiser)",
    "hs081": "its objective rewards violating the third equality (-(x1^3 + x2^3 + 1)^2 / 2): "
    "only a penalty near its maximum holds the run on the constraint set, and that stiff "
    "problem converges linearly and slowly, rel_gap 2e-3 after 50,000 steps",
}

MAX_EVALUATIONS = 2.3


def check(records: list[dict[str, Any]]) -> list[str]:
    """Every claim that ``records`` contradict (empty if none)."""
    errors = []
    for method in METHODS:
        runs = {entry["problem"]: entry for entry in records if entry["method"] == method}
        # A documented miss may be left out of a run (CI leaves them out: each one takes the
        # whole budget); every other problem with a known optimum must be there.
        expected = [
            name
            for name in BENCHMARKS
            if name in runs or (name.startswith("hs") and name not in KNOWN_MISSES)
        ]
        for name in expected:
            entry = runs.get(name)
            if entry is None:
                errors.append(f"{method}: no record for {name}")
                continue
            if entry["solved"] is None:
                continue
            if name in KNOWN_MISSES and entry["solved"]:
                errors.append(f"{method}: {name} is now solved; take it off KNOWN_MISSES")
            if name not in KNOWN_MISSES and not entry["solved"]:
                errors.append(
                    f"{method}: {name} not solved (rel_gap {entry['rel_gap']}, "
                    f"max_violation {entry['max_violation']})"
                )
        counts = [entry["evaluations_per_step"] for entry in runs.values()]
        mean = sum(counts) / len(counts) if counts else 0.0
        if mean > MAX_EVALUATIONS:
            errors.append(f"{method}: {mean:.3f} closure calls per step on average")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    records = json.loads((parser.parse_args().directory / "convergence.json").read_text())
    errors = check(records)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("default_optimizer: every claimed problem solved with either treatment")


if __name__ == "__main__":
    main()
