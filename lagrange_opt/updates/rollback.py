"""What a step may change, saved at its start and put back if any phase of it raises.

A step changes the parameters, multipliers and slacks (dense ones whole, indexed tables
in the batch's rows), the optimizers' states, the running statistics of normalisation
layers and the random number generators. :class:`Rollback` holds what puts each back:

- the random number generators' states and the normalisation layers' running statistics,
  copied when the step starts (both are small);
- the undo log of the evaluations (slacks set on first observation);
- a :class:`SavedPoint` of the parameters and rows, taken before the first update (the
  extra-gradient method steps from it anyway; the other methods take it only where user
  code, a stock optimizer's ``step()``, runs in the update);
- what puts the optimizers' states back after a committed stock ``optimizer.step()``
  (:class:`.rows.StateUndo`).
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence

import torch
from torch import Tensor

from lagrange_opt.evaluation.finiteness import finite_numbers
from lagrange_opt.evaluation.randomness import Buffers, rng_state, set_rng_state
from lagrange_opt.evaluation.slacks import UndoLog
from lagrange_opt.evaluation.terms import Evaluation, Term
from lagrange_opt.updates.rows import StateUndo

Rows = list[tuple[Tensor, Tensor, Tensor]]
"""Indexed rows: (table, row indices, their values)."""


class SavedPoint:
    """A copy of the dense parameters and of the indexed rows a step reads.

    The copies' memory is reused from step to step.
    """

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.copies: list[Tensor] = []
        self.rows: Rows = []

    def save(self, params: list[Tensor], rows: Rows) -> None:
        """Copies ``params``; ``rows`` already hold copies of their values."""
        copies = self.copies
        if len(copies) != len(params) or any(
            copy.shape != param.shape or copy.dtype != param.dtype or copy.device != param.device
            for copy, param in zip(copies, params)
        ):
            self.copies = [
                torch.empty_like(param, memory_format=torch.preserve_format) for param in params
            ]
        with torch.no_grad():
            if params:
                torch._foreach_copy_(self.copies, params)
        self.params = params
        self.rows = rows

    def restore(self, skip: Container[int] = ()) -> None:
        """Copies the saved point back, except into the parameters whose ids are in ``skip``."""
        targets, sources = self.params, self.copies
        if skip:
            kept = [index for index, param in enumerate(targets) if id(param) not in skip]
            targets, sources = [targets[i] for i in kept], [sources[i] for i in kept]
        with torch.no_grad():
            if targets:
                torch._foreach_copy_(targets, sources)
        self.restore_rows()

    def restore_rows(self) -> None:
        """Copies the saved rows back, leaving the dense parameters where they are."""
        with torch.no_grad():
            for table, index, values in self.rows:
                table.index_copy_(0, index, values)

    def add_rows(self, rows: Rows) -> None:
        """Saves more rows (holding copies of their values) beside those saved already."""
        self.rows = [*self.rows, *rows]

    def origins(self) -> dict[int, Tensor]:
        """Each saved parameter's copy, by the parameter's ``id``."""
        return {id(param): copy for param, copy in zip(self.params, self.copies)}


def evaluation_rows(evaluation: Evaluation, multipliers: bool = True) -> Rows:
    """The indexed rows an update along ``evaluation`` moves, with their values read."""
    rows: Rows = []
    for term in evaluation.terms:
        if multipliers and term.indices is not None:
            rows.append((term.multiplier.data, term.indices, term.multipliers_read))
        if term.slack is not None:
            rows.append((term.slack.table.data, term.slack.rows, term.slack.values.detach()))
    return rows


def current_rows(terms: Sequence[Term]) -> Rows:
    """The indexed rows an update along ``terms`` moves, with their values read now (the
    terms may come from an earlier step, whose reads are stale)."""
    rows: Rows = []
    for term in terms:
        if term.indices is not None:
            table = term.multiplier.data
            rows.append((table, term.indices, table.index_select(0, term.indices)))
        if term.slack is not None:
            table = term.slack.table.data
            rows.append((table, term.slack.rows, table.index_select(0, term.slack.rows)))
    return rows


def all_finite(tensors: Sequence[Tensor], numbers: Sequence[Tensor] = ()) -> bool:
    """Whether every entry of ``tensors`` and every one of ``numbers`` may be finite: one
    reduction call per device (:func:`..evaluation.finiteness.finite_numbers`) and one host
    synchronisation per device.

    What a step wrote is checked before it is committed, as the evaluation's gradients are
    (:func:`..evaluation.term_checks.check_finite`, whose number can join here as one of
    ``numbers``). A number that overflows says "not finite" where every entry is:
    :func:`first_non_finite_tensor` then searches. Call it under ``torch.no_grad()`` for
    tensors that record gradients (parameters).

    One call per list rather than a sum per block is what a GPU pays for (a launch per
    call); on the CPU the norm costs about twice the sums (90 us against 48 us for a
    784-512-512-10 network's 670k float32 parameters, one thread).
    """
    by_device: dict[torch.device, tuple[list[Tensor], list[Tensor]]] = {}
    for tensor in tensors:
        by_device.setdefault(tensor.device, ([], []))[0].append(tensor)
    for number in numbers:
        by_device.setdefault(number.device, ([], []))[1].append(number)
    # torch.stack promotes mixed dtypes (float16 parameters, float32 multipliers).
    return all(
        math.isfinite(torch.stack([*finite_numbers(group), *extra]).sum().item())
        for group, extra in by_device.values()
    )


def first_non_finite_tensor(tensors: Sequence[Tensor]) -> int | None:
    """The index of the first of ``tensors`` with a NaN or infinite entry, or ``None``
    (the detailed search, after :func:`all_finite` said no)."""
    for index, tensor in enumerate(tensors):
        if not bool(torch.isfinite(tensor).all()):
            return index
    return None


class Rollback:
    """Everything one step may change, put back by :meth:`restore`.

    Args:
        point: The optimizer's reusable :class:`SavedPoint`.
        statistics: The running statistics the closure may update.
    """

    def __init__(self, point: SavedPoint, statistics: Sequence[Tensor]) -> None:
        self.undo = UndoLog()
        self.rng = rng_state()
        self.statistics = Buffers(statistics)
        self._point = point
        self._saved = False
        self._states: list[StateUndo] = []

    def keep(self, undo: StateUndo | None) -> None:
        """Remembers what puts an optimizer's state back after a committed step."""
        if undo is not None:
            self._states.append(undo)

    def save_point(self, params: list[Tensor], rows: Rows) -> SavedPoint:
        """Saves the parameters and rows before the step's first update."""
        self._point.save(params, rows)
        self._saved = True
        return self._point

    def rewind(self) -> None:
        """Puts the random number generators and the running statistics back."""
        self.statistics.restore()
        set_rng_state(self.rng)

    def restore(self) -> None:
        """Puts everything back as it was when the step started."""
        for undo in reversed(self._states):
            undo.restore()
        if self._saved:
            self._point.restore()
        self.undo.restore()
        self.rewind()
