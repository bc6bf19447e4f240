"""The cases of tests/test_reliability_ranks.py (issue 22, items 6-8): run on 2 gloo ranks by
``python tests/reliability_ranks_worker.py OUTDIR``, each rank saving what each case raised
and the state it left in ``OUTDIR/rank{r}.pt``.

Every case runs in a process group of its own with a short timeout, so that a case that
leaves one rank waiting (the hang of item 7) fails that case in seconds and the next case
starts on fresh connections.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from lagrange_opt import (
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)

WORLD = 2
SAMPLES = 8
DTYPE = torch.float64
CASE_TIMEOUT = datetime.timedelta(seconds=20)
"""A case's process-group timeout: a rank left waiting fails the case this late. Long
enough for a case on a machine busy with the rest of the suite (a case takes well under a
second alone)."""

_generator = torch.Generator().manual_seed(0)
X = torch.randn(SAMPLES, 3, generator=_generator, dtype=DTYPE)
Y = torch.randn(SAMPLES, 2, generator=_generator, dtype=DTYPE) - 1.0
# The samples of the "rare class" (item 8): 5 and 6 only.
RARE = torch.zeros(SAMPLES, dtype=torch.bool)
RARE[[5, 6]] = True
# Each rank's shard of the batch, each with one rare sample.
SHARDS = [torch.tensor([0, 1, 5, 2]), torch.tensor([3, 6, 4, 7])]


class Problem(ConstrainedProblem):
    """A linear model, a dense inequality, an indexed inequality over every sample, and an
    indexed and a dense one over the rare class only (absent from a batch without one:
    the empty mask of the indexed one, the dense rate left out)."""

    def __init__(
        self,
        extra: str | None = None,
        floor_shape: tuple[int, ...] = (2,),
        treatment: str = "projection",
        ddp: bool = False,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        model: nn.Module = nn.Linear(3, 2).to(DTYPE)
        self.model = nn.parallel.DistributedDataParallel(model) if ddp else model
        self.add_inequality("floor", ">=", shape=floor_shape, treatment="projection")
        self.add_inequality("nonnegative", ">=", num_samples=SAMPLES, treatment=treatment)
        self.add_inequality("rare", ">=", num_samples=SAMPLES, treatment=treatment)
        self.add_inequality("rate", ">=", treatment=treatment)
        if extra is not None:
            self.add_inequality(extra, ">=", treatment="projection")
        self.to(DTYPE)

    def forward(self, indices: Tensor) -> ProblemState:
        pred = self.model(X[indices])
        mask = RARE[indices]
        constraints: dict[str, Any] = {
            "floor": pred.mean(0) - 0.2,
            "nonnegative": IndexedValue(pred[:, 0] + 0.2, indices),
            "rare": IndexedValue(pred[mask, 1] - 0.6, indices[mask]),
        }
        if bool(mask.any()):
            # A mean over the rare samples: left out where there is none (no NaN).
            constraints["rate"] = pred[mask, 0].mean() - 0.5
        return ProblemState((pred - Y[indices]).square().mean(), constraints)


def build(problem: Problem, group: dist.ProcessGroup | None) -> ConstrainedOptimizer:
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.05)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True)
    return SimultaneousGDA(problem, primal, dual, process_group=group)


def state(problem: nn.Module) -> dict[str, Tensor]:
    """The problem's state, cloned, with DDP's ``module.`` prefix removed."""
    return {
        name.replace("module.", ""): value.detach().clone()
        for name, value in problem.state_dict().items()
    }


# Item 8: each step's batch, the rare samples (5 and 6) all in its second half: rank 0's
# shard (and the first of two micro-batches) has none.
STEPS = [torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]), torch.tensor([3, 0, 2, 1, 6, 7, 5, 4])]
ABSENT_CASES = [
    (method, treatment)
    for method in ("simultaneous", "extragradient", "default")
    for treatment in ("projection", "slack")
]


def method(name: str, problem: Problem, group: dist.ProcessGroup | None) -> ConstrainedOptimizer:
    """The method ``name``: a fixed-step one, or ``default_optimizer`` (scaled, adaptive)."""
    if name == "default":
        return default_optimizer(problem, process_group=group)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.05)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True)
    kind = ExtraGradient if name == "extragradient" else SimultaneousGDA
    return kind(problem, primal, dual, process_group=group)


def absent_run(
    case: tuple[str, str], rank: int | None, group: dist.ProcessGroup | None = None
) -> dict[str, Tensor]:
    """Three steps of the case on the whole batch (``rank`` None) or on the rank's half."""
    name, treatment = case
    problem = Problem(treatment=treatment, ddp=rank is not None)
    optimizer = method(name, problem, group)
    for batch in [*STEPS, STEPS[0]]:
        shard = batch if rank is None else batch.chunk(WORLD)[rank]
        optimizer.step(lambda shard=shard: problem(shard))
    return state(problem)


def absent_on_rank_0(rank: int, group: dist.ProcessGroup) -> dict[str, Any]:
    """Item 8: the rare class on rank 1 only (rank 0 returns the indexed constraint with an
    empty mask and leaves the dense rate out), for each case."""
    return {"states": {case: absent_run(case, rank, group) for case in ABSENT_CASES}}


def _equal(first: dict[str, Tensor], second: dict[str, Tensor]) -> bool:
    return first.keys() == second.keys() and all(
        torch.equal(first[name], second[name]) for name in first
    )


def _raised(call: Callable[[], object]) -> tuple[str, str]:
    try:
        call()
    except Exception as error:
        return type(error).__name__, str(error)
    return "nothing", ""


# The cases: each takes the rank and its group and returns what the test reads.


def late_declaration(rank: int, group: dist.ProcessGroup) -> dict[str, Any]:
    """Item 7: a constraint declared on rank 1 after the method was built."""
    problem = Problem()
    optimizer = build(problem, group)
    batch = SHARDS[rank]
    optimizer.step(lambda: problem(batch))
    if rank == 1:
        problem.add_inequality("late", ">=", treatment="projection")
    before = state(problem)
    raised = _raised(lambda: optimizer.step(lambda: problem(batch)))
    return {"raised": raised, "unchanged": _equal(before, state(problem))}


def negative_rate(rank: int, group: dist.ProcessGroup) -> dict[str, Any]:
    """Item 7: a learning rate turned negative on rank 0 only (a check of the step's
    arguments, before its first collective)."""
    problem = Problem()
    optimizer = build(problem, group)
    batch = SHARDS[rank]
    if rank == 0:
        optimizer.primal_optimizer.param_groups[0]["lr"] = -0.05
    before = state(problem)
    raised = _raised(lambda: optimizer.step(lambda: problem(batch)))
    return {"raised": raised, "unchanged": _equal(before, state(problem))}


def different_names(rank: int, group: dist.ProcessGroup) -> dict[str, Any]:
    """Item 6: rank 1 declares one constraint more."""
    problem = Problem(extra="cap" if rank == 1 else None)
    optimizer = build(problem, group)
    batch = SHARDS[rank]
    before = state(problem)
    raised = _raised(lambda: optimizer.step(lambda: problem(batch)))
    # The next step raises alike: the ranks still disagree.
    again = _raised(lambda: optimizer.step(lambda: problem(batch)))
    return {"raised": raised, "again": again, "unchanged": _equal(before, state(problem))}


def different_specs(rank: int, group: dist.ProcessGroup) -> dict[str, Any]:
    """Item 6: the same names, a shape that differs on rank 0 (``default_optimizer``,
    whose first step measures the scales)."""
    problem = Problem(floor_shape=(1,) if rank == 0 else (2,))
    optimizer = default_optimizer(problem, process_group=group)
    batch = SHARDS[rank]

    def closure() -> ProblemState:
        result = problem(batch)
        values = dict(result.constraints)
        values["floor"] = values["floor"][: 1 if rank == 0 else 2]
        return ProblemState(result.objective, values)

    return {"raised": _raised(lambda: optimizer.step(closure))}


CASES: dict[str, Callable[[int, dist.ProcessGroup], dict[str, Any]]] = {
    "late_declaration": late_declaration,
    "negative_rate": negative_rate,
    "different_names": different_names,
    "different_specs": different_specs,
    "absent_on_rank_0": absent_on_rank_0,
}


def _worker(rank: int, port: int, outdir: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )  # fmt: skip
    results: dict[str, Any] = {}
    for name in names:
        group = dist.new_group(timeout=CASE_TIMEOUT)
        # Both ranks start the clock together: a rank that reached the case late (busy
        # machine) is not a rank that waited for one that had left.
        dist.barrier(group=group)
        start = time.perf_counter()
        try:
            results[name] = CASES[name](rank, group)
        except Exception:  # a case that failed in itself: its test reads the traceback
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = time.perf_counter() - start
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    # No barrier: a case that timed out may have left the default group's peers apart;
    # each rank's results are saved already.
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    selected = sys.argv[2:] or list(CASES)
    torch.multiprocessing.spawn(
        _worker, args=(free_port(), sys.argv[1], selected), nprocs=WORLD, join=True
    )
