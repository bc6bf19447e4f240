"""What a step would cost on a GPU, counted on the CPU: operator calls and host reads.

    python -m benchmarks.op_counts --out DIR [--cases ...] [--steps N]

writes ``DIR/op_counts.json`` (records with ``case``, ``variant``, ``operators``,
``host_reads``, ``operator_ratio``) and ``DIR/op_counts.md``, and prints the table.

A GPU step at the sizes of these cases is bound by kernel launches and by the host
waiting for the device, not by arithmetic: each operator call launches at least one
kernel, and each read of a device value on the host (``float(t)``, ``bool(t)``,
``t.item()``, ``t.tolist()``, ``t.cpu()``, ``t.nonzero()`` ...) waits for every kernel
queued before it. Both are counted per step, averaged over several steps after a
warm-up, for the variants of :mod:`benchmarks.speed`'s cases (same problems, same
optimizers, Cooper's beside):

- ``operators``: ATen operator calls made from Python or by autograd (the operators that
  another operator calls internally are not counted), from :mod:`torch.profiler`;
- ``host_reads``: calls of the tensor methods that read a value to the host, counted by a
  :class:`torch.overrides.TorchFunctionMode`;
- ``operator_ratio``: ``operators`` over the case's plain step's.

Both counts are exact and the same on every machine for a given torch version, so
``tests/test_op_counts.py`` guards the host reads of the fixed-step methods.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from .speed import Step, indexed_case, network_case, tiny_case

HOST_READS = frozenset(
    {
        "__bool__", "__float__", "__int__", "__index__", "__complex__", "item", "tolist",
        "numpy", "cpu", "nonzero", "unique", "masked_select", "argwhere", "equal",
    }
)  # fmt: skip
"""Tensor methods and functions that make the host wait for the device's value."""


class HostReads(TorchFunctionMode):
    """Counts the calls, from Python, of the functions in :data:`HOST_READS`."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if getattr(func, "__name__", None) in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class Counts(NamedTuple):
    """Operator calls and host reads per step."""

    operators: float
    host_reads: float


def _top_level_operators(events: Any) -> int:
    """ATen operators whose callers include no other ATen operator."""

    def inside_operator(event: Any) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    return sum(
        1 for event in events if event.name.startswith("aten::") and not inside_operator(event)
    )


def count(step: Step, steps: int = 4, warmup: int = 2) -> Counts:
    """The operator calls and host reads of ``step`` per call, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    reads = HostReads()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profile, reads:
        for _ in range(steps):
            step()
    return Counts(_top_level_operators(profile.events()) / steps, reads.count / steps)


CASES: dict[str, tuple[Callable[[], dict[str, Step]], str | None]] = {
    "tiny": (lambda: tiny_case(quick=True), "hand-simultaneous"),
    "mlp-32": (lambda: network_case(32, num_samples=2_048), "plain-sgd"),
    "indexed-2e+04": (lambda: indexed_case([20_000]), None),
}
"""Each case's builder and the variant its operator ratios are taken against."""


def records(cases: Sequence[str], steps: int) -> list[dict[str, Any]]:
    """One record per variant of each case in ``cases``."""
    rows = []
    for case in cases:
        build, baseline = CASES[case]
        counts = {variant: count(step, steps) for variant, step in build().items()}
        base = counts[baseline].operators if baseline is not None else None
        for variant, figures in counts.items():
            rows.append(
                {
                    "case": case,
                    "variant": variant,
                    "operators": figures.operators,
                    "host_reads": figures.host_reads,
                    "operator_ratio": None if base is None else figures.operators / base,
                }
            )
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The records as a table."""
    lines = [
        "| case | variant | operators per step | host reads per step | operators / plain |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "-" if row["operator_ratio"] is None else f"{row['operator_ratio']:.2f}"
        lines.append(
            f"| {row['case']} | {row['variant']} | {row['operators']:g} "
            f"| {row['host_reads']:g} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--steps", type=int, default=4, help="steps counted per variant")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = records(args.cases, args.steps)
    (args.out / "op_counts.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    (args.out / "op_counts.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
