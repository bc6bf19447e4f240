"""The tutorials (docs/tutorials/*.py) run as scripts, and their claims hold.

Each test runs one tutorial as ``__main__`` in a fresh namespace, with a temporary working
directory, as the site's renderer does, and checks the module-level results that its prose
states. The figures quoted in the comments were measured on 2 cores with torch 2.13.0.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"


def run_tutorial(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Runs ``docs/tutorials/<name>.py`` in ``tmp_path`` and returns its namespace."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    monkeypatch.chdir(tmp_path)
    try:
        namespace = runpy.run_path(str(TUTORIALS / f"{name}.py"), run_name="__main__")
        # Every tutorial leaves its figure open for the renderer.
        assert plt.get_fignums(), f"{name} drew no figure"
    finally:
        plt.close("all")
    assert not list(tmp_path.iterdir()), f"{name} wrote files into the working directory"
    return namespace


def test_tutorials_are_percent_scripts_with_a_title() -> None:
    for path in sorted(TUTORIALS.glob("*.py")):
        lines = path.read_text().splitlines()
        assert lines[0] == "# %% [markdown]", path.name
        assert lines[1].startswith("# # "), path.name  # the page title


def test_positive_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run_tutorial("positive_outputs", tmp_path, monkeypatch)
    penalty, softplus, constrained = ns["penalty"], ns["softplus"], ns["constrained"]
    bound = ns["lower_bound"]  # 0.3553
    # The constraints: no training output below -1e-3 at the last iterate (measured: the
    # smallest is +9.2e-3), at an MSE 8 % above the bound (0.3847).
    assert constrained["violated"] == 0.0
    assert ns["smallest_output"] > -1e-3
    assert bound < constrained["mse"] < 1.12 * bound
    # The violated fraction fell from the first measurement to zero.
    history = ns["constrained_history"]["violated"]
    assert history[-1] == 0.0 and max(history) > 0.0
    # Held-out outputs are not bound (5.1 % negative), but far fewer than the penalty's.
    assert 0.0 < constrained["held_out_negative"] < 0.1
    # The penalty leaves about half of the outputs below zero (52.1 %; held out 40.0 %) and
    # fits below the bound, which only an infeasible fit can (0.2974).
    assert penalty["violated"] > 0.3 and penalty["held_out_negative"] > 0.3
    assert penalty["mse"] < bound - 0.03
    # The softplus output is feasible everywhere and fits at the bound (0.3556).
    assert softplus["violated"] == 0.0 and softplus["held_out_negative"] == 0.0
    assert softplus["mse"] < constrained["mse"] < bound + 0.05
    # The outputs whose targets are negative (55.9 %) have a positive multiplier, and some
    # just above 0 within the margin (69.1 % in all).
    negative_targets = float((ns["targets"] < 0).float().mean())
    assert negative_targets < ns["active_fraction"] < negative_targets + 0.2


def test_recall_constraint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    ns = run_tutorial("recall_constraint", tmp_path, monkeypatch)
    target = ns["TARGET"]
    constrained, unconstrained = ns["constrained_figures"], ns["unconstrained_figures"]
    # Measured: train recall 0.985 constrained, 0.954 unconstrained.
    assert constrained["train_recall"] >= target - 0.005
    assert unconstrained["train_recall"] < target - 0.005  # without it the target is missed
    assert constrained["train_recall"] > unconstrained["train_recall"]
    # Accuracy is not given up for it (0.979 / 0.967 against 0.978 / 0.962).
    assert constrained["train_accuracy"] > unconstrained["train_accuracy"] - 0.01
    assert constrained["test_accuracy"] > unconstrained["test_accuracy"] - 0.01
    # The multiplier rose while batches violated the constraint (4.1 at epoch 2) and has
    # fallen back since (0.095); it is projected onto >= 0.
    multipliers = ns["constrained_history"]["multiplier"]
    assert max(multipliers) > 1.0
    assert 0.0 <= ns["final_multiplier"] < max(multipliers) / 4
    # The unconstrained model's multiplier never moved: its constraint was left out.
    assert set(ns["unconstrained_history"]["multiplier"]) == {0.0}


def test_fairness_rates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("scipy")  # the mixture's linear program
    ns = run_tutorial("fairness_rates", tmp_path, monkeypatch)
    table = ns["table"]
    # Ten pairs, twenty inequalities; group 4 absent from some batches (measured: 1 in 7).
    assert len(ns["PAIRS"]) == 10
    # Unconstrained: a gap far beyond the tolerance on both splits (measured: 0.50, 0.52).
    assert table["unconstrained"]["train violation"] > 0.3
    assert table["unconstrained"]["test violation"] > 0.3
    # The best iterate is feasible on the training set within the tracker's tolerance, and
    # the mixture's expected gaps hold there (the linear program's constraints).
    assert table["best iterate"]["train violation"] <= 0.005
    assert table["mixture"]["train violation"] <= 1e-6
    assert len(ns["mixture"].states) <= 21  # at most m + 1 members
    # Parity costs accuracy here (0.21 -> about 0.30).
    for answer in ("last iterate", "best iterate", "mixture"):
        assert table["unconstrained"]["train error"] < table[answer]["train error"] < 0.41
    # The mixture's expected error is at most the best single feasible state's.
    assert table["mixture"]["train error"] <= table["best iterate"]["train error"] + 1e-9
    # The iterates oscillate: some epochs end outside the tolerance (measured: 9 of 20).
    violations = ns["history"][:, 1:].clamp(min=0).amax(1)
    assert int((violations > 0.005).sum()) >= 3


def test_monotone_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    ns = run_tutorial("monotone_regression", tmp_path, monkeypatch)
    unconstrained, penalty, constrained = (
        ns["figures"][name] for name in ("unconstrained", "penalty", "constrained")
    )
    # Without the constraint the slope is negative at many points (measured: 9.7 % of the
    # training points, 13.4 % of the held-out ones).
    assert unconstrained["train_negative"] > 0.05 and unconstrained["test_negative"] > 0.05
    # With it, no training slope below -1e-3 (measured: the smallest is +0.039).
    assert constrained["train_negative"] == 0.0
    assert constrained["train_min_slope"] >= -1e-3
    # Held out: fewer negative slopes than without (measured: none, and 0.7 % with the
    # penalty), at a held-out error no worse than the unconstrained fit's (0.482 / 0.503).
    assert constrained["test_negative"] <= 0.01 < unconstrained["test_negative"]
    assert constrained["test_mse"] <= unconstrained["test_mse"]
    # The penalty helps too, without the constraint's guarantee on the training points.
    assert penalty["train_negative"] < unconstrained["train_negative"]
    assert constrained["train_min_slope"] >= penalty["train_min_slope"] - 1e-3


def test_bounds_and_norms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    ns = run_tutorial("bounds_and_norms", tmp_path, monkeypatch)
    # Every weight >= 0 after every step and at every point evaluated, exactly.
    assert min(ns["smallest_weight_per_step"]) >= 0.0
    assert ns["problem"].smallest_weight_evaluated >= 0.0
    assert bool((ns["weights"] >= 0).all())
    # Four weights end on their bound.
    assert int((ns["weights"] == 0).sum()) == 4
    # KKT to 1e-6, reached within the step cap (measured: 850 steps).
    assert ns["residuals"].converged(1e-6)
    assert ns["steps"] < 3000
    # The norm constraint is satisfied and active: on the budget, with a positive multiplier.
    budget = ns["BUDGET"]
    assert abs(ns["squared_norm"] - budget) <= 1e-5
    assert ns["multiplier"] > 0.5  # 0.6105
    # The multiplier is the weight decay each positive weight implies ...
    implied = ns["implied_multipliers"]
    assert len(implied) == 6
    assert float((implied - ns["multiplier"]).abs().max()) < 1e-4
    # ... the weights at zero have a gradient pointing out of the box (0.108 at least) ...
    assert ns["smallest_gradient_at_zero"] > 0.05
    # ... and the price of the budget: the loss's slope in it (0.6106 against 0.6105).
    assert ns["loss_drop_per_unit"] == pytest.approx(ns["multiplier"], rel=1e-3)
    # SLSQP finds the same weights (9.8e-7 apart).
    assert ns["distance_to_slsqp"] < 1e-5


def test_choosing_a_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cooper")
    ns = run_tutorial("choosing_a_method", tmp_path, monkeypatch)
    assert ns["default_solved"] == 2
    summary = ns["per_method"]
    assert summary["extragradient-projection"]["solved"] == 2
    assert summary["simultaneous-projection"]["solved"] == 0
    assert summary["slsqp"]["solved"] == 2
    steps = ns["steps_to_1e6"]
    for problem in ("hs071", "hs076"):
        # The default is at least 5 times faster than tuned fixed-step extra-gradient
        # (137 against 734 steps on hs071, 66 against 1,856 on hs076) ...
        assert 5 * steps[problem, "default-projection"] < steps[problem, "extragradient-projection"]
        # ... which Cooper's extrapolation matches step for step.
        assert steps[problem, "cooper-extrapolation"] == steps[problem, "extragradient-projection"]
    for row in ns["records"]:
        if row["method"] in ("default-projection", "extragradient-projection"):
            # Two closure calls per step; the default's first step makes one more.
            assert 2.0 <= row["evaluations_per_step"] < 2.01
            assert max(row["kkt"].values()) <= 1e-6
        if row["method"] == "simultaneous-projection":
            assert row["evaluations_per_step"] == 1.0
