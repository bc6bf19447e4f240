"""Host reads per step, counted (benchmarks/op_counts.py): a GPU step waits for the device at
each, so a change that adds one to a method fails here. The counts are exact and the same
on every machine; docs/performance.md gives them with the operator counts."""

from __future__ import annotations

import pytest
import torch

from benchmarks.op_counts import HostReads, count
from benchmarks.speed import indexed_case, network_case, tiny_case

HOST_READS = {
    "tiny": {
        "extragradient": 1, "simultaneous": 1, "simultaneous-augmented": 1,
        "simultaneous-nupi": 1, "hand-simultaneous": 0,
    },
    "network": {
        "simultaneous": 1, "extragradient": 1, "optimistic": 1, "extragradient-micro4": 2,
        "simultaneous-augmented": 1, "simultaneous-nupi": 2, "default": 2, "default-fixed": 1,
        "plain-sgd": 0,
    },
    "indexed": {"extragradient-2e+03": 3},
}  # fmt: skip
"""Each method's host reads per step: one for the check of what the step wrote, which every
fixed-step method shares with its evaluations' finiteness checks (extra-gradient's two
too); the adaptive step reads its evaluations' checks with its test, and its write check;
nuPI's check of its settings on a tensor and ``torch.unique`` over the batch's indices for
indexed slacks add theirs, and extra-gradient over micro-batches the comparison of its
second evaluation's indices, concatenated anew, with its first's (one batch's indices, the
same tensor both times, are not read)."""

CASES = {
    "tiny": lambda: tiny_case(quick=True),
    "network": lambda: network_case(hidden=8, num_samples=256, batch_size=16),
    "indexed": lambda: indexed_case([2_000]),
}


@pytest.mark.parametrize("case", list(HOST_READS))
def test_host_reads_per_step(case: str) -> None:
    steps = CASES[case]()
    measured = {
        variant: count(steps[variant], steps=2, warmup=1).host_reads for variant in HOST_READS[case]
    }
    assert measured == HOST_READS[case]


def test_the_counter_sees_every_kind_of_read() -> None:
    values = torch.arange(3.0)
    reads = HostReads()
    with reads:
        float(values.sum()), bool(values[0] > 0), values.tolist(), values.max().item()
        values.nonzero(), values.unique()
    assert reads.count == 6
