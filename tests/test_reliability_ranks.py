"""Issue 22, items 6-8 under a process group: ranks that declare different constraints or
fail a check of the step's arguments raise together and at once (no rank waits for the
process group's timeout), and a constraint absent on one rank is the whole batch's step.

The 2 gloo ranks are spawned once for the module (``tests/reliability_ranks_worker.py``);
each case has a process group of its own with a timeout of a few seconds, and the spawn a
deadline, so that a regression fails instead of hanging.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_ranks_worker import CASE_TIMEOUT
from torch import distributed as dist

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    outdir = tmp_path_factory.mktemp("reliability_ranks")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    worker = [sys.executable, str(ROOT / "tests" / "reliability_ranks_worker.py"), str(outdir)]
    process = subprocess.Popen(worker, cwd=ROOT, env=env)
    try:
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    results = []
    for rank in range(2):
        path = outdir / f"rank{rank}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else {})
    yield results


def _case(ranks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    found = [rank.get(name, {"error": "the case did not finish"}) for rank in ranks]
    for rank, result in enumerate(found):
        assert "error" not in result, f"rank {rank}: {result['error']}"
        # No rank waited for a rank that had left (that wait ends at the group's timeout).
        assert result["seconds"] < CASE_TIMEOUT.total_seconds() / 2, f"rank {rank}"
    return found


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


def test_ranks_that_declare_different_constraints_raise_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    """Item 6: no abort of rank 0 (gloo's "Received data size doesn't match"), no
    misleading list: every rank names the ranks and what each declared, at every step."""
    expected = (
        "ValueError",
        "the ranks of the process group declared different constraints: rank 0 declared "
        "['floor', 'nonnegative', 'rare']; rank 1 declared ['floor', 'nonnegative', 'rare', "
        "'cap']; every rank must declare the same constraints, in the same order, before the "
        "method is built",
    )
    for result in _case(ranks, "different_names"):
        assert result["raised"] == expected
        assert result["again"] == expected
        assert result["unchanged"]


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
