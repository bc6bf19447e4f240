"""Stepping stock ``torch.optim`` optimizers on a few rows of large tables.

An indexed constraint owns tables with one row per sample (multipliers, slacks) that a
stock optimizer would update whole at every step. Instead, for the duration of one
``optimizer.step()`` the table parameter is made to hold only the rows of the batch, with
their gradient and their rows of the optimizer's state; afterwards the rows are written
back. The optimizer never sees the rest of the table, so a step costs O(batch).

This works for optimizers whose state is elementwise (:data:`ELEMENTWISE_OPTIMIZERS`):
their per-parameter scalars (Adam's step count) are then shared by the rows, which gives
the "lazy" variant of the method. State the optimizer creates on its first step starts at
zero for the rows not yet seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lagrange_opt.maths.lagrangian import project_nonnegative_
from lagrange_opt.updates.nupi import NuPI

ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.Rprop,
    NuPI,
)
"""The optimizers whose state has one entry per parameter entry (plus scalars): a table's
rows can be stepped alone. Others (Adafactor's factored moments) cannot."""


class RowView(NamedTuple):
    """Rows of a table to step.

    Attributes:
        table: The full parameter, as registered in the optimizer.
        rows: Sorted unique row indices.
        values: The rows' current values; the step updates this tensor in place.
        grad: Their gradient, the shape of ``values``.
        project: Whether to project the stepped rows onto ``>= 0``.
    """

    table: nn.Parameter
    rows: Tensor
    values: Tensor
    grad: Tensor
    project: bool


State = dict[str, Any]


def _copy_state(state: State) -> State:
    return {
        key: value.clone() if isinstance(value, Tensor) else value for key, value in state.items()
    }


def gather_state(state: State, rows: Tensor, table_shape: torch.Size) -> State:
    """The rows ``rows`` of a table's state (copies); scalars copied whole."""
    return {
        key: (value[rows] if value.shape == table_shape else value.clone())
        if isinstance(value, Tensor)
        else value
        for key, value in state.items()
    }


def _check_row_state(name: str, row_state: State, row_shape: torch.Size) -> None:
    for key, value in row_state.items():
        if isinstance(value, Tensor) and value.ndim != 0 and value.shape != row_shape:
            raise TypeError(
                f"{name} keeps state '{key}' of shape {tuple(value.shape)} for rows of shape "
                f"{tuple(row_shape)}: indexed constraints need an optimizer with elementwise "
                "state, such as SGD or Adam"
            )


def scatter_state(
    table_state: State, row_state: State, rows: Tensor, table_shape: torch.Size
) -> State:
    """A table's state with ``row_state`` written in its rows ``rows`` (the table's tensors
    are written in place; scalars are replaced in a new dict)."""
    merged = dict(table_state)
    for key, value in row_state.items():
        if not isinstance(value, Tensor) or value.ndim == 0:
            merged[key] = value
            continue
        table = merged.get(key)
        if table is None:
            table = value.new_zeros(table_shape)
        table.index_copy_(0, rows, value)
        merged[key] = table
    return merged


class StateUndo:
    """What puts an optimizer's state back as it was before one committed step.

    The stock step worked on copies of the dense parameters' states: the originals are
    kept. The functional step (:mod:`.fast_optimizers`) replaced the state's tensors with
    new ones: the old ones are kept. A table's state was written in the batch's rows only: the
    rows' old values are kept.
    """

    def __init__(self, state: dict[Any, State]) -> None:
        self._state = state
        self._params: list[tuple[Tensor, State | None]] = []
        self._tables: list[tuple[Tensor, State, Tensor, State]] = []
        self._entries: list[tuple[State, State]] = []

    def keep_entries(self, param_state: State, old: State) -> None:
        """Remembers a parameter's state whose entries ``old`` are being replaced."""
        self._entries.append((param_state, old))

    def keep_param(self, param: Tensor, original: State | None) -> None:
        self._params.append((param, original))

    def keep_rows(self, table: Tensor, table_state: State, rows: Tensor, before: State) -> None:
        self._tables.append((table, table_state, rows, before))

    def restore(self) -> None:
        for param_state, old in reversed(self._entries):
            param_state.update(old)
        state = self._state
        for param, original in reversed(self._params):
            state.pop(param, None)
            if original is not None:
                state[param] = original
        for table, table_state, rows, before in reversed(self._tables):
            with torch.no_grad():
                for key, value in before.items():
                    full = table_state.get(key)
                    if isinstance(value, Tensor) and value.ndim != 0 and isinstance(full, Tensor):
                        full.index_copy_(0, rows, value)
            state.pop(table, None)
            if table_state:
                state[table] = table_state


def step_optimizer(
    optimizer: torch.optim.Optimizer, views: Sequence[RowView], commit_state: bool
) -> StateUndo | None:
    """Calls ``optimizer.step()`` with each viewed table reduced to its rows.

    The step works on copies of the states it changes, and keeps a copy of the dense
    parameters it steps: if it raises (an optimizer hook, a state that is not elementwise),
    the parameters, their states, the tables and their states are as they were.

    Args:
        optimizer: A stock optimizer whose parameters' ``.grad`` are set, except the viewed
            tables, whose gradients come with the views.
        views: The tables to step row by row.
        commit_state: If False, the optimizer's state is left as it was: the step moves the
            parameters only (used for extrapolation).

    Returns:
        With ``commit_state``, what puts the optimizer's state back (a later phase of the
        step may fail); else ``None``.
    """
    state = optimizer.state
    swapped: list[tuple[RowView, Tensor, State]] = []
    kept: list[tuple[Tensor, State | None]] = []
    moved: list[tuple[Tensor, Tensor]] = []
    row_states: list[State] | None = None
    try:
        for view in views:
            table = view.table
            full = table.data
            table_state: State = state.pop(table, None) or {}
            table.data = view.values
            table.grad = view.grad
            swapped.append((view, full, table_state))
            if table_state:
                state[table] = gather_state(table_state, view.rows, full.shape)
        viewed = {id(view.table) for view in views}
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None or id(param) in viewed:
                    continue
                original = state.pop(param, None)
                kept.append((param, original))
                if original:
                    state[param] = _copy_state(original)
        moved = [(param, param.detach().clone()) for param, _ in kept]
        optimizer.step()
        stepped = [state.get(view.table) or {} for view in views]
        for view, row_state in zip(views, stepped):
            _check_row_state(type(optimizer).__name__, row_state, view.values.shape)
        row_states = stepped
    finally:
        if row_states is None:
            with torch.no_grad():
                for param, value in moved:
                    param.copy_(value)
        committed = commit_state and row_states is not None
        undo = StateUndo(state) if committed else None
        for param, original in kept:
            if undo is not None:
                undo.keep_param(param, original)
                continue
            state.pop(param, None)
            if original is not None:
                state[param] = original
        for index, (view, full, table_state) in enumerate(swapped):
            table = view.table
            values = table.data
            state.pop(table, None)
            table.data = full
            table.grad = None
            if table_state:
                state[table] = table_state
            if row_states is None:
                continue
            if view.project:
                project_nonnegative_(values)
            with torch.no_grad():
                full.index_copy_(0, view.rows, values)
            if undo is not None and row_states[index]:
                undo.keep_rows(
                    table, table_state, view.rows, gather_state(table_state, view.rows, full.shape)
                )
                state[table] = scatter_state(table_state, row_states[index], view.rows, full.shape)
    return undo
