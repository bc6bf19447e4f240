"""The speed benchmark's pieces (the timings themselves are not tested)."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.floor import floor_case, run
from benchmarks.speed import (
    AGAINST_COOPER,
    BASELINES,
    adam_case,
    memory_records,
    network_case,
    paired_ratio,
    time_side_by_side,
    tiny_case,
)


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    # A slow round for both sides leaves the ratio alone; a ratio of medians would not.
    assert paired_ratio([1.0, 1.0, 10.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0, 10.0]) == 1.0
    with pytest.raises(ValueError):
        paired_ratio([], [])


SIMULTANEOUS_DUALS = ("simultaneous-augmented", "simultaneous-nupi")
PEER = ("hct-alm", "hct-nupi") if importlib.util.find_spec("humancompatible") else ()
"""humancompatible-train's variants, where it installs (Python 3.11 and later)."""


def test_tiny_case_times_every_variant() -> None:
    samples = time_side_by_side(tiny_case(quick=True), warmup=1, blocks=2, steps_per_block=2)
    assert set(samples) == {
        "extragradient", "hand-extragradient", "simultaneous", "hand-simultaneous",
        "cooper-extrapolation", "cooper-simultaneous", *SIMULTANEOUS_DUALS, *PEER,
    }  # fmt: skip
    assert all(len(times) == 2 and min(times) > 0 for times in samples.values())
    for case, ours, other in AGAINST_COOPER:
        if case == "tiny" and (PEER or not other.startswith("hct-")):
            assert ours in samples and other in samples


def test_memory_records_count_the_saved_point() -> None:
    primal, held = memory_records(hidden=32)
    # One copy of the network's parameters (784-32-32-2: 26,242 floats), not of the
    # indexed slack table, whose batch rows are saved instead.
    assert held["bytes"] == 26_242 * 4
    assert primal["bytes"] == held["bytes"] + 10_240 * 2 * 4
    assert held["ratio"] == pytest.approx(held["bytes"] / primal["bytes"], abs=1e-3)


def test_adam_case_times_every_variant() -> None:
    steps = adam_case(hidden=32, batch_size=16, num_samples=256)
    samples = time_side_by_side(steps, warmup=1, blocks=2, steps_per_block=2)
    assert set(samples) == {
        "plain-adam", "plain-adam-fused", "cooper-extrapolation",
        *(f"{method}{variant}" for method in ("simultaneous", "extragradient")
          for variant in ("", "-stock", "-fused")),
    }  # fmt: skip
    assert all(len(times) == 2 and min(times) > 0 for times in samples.values())
    for case, ours, other in AGAINST_COOPER:
        if case.startswith("adam-"):
            assert ours in samples and other in samples
            assert BASELINES[case] == "plain-adam"


def test_network_case_times_every_variant() -> None:
    steps = network_case(hidden=8, num_samples=256, batch_size=16)
    samples = time_side_by_side(steps, warmup=1, blocks=2, steps_per_block=2)
    assert set(samples) == {
        "plain-sgd", "simultaneous", "extragradient", "optimistic", "extragradient-micro4",
        "plain-sgd-micro4", "default", "default-fixed", "cooper-simultaneous",
        "cooper-extrapolation", *SIMULTANEOUS_DUALS, *PEER,
    }  # fmt: skip
    assert all(len(times) == 2 and min(times) > 0 for times in samples.values())
    for case, ours, other in AGAINST_COOPER:
        if case.startswith("mlp-") and (PEER or not other.startswith("hct-")):
            assert ours in samples and other in samples
            assert BASELINES[case] == "plain-sgd"


def test_floor_case_times_its_loops() -> None:
    rows = run([("adam", 8, 16), ("sgd", 8, 16)], blocks=2, per_block=lambda hidden: 2)
    assert [row[:3] for row in rows] == [("adam", 8, 16), ("sgd", 8, 16)]
    for _, _, _, simultaneous, two_steps in rows:
        assert simultaneous > 0 and two_steps > 0
    steps = floor_case("adam", hidden=8, batch_size=16, num_samples=64)
    assert set(steps) == {"plain", "minimal-simultaneous", "two-steps"}
