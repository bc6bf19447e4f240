"""The cases of tests/test_distributed.py: run on 2 gloo ranks by ``python
tests/distributed_worker.py OUTDIR`` (each rank saves its results in OUTDIR), and on one
process over the whole batch by the test itself (:func:`run_case` with ``rank=None``)."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from helpers import CASES, METHODS_BY_NAME
from torch import Tensor, nn
from torch import distributed as dist

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    IndexedValue,
    NonFiniteError,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
    kkt,
)

WORLD = 2
NUM_SAMPLES = 6
STEPS = 4
DTYPE = torch.float64

_generator = torch.Generator().manual_seed(0)
X = torch.randn(NUM_SAMPLES, 3, generator=_generator, dtype=DTYPE)
Y = torch.randn(NUM_SAMPLES, 2, generator=_generator, dtype=DTYPE) - 1.0


# Gradient clipping and loss scaling under a process group.
HOOK_CASES = [("extragradient", "augmented", "slack"), ("default", "augmented", "projection")]

# Gradient accumulation under a process group: each rank's half of the batch as 2
# micro-batches.
MICRO_CASES = [
    *((method, "lagrangian", "projection") for method in METHODS_BY_NAME),
    *((method, "augmented", "slack") for method in METHODS_BY_NAME),
    *(("default", "augmented", treatment) for treatment in ("slack", "projection", "penalty")),
]
MICRO_BATCHES = 2


class ShardedProblem(ConstrainedProblem):
    """A linear model with a bare offset, a dense equality, a dense inequality and an
    indexed inequality (the last two with ``treatment``)."""

    def __init__(self, model: nn.Module, treatment: str, num_samples: int = NUM_SAMPLES) -> None:
        super().__init__()
        self.model = model
        self.offset = nn.Parameter(torch.zeros(2, dtype=DTYPE))
        weight = 2.0 if treatment == "penalty" else None
        self.add_equality("balance")
        self.add_inequality("floor", ">=", shape=(2,), treatment=treatment, penalty_weight=weight)
        self.add_inequality(
            "nonnegative", ">=", num_samples=num_samples, treatment=treatment,
            penalty_weight=weight,
        )  # fmt: skip
        self.to(DTYPE)

    def forward(self, indices: Tensor) -> ProblemState:
        samples = indices % NUM_SAMPLES  # a larger table reuses the data (_payloads)
        pred = self.model(X[samples]) + self.offset
        mean = pred.mean(0)
        return ProblemState(
            (pred - Y[samples]).square().mean(),
            {
                "balance": mean[0] - mean[1] - 0.1,
                "floor": mean - 0.2,
                "nonnegative": IndexedValue(pred[:, 0] + 0.2, indices),
            },
        )


def batches(rank: int | None) -> list[Tensor]:
    """The batch of each step: 8 samples drawn from 6, so that some are drawn twice, on one
    rank or on both; rank ``r`` takes the ``r``-th half, ``None`` the whole."""
    generator = torch.Generator().manual_seed(1)
    full = [torch.tensor([0, 1, 2, 3, 3, 4, 5, 0])]
    full += [torch.randint(0, NUM_SAMPLES, (8,), generator=generator) for _ in range(STEPS)]
    if rank is None:
        return full
    half = 8 // WORLD
    return [batch[rank * half : (rank + 1) * half] for batch in full]


def build(
    method: str,
    formulation: str,
    treatment: str,
    rank: int | None,
    group: Any = "default",
    hooks: bool = False,
) -> tuple[ShardedProblem, ConstrainedOptimizer]:
    torch.manual_seed(0)
    model: nn.Module = nn.Linear(3, 2).to(DTYPE)
    if rank is None:
        group = None
    else:
        model = nn.parallel.DistributedDataParallel(model)
    problem = ShardedProblem(model, treatment)
    options: dict[str, Any] = {}
    if hooks:
        # Clipping of the averaged gradients, and a loss scale that grows every two steps
        # (exact in float64: a power of two).
        clipped = [*model.parameters(), problem.offset]
        options["gradient_hook"] = lambda: nn.utils.clip_grad_norm_(clipped, 0.05)
        options["grad_scaler"] = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=2)
    if method == "default":
        return problem, default_optimizer(problem, process_group=group, **options)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.05)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True)
    optimizer = METHODS_BY_NAME[method](
        problem, primal, dual, formulation=formulation, process_group=group, **options
    )
    return problem, optimizer


def state(problem: nn.Module) -> dict[str, Tensor]:
    """The problem's state with DDP's ``module.`` prefix removed, cloned."""
    return {
        name.replace("module.", ""): value.detach().clone()
        for name, value in problem.state_dict().items()
    }


def run_case(
    case: tuple[str, str, str],
    rank: int | None,
    group: Any = "default",
    hooks: bool = False,
    micro: bool = False,
) -> dict[str, Tensor]:
    problem, optimizer = build(*case, rank, group, hooks)
    for batch in batches(rank):
        if micro:
            parts = batch.chunk(MICRO_BATCHES)
            optimizer.step([lambda part=part: problem(part) for part in parts])
        else:
            optimizer.step(lambda batch=batch: problem(batch))
    return state(problem)


def _failure(
    method: str,
    rank: int,
    fail: Callable[[ShardedProblem, Tensor], ProblemState],
    built: tuple[ShardedProblem, ConstrainedOptimizer] | None = None,
) -> dict[str, Any]:
    """Two steps, a step whose closure ``fail`` makes fail on one rank, then one more step:
    what each rank raised, whether the failed step left the state as it was, the end state."""
    problem, optimizer = build(method, "augmented", "slack", rank) if built is None else built
    steps = batches(rank)
    for batch in steps[:2]:
        optimizer.step(lambda batch=batch: problem(batch))
    before = state(problem), _flat(optimizer.state_dict())
    try:
        optimizer.step(lambda: fail(problem, steps[2]))
    except Exception as error:
        raised = (type(error).__name__, str(error))
    else:
        raised = ("nothing", "")
    unchanged = _equal(before[0], state(problem)) and _equal(
        before[1], _flat(optimizer.state_dict())
    )
    optimizer.step(lambda: problem(steps[3]))
    return {"raised": raised, "unchanged": unchanged, "after": state(problem)}


# (A penalised indexed constraint's penalty stays the rank's: docs/distributed.md.)
REPORTED_CASES = [("extragradient", "augmented", "slack"), ("default", "augmented", "projection")]


def reported(case: tuple[str, str, str], rank: int | None) -> list[list[float]]:
    """Each step's reported objective, Lagrangian and largest violation."""
    problem, optimizer = build(*case, rank)
    figures = []
    for batch in batches(rank):
        result = optimizer.step(lambda batch=batch: problem(batch))
        figures.append(
            [float(result.objective), float(result.lagrangian), float(result.max_violation)]
        )
    return figures


KKT_CASES = [("extragradient", "augmented", "slack"), ("simultaneous", "lagrangian", "penalty")]


def residuals_after(case: tuple[str, str, str], rank: int | None) -> list[float]:
    """The KKT residuals, after the case's steps, on the first step's batch (each rank its
    half, with the process group)."""
    problem, optimizer = build(*case, rank)
    steps = batches(rank)
    for batch in steps:
        optimizer.step(lambda batch=batch: problem(batch))
    group = None if rank is None else "default"
    return list(kkt(problem, lambda: problem(steps[0]), process_group=group))


def _kkt_raising_on_rank_1(rank: int) -> tuple[str, str]:
    problem, _ = build("simultaneous", "lagrangian", "projection", rank)
    try:
        kkt(problem, lambda: _raise_on_rank_1(problem, batches(rank)[0]), process_group="default")
    except Exception as error:
        return type(error).__name__, str(error)
    return "nothing", ""


def _flat(tree: Any, prefix: str = "") -> dict[str, Tensor]:
    """A state dict's leaves by path, as tensors (the order of its entries left out)."""
    if isinstance(tree, dict):
        return {
            path: leaf
            for key, value in tree.items()
            for path, leaf in _flat(value, f"{prefix}/{key}").items()
        }
    if isinstance(tree, list | tuple):
        return {
            path: leaf
            for index, value in enumerate(tree)
            for path, leaf in _flat(value, f"{prefix}/{index}").items()
        }
    return {prefix: tree if isinstance(tree, Tensor) else torch.tensor(hash(repr(tree)))}


def _equal(first: dict[str, Tensor], second: dict[str, Tensor]) -> bool:
    return first.keys() == second.keys() and all(
        torch.equal(first[name], second[name]) for name in first
    )


def _raise_on_rank_1(problem: ShardedProblem, batch: Tensor) -> ProblemState:
    if dist.get_rank() == 1:
        raise KeyError("the closure failed on rank 1")
    return problem(batch)


def _nan_on_rank_0(problem: ShardedProblem, batch: Tensor) -> ProblemState:
    result = problem(batch)
    if dist.get_rank() == 0:
        values = dict(result.constraints)
        values["floor"] = values["floor"] * torch.nan
        return ProblemState(result.objective, values)
    return result


def _hook_failing_on_rank_1(rank: int) -> tuple[ShardedProblem, ConstrainedOptimizer]:
    """A method whose primal step (a stock ``step()``, with momentum) raises on rank 1 in
    the third step: after the step's last agreement but one."""
    problem, _ = build("simultaneous", "lagrangian", "slack", rank)
    primal = torch.optim.SGD(problem.primal_parameters(), lr=0.05, momentum=0.5)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True)
    calls = [0]

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 3 and rank == 1:
            raise OSError("the primal step failed on rank 1")

    primal.register_step_pre_hook(hook)
    return problem, SimultaneousGDA(problem, primal, dual, process_group="default")


def _leave_out_floor_on_rank_1(problem: ShardedProblem, batch: Tensor) -> ProblemState:
    result = problem(batch)
    if dist.get_rank() == 1:
        values = {name: value for name, value in result.constraints.items() if name != "floor"}
        return ProblemState(result.objective, values)
    return result


def _backtracking(rank: int) -> dict[str, Any]:
    """The default method with a NaN at the extrapolated point of the second step on rank 0
    only: every rank raises a NonFiniteError (a non-finite value is no rejection of the
    adaptive step), puts the step back, and the ranks stay alike."""
    problem, optimizer = build("default", "augmented", "projection", rank)
    evaluations: list[int | str] = []
    for step, batch in enumerate(batches(rank)):
        calls = [0]

        def closure(batch: Tensor = batch, step: int = step, calls: list[int] = calls) -> Any:
            calls[0] += 1
            result = problem(batch)
            # The second step's first extrapolation (its second call) on rank 0.
            if step == 1 and calls[0] == 2 and rank == 0:
                return ProblemState(result.objective * torch.nan, dict(result.constraints))
            return result

        try:
            evaluations.append(optimizer.step(closure).evaluations)
        except NonFiniteError as error:
            evaluations.append(type(error).__name__)
    return {"evaluations": evaluations, "after": state(problem)}


def _payloads(rank: int) -> int:
    """The largest tensor any collective of ours carries in steps of every method on a
    table of a million rows (DDP's own are the model's gradients): O(batch), not O(table)."""
    largest = [0]
    originals = dist.all_gather, dist.all_reduce, dist.broadcast

    def all_gather(tensors: list[Tensor], tensor: Tensor, **kwargs: Any) -> Any:
        largest[0] = max(largest[0], tensor.numel())
        return originals[0](tensors, tensor, **kwargs)

    def all_reduce(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
        largest[0] = max(largest[0], tensor.numel())
        return originals[1](tensor, *args, **kwargs)

    def broadcast(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
        largest[0] = max(largest[0], tensor.numel())
        return originals[2](tensor, *args, **kwargs)

    dist.all_gather, dist.all_reduce, dist.broadcast = all_gather, all_reduce, broadcast
    try:
        for method in ("simultaneous", "alternating", "default"):
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(nn.Linear(3, 2).to(DTYPE))
            problem = ShardedProblem(model, "slack", num_samples=1_000_000)
            if method == "default":
                optimizer: ConstrainedOptimizer = default_optimizer(
                    problem, process_group="default"
                )
            else:
                kind = SimultaneousGDA if method == "simultaneous" else AlternatingGDA
                optimizer = kind(
                    problem, torch.optim.SGD(problem.primal_parameters(), lr=0.05),
                    torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
                    process_group="default",
                )  # fmt: skip
            for batch in batches(rank)[:2]:
                optimizer.step(lambda batch=batch, problem=problem: problem(batch * 166_667))
    finally:
        dist.all_gather, dist.all_reduce, dist.broadcast = originals
    return largest[0]


@contextlib.contextmanager
def gloo_rank(rank: int, port: int) -> Iterator[None]:
    """This process as rank ``rank`` of a gloo group of WORLD on ``port``, for the block."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        yield
        # Both ranks reach the teardown together: gloo aborts a process whose peer has
        # already closed its connections.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _worker(rank: int, port: int, outdir: str) -> None:
    with gloo_rank(rank, port):
        results: dict[str, Any] = {"cases": {case: run_case(case, rank) for case in CASES}}
        # A group of its own rather than the default one.
        results["group"] = run_case(("default", "augmented", "slack"), rank, dist.new_group())
        results["hooks"] = {case: run_case(case, rank, hooks=True) for case in HOOK_CASES}
        results["micro"] = {case: run_case(case, rank, micro=True) for case in MICRO_CASES}
        results["reported"] = {case: reported(case, rank) for case in REPORTED_CASES}
        results["kkt"] = {case: residuals_after(case, rank) for case in KKT_CASES}
        results["kkt_raise"] = _kkt_raising_on_rank_1(rank)
        results["raise"] = _failure("simultaneous", rank, _raise_on_rank_1)
        results["nan"] = _failure("default", rank, _nan_on_rank_0)
        results["nan_alternating"] = _failure("alternating", rank, _nan_on_rank_0)
        results["hook"] = _failure(
            "simultaneous", rank, ShardedProblem.__call__, _hook_failing_on_rank_1(rank)
        )
        results["observed"] = _failure("extragradient", rank, _leave_out_floor_on_rank_1)
        results["backtracking"] = _backtracking(rank)
        results["payload"] = _payloads(rank)
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    torch.multiprocessing.spawn(_worker, args=(free_port(), sys.argv[1]), nprocs=WORLD)
    # NonFiniteError is imported for the test module, which reads the names raised.
    assert NonFiniteError.__name__ == "NonFiniteError"
