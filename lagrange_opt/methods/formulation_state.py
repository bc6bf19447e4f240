"""The method's side of the formulation: scales and penalty coefficients, and their rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lagrange_opt.evaluation.terms import Evaluation
from lagrange_opt.maths import lagrangian as lag
from lagrange_opt.maths.augmented import AugmentedLagrangian, grown_penalty, primal_settled
from lagrange_opt.maths.formulation import PLAIN, Formulation, Scales, TermRule
from lagrange_opt.maths.runaway import Reading, diagnosis, running_away
from lagrange_opt.methods.margins import SampleMargins
from lagrange_opt.problem.constrained_problem import ConstrainedProblem


class FormulationState:
    """Holds the scales measured at the first step and each constraint's penalty
    coefficient, and builds each evaluation's :class:`Formulation` from them.

    Args:
        problem: The problem.
        augmented: The augmented Lagrangian's settings, or ``None`` for the plain Lagrangian.
        scaling: Whether to scale the objective and the constraints at the first step (a
            constraint not observed at the first step keeps the scale 1,
            :mod:`..evaluation.scaling`).
        penalty_steps_dual: Whether the multipliers' gradient is multiplied by the penalty
            coefficient (the adaptive method's dual metric: the multipliers step ``c``
            times their step factor, the method of multipliers' step at factor 1).
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        augmented: AugmentedLagrangian | None,
        scaling: bool,
        penalty_steps_dual: bool,
    ) -> None:
        self.augmented = augmented
        self.scaling = scaling
        if augmented is not None and augmented.penalty_dual_step is not None:
            penalty_steps_dual = augmented.penalty_dual_step
        self.penalty_steps_dual = penalty_steps_dual and augmented is not None
        self.names = [
            name
            for name, constraint in problem.constraint_items()
            if constraint.multiplier is not None
        ]
        initial = 1.0 if augmented is None else augmented.penalty
        self.penalties: dict[str, float] = dict.fromkeys(self.names, initial)
        self._sample_names = {
            name
            for name, constraint in problem.constraint_items()
            if constraint.spec.indexed and constraint.multiplier is not None
        }
        self._margins = SampleMargins(problem, augmented)
        self._reading: Reading | None = None
        self.stopped: str | None = None
        """The runaway check's diagnosis once it stopped the run (:mod:`..maths.runaway`)."""
        self.scales: Scales | None = None
        self._window_max: dict[str, Tensor] = {}
        self._previous: dict[str, float] = dict.fromkeys(self.names, math.inf)
        self._steps = 0
        # The dense constraints' penalties grow only once the primal side has settled
        # (maths.augmented.primal_settled): the window's start and previous movement.
        self.watches_primal = (
            augmented is not None
            and augmented.growth != 1.0
            and any(name not in self._sample_names for name in self.names)
        )
        """Whether :meth:`observe` needs the primal parameters (to measure their movement)."""
        self._window_start: list[Tensor] | None = None
        self._previous_move = math.inf
        self._cached: Formulation | None = self._fixed()

    def _fixed(self) -> Formulation | None:
        """The formulation if it never changes (the plain Lagrangian, unscaled), else None."""
        return None if self.augmented is not None or self.scaling else PLAIN

    @property
    def needs_scales(self) -> bool:
        """Whether the scales are still to be measured."""
        return self.scaling and self.scales is None

    def set_scales(self, scales: Scales | None) -> None:
        """Stores the scales measured at the first step (``None``: forgets them)."""
        self.scales = scales
        self._cached = None

    def current(self) -> Formulation:
        """The formulation of the next evaluation."""
        if self._cached is None:
            self._cached = self._build()
        return self._cached

    def _build(self) -> Formulation:
        objective_scale = 1.0 if self.scales is None else self.scales.objective
        rules = {}
        for name in self.names:
            # A number when unscaled: it takes the multipliers' dtype and device in products.
            ratio: Tensor | float = objective_scale
            if self.scales is not None:
                ratio = objective_scale / self.scales.constraints[name].square()
            penalty = None
            dual_scale = None if self.scales is None else ratio
            margin = None
            if self.augmented is not None:
                penalty = ratio * self.penalties[name]
                if name in self._sample_names:
                    penalty = penalty * self.augmented.sample_penalty
                if self.penalty_steps_dual:
                    dual_scale = penalty
                margin = self._margins.margins.get(name)
            rules[name] = TermRule(penalty, dual_scale, margin, self._margins.rows.get(name))
        return Formulation(1.0 / objective_scale, rules)

    def observe(self, evaluation: Evaluation, params: Sequence[Tensor] = ()) -> None:
        """Applies the penalty-update rule with one step's violations (a host sync once per
        window, none in between).

        A window counts steps, observed or not. A constraint not observed in a step (left
        out, or of size zero) adds nothing to its window's largest violation; one observed
        in no step of a window keeps its coefficient, and the previous window it is
        compared with stays the last window that observed it.
        """
        augmented = self.augmented
        if augmented is None:
            return
        if self._margins.observe(evaluation.terms):
            self._cached = None
        self._steps += 1
        if augmented.runaway_check and self._steps % augmented.runaway_check == 0:
            self._watch(augmented, evaluation)
        if augmented.growth == 1.0:
            return
        for term in evaluation.terms:
            name = term.constraint.spec.name
            violation = lag.violation(term.standard, term.constraint.spec)
            # A dense constraint's window keeps its largest violation per element (one
            # operation per step), reduced at the window's end; a per-sample one's rows
            # change from step to step, so its window keeps one number.
            dense = name not in self._sample_names
            _fold_max(self._window_max, name, violation if dense else violation.amax())
        if self.watches_primal and self._window_start is None:
            self._start_window(params)
        if self._steps % augmented.window:
            return
        move = self._movement(params) if self.watches_primal else 0.0
        previous_move, self._previous_move = self._previous_move, move
        for name, window_max in self._window_max.items():
            worst = float(window_max.amax())
            # A per-sample constraint keeps the plain rule: under minibatch noise the
            # iterate never stops moving, and its margins answer the noise.
            settled = name in self._sample_names or primal_settled(
                augmented, previous_move, move, self._distance(name, window_max)
            )
            penalty = grown_penalty(
                augmented, self.penalties[name], self._previous[name], worst, settled
            )
            if penalty != self.penalties[name]:
                self.penalties[name] = penalty
                self._cached = None
            self._previous[name] = worst
        self._window_max.clear()

    def _distance(self, name: str, window_max: Tensor) -> float:
        """A dense constraint's largest scaled violation over the window: its distance to
        the boundary, to first order (one host sync)."""
        scale = None if self.scales is None else self.scales.constraints.get(name)
        return float(window_max.amax() if scale is None else (window_max / scale).amax())

    def _movement(self, params: Sequence[Tensor]) -> float:
        """The primal iterate's movement over the window that ends (one host sync), and the
        next window's start."""
        squares = [
            (param.detach() - start).square().sum().to(torch.float64)
            for param, start in zip(params, self._window_start or [])
        ]
        self._start_window(params)
        return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0

    def _start_window(self, params: Sequence[Tensor]) -> None:
        """Copies the primal parameters where a window starts."""
        self._window_start = [param.detach().clone() for param in params]

    def _watch(self, augmented: AugmentedLagrangian, evaluation: Evaluation) -> None:
        """The runaway check (:mod:`..maths.runaway`): one host sync."""
        names = [term.constraint.spec.name for term in evaluation.terms]
        if not names:
            return
        maxima = []
        for term in evaluation.terms:
            violation = lag.violation(term.standard, term.constraint.spec)
            if self.scales is not None:
                violation = violation / self.scales.constraints[term.constraint.spec.name]
            maxima.append(violation.amax().to(torch.float64).reshape(1))
        objective = evaluation.objective.detach().to(maxima[0]).reshape(1)
        values = torch.cat([objective, *maxima]).tolist()
        reading = Reading(values[0], dict(zip(names, values[1:])))
        before, self._reading = self._reading, reading
        if before is None:
            return
        for name in names:
            if not running_away(before, reading, name):
                continue
            penalty = self.penalties[name]
            if penalty < augmented.max_penalty and augmented.growth > 1.0:
                self.penalties[name] = min(penalty * augmented.growth, augmented.max_penalty)
                self._cached = None
            elif self.stopped is None:
                self.stopped = diagnosis(before, reading, name, augmented.runaway_check, penalty)

    def check_running(self) -> None:
        """Raises the runaway check's diagnosis, if it stopped the run.

        Raises:
            RuntimeError: Naming the constraint that ran away and the figures.
        """
        if self.stopped is not None:
            raise RuntimeError(self.stopped)

    def state_dict(self) -> dict[str, Any]:
        """The scales, penalties and the update rule's window, to resume exactly."""
        scales = None
        if self.scales is not None:
            constraints = {name: scale.clone() for name, scale in self.scales.constraints.items()}
            scales = {"objective": self.scales.objective, "constraints": constraints}
        return {
            "scales": scales,
            "penalties": dict(self.penalties),
            "previous_violations": dict(self._previous),
            "window_max": {name: worst.clone() for name, worst in self._window_max.items()},
            "window_start": None
            if self._window_start is None
            else [start.clone() for start in self._window_start],
            "previous_move": self._previous_move,
            "steps": self._steps,
            "margins": self._margins.state_dict(),
            # Plain types: a checkpoint loads with torch.load(weights_only=True).
            "reading": None if self._reading is None else list(self._reading),
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s result.

        Raises:
            ValueError: If the state names other constraints than this problem's.
        """
        if set(state["penalties"]) != set(self.names):
            raise ValueError(
                f"the formulation state is for constraints {sorted(state['penalties'])}, "
                f"this problem has {sorted(self.names)}"
            )
        scales = state["scales"]
        if scales is not None and not self.scaling:
            raise ValueError("the formulation state has scales, but this method does not scale")
        if scales is not None and set(scales["constraints"]) != set(self.names):
            raise ValueError(
                f"the scales are for constraints {sorted(scales['constraints'])}, this problem "
                f"has {sorted(self.names)}"
            )
        self.scales = None if scales is None else Scales(
            float(scales["objective"]),
            {name: scale.clone() for name, scale in scales["constraints"].items()},
        )  # fmt: skip
        self.penalties = dict(state["penalties"])
        self._previous = dict(state["previous_violations"])
        self._window_max = {name: worst.clone() for name, worst in state["window_max"].items()}
        starts = state.get("window_start")
        self._window_start = None if starts is None else [start.clone() for start in starts]
        self._previous_move = float(state.get("previous_move", math.inf))
        self._steps = int(state["steps"])
        self._margins.load_state_dict(state.get("margins", {}))
        reading = state.get("reading")
        self._reading = None if reading is None else Reading(float(reading[0]), dict(reading[1]))
        self.stopped = state.get("stopped")
        self._cached = self._fixed()


def _fold_max(maxima: dict[str, Tensor], name: str, value: Tensor) -> None:
    """Keeps in ``maxima[name]`` the largest of the values given for ``name`` (no host sync)."""
    before = maxima.get(name)
    maxima[name] = value if before is None else torch.maximum(before, value)
