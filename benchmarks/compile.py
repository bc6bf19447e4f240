"""torch.compile and a constrained step: what a compiled closure and a compiled update cost.

    python -m benchmarks.compile [--quick] [--threads 1 2] [--backend inductor] [--hidden 32]
                                 [--blocks 21] [--skip-check]

Prints two markdown tables (nothing is written to disk); docs/compile.md has the figures.
Without a working C++ compiler inductor is unavailable and the timings use ``aot_eager``
(said in the first line of the output).

The problem is the ``mlp-32`` case of :mod:`benchmarks.speed`: a 784-32-32-2 network, batch
256 of 10,240 samples, every output of every sample constrained ``>= 0`` (indexed,
projection), :class:`~lagrange_opt.ExtraGradient` with plain SGD on both sides (lr 0.01
and 0.1); ``--hidden 784`` gives the ``mlp-784`` case. Variants of one step, timed in turns
block by block (20 steps a block) after a warm-up (the compilations happen before it and
are timed apart), each against ``eager`` in the same round (the median over blocks of the
per-block ratio, with its quartiles, so that a slow spell of the shared machine cancels):

- ``eager``: the closure calls the network as it is;
- ``compiled-network``: the closure calls ``torch.compile(network)``;
- ``compiled-problem``: ``problem.compile()``: the whole forward (network, loss and the
  constraint values) is one compiled graph;
- ``compiled-step``: ``torch.compile(optimizer.step)``, the network eager: the method's own
  work (evaluation bookkeeping, Lagrangian, updates) compiled, with its graph breaks;
- ``compiled-primal-sgd``: ``primal_optimizer.step = torch.compile(primal_optimizer.step)``
  (as PyTorch documents for compiling an optimizer). The method then calls the stock
  ``step()`` instead of its fused direct SGD update;
- ``plain-sgd`` and ``plain-sgd-compiled``: one unconstrained SGD step on the MSE, eager and
  with the network compiled: whether compiling helps this network at all.

Before the timings, a check with a counting backend (a ``torch.compile`` backend that
counts the graphs it is given and runs them eagerly) runs each way of compiling the update
for a few steps beside an eager run, with SGD and with Adam as the primal optimizer, and
reports graphs compiled, graph breaks (``torch._dynamo.explain``) and the largest
difference of the parameters from the eager run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lagrange_opt import ExtraGradient
from lagrange_opt.problems import PositiveOutputs

from .speed import _batches, _mlp, _plain_step, paired_ratio, time_side_by_side

Step = Callable[[], object]
NUM_SAMPLES, BATCH, LR, DUAL_LR = 10_240, 256, 0.01, 0.1


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it compiles and runs them as they are."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable:
        self.graphs += 1
        return gm.forward


def inductor_available() -> tuple[bool, str]:
    """Whether inductor compiles on this machine (it needs a C++ compiler on the CPU)."""
    try:
        torch.compiler.reset()
        function = torch.compile(lambda x: torch.relu(x) + 1, backend="inductor")
        function(torch.randn(4))
        return True, "inductor compiles"
    except Exception as error:  # any failure means: not available
        return False, f"inductor fails: {type(error).__name__}: {str(error).splitlines()[0]}"
    finally:
        torch.compiler.reset()


def build(
    variant: str, backend: Any, primal: str = "sgd", hidden: int = 32
) -> tuple[PositiveOutputs, ExtraGradient, Callable[[Callable[[], Any]], Any]]:
    """The problem, the method and the step function of one variant (same initial weights)."""
    network: nn.Module = _mlp(hidden)
    if variant == "compiled-network":
        network = torch.compile(network, backend=backend)
    problem = PositiveOutputs(network, NUM_SAMPLES, "projection")
    if variant == "compiled-problem":
        problem.compile(backend=backend)
    params = problem.primal_parameters()
    primal_optimizer = (
        torch.optim.SGD(params, lr=LR) if primal == "sgd" else torch.optim.Adam(params, lr=1e-3)
    )
    optimizer = ExtraGradient(
        problem,
        primal_optimizer,
        torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
    )
    step: Callable[[Callable[[], Any]], Any] = optimizer.step
    if variant == "compiled-step":
        step = torch.compile(optimizer.step, backend=backend)
    if variant.startswith("compiled-primal"):
        primal_optimizer.step = torch.compile(primal_optimizer.step, backend=backend)  # type: ignore[method-assign]
    return problem, optimizer, step


def constrained_step(variant: str, backend: Any, hidden: int) -> Step:
    problem, _, step = build(variant, backend, hidden=hidden)
    next_batch = _batches(NUM_SAMPLES, BATCH)

    def run() -> None:
        batch = next_batch()
        step(lambda: problem(*batch))

    return run


def plain_step(compiled: bool, backend: Any, hidden: int) -> Step:
    network: nn.Module = _mlp(hidden)
    sgd = torch.optim.SGD(network.parameters(), lr=LR)
    if compiled:
        network = torch.compile(network, backend=backend)
    return _plain_step(network, sgd, _batches(NUM_SAMPLES, BATCH))


TIMED = ["eager", "compiled-network", "compiled-problem", "compiled-step", "compiled-primal-sgd"]


def timings(
    threads: int, backend: str, blocks: int, per_block: int, warmup: int, hidden: int = 32
) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    torch.compiler.reset()
    steps: dict[str, Step] = {}
    compile_seconds: dict[str, float] = {}
    for variant in TIMED:
        steps[variant] = constrained_step(variant, backend, hidden)
    steps["plain-sgd"] = plain_step(False, backend, hidden)
    steps["plain-sgd-compiled"] = plain_step(True, backend, hidden)
    for name, step in steps.items():  # the first calls compile: timed apart
        start = time.perf_counter()
        for _ in range(3):
            step()
        compile_seconds[name] = time.perf_counter() - start
    samples = time_side_by_side(steps, warmup, blocks, per_block)
    records = []
    for name, times in samples.items():
        baseline = "plain-sgd" if name.startswith("plain") else "eager"
        ratios = [a / b for a, b in zip(times, samples[baseline])]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        records.append(
            {"threads": threads, "variant": name, "ms_per_step": statistics.median(times),
             "baseline": baseline, "ratio": paired_ratio(times, samples[baseline]),
             "quartiles": (quartiles[0], quartiles[2]),
             "first_3_steps_s": compile_seconds[name]}
        )  # fmt: skip
    return records


def correctness(steps: int = 8) -> list[dict[str, Any]]:
    """Each way of compiling the update beside an eager run, with a counting backend."""
    rows = []
    for primal in ("sgd", "adam"):
        for variant in ("compiled-network", "compiled-step", "compiled-primal-step"):
            torch.compiler.reset()
            counter = CountingBackend()
            eager_problem, _, eager_step = build("eager", None, primal)
            problem, optimizer, step = build(variant, counter, primal)
            next_batch = _batches(NUM_SAMPLES, BATCH)
            counts = []
            for _ in range(steps):
                batch = next_batch()
                eager_step(lambda batch=batch, p=eager_problem: p(*batch))
                step(lambda batch=batch, p=problem: p(*batch))
                counts.append(counter.graphs)
            difference = max(
                float((a.detach() - b.detach()).abs().max())
                for a, b in zip(problem.parameters(), eager_problem.parameters())
            )
            breaks = None
            if variant == "compiled-step":
                batch = next_batch()
                explained = torch._dynamo.explain(optimizer.step)(
                    lambda batch=batch, p=problem: p(*batch)
                )
                breaks = explained.graph_break_count
            rows.append(
                {"primal": primal, "variant": variant, "graphs_per_step": counts,
                 "graph_breaks": breaks, "max_abs_diff": difference}
            )  # fmt: skip
    torch.compiler.reset()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer blocks")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", default=None, help="default: inductor if it compiles")
    parser.add_argument("--blocks", type=int, default=None, help="blocks of 20 steps")
    parser.add_argument("--skip-check", action="store_true", help="timings only")
    parser.add_argument("--hidden", type=int, default=32, help="hidden width (784: mlp-784)")
    args = parser.parse_args(argv)
    available, why = inductor_available()
    backend = args.backend or ("inductor" if available else "aot_eager")
    print(f"torch {torch.__version__}; {why}; timed backend: {backend}")

    rows = [] if args.skip_check else correctness()
    if rows:
        print("\n## Graphs and correctness (counting backend, 8 steps beside an eager run)\n")
        print("| primal | variant | graphs after each step | graph breaks | max abs diff |")
        print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['primal']} | {row['variant']} | {row['graphs_per_step']} | "
            f"{'-' if row['graph_breaks'] is None else row['graph_breaks']} | "
            f"{row['max_abs_diff']:.1e} |"
        )
    blocks, per_block = args.blocks or (5 if args.quick else 21), 20
    print(
        f"\n## Timings (784-{args.hidden}-{args.hidden}-2, {backend}; {blocks} blocks of "
        f"{per_block} steps, paired ratios)\n"
    )
    print("| threads | variant | ms per step | ratio | quartiles | against | first 3 steps (s) |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        for record in timings(threads, backend, blocks, per_block, 10, args.hidden):
            print(
                f"| {record['threads']} | {record['variant']} | {record['ms_per_step']:.3f} | "
                f"{record['ratio']:.3f} | "
                f"{record['quartiles'][0]:.2f}-{record['quartiles'][1]:.2f} | "
                f"{record['baseline']} | "
                f"{record['first_3_steps_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
