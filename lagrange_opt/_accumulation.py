"""Gradient accumulation: a step's batch given as micro-batches, one closure each.

An evaluation over :math:`k` micro-batches is exact, whatever the formulation, in two
passes over them, holding one micro-batch's graph at a time:

1. **Values.** Each closure is called under ``torch.no_grad()`` (its random number
   generators' state recorded first); the objective and the dense constraint values are
   averaged over the micro-batches (the batch's mean for micro-batches of equal size), the
   indexed ones concatenated (a :class:`~._proxy.Proxy` is combined by its true values,
   and its surrogates receive the cotangent in the second pass). The combined values are
   leaves that require a gradient: the evaluation forms its terms from them as from one
   batch (the augmented Lagrangian's weights and a penalty's gradient depend on the whole
   batch's value).
2. **Gradients.** The evaluation's backward pass leaves on each combined value its
   cotangent :math:`\\partial \\mathcal{L} / \\partial \\bar v`; each closure is then called
   again, with the draws of its first call, and backward runs from its own values with
   that cotangent (divided by :math:`k` for an average, the micro-batch's rows for an
   indexed constraint), accumulating into the parameters' ``.grad``:

.. math::

    \\nabla_x \\mathcal{L}(\\bar v(x)) = \\sum_{i=1}^{k}
    \\Big(\\frac{\\partial \\mathcal{L}}{\\partial \\bar v}\\Big)^{\\!\\top}
    \\frac{\\partial \\bar v}{\\partial v_i} \\nabla_x v_i(x)

A micro-batch costs one forward pass more than without accumulation. The running
statistics of normalisation layers are updated by the second pass only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._problem import ConstrainedProblem, ProblemState
from ._proxy import mark_combined
from ._randomness import Buffers, RngState, rng_state, running_statistics, set_rng_state
from ._validation import Checked, check_state, gradient_path_fault

Closure = Callable[[], ProblemState]


class MicroBatches:
    """A step's batch as micro-batches: ``optimizer.step([closure, ...])`` builds one.

    Calling it calls the first micro-batch's closure. Every call clears autocast's cache of
    parameter casts (the step moves the parameters in place between calls).

    Args:
        closures: One closure per micro-batch, of equal batch sizes.

    Raises:
        ValueError: If there is none.
        TypeError: If one is not callable.
    """

    def __init__(self, closures: Sequence[Closure]) -> None:
        closures = list(closures)
        check_micro_batches(closures)
        self.closures = closures
        self.calls = 0
        """Evaluations of the whole batch so far (first passes)."""

    def __call__(self) -> ProblemState:
        return call_with_fresh_casts(self.closures[0])

    def each(self) -> list[Closure]:
        """The closures, each clearing autocast's cache when called."""
        return [functools.partial(call_with_fresh_casts, closure) for closure in self.closures]


def check_micro_batches(closures: Sequence[object]) -> None:
    """Raises unless ``closures`` holds at least one closure and only closures.

    Raises:
        ValueError: If there is none.
        TypeError: If one is not callable, naming the micro-batch.
    """
    if not closures:
        raise ValueError("gradient accumulation needs at least one micro-batch closure")
    for index, closure in enumerate(closures):
        if not callable(closure):
            raise TypeError(
                f"micro-batch {index}: a closure must be callable, got {type(closure).__name__}"
            )


def call_with_fresh_casts(closure: Closure) -> ProblemState:
    """Calls ``closure`` after clearing autocast's cache of parameter casts.

    Autocast keeps its low-precision copies of the parameters until the outermost autocast
    region ends; a step runs inside the region and moves the parameters in place between
    its evaluations (else extra-gradient's extrapolated point would be evaluated with the
    casts of the point the step started from).
    """
    torch.clear_autocast_cache()
    return closure()


Combined = dict[str, tuple[Tensor, list[int] | None]]
"""Per constraint observed: the combined value (a leaf) and, if indexed, each micro-batch's
number of rows."""


class Replay(NamedTuple):
    """What the second pass needs.

    Attributes:
        problem: The problem the closures evaluate.
        closures: The micro-batches' closures.
        draws: Each closure's random number generators' state before its first call.
        objective: The combined objective, a leaf.
        values: Per constraint observed, the combined value (a leaf) and, if indexed, the
            number of rows of each micro-batch.
    """

    problem: ConstrainedProblem
    closures: list[Closure]
    draws: list[RngState]
    objective: Tensor
    values: Combined

    def clear_cotangents(self) -> None:
        """Forgets the combined values' gradients of an earlier backward pass."""
        self.objective.grad = None
        for leaf, _ in self.values.values():
            leaf.grad = None

    def passes(self) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
        """Per micro-batch, after its closure is called again: the roots and cotangents of
        its backward pass (run it before the next, which frees the graph)."""
        count = len(self.closures)
        for index, closure in enumerate(self.closures):
            set_rng_state(self.draws[index])
            with torch.enable_grad():
                objective, checked = check_state(self.problem, call_with_fresh_casts(closure))
            fault = gradient_path_fault(objective, checked)
            if fault is not None:
                raise ValueError(f"micro-batch {index}: {fault}")
            roots: list[Tensor] = []
            cotangents: list[Tensor] = []
            combined = self.objective.grad
            if objective.requires_grad and combined is not None:
                roots.append(objective)
                cotangents.append((combined / count).to(objective.dtype))
            for name, _, value, _ in checked:
                leaf, rows = self.values[name]
                grad = leaf.grad
                if grad is None or not value.requires_grad:
                    continue
                if rows is None:
                    cotangent = grad / count
                else:
                    start = sum(rows[:index])
                    cotangent = grad[start : start + rows[index]]
                roots.append(value)
                cotangents.append(cotangent.to(value.dtype))
            yield roots, cotangents


def _combine(states: Sequence[tuple[Tensor, Checked]]) -> tuple[Tensor, Checked, Combined]:
    """The micro-batches' values as one batch's: averages and concatenations, as leaves."""
    first_names = [name for name, _, _, _ in states[0][1]]
    for index, (_, checked) in enumerate(states[1:], start=1):
        names = [name for name, _, _, _ in checked]
        if names != first_names:
            raise ValueError(
                f"micro-batch {index} observed the constraints {names}, micro-batch 0 "
                f"{first_names}: every micro-batch must return the same constraints"
            )
    objective = torch.stack([objective.detach() for objective, _ in states]).mean(0)
    combined: Checked = []
    values: Combined = {}
    for position, (name, constraint, _, indices) in enumerate(states[0][1]):
        values_as_returned = [checked[position][2] for _, checked in states]
        parts = [part.detach() for part in values_as_returned]
        if indices is None:
            shapes = {tuple(part.shape) for part in parts}
            if len(shapes) > 1:
                raise ValueError(
                    f"constraint '{name}': the micro-batches returned values of shapes "
                    f"{sorted(shapes)}; a dense constraint has one shape"
                )
            value = torch.stack(parts).mean(0).requires_grad_()
            mark_combined(value, values_as_returned, indexed=False)
            values[name] = (value, None)
            combined.append((name, constraint, value, None))
            continue
        value = torch.cat(parts).requires_grad_()
        mark_combined(value, values_as_returned, indexed=True)
        all_indices = torch.cat(
            [part for _, checked in states if (part := checked[position][3]) is not None]
        )
        values[name] = (value, [part.shape[0] for part in parts])
        combined.append((name, constraint, value, all_indices))
    return objective.requires_grad_(), combined, values


def first_pass(problem: ConstrainedProblem, micro: MicroBatches) -> tuple[Tensor, Checked, Replay]:
    """Calls every micro-batch's closure without a graph and combines the values.

    Returns:
        The combined objective and values (leaves), validated, and the :class:`Replay`
        that backpropagates through the micro-batches.
    """
    micro.calls += 1
    buffers = Buffers(running_statistics(problem))
    draws: list[RngState] = []
    states: list[tuple[Tensor, Checked]] = []
    for closure in micro.closures:
        draws.append(rng_state())
        with torch.no_grad():
            states.append(check_state(problem, call_with_fresh_casts(closure)))
    # The second pass updates the statistics, once per micro-batch.
    buffers.restore()
    objective, combined, values = _combine(states)
    return objective, combined, Replay(problem, micro.closures, draws, objective, values)
