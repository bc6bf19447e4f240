"""Stepping stock ``torch.optim`` optimizers on a few rows of large tables.

An indexed constraint owns tables with one row per sample (multipliers, slacks) that a
stock optimizer would update whole at every step. Instead, for the duration of one
``optimizer.step()`` the table parameter is made to hold only the rows of the batch, with
their gradient and their rows of the optimizer's state; afterwards the rows are written
back. The optimizer never sees the rest of the table, so a step costs O(batch).

This works for optimizers whose state is elementwise (SGD, Adam, AdamW, Adamax, NAdam,
RAdam, RMSprop, Adagrad): their per-parameter scalars (Adam's step count) are then shared by
the rows, which gives the "lazy" variant of the method. State the optimizer creates on its
first step starts at zero for the rows not yet seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._lagrangian import project_nonnegative_


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


def _gather_state(state: State, rows: Tensor, table_shape: torch.Size) -> State:
    return {
        key: (value[rows] if value.shape == table_shape else value.clone())
        if isinstance(value, Tensor)
        else value
        for key, value in state.items()
    }


def _scatter_state(
    name: str,
    table_state: State,
    row_state: State,
    rows: Tensor,
    table_shape: torch.Size,
    row_shape: torch.Size,
) -> State:
    merged = dict(table_state)
    for key, value in row_state.items():
        if not isinstance(value, Tensor) or value.ndim == 0:
            merged[key] = value
            continue
        if value.shape != row_shape:
            raise TypeError(
                f"{name} keeps state '{key}' of shape {tuple(value.shape)} for rows of shape "
                f"{tuple(row_shape)}: indexed constraints need an optimizer with elementwise "
                "state, such as SGD or Adam"
            )
        table = merged.get(key)
        if table is None:
            table = value.new_zeros(table_shape)
        table.index_copy_(0, rows, value)
        merged[key] = table
    return merged


def step_optimizer(
    optimizer: torch.optim.Optimizer, views: Sequence[RowView], commit_state: bool
) -> None:
    """Calls ``optimizer.step()`` with each viewed table reduced to its rows.

    Args:
        optimizer: A stock optimizer whose parameters' ``.grad`` are set, except the viewed
            tables, whose gradients come with the views.
        views: The tables to step row by row.
        commit_state: If False, the optimizer's state is left as it was: the step moves the
            parameters only (used for extrapolation).
    """
    state = optimizer.state
    name = type(optimizer).__name__
    swapped: list[tuple[RowView, Tensor, State]] = []
    kept: list[tuple[Tensor, State | None]] = []
    stepped = False
    try:
        for view in views:
            table = view.table
            full = table.data
            table_state: State = state.pop(table, None) or {}
            table.data = view.values
            table.grad = view.grad
            swapped.append((view, full, table_state))
            if table_state:
                state[table] = _gather_state(table_state, view.rows, full.shape)
        if not commit_state:
            viewed = {id(view.table) for view in views}
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None or id(param) in viewed:
                        continue
                    original = state.pop(param, None)
                    kept.append((param, original))
                    if original:
                        state[param] = _copy_state(original)
        optimizer.step()
        stepped = True
    finally:
        for param, original in kept:
            state.pop(param, None)
            if original is not None:
                state[param] = original
        for view, full, table_state in swapped:
            table = view.table
            values = table.data
            row_state: State = state.pop(table, None) or {}
            table.data = full
            table.grad = None
            if table_state:
                state[table] = table_state
            if not stepped:
                continue
            if view.project:
                project_nonnegative_(values)
            with torch.no_grad():
                full.index_copy_(0, view.rows, values)
            if commit_state and row_state:
                state[table] = _scatter_state(
                    name, table_state, row_state, view.rows, full.shape, values.shape
                )
