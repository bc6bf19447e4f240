"""The CI check of the default's claims (benchmarks/check_default.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.check_default import KNOWN_MISSES, METHODS, check
from benchmarks.suite import BENCHMARKS

KNOWN = [name for name in BENCHMARKS if name != "positive-outputs"]


def _records(evaluations: float = 2.1, **solved: bool) -> list[dict[str, Any]]:
    return [
        {
            "problem": name,
            "method": method,
            "solved": solved.get(name, name not in KNOWN_MISSES),
            "rel_gap": 0.0,
            "max_violation": 0.0,
            "evaluations_per_step": evaluations,
        }
        for method in METHODS
        for name in KNOWN
    ]


def test_the_documented_outcome_passes() -> None:
    assert check(_records()) == []


def test_a_claimed_problem_not_solved_fails() -> None:
    errors = check(_records(hs071=False))
    assert errors == [
        f"{method}: hs071 not solved (rel_gap 0.0, max_violation 0.0)" for method in METHODS
    ]


def test_a_documented_miss_that_is_solved_fails() -> None:
    errors = check(_records(hs046=True))
    assert errors == [
        f"{method}: hs046 is now solved; take it off KNOWN_MISSES" for method in METHODS
    ]


def test_a_missing_record_and_too_many_evaluations_fail() -> None:
    records = [entry for entry in _records(evaluations=2.4) if entry["problem"] != "hs035"]
    errors = check(records)
    for method in METHODS:
        assert f"{method}: no record for hs035" in errors
        assert f"{method}: 2.400 closure calls per step on average" in errors


def test_a_documented_miss_may_be_left_out() -> None:
    records = [entry for entry in _records() if entry["problem"] not in KNOWN_MISSES]
    assert check(records) == []
