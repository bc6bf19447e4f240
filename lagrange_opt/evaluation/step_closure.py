"""The user's closure as a step calls it: counted, with fresh autocast casts."""

from __future__ import annotations

from collections.abc import Callable

from lagrange_opt.evaluation.micro_batches import call_with_fresh_casts
from lagrange_opt.problem.constraints import ProblemState

Closure = Callable[[], ProblemState]


class StepClosure:
    """The user's closure as a step calls it: with fresh autocast casts
    (:func:`.micro_batches.call_with_fresh_casts`), counted."""

    def __init__(self, closure: Closure) -> None:
        self._closure = closure
        self.calls = 0

    def __call__(self) -> ProblemState:
        self.calls += 1
        return call_with_fresh_casts(self._closure)
