"""Which iterate to return: the best one seen, or a mixture of at most m + 1 of them.

Constrained training oscillates, and its last iterate may be neither feasible nor good.
:class:`BestIterate` keeps a copy of the best iterate measured (feasibility first, then the
objective), as TFCO does; :func:`mixture_weights` finds the distribution over recorded
iterates that minimises the expected objective subject to the expected constraints
(Cotter et al., 2019): a linear program whose basic solution has at most m + 1 members.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class Candidate(NamedTuple):
    """An iterate's figures, measured by the caller (e.g. on validation data).

    Attributes:
        objective: The objective.
        violation: The largest violation (``>= 0``; 0 where every constraint holds).
        step: The step it was measured at.
    """

    objective: float
    violation: float
    step: int


def better(candidate: Candidate, incumbent: Candidate | None, tolerance: float) -> bool:
    """Whether ``candidate`` ranks above ``incumbent``: feasible (violation at most
    ``tolerance``) before infeasible; among feasible ones the lower objective, among
    infeasible ones the lower violation.

    Example:
        >>> better(Candidate(5.0, 0.0, 2), Candidate(1.0, 0.3, 1), tolerance=1e-3)
        True
        >>> better(Candidate(2.0, 0.0, 3), Candidate(1.0, 0.0, 1), tolerance=1e-3)
        False
    """
    if incumbent is None:
        return True
    feasible, was_feasible = candidate.violation <= tolerance, incumbent.violation <= tolerance
    if feasible != was_feasible:
        return feasible
    if feasible:
        return candidate.objective < incumbent.objective
    return candidate.violation < incumbent.violation


class BestIterate:
    """Keeps a copy of the best iterate of ``module`` seen by :meth:`observe`.

    Args:
        module: The model (or the whole problem) whose state is copied.
        tolerance: A violation at most this counts as feasible.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1)
        >>> tracker = BestIterate(model, tolerance=1e-3)
        >>> tracker.observe(objective=1.0, violation=0.5, step=0)
        True
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(3.0)
        >>> tracker.observe(objective=2.0, violation=0.0, step=1)  # feasible: better
        True
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(7.0)
        >>> tracker.observe(objective=0.5, violation=0.2, step=2)  # infeasible: not
        False
        >>> tracker.restore()
        >>> model.weight.item(), tracker.best.step
        (3.0, 1)
    """

    def __init__(self, module: nn.Module, tolerance: float = 0.0) -> None:
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"Invalid tolerance: {tolerance}")
        self.module = module
        self.tolerance = tolerance
        self.best: Candidate | None = None
        self._state: dict[str, Tensor] | None = None

    def observe(self, objective: float, violation: float, step: int) -> bool:
        """Ranks the module's current state; copies it if it is the best so far.

        Returns:
            Whether it is the new best.

        Raises:
            ValueError: If a figure is not finite, or the violation is negative.
        """
        if not (math.isfinite(objective) and math.isfinite(violation)):
            raise ValueError(
                f"the iterate of step {step} has a non-finite objective ({objective}) or "
                f"violation ({violation})"
            )
        if violation < 0:
            raise ValueError(f"Invalid violation: {violation} (the largest, >= 0)")
        candidate = Candidate(float(objective), float(violation), int(step))
        if not better(candidate, self.best, self.tolerance):
            return False
        self.best = candidate
        self._state = {
            key: value.detach().clone() for key, value in self.module.state_dict().items()
        }
        return True

    def restore(self) -> None:
        """Loads the best iterate into the module.

        Raises:
            RuntimeError: If nothing was observed.
        """
        if self._state is None:
            raise RuntimeError("no iterate observed yet: call observe() first")
        self.module.load_state_dict(self._state)

    def state_dict(self) -> dict[str, Any]:
        """The best iterate's copy and figures, to resume exactly."""
        state = None if self._state is None else dict(self._state)
        best = None if self.best is None else list(self.best)
        return {"best": best, "state": state, "tolerance": self.tolerance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s result, checked whole before anything changes.

        Raises:
            ValueError: If the figures are malformed or the copy is not of this module.
        """
        best, saved = state["best"], state["state"]
        if (best is None) != (saved is None):
            raise ValueError("a best iterate's figures and its copy come together")
        candidate = None
        if best is not None:
            candidate = Candidate(float(best[0]), float(best[1]), int(best[2]))
            if set(saved) != set(self.module.state_dict()):
                raise ValueError("the saved best iterate is not of this module's state")
        tolerance = float(state["tolerance"])
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"Invalid tolerance: {tolerance}")
        self.best, self.tolerance = candidate, tolerance
        self._state = None if saved is None else {k: v.clone() for k, v in saved.items()}


def mixture_weights(objectives: Sequence[float], violations: Sequence[Sequence[float]]) -> Tensor:
    """The distribution over recorded iterates with the lowest expected objective whose
    expected constraints hold: with :math:`f_t` the objectives and :math:`g_{tj} \\le 0`
    the constraints (standard form, signed),

    .. math::

        \\min_{w \\ge 0, \\sum_t w_t = 1} \\sum_t w_t f_t \\quad \\text{s.t.} \\quad
        \\sum_t w_t g_{tj} \\le 0 \\quad (j = 1, \\dots, m)

    solved by scipy's HiGHS; a basic solution has at most m + 1 nonzero weights. If no
    mixture is feasible, the one with the smallest largest expected violation is returned.

    Args:
        objectives: :math:`f_t`, one per iterate.
        violations: :math:`g_{tj}`, one row of ``m`` signed constraint values per iterate.

    Returns:
        The weights, float64, one per iterate.

    Example:
        >>> w = mixture_weights([0.0, 2.0], [[1.0], [-1.0]])  # g = 1 and -1: half each
        >>> [round(x, 6) for x in w.tolist()]
        [0.5, 0.5]
    """
    import numpy as np

    try:
        from scipy.optimize import linprog  # type: ignore[import-untyped]
    except ImportError as error:  # scipy is optional: only the mixture needs it
        raise ImportError("mixture_weights needs scipy: pip install scipy") from error

    f = np.asarray(objectives, dtype=np.float64)
    g = np.asarray(violations, dtype=np.float64).reshape(len(f), -1)
    if not (np.isfinite(f).all() and np.isfinite(g).all()):
        raise ValueError("objectives and violations must be finite")
    count = len(f)
    ones = np.ones((1, count))
    result = linprog(f, A_ub=g.T, b_ub=np.zeros(g.shape[1]), A_eq=ones, b_eq=[1.0],
                     bounds=(0, None), method="highs")  # fmt: skip
    if result.status != 0:
        # Infeasible: minimise the largest expected violation s instead, over (w, s).
        cost = np.r_[np.zeros(count), 1.0]
        bound = np.c_[g.T, -np.ones(g.shape[1])]
        result = linprog(cost, A_ub=bound, b_ub=np.zeros(g.shape[1]),
                         A_eq=np.c_[ones, [[0.0]]], b_eq=[1.0],
                         bounds=[(0, None)] * count + [(None, None)], method="highs")  # fmt: skip
        weights = result.x[:count]
    else:
        weights = result.x
    weights = np.clip(weights, 0.0, None)
    return torch.as_tensor(weights / weights.sum(), dtype=torch.float64)


class Mixture:
    """A predictor over several iterates' states with given weights: :meth:`sample` draws one
    member per call (the randomised classifier of the theory), :meth:`average` the weighted
    mean of the members' outputs (a deterministic approximation).

    Args:
        module: The model the states are loaded into.
        states: The members' state dicts (e.g. copies taken every k steps).
        weights: Their weights (:func:`mixture_weights`); members of weight 0 are dropped.
    """

    def __init__(
        self, module: nn.Module, states: Sequence[dict[str, Tensor]], weights: Tensor
    ) -> None:
        if len(states) != weights.numel():
            raise ValueError(f"{len(states)} states for {weights.numel()} weights")
        if not (bool(torch.isfinite(weights).all()) and bool((weights >= 0).all())):
            raise ValueError("weights must be finite and >= 0")
        if not float(weights.sum()) > 0:
            raise ValueError("weights must not all be 0")
        kept = [index for index in range(len(states)) if float(weights[index]) > 0]
        self.module = module
        self.states = [copy.deepcopy(states[index]) for index in kept]
        self.weights = weights[kept] / weights[kept].sum()

    def sample(self, generator: torch.Generator | None = None) -> int:
        """Loads a member drawn by weight into the module; returns its position."""
        index = int(torch.multinomial(self.weights.float(), 1, generator=generator))
        self.module.load_state_dict(self.states[index])
        return index

    def average(self, predict: Callable[[], Tensor]) -> Tensor:
        """The weighted mean of ``predict()`` over the members (no gradient), each member
        loaded into the module in turn (e.g. ``mixture.average(lambda: model(inputs))``);
        the module is left in the last member's state."""
        total: Tensor | None = None
        with torch.no_grad():
            for state, weight in zip(self.states, self.weights.tolist()):
                self.module.load_state_dict(state)
                output = predict() * weight
                total = output if total is None else total + output
        assert total is not None
        return total
