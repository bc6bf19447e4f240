"""The speed benchmark's pieces (the timings themselves are not tested)."""

from __future__ import annotations

import pytest

from benchmarks.speed import AGAINST_COOPER, paired_ratio, time_side_by_side, tiny_case


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    # A slow round for both sides leaves the ratio alone; a ratio of medians would not.
    assert paired_ratio([1.0, 1.0, 10.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0, 10.0]) == 1.0
    with pytest.raises(ValueError):
        paired_ratio([], [])


def test_tiny_case_times_every_variant() -> None:
    samples = time_side_by_side(tiny_case(quick=True), warmup=1, blocks=2, steps_per_block=2)
    assert set(samples) == {
        "extragradient", "hand-extragradient", "simultaneous", "hand-simultaneous",
        "cooper-extrapolation", "cooper-simultaneous",
    }  # fmt: skip
    assert all(len(times) == 2 and min(times) > 0 for times in samples.values())
    for case, ours, cooper in AGAINST_COOPER:
        if case == "tiny":
            assert ours in samples and cooper in samples
