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

from lagrange_opt.evaluation.randomness import (
    Buffers,
    RngState,
    rng_state,
    running_statistics,
    set_rng_state,
)
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import ProblemState
from lagrange_opt.problem.proxy import mark_combined, proxied, proxy_parts
from lagrange_opt.problem.validation import Checked, check_state, gradient_path_fault

Closure = Callable[[], ProblemState]


class MicroBatch:
    """A micro-batch's closure with its size, for micro-batches of unequal sizes.

    ``optimizer.step([MicroBatch(closure, size), ...])`` weights each micro-batch's
    objective and dense constraint values by its size (a dense constraint's by the sizes of
    the micro-batches that observed it): the step is then the whole batch's when each
    closure returns means over its micro-batch. Plain closures are taken as equal parts of
    the batch.

    Args:
        closure: Evaluates the problem on the micro-batch.
        size: The micro-batch's number of samples, at least 1.

    Raises:
        TypeError: If ``closure`` is not callable or ``size`` not an ``int``.
        ValueError: If ``size`` is below 1.
    """

    __slots__ = ("closure", "size")

    def __init__(self, closure: Closure, size: int) -> None:
        if not callable(closure):
            raise TypeError(
                f"MicroBatch: the closure must be callable, got {type(closure).__name__}"
            )
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"MicroBatch: size must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"MicroBatch: size must be at least 1, got {size}")
        self.closure = closure
        self.size = size

    def __call__(self) -> ProblemState:
        return self.closure()


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
        sized = [closure for closure in closures if isinstance(closure, MicroBatch)]
        self.sizes = [closure.size for closure in sized] if len(sized) == len(closures) else None
        """Each micro-batch's size if each is a :class:`MicroBatch`, else ``None`` (equal
        parts)."""
        self.calls = 0
        """Evaluations of the whole batch so far (first passes)."""

    def __call__(self) -> ProblemState:
        return call_with_fresh_casts(self.closures[0])

    def each(self) -> list[Closure]:
        """The closures, each clearing autocast's cache when called (a
        :class:`MicroBatch` with its size, if they have sizes)."""
        fresh = [functools.partial(call_with_fresh_casts, closure) for closure in self.closures]
        if self.sizes is None:
            return list(fresh)
        return [MicroBatch(closure, size) for closure, size in zip(fresh, self.sizes)]


def check_micro_batches(closures: Sequence[object]) -> None:
    """Raises unless ``closures`` holds at least one closure and only closures.

    Raises:
        ValueError: If there is none.
        TypeError: If one is not callable, or only some are :class:`MicroBatch` ones,
            naming the micro-batch.
    """
    if not closures:
        raise ValueError("gradient accumulation needs at least one micro-batch closure")
    for index, closure in enumerate(closures):
        if not callable(closure):
            raise TypeError(
                f"micro-batch {index}: a closure must be callable, got {type(closure).__name__}"
            )
    sized = [isinstance(closure, MicroBatch) for closure in closures]
    if any(sized) and not all(sized):
        index = sized.index(False)
        raise TypeError(
            f"micro-batch {index} is a plain closure among MicroBatch(closure, size) ones: "
            "give every micro-batch its size, or none"
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


class Part(NamedTuple):
    """A constraint's combined value, and each micro-batch's share of it.

    Attributes:
        leaf: The combined value, a leaf that requires a gradient.
        rows: Indexed: each micro-batch's number of rows (0 where it did not observe the
            constraint), in the order of the concatenation. ``None`` if dense.
        weights: Dense: each micro-batch's weight in the combination (0 where it did not
            observe the constraint; they sum to 1). ``None`` if indexed.
    """

    leaf: Tensor
    rows: list[int] | None
    weights: list[float] | None


Combined = dict[str, Part]
"""Per constraint observed by at least one micro-batch, its :class:`Part`."""


class Replay(NamedTuple):
    """What the second pass needs.

    Attributes:
        problem: The problem the closures evaluate.
        closures: The micro-batches' closures.
        draws: Each closure's random number generators' state before its first call.
        objective: The combined objective, a leaf.
        weights: Each micro-batch's weight in the combined objective (they sum to 1).
        values: Per constraint observed, the combined value and each micro-batch's share.
    """

    problem: ConstrainedProblem
    closures: list[Closure]
    draws: list[RngState]
    objective: Tensor
    weights: list[float]
    values: Combined

    def clear_cotangents(self) -> None:
        """Forgets the combined values' gradients of an earlier backward pass."""
        self.objective.grad = None
        for part in self.values.values():
            part.leaf.grad = None

    def passes(self) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
        """Per micro-batch, after its closure is called again: the roots and cotangents of
        its backward pass (run it before the next, which frees the graph).

        Raises:
            ValueError: If a closure observes other constraints, or other numbers of rows,
                than on its first call (its batch changed between the two).
        """
        for index, closure in enumerate(self.closures):
            set_rng_state(self.draws[index])
            with torch.enable_grad():
                objective, checked = check_state(self.problem, call_with_fresh_casts(closure))
            fault = gradient_path_fault(objective, checked)
            if fault is not None:
                raise ValueError(f"micro-batch {index}: {fault}")
            _check_replayed(index, checked, self.values)
            roots: list[Tensor] = []
            cotangents: list[Tensor] = []
            combined = self.objective.grad
            if objective.requires_grad and combined is not None:
                roots.append(objective)
                cotangents.append((combined * self.weights[index]).to(objective.dtype))
            for name, _, value, _ in checked:
                part = self.values[name]
                grad = part.leaf.grad
                if grad is None or not value.requires_grad:
                    continue
                if part.rows is None:
                    assert part.weights is not None
                    cotangent = grad * part.weights[index]
                else:
                    start = sum(part.rows[:index])
                    cotangent = grad[start : start + part.rows[index]]
                roots.append(value)
                cotangents.append(cotangent.to(value.dtype))
            yield roots, cotangents


def _check_replayed(index: int, checked: Checked, values: Combined) -> None:
    """Raises unless the second call of micro-batch ``index`` observed what its first did:
    the same constraints, an indexed one with as many rows."""
    observed = {name: value for name, _, value, _ in checked}
    for name, part in values.items():
        before = part.rows[index] if part.rows is not None else None
        present = before != 0 if part.weights is None else part.weights[index] != 0
        value = observed.get(name)
        if (value is None) == present or (
            value is not None and before is not None and value.shape[0] != before
        ):
            now = "no value" if value is None else "a value"
            if value is not None and before is not None and present:
                now, then = _rows(value.shape[0]), _rows(before)
            else:
                then = "a value" if present else "no value"
            raise ValueError(
                f"micro-batch {index}: constraint '{name}': the closure returned {now} for it "
                f"on its second call but {then} on its first; a micro-batch's closure must "
                "evaluate the same batch each time"
            )
    for name in observed:
        if name not in values:
            raise ValueError(
                f"micro-batch {index}: constraint '{name}': the closure returned a value for "
                "it on its second call but none on its first; a micro-batch's closure must "
                "evaluate the same batch each time"
            )


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _check_equal_sizes(rows: dict[str, list[int]]) -> None:
    """Refuses plain micro-batches whose indexed rows show unequal sizes: each indexed
    constraint observed by every micro-batch has its own number of rows in some of them.

    A constraint over a subset of the batch (a mask) may have unequal rows in micro-batches
    of equal size; one constraint with equal rows everywhere (one over every sample) shows
    that they are equal. Only when none does are the sizes taken to differ.
    """
    everywhere = {name: counts for name, counts in rows.items() if all(counts)}
    if not everywhere or any(len(set(counts)) == 1 for counts in everywhere.values()):
        return
    name, counts = next(iter(everywhere.items()))
    index = next(i for i, count in enumerate(counts) if count != counts[0])
    raise ValueError(
        f"micro-batch {index} has {counts[index]} rows of constraint '{name}' where "
        f"micro-batch 0 has {counts[0]} (rows per micro-batch: {counts}): plain closures "
        "are averaged as equal parts of the batch, so micro-batches of unequal sizes would "
        "take a step other than the whole batch's; split the batch into equal parts, or give "
        "each micro-batch its size: MicroBatch(closure, size)"
    )


def _weighted(parts: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """The weighted sum of ``parts`` (weights summing to 1): their mean if equal."""
    stacked = torch.stack(list(parts))
    if len(set(weights)) == 1:
        return stacked.mean(0)
    scale = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    return (stacked * scale.reshape(-1, *([1] * (stacked.dim() - 1)))).sum(0)


def _combine(
    problem: ConstrainedProblem,
    states: Sequence[tuple[Tensor, Checked]],
    sizes: Sequence[int] | None,
) -> tuple[Tensor, Checked, list[float], Combined]:
    """The micro-batches' values as one batch's, as leaves: the objective and the dense
    values weighted by the micro-batches' sizes (equal without ``sizes``), a dense one over
    the micro-batches that observed it; the indexed ones concatenated.

    Returns:
        The combined objective, the combined values, the objective's weights and the
        :class:`Part` of each constraint observed by at least one micro-batch.
    """
    sizes = [1] * len(states) if sizes is None else sizes
    total = sum(sizes)
    objective_weights = [size / total for size in sizes]
    objective = _weighted([objective.detach() for objective, _ in states], objective_weights)
    by_name: dict[str, list[tuple[int, Tensor, Tensor | None]]] = {}
    for index, (_, checked) in enumerate(states):
        for name, _, value, indices in checked:
            by_name.setdefault(name, []).append((index, value, indices))
    combined: Checked = []
    values: Combined = {}
    # Declaration order, as one closure's result.
    for name, constraint in problem.declared().items():
        observed = by_name.get(name)
        if observed is None:
            continue
        values_as_returned = [value for _, value, _ in observed]
        parts = [value.detach() for value in values_as_returned]
        if constraint.spec.num_samples is None:
            shapes = {tuple(part.shape) for part in parts}
            if len(shapes) > 1:
                raise ValueError(
                    f"constraint '{name}': the micro-batches returned values of shapes "
                    f"{sorted(shapes)}; a dense constraint has one shape"
                )
            present = sum(sizes[index] for index, _, _ in observed)
            weights = [0.0] * len(states)
            for index, _, _ in observed:
                weights[index] = sizes[index] / present
            value = _weighted(parts, [weights[index] for index, _, _ in observed])
            value = value.requires_grad_()
            mark_combined(value, values_as_returned, indexed=False)
            values[name] = Part(value, None, weights)
            combined.append((name, constraint, value, None))
            continue
        value = torch.cat(parts).requires_grad_()
        mark_combined(value, values_as_returned, indexed=True)
        all_indices = torch.cat([indices for _, _, indices in observed if indices is not None])
        counts = [0] * len(states)
        for (index, _, _), part in zip(observed, parts):
            counts[index] = part.shape[0]
        values[name] = Part(value, counts, None)
        combined.append((name, constraint, value, all_indices))
    return objective.requires_grad_(), combined, objective_weights, values


def _detached(objective: Tensor, checked: Checked) -> tuple[Tensor, Checked]:
    """A micro-batch's values without their graph (a proxy keeps its two parts, detached,
    for the error messages)."""
    values: Checked = []
    for name, constraint, value, indices in checked:
        parts = proxy_parts(value)
        if parts is None:
            values.append((name, constraint, value.detach(), indices))
        else:
            true, surrogate = parts
            values.append((name, constraint, proxied(true.detach(), surrogate.detach()), indices))
    return objective.detach(), values


def first_pass(problem: ConstrainedProblem, micro: MicroBatches) -> tuple[Tensor, Checked, Replay]:
    """Calls every micro-batch's closure, keeping none of their graphs, and combines the
    values.

    A constraint may be absent from some micro-batches (left out, or with no rows): it is
    combined over those that observed it, as one batch's value over the whole batch.

    Returns:
        The combined objective and values (leaves), validated, and the :class:`Replay`
        that backpropagates through the micro-batches.

    Raises:
        ValueError: If the micro-batches are plain closures whose indexed rows show that
            they are of unequal sizes (:func:`_check_equal_sizes`), naming the micro-batch
            and the rows.
    """
    micro.calls += 1
    buffers = Buffers(running_statistics(problem))
    draws: list[RngState] = []
    states: list[tuple[Tensor, Checked]] = []
    for closure in micro.closures:
        draws.append(rng_state())
        # Grad mode stays on (a closure may differentiate its own outputs,
        # torch.autograd.grad with create_graph=True), and each micro-batch's values are
        # detached at once: one micro-batch's graph is held at a time.
        with torch.enable_grad():
            objective, checked = check_state(problem, call_with_fresh_casts(closure))
        states.append(_detached(objective, checked))
    # The second pass updates the statistics, once per micro-batch.
    buffers.restore()
    objective, combined, weights, values = _combine(problem, states, micro.sizes)
    if micro.sizes is None:
        _check_equal_sizes(
            {name: part.rows for name, part in values.items() if part.rows is not None}
        )
    return objective, combined, Replay(problem, micro.closures, draws, objective, weights, values)
