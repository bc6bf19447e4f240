"""The floor of the speed targets: hand-written loops with no library, against a plain step.

    python -m benchmarks.floor [--quick]

On the networks of :mod:`benchmarks.speed` (every output of every sample constrained ``>= 0``
with an indexed multiplier table), each loop does the least a method of its kind must:

- ``minimal-simultaneous``: one forward and backward pass of the Lagrangian (the objective
  plus the batch's multiplier rows times the outputs, averaged), one optimizer step, the
  multipliers' rows stepped with ``index_add_`` and clamped: no check, no copy, no rollback;
- ``two-steps``: that twice: two evaluations and two optimizer steps, nothing saved (what
  extra-gradient costs at least: it must also keep the point it steps from, and leave a
  stateful optimizer's state as it was for the extrapolation).

Each is timed against one plain step of the unconstrained loss with the same optimizer
(stock single-tensor ``torch.optim.Adam``, or plain SGD), in turns and as paired ratios
(:func:`benchmarks.speed.paired_ratio`). A method with checks, a bitwise rollback and
bitwise stock iterates pays more than these; a target below them cannot be met.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .speed import Step, _batches, _mlp, paired_ratio, time_side_by_side

NUM_SAMPLES = 10_240
CASES = [("adam", 32, 128), ("adam", 32, 256), ("adam", 784, 128), ("adam", 784, 256),
         ("sgd", 32, 256), ("sgd", 784, 256)]  # fmt: skip
"""(primal optimizer, hidden width, batch size): the cases of the speed targets."""


def _optimizer(kind: str, network: nn.Module) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(network.parameters(), lr=1e-3)
    return torch.optim.SGD(network.parameters(), lr=0.01)


def floor_case(
    kind: str, hidden: int, batch_size: int, num_samples: int = NUM_SAMPLES
) -> dict[str, Step]:
    """The plain step and the two hand-written loops of one case."""
    next_batch = _batches(num_samples, batch_size)

    def plain() -> Step:
        network = _mlp(hidden)
        optimizer = _optimizer(kind, network)

        def step() -> None:
            inputs, targets, _ = next_batch()
            optimizer.zero_grad(set_to_none=True)
            nn.functional.mse_loss(network(inputs), targets).backward()
            optimizer.step()

        return step

    def constrained(evaluations: int) -> Step:
        network = _mlp(hidden)
        optimizer = _optimizer(kind, network)
        multipliers = torch.zeros(num_samples, 2)

        def evaluate(inputs: Tensor, targets: Tensor, indices: Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            outputs = network(inputs)
            rows = multipliers.index_select(0, indices)
            loss = nn.functional.mse_loss(outputs, targets)
            (loss - (rows * outputs).sum() / indices.shape[0]).backward()
            optimizer.step()
            multipliers.index_add_(0, indices, outputs.detach().neg() * 0.1)
            multipliers.clamp_(min=0)

        def step() -> None:
            batch = next_batch()
            for _ in range(evaluations):
                evaluate(*batch)

        return step

    return {"plain": plain(), "minimal-simultaneous": constrained(1), "two-steps": constrained(2)}


def run(
    cases: Sequence[tuple[str, int, int]], blocks: int, per_block: Callable[[int], int]
) -> list[tuple[str, int, int, float, float]]:
    """Per case: the two loops' paired ratios to the plain step."""
    rows = []
    for kind, hidden, batch_size in cases:
        samples = time_side_by_side(
            floor_case(kind, hidden, batch_size), warmup=per_block(hidden) // 2, blocks=blocks,
            steps_per_block=per_block(hidden),
        )  # fmt: skip
        simultaneous = paired_ratio(samples["minimal-simultaneous"], samples["plain"])
        two_steps = paired_ratio(samples["two-steps"], samples["plain"])
        rows.append((kind, hidden, batch_size, simultaneous, two_steps))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer blocks and steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    blocks = 3 if args.quick else 11
    rows = run(CASES, blocks, lambda hidden: (4 if args.quick else 40) if hidden == 32 else 6)
    print("| optimizer | network | batch | minimal simultaneous / plain | two steps / plain |")
    print("|---|---|---|---|---|")
    for kind, hidden, batch_size, simultaneous, two_steps in rows:
        network = f"784-{hidden}-{hidden}-2"
        print(f"| {kind} | {network} | {batch_size} | {simultaneous:.3f} | {two_steps:.3f} |")


if __name__ == "__main__":
    main()
