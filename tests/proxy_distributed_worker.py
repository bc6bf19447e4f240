"""The proxy cases of tests/test_proxy.py on 2 gloo ranks: ``python
tests/proxy_distributed_worker.py OUTDIR`` saves each rank's results in OUTDIR, and the test
runs :func:`run_case` with ``rank=None`` (one process, the whole batch) for reference.

The true values are means of hard decisions over the samples, so that the ranks' average
(equal shards) is the whole batch's, as for the surrogates."""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from distributed_worker import DTYPE, WORLD, X, Y, batches, free_port, gloo_rank, state
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
    Proxy,
    SimultaneousGDA,
    default_optimizer,
)

NUM_SAMPLES = X.shape[0]
CASES = [
    ("simultaneous", "lagrangian", "projection"),
    ("alternating", "lagrangian", "slack"),
    ("extragradient", "augmented", "slack"),
    ("default", "augmented", "penalty"),
]


class ProxyRates(ConstrainedProblem):
    """A dense rate (per output, the fraction of positive predictions >= 0.5) and an indexed
    one (per sample, its first output > -0.2), each a proxy of its sigmoids."""

    def __init__(self, model: nn.Module, treatment: str) -> None:
        super().__init__()
        self.model = model
        weight = 2.0 if treatment == "penalty" else None
        self.add_inequality("rate", ">=", shape=(2,), treatment=treatment, penalty_weight=weight)
        self.add_inequality(
            "positive", ">=", num_samples=NUM_SAMPLES, treatment=treatment, penalty_weight=weight
        )
        self.to(DTYPE)

    def forward(self, indices: Tensor) -> ProblemState:
        pred = self.model(X[indices])
        hard = (pred.detach() > 0).to(DTYPE)
        rate = Proxy(hard.mean(0) - 0.5, torch.sigmoid(4 * pred).mean(0) - 0.5)
        first = pred[:, 0] + 0.2
        positive = Proxy((first.detach() > 0).to(DTYPE) - 0.5, torch.sigmoid(4 * first) - 0.5)
        return ProblemState(
            (pred - Y[indices]).square().mean(),
            {"rate": rate, "positive": IndexedValue(positive, indices)},
        )


def run_case(case: tuple[str, str, str], rank: int | None) -> dict[str, Tensor]:
    method, formulation, treatment = case
    torch.manual_seed(0)
    model: nn.Module = nn.Linear(3, 2).to(DTYPE)
    group: Any = None
    if rank is not None:
        model, group = nn.parallel.DistributedDataParallel(model), "default"
    problem = ProxyRates(model, treatment)
    optimizer: ConstrainedOptimizer
    if method == "default":
        optimizer = default_optimizer(problem, process_group=group)
    else:
        kind = {"simultaneous": SimultaneousGDA, "alternating": AlternatingGDA}.get(
            method, ExtraGradient
        )
        optimizer = kind(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=0.05),
            torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
            formulation=formulation,
            process_group=group,
        )
    for batch in batches(rank):
        optimizer.step(lambda batch=batch: problem(batch))
    return state(problem)


def _worker(rank: int, port: int, outdir: str) -> None:
    with gloo_rank(rank, port):
        results = {case: run_case(case, rank) for case in CASES}
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))


if __name__ == "__main__":
    torch.multiprocessing.spawn(_worker, args=(free_port(), sys.argv[1]), nprocs=WORLD)
