"""One evaluation of a problem: validate what the closure returned and build the Lagrangian."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from . import _lagrangian as lag
from ._problem import ConstrainedProblem, Constraint, IndexedValue, ProblemState


class UndoLog:
    """Saved copies of tensors (or of some of their rows) that a failed step puts back."""

    def __init__(self) -> None:
        self._entries: list[tuple[Tensor, Tensor | None, Tensor]] = []

    def save(self, target: Tensor, rows: Tensor | None = None, saved: Tensor | None = None) -> None:
        """Remembers ``target`` (or ``target[rows]``); ``saved`` is a copy already taken."""
        if saved is None:
            saved = target.clone() if rows is None else target[rows]
        self._entries.append((target, rows, saved))

    def restore(self) -> None:
        """Puts every saved tensor back, the latest first."""
        with torch.no_grad():
            for target, rows, saved in reversed(self._entries):
                if rows is None:
                    target.copy_(saved)
                else:
                    target.index_copy_(0, rows, saved)
        self._entries.clear()


class Term(NamedTuple):
    """The part of an evaluation of one constraint that has multipliers.

    Attributes:
        constraint: The constraint.
        residual: The equality whose multiplier is ``constraint.multiplier`` (``h``, ``g``
            or ``g + s**2``), with its autograd graph.
        indices: The sample indices as given (indexed constraints), else ``None``.
        rows: Sorted unique rows of the tables read by this evaluation, else ``None``.
        inverse: For each batch entry, its position in ``rows``.
        multiplier_rows: The multipliers read (a copy of the rows if indexed).
        slack_rows: Indexed slack rows, a leaf whose gradient is the slacks' gradient.
        dual_grad: Gradient of the Lagrangian's per-sample terms with respect to the
            multipliers (the residual, summed over repeated indices).
    """

    constraint: Constraint
    residual: Tensor
    indices: Tensor | None
    rows: Tensor | None
    inverse: Tensor | None
    multiplier_rows: Tensor
    slack_rows: Tensor | None
    dual_grad: Tensor


class Evaluation(NamedTuple):
    """One call of the closure, ready to form the Lagrangian.

    Attributes:
        objective: The objective, with its graph.
        terms: The constraints with multipliers, in declaration order.
        penalties: The penalty of each penalised constraint, with its graph.
        violations: Every constraint's elementwise violation, detached.
    """

    objective: Tensor
    terms: list[Term]
    penalties: list[Tensor]
    violations: list[Tensor]

    def lagrangian(self, multipliers: list[Tensor] | None = None) -> Tensor:
        """The Lagrangian, with the multipliers read at evaluation or the ones given."""
        if multipliers is None:
            multipliers = [term.multiplier_rows for term in self.terms]
        pieces = []
        for term, multiplier in zip(self.terms, multipliers):
            if term.inverse is None:
                pieces.append(lag.constraint_term(multiplier, term.residual, None))
            else:
                batch_size = term.inverse.shape[0]
                pieces.append(
                    lag.constraint_term(multiplier[term.inverse], term.residual, batch_size)
                )
        return lag.lagrangian(self.objective, pieces + self.penalties)

    def violation_summary(self) -> tuple[Tensor, Tensor]:
        """The maximum and the mean violation over every constraint element."""
        violations = self.violations
        if not violations:
            zero = torch.zeros((), dtype=self.objective.dtype, device=self.objective.device)
            return zero, zero
        if len(violations) == 1:
            return violations[0].amax(), violations[0].mean()
        maxima = torch.stack([violation.amax() for violation in violations])
        total = torch.stack([violation.sum() for violation in violations]).sum()
        count = sum(violation.numel() for violation in violations)
        return maxima.amax(), total / count


def _describe_shape(tensor: Tensor) -> str:
    return str(tuple(tensor.shape))


def _unpack(name: str, constraint: Constraint, entry: object) -> tuple[Tensor, Tensor | None]:
    spec = constraint.spec
    if spec.num_samples is not None:
        if not isinstance(entry, IndexedValue):
            raise ValueError(
                f"constraint '{name}' is indexed (num_samples={spec.num_samples}) but was "
                f"evaluated without indices: return IndexedValue(value, indices)"
            )
        value, indices = entry
        if not isinstance(value, Tensor) or not isinstance(indices, Tensor):
            raise TypeError(f"constraint '{name}': IndexedValue must hold two tensors")
        if (
            indices.dtype.is_floating_point
            or indices.dtype.is_complex
            or indices.dtype == torch.bool
        ):
            raise TypeError(
                f"constraint '{name}': indices must be an integer tensor, got {indices.dtype}"
            )
        if indices.ndim != 1:
            raise ValueError(
                f"constraint '{name}': indices must be 1-D, got shape {_describe_shape(indices)}"
            )
        expected = (indices.shape[0], *spec.shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"constraint '{name}': value has shape {_describe_shape(value)}, expected "
                f"{expected} ({indices.shape[0]} indices, declared shape {spec.shape})"
            )
        return value, indices
    if isinstance(entry, IndexedValue):
        raise ValueError(
            f"constraint '{name}' is not indexed: return its value as a tensor, not IndexedValue"
        )
    if not isinstance(entry, Tensor):
        raise TypeError(f"constraint '{name}': value must be a tensor, got {type(entry).__name__}")
    if tuple(entry.shape) != spec.shape:
        raise ValueError(
            f"constraint '{name}': value has shape {_describe_shape(entry)}, "
            f"declared shape {spec.shape}"
        )
    return entry, None


def _first_non_finite(tensor: Tensor) -> str:
    bad = (~torch.isfinite(tensor.detach())).nonzero()
    position = tuple(int(i) for i in bad[0])
    first = float(tensor.detach()[position])
    return f"{bad.shape[0]} non-finite value(s), first {first} at {position}"


def _raise_for_bad_values(
    objective: Tensor, checked: list[tuple[str, Constraint, Tensor, Tensor | None]]
) -> None:
    """Names the value at fault; called only once the cheap combined check has failed."""
    if not bool(torch.isfinite(objective.detach())):
        raise ValueError(f"objective is not finite: {float(objective.detach())}")
    for name, constraint, value, indices in checked:
        if not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"constraint '{name}' has {_first_non_finite(value)}")
        if indices is not None:
            num_samples = constraint.spec.table_shape[0]
            bad = indices[(indices < 0) | (indices >= num_samples)]
            if bad.numel():
                raise IndexError(
                    f"constraint '{name}': index {int(bad[0])} out of range for "
                    f"num_samples={num_samples}"
                )


def check_state(
    problem: ConstrainedProblem, state: object
) -> tuple[Tensor, list[tuple[str, Constraint, Tensor, Tensor | None]]]:
    """Validates what a closure returned against the problem's declarations.

    Returns:
        The objective and, per constraint in declaration order, its value and indices.

    Raises:
        TypeError, ValueError, IndexError: naming the constraint and what is wrong.
    """
    if not isinstance(state, ProblemState):
        raise TypeError(f"the closure must return a ProblemState, got {type(state).__name__}")
    objective = state.objective
    if not isinstance(objective, Tensor):
        raise TypeError(f"objective must be a tensor, got {type(objective).__name__}")
    if objective.ndim != 0:
        raise ValueError(f"objective must be a scalar, got shape {_describe_shape(objective)}")
    if not isinstance(state.constraints, Mapping):
        raise TypeError(
            f"ProblemState.constraints must be a mapping, got {type(state.constraints).__name__}"
        )
    declared = dict(problem.constraint_items())
    unknown = [name for name in state.constraints if name not in declared]
    if unknown:
        raise ValueError(
            f"the closure returned undeclared constraint(s) {unknown}; declared: {list(declared)}"
        )
    checked = []
    for name, constraint in declared.items():
        if name not in state.constraints:
            raise ValueError(f"the closure returned no value for constraint '{name}'")
        value, indices = _unpack(name, constraint, state.constraints[name])
        checked.append((name, constraint, value, indices))

    # One host synchronisation for every finiteness and range check together: a sum is
    # finite if every term is (an overflowing sum only sends us to the detailed check).
    total = objective.detach().sum()
    ranges = []
    for _, constraint, value, indices in checked:
        total = total + value.detach().sum().to(total.device, total.dtype)
        if indices is not None and indices.numel():
            ranges.append(indices.min() >= 0)
            ranges.append(indices.max() < constraint.spec.table_shape[0])
    flags = torch.isfinite(total)
    if ranges:
        flags = torch.stack([flags, *(flag.to(flags.device) for flag in ranges)]).all()
    if not bool(flags):
        _raise_for_bad_values(objective, checked)
    return objective, checked


def _term(constraint: Constraint, standard: Tensor, indices: Tensor | None, undo: UndoLog) -> Term:
    spec = constraint.spec
    multiplier = constraint.multiplier
    assert multiplier is not None
    slack = constraint.slack
    seen = constraint.slack_seen
    if indices is None:
        if slack is not None and seen is not None and not bool(seen):
            undo.save(slack.data)
            undo.save(seen)
            with torch.no_grad():
                slack.copy_(lag.initial_slack(standard.detach(), spec.slack_margin))
                seen.fill_(True)
        residual = standard if slack is None else lag.slack_residual(standard, slack)
        # A copy: the residual may be a parameter itself, which the primal step changes.
        return Term(
            constraint, residual, None, None, None,
            multiplier.detach(), None, residual.detach().clone(),
        )  # fmt: skip

    rows, inverse = torch.unique(indices.long(), sorted=True, return_inverse=True)
    slack_rows = None
    residual = standard
    if slack is not None and seen is not None:
        stored = slack.detach()[rows]
        undo.save(slack.data, rows, stored)
        first_values = torch.empty_like(stored).index_copy_(0, inverse, standard.detach())
        seen_rows = seen[rows].reshape((-1,) + (1,) * len(spec.shape))
        initial = lag.initial_slack(first_values, spec.slack_margin)
        slack_rows = torch.where(seen_rows, stored, initial).requires_grad_()
        undo.save(seen, rows)
        seen[rows] = True
        residual = lag.slack_residual(standard, slack_rows[inverse])
    dual_grad = torch.zeros(
        (rows.shape[0], *spec.shape), dtype=residual.dtype, device=residual.device
    ).index_add_(0, inverse, residual.detach())
    return Term(
        constraint, residual, indices, rows, inverse,
        multiplier.detach()[rows], slack_rows, dual_grad,
    )  # fmt: skip


def evaluate(
    problem: ConstrainedProblem,
    closure: Callable[[], ProblemState],
    undo: UndoLog,
    expected_indices: Mapping[str, Tensor | None] | None = None,
) -> Evaluation:
    """Calls the closure, validates its result and forms every constraint's residual.

    Slacks seen for the first time are initialised here; the undo log records what that
    changed, so that a failing step can put it back.

    Args:
        problem: The problem being solved.
        closure: Re-evaluates the problem on the current batch.
        undo: Collects the state this evaluation changes.
        expected_indices: Indices that every indexed constraint must repeat (the batch of an
            earlier evaluation within the same step).
    """
    with torch.enable_grad():
        state = closure()
    objective, checked = check_state(problem, state)
    if expected_indices is not None:
        for name, _, _, indices in checked:
            previous = expected_indices[name]
            if indices is not None and previous is not None and not torch.equal(indices, previous):
                raise ValueError(
                    f"constraint '{name}': the closure returned other indices on its second call; "
                    "both evaluations of one step must use the same batch"
                )
    terms = []
    penalties = []
    violations = []
    for _, constraint, value, indices in checked:
        spec = constraint.spec
        standard = lag.standard_form(value, spec)
        violations.append(lag.violation(standard.detach(), spec))
        if spec.penalty_weight is None:
            terms.append(_term(constraint, standard, indices, undo))
        else:
            batch_size = None if indices is None else indices.shape[0]
            penalties.append(lag.penalty_term(standard, spec, batch_size))
    return Evaluation(objective, terms, penalties, violations)
