"""Issue 22, items 6-9: ranks that declare different constraints or fail a check of the
step's arguments raise together and at once (no rank waits for the process group's
timeout); a constraint absent from one micro-batch or one rank gives the whole batch's
step; micro-batches of unequal sizes are weighted by the sizes given, refused by name
otherwise.

The 2 gloo ranks are spawned once for the module (``tests/reliability_ranks_worker.py``);
each case has a process group of its own with a timeout of a few seconds, and the spawn a
deadline, so that a regression fails instead of hanging.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import spawned
import torch
from reliability_ranks_worker import (
    ABSENT_CASES,
    CASE_TIMEOUT,
    RARE,
    STEPS,
    Problem,
    absent_run,
    build,
    method,
    state,
)
from torch import Tensor
from torch import distributed as dist

from lagrange_opt import MicroBatch, ProblemState

ROOT = Path(__file__).resolve().parents[1]

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Each rank's results by case, from one run spawned for the session at its start
    (tests/spawned.py); a rank that did not finish has none, and each test names the case
    it misses."""
    run = spawned.finished(tmp_path_factory, "reliability_ranks")
    results = []
    for rank in range(2):
        path = run.outdir / f"rank{rank}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else {})
    return results


def _case(ranks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    found = [rank.get(name, {"error": "the case did not finish"}) for rank in ranks]
    for rank, result in enumerate(found):
        assert "error" not in result, f"rank {rank}: {result['error']}"
        # No rank waited for a rank that had left (that wait ends at the group's timeout).
        assert result["seconds"] < CASE_TIMEOUT.total_seconds() / 2, f"rank {rank}"
    return found


@needs_gloo
def test_a_late_declaration_on_one_rank_raises_on_every_rank_at_once(
    ranks: list[dict[str, Any]],
) -> None:
    """Item 7: rank 1 raises its own error, rank 0 one naming rank 1, instead of waiting
    for the process group's timeout; neither step changes anything."""
    other, failing = _case(ranks, "late_declaration")
    assert failing["raised"] == (
        "RuntimeError",
        "constraint(s) ['late'] were declared after this optimizer was built, so no optimizer "
        "steps their multipliers: build the optimizers and the method again (over "
        "problem.dual_parameters() and problem.slack_parameters())",
    )
    assert other["raised"] == (
        "RuntimeError",
        "rank 1 of the process group failed in this step (its own error says what); every "
        "rank raises and puts the step back",
    )
    assert failing["unchanged"] and other["unchanged"]


@needs_gloo
def test_a_check_of_the_arguments_failing_on_one_rank_raises_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    """Item 7: a learning rate below 0 on rank 0 only."""
    failing, other = _case(ranks, "negative_rate")
    assert failing["raised"][0] == "ValueError"
    assert re.search(r"primal.*group 0|group 0.*primal", failing["raised"][1])
    assert other["raised"] == (
        "RuntimeError",
        "rank 0 of the process group failed in this step (its own error says what); every "
        "rank raises and puts the step back",
    )
    assert failing["unchanged"] and other["unchanged"]


@needs_gloo
def test_ranks_that_declare_different_constraints_raise_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    """Item 6: no abort of rank 0 (gloo's "Received data size doesn't match"), no
    misleading list: every rank names the ranks and what each declared, at every step."""
    expected = (
        "ValueError",
        "the ranks of the process group declared different constraints: rank 0 declared "
        "['floor', 'nonnegative', 'rare', 'rate']; rank 1 declared ['floor', 'nonnegative', "
        "'rare', 'rate', 'cap']; every rank must declare the same constraints, in the same "
        "order, before the method is built",
    )
    for result in _case(ranks, "different_names"):
        assert result["raised"] == expected
        assert result["again"] == expected
        assert result["unchanged"]


@needs_gloo
def test_ranks_that_declare_a_constraint_differently_raise_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    """Item 6: the same names, one shape differing, under the first step's scaling."""
    for result in _case(ranks, "different_specs"):
        kind, message = result["raised"]
        assert kind == "ValueError"
        assert message.startswith(
            "the ranks of the process group declared different constraints: constraint "
            "'floor' is declared differently (rank 0: ConstraintSpec(name='floor', "
            "kind='inequality', sense='>=', shape=(1,)"
        )
        assert "rank 1: ConstraintSpec(name='floor', kind='inequality', sense='>=', " in message
        assert "shape=(2,)" in message


@needs_gloo
@pytest.mark.parametrize("case", ABSENT_CASES, ids="-".join)
def test_a_constraint_absent_on_one_rank_takes_the_whole_batch_step(
    ranks: list[dict[str, Any]], case: tuple[str, str]
) -> None:
    """Item 8: the rare class on rank 1 only: rank 0 returns the indexed constraint with an
    empty mask and leaves the dense rate out; both ranks take one process's step on the
    whole batch (three steps, the first step's scales measured alike) and hold bitwise the
    same state."""
    whole = absent_run(case, None)
    start = state(Problem(treatment=case[1]))
    for name in ("constraints.rate.multiplier", "constraints.rare.multiplier"):
        assert not torch.equal(whole[name], start[name]), name
    first, second = (result["states"][case] for result in _case(ranks, "absent_on_rank_0"))
    _assert_close(first, whole)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


# Micro-batches (items 8 and 9), in one process.

METHODS = ["simultaneous", "extragradient", "default"]


def _run(name: str, split: Any) -> dict[str, Tensor]:
    """Three steps of the method ``name``, each batch given whole (``split`` None) or as
    the closures ``split(problem, batch)`` returns."""
    problem = Problem()
    optimizer = method(name, problem, None)
    for batch in [*STEPS, STEPS[0]]:
        if split is None:
            optimizer.step(lambda batch=batch: problem(batch))
        else:
            optimizer.step(split(problem, batch))
    return state(problem)


def _assert_close(first: dict[str, Tensor], second: dict[str, Tensor]) -> None:
    assert first.keys() == second.keys()
    for name, value in first.items():
        torch.testing.assert_close(value, second[name], rtol=0, atol=1e-12, msg=name)


def _halves(problem: Problem, batch: Tensor) -> list[Any]:
    return [lambda part=part: problem(part) for part in batch.chunk(2)]


@pytest.mark.parametrize("method", METHODS)
def test_a_constraint_absent_from_one_micro_batch_takes_the_whole_batch_step(
    method: str,
) -> None:
    """Item 8: the rare class only in the second micro-batch (the first returns the
    indexed constraint with an empty mask and leaves the dense rate out): the step is the
    whole batch's, with the first step's scales measured alike."""
    assert not bool(RARE[STEPS[0][:4]].any()) and not bool(RARE[STEPS[1][:4]].any())
    whole = _run(method, None)
    _assert_close(_run(method, _halves), whole)
    # The constraints over the rare class moved (a step that left them alone would pass).
    start = state(Problem())
    for name in ("constraints.rate.multiplier", "constraints.rare.multiplier"):
        assert not torch.equal(whole[name], start[name]), name


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("first", [1, 3])
def test_micro_batches_of_given_sizes_take_the_whole_batch_step(method: str, first: int) -> None:
    """Item 9: micro-batches of 1 and 7 (3 and 5) samples, each given its size."""

    def sized(problem: Problem, batch: Tensor) -> list[Any]:
        parts = [batch[:first], batch[first:]]
        return [MicroBatch(lambda part=part: problem(part), len(part)) for part in parts]

    _assert_close(_run(method, sized), _run(method, None))


def test_plain_micro_batches_of_unequal_sizes_are_refused_by_name() -> None:
    """Item 9: plain closures over 1 and 7 samples: the rows of the constraint over every
    sample show it; the step raises, naming the micro-batch and the rows, and changes
    nothing."""
    problem = Problem()
    optimizer = build(problem, None)
    batch = STEPS[0]
    before = state(problem)
    message = (
        "micro-batch 1 has 7 rows of constraint 'nonnegative' where micro-batch 0 has 1 (rows "
        "per micro-batch: [1, 7]): plain closures are averaged as equal parts of the batch, so "
        "micro-batches of unequal sizes would take a step other than the whole batch's; split "
        "the batch into equal parts, or give each micro-batch its size: MicroBatch(closure, "
        "size)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer.step([lambda: problem(batch[:1]), lambda: problem(batch[1:])])
    after = state(problem)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_equal_micro_batches_with_a_masked_constraint_are_not_refused() -> None:
    """The rows of a constraint over a subset differ between micro-batches of equal size;
    the constraint over every sample shows they are equal."""
    problem = Problem()
    optimizer = build(problem, None)
    batch = torch.tensor([5, 0, 1, 2, 6, 7, 3, 4])  # 'rare' has 1 and 2 rows
    optimizer.step(_halves(problem, torch.cat([batch[:4], batch[4:]])))


def test_sizes_are_given_for_every_micro_batch_or_none() -> None:
    problem = Problem()
    optimizer = build(problem, None)
    closures: list[Any] = [MicroBatch(lambda: problem(STEPS[0][:4]), 4), lambda: problem(STEPS[0])]
    with pytest.raises(
        TypeError,
        match=re.escape(
            "micro-batch 1 is a plain closure among MicroBatch(closure, size) ones: give every "
            "micro-batch its size, or none"
        ),
    ):
        optimizer.step(closures)
    with pytest.raises(ValueError, match=re.escape("MicroBatch: size must be at least 1, got 0")):
        MicroBatch(lambda: problem(STEPS[0]), 0)
    with pytest.raises(TypeError, match=re.escape("MicroBatch: size must be an int, got float")):
        MicroBatch(lambda: problem(STEPS[0]), 2.0)  # type: ignore[arg-type]


def test_a_micro_batch_that_changes_its_batch_between_its_calls_is_named() -> None:
    """The second pass calls each closure again: one that draws another batch (here, with
    the rare class only on its first call) is refused, naming the micro-batch."""
    problem = Problem()
    optimizer = build(problem, None)
    calls = [0]

    def drifting() -> ProblemState:
        calls[0] += 1
        return problem(STEPS[0][4:] if calls[0] == 1 else STEPS[0][:4])

    before = state(problem)
    message = (
        "micro-batch 1: constraint 'rare': the closure returned no value for it on its second "
        "call but a value on its first; a micro-batch's closure must evaluate the same batch "
        "each time"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer.step([lambda: problem(STEPS[0][:4]), drifting])
    after = state(problem)
    assert all(torch.equal(before[name], after[name]) for name in before)
