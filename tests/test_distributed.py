"""Data-parallel steps (issue 11): 2 gloo ranks on the CPU take the step that one process
takes on the whole batch, hold bitwise the same multipliers, and fail together.

The ranks are spawned once for the session, in the background from its start
(tests/spawned.py; ``tests/distributed_worker.py`` runs every case and saves each rank's
results); the single-process references run here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import spawned
import torch
from distributed_worker import (
    CASES,
    HOOK_CASES,
    KKT_CASES,
    MICRO_CASES,
    REPORTED_CASES,
    build,
    reported,
    residuals_after,
    run_case,
)
from torch import distributed as dist

from lagrange_opt import SimultaneousGDA, default_optimizer

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> spawned.Finished:
    """Every case on 2 ranks (command 0) and the example (command 1), spawned once for
    the session at its start (tests/spawned.py)."""
    return spawned.finished(tmp_path_factory, "distributed")


@pytest.fixture(scope="module")
def ranks(run: spawned.Finished) -> list[dict[str, Any]]:
    assert run.returncodes[0] == 0, run.output(0)
    return [torch.load(run.outdir / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_two_ranks_equal_one_process_on_the_whole_batch(
    ranks: list[dict[str, Any]], case: tuple[str, str, str]
) -> None:
    _assert_one_process_state([rank["cases"][case] for rank in ranks], run_case(case, None))


def _assert_one_process_state(
    results: list[dict[str, Any]], reference: dict[str, torch.Tensor]
) -> None:
    """Each rank's end state equals one process's to 1e-6, and the ranks' bitwise."""
    for result in results:
        assert result.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(result[name], value, rtol=0, atol=1e-6, msg=name)
    # Every rank holds bitwise the same multipliers, slacks and parameters.
    first, second = results
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


@pytest.mark.parametrize("case", MICRO_CASES, ids="-".join)
def test_micro_batches_on_two_ranks_equal_one_process_on_the_whole_batch(
    ranks: list[dict[str, Any]], case: tuple[str, str, str]
) -> None:
    """Gradient accumulation under a process group: each rank gives its half of the batch
    as 2 micro-batches; the step is the whole batch's, as one process takes it, and the
    ranks stay bitwise alike."""
    _assert_one_process_state([rank["micro"][case] for rank in ranks], run_case(case, None))


@pytest.mark.parametrize("case", REPORTED_CASES, ids="-".join)
def test_every_rank_reports_the_whole_batch(
    ranks: list[dict[str, Any]], case: tuple[str, str, str]
) -> None:
    """The step's objective, Lagrangian and largest violation are the whole batch's on
    every rank, as one process reports them."""
    reference = torch.tensor(reported(case, None), dtype=torch.float64)
    for rank in ranks:
        figures = torch.tensor(rank["reported"][case], dtype=torch.float64)
        torch.testing.assert_close(figures, reference, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", KKT_CASES, ids="-".join)
def test_kkt_with_a_process_group_is_the_whole_batch(
    ranks: list[dict[str, Any]], case: tuple[str, str, str]
) -> None:
    """``kkt(..., process_group=)`` on each rank's half of the batch gives every rank the
    residuals one process computes on the whole batch."""
    reference = torch.tensor(residuals_after(case, None), dtype=torch.float64)
    assert float(reference.max()) > 1e-3  # not a solved point, where all would be 0
    for rank in ranks:
        residuals = torch.tensor(rank["kkt"][case], dtype=torch.float64)
        torch.testing.assert_close(residuals, reference, rtol=1e-12, atol=1e-15)


def test_kkt_fails_on_every_rank_when_one_rank_fails(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["kkt_raise"][0] == "KeyError"
    assert ranks[0]["kkt_raise"][0] == "RuntimeError"
    assert "rank 1" in ranks[0]["kkt_raise"][1]


@pytest.mark.parametrize("case", HOOK_CASES, ids="-".join)
def test_clipping_and_loss_scaling_on_two_ranks_equal_one_process(
    ranks: list[dict[str, Any]], case: tuple[str, str, str]
) -> None:
    """The gradient hook clips the averaged gradients, the same on every rank, and the loss
    scale (a power of two in float64) changes nothing: the runs equal one process's with
    the same hooks, and differ from the runs without them."""
    reference = run_case(case, None, hooks=True)
    unhooked = run_case(case, None)
    assert any(not torch.allclose(unhooked[name], value) for name, value in reference.items())
    for rank in ranks:
        for name, value in reference.items():
            torch.testing.assert_close(rank["hooks"][case][name], value, rtol=0, atol=1e-6)


def test_a_process_group_of_its_own(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        default = rank["cases"][("default", "augmented", "slack")]
        for name, value in rank["group"].items():
            assert torch.equal(value, default[name]), name


def test_the_cases_move_the_multipliers(ranks: list[dict[str, Any]]) -> None:
    # The comparison above is not of states that never left their start.
    moved = ranks[0]["cases"][("simultaneous", "lagrangian", "projection")]
    assert float(moved["constraints.nonnegative.multiplier"].abs().sum()) > 0
    assert float(moved["constraints.floor.multiplier"].abs().sum()) > 0


def test_a_closure_raising_on_one_rank_raises_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    failing, other = ranks[1]["raise"], ranks[0]["raise"]
    assert failing["raised"][0] == "KeyError"
    assert other["raised"][0] == "RuntimeError"
    assert "rank 1" in other["raised"][1]
    assert failing["unchanged"] and other["unchanged"]
    for name, value in failing["after"].items():
        assert torch.equal(value, other["after"][name]), name


@pytest.mark.parametrize("key", ["nan", "nan_alternating"])
def test_a_nan_on_one_rank_raises_on_every_rank(ranks: list[dict[str, Any]], key: str) -> None:
    failing, other = ranks[0][key], ranks[1][key]
    assert failing["raised"][0] == "NonFiniteError"
    assert "floor" in failing["raised"][1]
    assert other["raised"][0] == "NonFiniteError"
    assert "rank 0" in other["raised"][1]
    assert failing["unchanged"] and other["unchanged"]
    for name, value in failing["after"].items():
        assert torch.equal(value, other["after"][name]), name


def test_an_update_failing_on_one_rank_raises_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    failing, other = ranks[1]["hook"], ranks[0]["hook"]
    assert failing["raised"][0] == "OSError"
    assert other["raised"][0] == "RuntimeError" and "rank 1" in other["raised"][1]
    assert failing["unchanged"] and other["unchanged"]
    for name, value in failing["after"].items():
        assert torch.equal(value, other["after"][name]), name


def test_a_constraint_left_out_on_one_rank_is_stepped_alike(ranks: list[dict[str, Any]]) -> None:
    # No longer refused (issue 22, item 8; tests/test_reliability_ranks.py compares such
    # steps with one process on the whole batch): the ranks stay alike.
    first, second = (rank["observed"] for rank in ranks)
    assert first["raised"] == second["raised"] == ("nothing", "")
    for name, value in first["after"].items():
        assert torch.equal(value, second["after"][name]), name


def test_every_rank_raises_when_one_finds_a_nan(ranks: list[dict[str, Any]]) -> None:
    first, second = (rank["backtracking"] for rank in ranks)
    assert first["evaluations"] == second["evaluations"]
    # A non-finite value at the extrapolated point is no rejection (issue 22, item 5).
    assert first["evaluations"][1] == "NonFiniteError"
    for name, value in first["after"].items():
        assert torch.equal(value, second["after"][name]), name


def test_indexed_tables_are_not_communicated(ranks: list[dict[str, Any]]) -> None:
    # A table of a million rows; the largest payload is the dense gradients' (the offset,
    # the dense slacks and the presence flags) or the measured gradients of the scaling.
    for rank in ranks:
        assert rank["payload"] <= 64


def test_process_group_needs_an_initialised_group() -> None:
    problem, _ = build("simultaneous", "lagrangian", "projection", None)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.1)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    with pytest.raises(RuntimeError, match="not initialized"):
        SimultaneousGDA(problem, primal, dual, process_group="default")
    with pytest.raises(TypeError, match="process_group must be"):
        SimultaneousGDA(problem, primal, dual, process_group="world")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not initialized"):
        default_optimizer(problem, process_group="default")


def test_the_example_runs_on_two_cpu_processes(run: spawned.Finished) -> None:
    output = run.output(1)
    assert run.returncodes[1] == 0, output
    assert "ranks: 2" in output
    assert "multipliers identical on every rank: True" in output
