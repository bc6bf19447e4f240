"""Checks the default's claims on a network suite's output (CI runs it on ``--quick``).

    python -m benchmarks.networks --quick --out DIR
    python -m benchmarks.check_networks DIR

On every row of the output whose constraints are per-sample (``outputs``, ``losses``),
``default_optimizer`` (with plain SGD, and with the user's Adam) leaves no training output
or sample violated beyond 1e-3 at the final iterate, on every seed, with at most
:data:`MAX_CALLS` closure calls per step on average, and the unconstrained run of the same
task violates its constraints with one of the optimizers (so that the task tests
something). docs/benchmarks.md lists
the rows of the full suite where the default misses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .networks import TASKS

MAX_CALLS = 2.1
"""The most closure calls per step the default may take on average over a row's seeds."""


def check(runs: list[dict[str, Any]]) -> list[str]:
    """Every claim that ``runs`` contradict (empty if none)."""
    errors = []
    defaults = [run for run in runs if run["method"] == "default"]
    if not defaults:
        return ["no run of the default"]
    rows = sorted({(run["task"], run["optimizer"]) for run in defaults})
    for task, optimizer in rows:
        if TASKS[task].kind == "recall":
            continue
        label = f"{task} ({optimizer})"
        mine = [run for run in defaults if (run["task"], run["optimizer"]) == (task, optimizer)]
        for run in mine:
            if run["violated"] > 0:
                errors.append(
                    f"{label}, seed {run['seed']}: {run['violated']:.3%} of the training "
                    f"outputs violated (largest {run['largest']:.3g})"
                )
        calls = sum(run["calls_per_step"] for run in mine) / len(mine)
        if calls > MAX_CALLS:
            errors.append(f"{label}: {calls:.3f} closure calls per step on average")
    for task in sorted({task for task, _ in rows}):
        unconstrained = [
            run for run in runs if (run["task"], run["method"]) == (task, "unconstrained")
        ]
        if unconstrained and all(run["violated"] == 0 for run in unconstrained):
            errors.append(f"{task}: no unconstrained run violates anything; it tests nothing")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    runs = json.loads((parser.parse_args().directory / "networks.json").read_text())["runs"]
    errors = check(runs)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("default_optimizer: every per-sample constraint met at the final iterate")


if __name__ == "__main__":
    main()
