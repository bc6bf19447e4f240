"""Data-parallel constrained training: a network whose every training output must be
non-negative, and whose mean output must be at least 0.5, trained on shards of the data
by ``DistributedDataParallel`` and a ``DistributedSampler``.

Run it with torchrun (any backend; gloo on the CPU here)::

    torchrun --nproc-per-node 2 examples/ddp.py --epochs 20

or by itself, which spawns ``--world-size`` CPU processes with gloo::

    python examples/ddp.py --epochs 20

Every rank evaluates its shard; ``default_optimizer(problem, process_group="default")``
averages the dense constraint, gathers the indexed constraint's residuals and agrees on the
backtracking, so that every rank takes the same step (docs/distributed.md). At the end
rank 0 prints the training figures and checks that every rank holds the same multipliers.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lagrange_opt import ConstrainedProblem, IndexedValue, ProblemState, default_optimizer


class PositiveOutputs(ConstrainedProblem):
    """Least squares with every output ``>= 0`` (indexed) and the mean output ``>= 0.5``."""

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> None:
        super().__init__()
        self.model = model  # the DDP wrapper: its gradients are averaged in backward
        self.inputs, self.targets = inputs, targets
        self.add_inequality("nonnegative", ">=", num_samples=len(inputs))
        self.add_inequality("mean", ">=")

    def forward(self, indices: Tensor) -> ProblemState:
        pred = self.model(self.inputs[indices]).squeeze(-1)
        loss = nn.functional.mse_loss(pred, self.targets[indices])
        return ProblemState(
            loss,
            {"nonnegative": IndexedValue(pred, indices), "mean": pred.mean() - 0.5},
        )


def train(args: argparse.Namespace) -> None:
    """One rank's training loop (the process group is initialised)."""
    torch.set_num_threads(1)
    rank = dist.get_rank()
    # Every rank builds the same data and the same initial model from the same seed.
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.samples, 8, generator=generator)
    targets = inputs @ torch.randn(8, generator=generator) - 1.0
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)))
    problem = PositiveOutputs(model, inputs, targets)
    optimizer = default_optimizer(problem, process_group="default")
    # Equal shards (drop_last): the mean over the ranks is then the mean over the batch.
    dataset = TensorDataset(torch.arange(args.samples))
    sampler = DistributedSampler(dataset, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for (indices,) in loader:
            result = optimizer.step(lambda indices=indices: problem(indices))
    multipliers = problem.constraints["nonnegative"].multiplier
    assert multipliers is not None
    tables = [torch.empty_like(multipliers) for _ in range(dist.get_world_size())]
    dist.all_gather(tables, multipliers.detach())
    with torch.no_grad():
        pred = model.module(inputs).squeeze(-1)
    if rank == 0:
        same = all(torch.equal(table, tables[0]) for table in tables)
        print(f"ranks: {dist.get_world_size()}, epochs: {args.epochs}")
        print(f"last step: loss {float(result.objective):.4f} on rank 0's shard")
        print(f"outputs < -1e-3: {float((pred < -1e-3).double().mean()) * 100:.2f} %")
        print(f"mean output: {float(pred.mean()):.4f} (>= 0.5)")
        print(f"multipliers identical on every rank: {same}")


def _spawned(rank: int, world_size: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )  # fmt: skip
    _run(args)


def _run(args: argparse.Namespace) -> None:
    dist.init_process_group(args.backend)
    try:
        train(args)
        # Every rank reaches the teardown together: gloo aborts a process whose peer has
        # already closed its connections.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument(
        "--world-size", type=int, default=2, help="processes to spawn without torchrun"
    )
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # started by torchrun
        _run(args)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(
        _spawned, args=(args.world_size, port, args), nprocs=args.world_size
    )


if __name__ == "__main__":
    main()
