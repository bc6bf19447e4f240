"""Which iterate to return: the best one seen (feasibility first, then the objective) and the
m + 1 mixture, on a problem whose last iterate oscillates."""

from __future__ import annotations

import re

import pytest
import torch

from lagrange_opt import (
    BestIterate,
    ConstrainedProblem,
    Mixture,
    ProblemState,
    SimultaneousGDA,
    mixture_weights,
)


class Floor(ConstrainedProblem):
    """min x s.t. x >= 1: a bilinear Lagrangian, around whose saddle point (1, 1)
    simultaneous descent-ascent circles without converging."""

    def __init__(self) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
        self.add_inequality("floor", ">=")

    def forward(self) -> ProblemState:
        return ProblemState(self.x * 1.0, {"floor": self.x - 1})


def _run(steps: int = 300) -> tuple[Floor, BestIterate, list[float], list[dict[str, torch.Tensor]]]:
    problem = Floor()
    optimizer = SimultaneousGDA(
        problem,
        torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    tracker = BestIterate(problem, tolerance=1e-9)
    xs, states = [], []
    for step in range(steps):
        optimizer.step(problem)
        x = problem.x.item()
        tracker.observe(objective=x, violation=max(0.0, 1 - x), step=step)
        xs.append(x)
        states.append({key: value.clone() for key, value in problem.state_dict().items()})
    return problem, tracker, xs, states


def test_the_best_iterate_is_feasible_where_the_last_is_not() -> None:
    problem, tracker, xs, _ = _run()
    assert xs[-1] < 0.5  # the last iterate is far from feasible
    feasible = [x for x in xs if 1 - x <= 1e-9]  # within the tracker's tolerance
    assert tracker.best is not None
    assert tracker.best.violation <= 1e-9 and tracker.best.objective == min(feasible)
    tracker.restore()
    assert problem.x.item() == min(feasible)


def test_the_mixture_meets_the_constraint_in_expectation_with_two_members() -> None:
    problem, _, xs, states = _run()
    weights = mixture_weights(xs, [[1 - x] for x in xs])  # g = 1 - x <= 0
    x = torch.tensor(xs, dtype=torch.float64)
    assert int((weights > 0).sum()) <= 2  # m + 1 members, m = 1
    # The lowest expected objective with E[x] >= 1: E[x] = 1 exactly.
    assert float(weights @ x) == pytest.approx(1.0, abs=1e-9)
    mixture = Mixture(problem, states, weights)
    assert len(mixture.states) == int((weights > 0).sum())
    for seed in range(5):
        member = mixture.sample(torch.Generator().manual_seed(seed))
        assert torch.equal(problem.x, mixture.states[member]["x"])
    assert float(mixture.average(lambda: problem.x * 1.0)) == pytest.approx(1.0, abs=1e-9)


def test_an_infeasible_record_gives_the_least_violating_mixture() -> None:
    weights = mixture_weights([0.0, 1.0, 2.0], [[3.0], [2.0], [1.0]])
    assert weights.tolist() == [0.0, 0.0, 1.0]


def test_the_tracker_resumes_exactly() -> None:
    problem, tracker, _, _ = _run(100)
    fresh = BestIterate(Floor(), tolerance=1.0)
    fresh.load_state_dict(tracker.state_dict())
    assert fresh.best == tracker.best and fresh.tolerance == tracker.tolerance
    fresh.restore()
    tracker.restore()
    assert torch.equal(fresh.module.x, problem.x)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t: t.observe(float("nan"), 0.0, 3), ValueError,
         "the iterate of step 3 has a non-finite objective (nan) or violation (0.0)"),
        (lambda t: t.observe(1.0, -0.5, 0), ValueError, "Invalid violation: -0.5 (the largest, >= 0)"),
        (lambda t: t.restore(), RuntimeError, "no iterate observed yet: call observe() first"),
        (lambda t: BestIterate(t.module, tolerance=-1.0), ValueError, "Invalid tolerance: -1.0"),
        (lambda t: t.load_state_dict({"best": [1.0, 0.0, 1], "state": None, "tolerance": 0.0}),
         ValueError, "a best iterate's figures and its copy come together"),
        (lambda t: Mixture(t.module, [{}], torch.tensor([0.5, 0.5])), ValueError,
         "1 states for 2 weights"),
        (lambda t: mixture_weights([0.0], [[float("inf")]]), ValueError,
         "objectives and violations must be finite"),
    ],
)  # fmt: skip
def test_bad_input(call: object, error: type, message: str) -> None:
    tracker = BestIterate(Floor())
    with pytest.raises(error, match=re.escape(message)):
        call(tracker)  # type: ignore[operator]
