"""The slack variables an evaluation reads and writes: set on first observation (or again
after decaying to 0), minimised in closed form under the augmented Lagrangian, read by rows
for indexed constraints; every write recorded in the :class:`UndoLog` that a failed step
puts back."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from lagrange_opt.maths import augmented as aug
from lagrange_opt.maths import lagrangian as lag
from lagrange_opt.problem.constraints import Constraint


class UndoLog:
    """Saved copies of tensors (or of some of their rows) that a failed step puts back."""

    def __init__(self) -> None:
        self._entries: list[tuple[Tensor, Tensor | None, Tensor]] = []

    def save(self, target: Tensor, rows: Tensor | None = None, saved: Tensor | None = None) -> None:
        """Remembers ``target`` (or ``target[rows]``); ``saved`` is a copy already taken."""
        if saved is None:
            saved = target.clone() if rows is None else target.index_select(0, rows)
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


class SlackRows(NamedTuple):
    """The rows of an indexed slack table that one evaluation reads.

    Attributes:
        table: The slack parameter.
        rows: Sorted unique rows of the batch.
        inverse: For each batch entry, its position in ``rows``.
        values: The rows' values, a leaf: after backward its gradient is the rows' gradient.
    """

    table: nn.Parameter
    rows: Tensor
    inverse: Tensor
    values: Tensor


def write_closed_form_slack(
    constraint: Constraint,
    standard: Tensor,
    multipliers: Tensor,
    penalty: Tensor | float,
    indices: Tensor | None,
    undo: UndoLog,
) -> None:
    """Stores the slack minimised in closed form, so that it is reported as a variable."""
    slack, seen = constraint.slack, constraint.slack_seen
    assert slack is not None and seen is not None
    values = aug.closed_form_slack(standard, multipliers, penalty)
    with torch.no_grad():
        if indices is None:
            undo.save(slack.data)
            undo.save(seen)
            slack.copy_(values)
            seen.fill_(True)
            return
        undo.save(slack.data, indices)
        undo.save(seen, indices)
        slack.index_copy_(0, indices, values)
        seen.index_fill_(0, indices, True)


def _changes_on_refresh(stored: Tensor, seen: Tensor, standard: Tensor) -> bool:
    """Whether :func:`..maths.lagrangian.refreshed_slack` changes a dense slack on the CPU, where
    reading a flag costs no synchronisation: an entry never observed, or one with
    ``s**2 == 0`` where ``g < 0`` (where ``g >= 0`` it stays 0)."""
    if not bool(seen):
        return True
    square = stored.square()
    if bool(square.all()):  # the usual case, checked first: no square is 0
        return False
    return bool(((square == 0) & (standard < 0)).any())


def dense_slack_residual(
    constraint: Constraint, standard: Tensor, detached: Tensor, undo: UndoLog
) -> Tensor:
    """``g + s**2`` with the slack set on first observation, or again where its square is 0
    (:func:`..maths.lagrangian.refreshed_slack`); ``detached`` is ``g`` in the slack's dtype."""
    slack, seen = constraint.slack, constraint.slack_seen
    assert slack is not None and seen is not None
    stored = slack.detach()
    # Off the CPU, deciding whether to write would be a host synchronisation: the slack is
    # always written (a dense slack is small).
    if stored.device.type != "cpu" or _changes_on_refresh(stored, seen, detached):
        values = lag.refreshed_slack(stored, seen, detached, constraint.spec.slack_margin)
        undo.save(slack.data)
        undo.save(seen)
        with torch.no_grad():
            slack.copy_(values)
            seen.fill_(True)
    return lag.slack_residual(standard, slack)


def indexed_slack_residual(
    constraint: Constraint,
    standard: Tensor,
    detached: Tensor,
    indices: Tensor,
    undo: UndoLog,
    local: slice | None = None,
) -> tuple[Tensor, SlackRows]:
    """The batch's ``g + s**2``, with the rows' slacks set as in :func:`dense_slack_residual`
    (O(batch): only the batch's rows are read and written).

    With a process group, ``indices`` and ``detached`` hold every rank's batch, so that every
    rank sets the same rows alike, and ``standard`` (with its graph) this rank's entries,
    ``local`` within them: the output is this rank's.
    """
    slack, seen = constraint.slack, constraint.slack_seen
    assert slack is not None and seen is not None
    spec = constraint.spec
    rows, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    stored = slack.detach().index_select(0, rows)
    seen_rows = seen.index_select(0, rows)
    undo.save(slack.data, rows, stored)
    undo.save(seen, rows, seen_rows)
    # Per row, g of one of its batch entries (a repeated sample has one value).
    row_values = torch.empty_like(stored).index_copy_(0, inverse, detached)
    slack_values = lag.refreshed_slack(
        stored, seen_rows, row_values, spec.slack_margin
    ).requires_grad_()
    seen.index_fill_(0, rows, True)
    # The table holds the point the step starts from, new rows' initial values included.
    slack.data.index_copy_(0, rows, slack_values.detach())
    entries = inverse if local is None else inverse[local]
    output = lag.slack_residual(standard, slack_values[entries])
    return output, SlackRows(slack, rows, inverse, slack_values)
