"""The closure's call in an evaluation: its result validated against the declarations and
the batch of an earlier evaluation of the step, and with a process group checked whole on
each rank before every rank agrees to go on (:mod:`.distributed`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lagrange_opt.evaluation.micro_batches import (
    MicroBatches,
    Replay,
    check_micro_batches,
    first_pass,
)
from lagrange_opt.evaluation.term_checks import raise_for_bad_values
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import ConstraintSpec, ProblemState
from lagrange_opt.problem.validation import (
    Checked,
    check_index_range,
    check_state,
    gradient_path_fault,
)

if TYPE_CHECKING:
    from lagrange_opt.evaluation.distributed import Synchronizer
    from lagrange_opt.evaluation.global_batch import GlobalBatch
from lagrange_opt.evaluation.observed import (
    ObservedIndices,
    observed_in,
    same_indices,
    with_measured,
)


def check_closure(closure: object, caller: str, micro_batches: bool = True) -> None:
    """Raises TypeError unless ``closure`` is a closure or, with ``micro_batches``, a
    sequence of them (one per micro-batch, each checked by
    :class:`.micro_batches.MicroBatches`).

    The problem's evaluation passed where the function that evaluates it is expected
    (``optimizer.step(problem(idx))``) is named as that mistake: a :class:`ProblemState` is
    a tuple, which would otherwise be taken for a list of micro-batches.

    Args:
        closure: What the caller was given.
        caller: Names the caller in the message, ``"step()"`` or ``"kkt()"``.
        micro_batches: Whether the caller takes a sequence of closures.
    """
    mistake = (
        "a ProblemState, the problem's value, where a closure is expected (a function that "
        "evaluates the problem): pass a function, e.g. lambda: problem(idx)"
    )
    if isinstance(closure, ProblemState):
        raise TypeError(f"{caller} got {mistake}")
    if callable(closure):
        return
    if micro_batches and isinstance(closure, Sequence) and not isinstance(closure, str):
        for index, each in enumerate(closure):
            if isinstance(each, ProblemState):
                raise TypeError(f"{caller}, micro-batch {index}: got {mistake}")
        # What MicroBatches refuses, refused here: with a process group these checks run
        # before the step's first agreement (_distributed.failing_together), and nothing
        # after them may fail on one rank only.
        check_micro_batches(closure)
        return
    raise TypeError(
        f"{caller} takes a closure (a function that evaluates the problem, e.g. "
        f"lambda: problem(idx)), got {type(closure).__name__}"
    )


def detached_standard(value: Tensor, spec: ConstraintSpec, dtype: torch.dtype) -> Tensor:
    """The standard form of a value, detached, in memory of its own, in ``dtype``.

    Where a constraint's value is cast to the dual side's dtype, its multipliers' (a
    penalised constraint, which has none, keeps its own).
    """
    detached = value.detach()
    if detached.dtype != dtype:
        detached = detached.to(dtype)  # a copy: memory of its own
        return detached.neg_() if spec.sense == ">=" else detached
    if spec.sense == ">=":
        return detached.neg()
    if value.is_leaf or value._is_view():
        # The value may be (a view of) a parameter, which the primal step changes.
        return detached.clone()
    return detached


def call(
    problem: ConstrainedProblem,
    closure: Callable[[], ProblemState],
    expected_indices: Mapping[str, Tensor | None] | None,
) -> tuple[Tensor, Checked]:
    """Calls the closure (with gradients enabled) and validates what it returned."""
    if torch.is_grad_enabled():
        state = closure()
    else:
        with torch.enable_grad():
            state = closure()
    objective, checked = check_state(problem, state)
    if expected_indices is not None:
        _check_same_batch(problem, checked, expected_indices)
        checked = with_measured(checked, expected_indices)
    return objective, checked


def call_micro_batches(
    problem: ConstrainedProblem,
    micro: MicroBatches,
    expected_indices: Mapping[str, Tensor | None] | None,
) -> tuple[Tensor, Checked, Replay]:
    """The first pass over the micro-batches (:mod:`.micro_batches`), validated as one
    batch's values."""
    objective, checked, replay = first_pass(problem, micro)
    if expected_indices is not None:
        _check_same_batch(problem, checked, expected_indices)
        checked = with_measured(checked, expected_indices)
    return objective, checked, replay


def call_synchronized(
    problem: ConstrainedProblem,
    closure: Callable[[], ProblemState],
    expected_indices: Mapping[str, Tensor | None] | None,
    sync: Synchronizer,
) -> tuple[Tensor, Checked, dict[str, GlobalBatch], Replay | None, ObservedIndices]:
    """:func:`call` (or, for micro-batches, :func:`call_micro_batches`: the rank's batch is
    their combination) on every rank, then the collectives of :func:`evaluate`.

    Everything that can fail on one rank only is checked before the agreement (the index
    ranges and the values too, which :func:`evaluate` otherwise leaves to the one
    finiteness check after backward): after it, every rank forms its terms from the same
    gathered data, and a failure there would leave the other ranks waiting in a collective.

    A constraint observed on some ranks only (left out, or with no sample, elsewhere) is
    the whole batch's: the agreement tells every rank which constraints some rank observed,
    and a rank that did not observe one gets the whole batch's value (dense: the average
    over the ranks that observed it) or an empty share of its batch (indexed), so that
    every rank forms its term and steps its multipliers alike, its own gradient being
    nothing.

    Returns:
        The averaged objective, every constraint some rank observed (in declaration
        order), the indexed ones' batches over every rank, the micro-batches' replay, and
        what this rank observed (which a later evaluation of the step must repeat).
    """
    replay = None
    try:
        if isinstance(closure, MicroBatches):
            objective, checked, replay = call_micro_batches(problem, closure, expected_indices)
        else:
            objective, checked = call(problem, closure, expected_indices)
        own = objective.detach().sum()
        for name, constraint, value, indices in checked:
            if indices is not None:
                check_index_range(name, constraint, indices)
            own = own + value.detach().sum() * 0
        if not math.isfinite(own.item()):
            raise_for_bad_values(objective, checked, [])
        fault = gradient_path_fault(objective, checked)
        if fault is not None:
            raise ValueError(fault)
    except BaseException as error:
        sync.agree(error)
        raise
    observed = observed_in(checked)
    presence = sync.agree_observed({name: value.dtype for name, _, value, _ in checked})
    objective, averaged = sync.average_dense(objective, checked, presence)
    # An indexed constraint with multipliers that this rank did not observe: an empty share
    # (its rows come from the other ranks), with the same layout of the gather everywhere.
    absent: Checked = []
    for name, constraint in problem.declared().items():
        if (
            name in presence
            and name not in observed
            and constraint.spec.num_samples is not None
            and constraint.multiplier is not None  # a penalty stays the rank's own
        ):
            empty = torch.empty(
                (0, *constraint.spec.shape), dtype=presence[name].dtype, device=objective.device
            )
            indices = torch.empty(0, dtype=torch.int64, device=objective.device)
            absent.append((name, constraint, empty, indices))
    if absent:
        order = {name: position for position, name in enumerate(problem.declared())}
        averaged = sorted([*averaged, *absent], key=lambda entry: order[entry[0]])
    gathered = [
        (name, indices, detached_standard(value, constraint.spec, constraint.multiplier.dtype))
        for name, constraint, value, indices in averaged
        if indices is not None and constraint.multiplier is not None
    ]
    batches = sync.gather_indexed([(indices, standard) for _, indices, standard in gathered])
    global_batches = {name: batch for (name, _, _), batch in zip(gathered, batches)}
    return objective, averaged, global_batches, replay, observed


def _check_same_batch(
    problem: ConstrainedProblem, checked: Checked, expected: Mapping[str, Tensor | None]
) -> None:
    """Raises unless this evaluation observes the constraints an earlier one of the same
    step observed, with the same indices (see :func:`evaluate`)."""
    observed = {name: indices for name, _, _, indices in checked}
    every_constraint = isinstance(expected, ObservedIndices)
    for name, constraint in problem.declared().items():
        before, now = name in expected, name in observed
        if before and not now:
            raise ValueError(
                f"constraint '{name}': the closure returned no value for it on its second call "
                "(left out, or of size zero) but one on its first; both evaluations of one "
                "step must use the same batch"
            )
        if now and not before and (every_constraint or constraint.multiplier is not None):
            raise ValueError(
                f"constraint '{name}': the closure returned a value for it on its second call "
                "but none on its first (left out, or of size zero); both evaluations of one "
                "step must use the same batch"
            )
        indices, previous = observed.get(name), expected.get(name)
        if indices is not None and previous is not None and not same_indices(indices, previous):
            raise ValueError(
                f"constraint '{name}': the closure returned other indices on its second call; "
                "both evaluations of one step must use the same batch"
            )
