"""Torch's own Adam and AdamW stepped through their functional API, without ``step()``.

The stock path (:func:`._rows.step_optimizer`) calls ``optimizer.step()``, which is user
code as far as a method's step is concerned (hooks, wrappers, subclasses): it may raise
half-way, so the step hands it fresh clones of the states it changes and keeps the
originals. For an unmodified ``torch.optim.Adam`` or ``torch.optim.AdamW`` the update is
known: this module calls the same function ``step()`` calls, ``torch.optim.adam.adam``,
with the same arguments, so the iterates are bitwise those of the stock path, and

- an extrapolation (the state left as it was) steps from copies of the state taken into
  scratch buffers that are reused from step to step: no allocation, no clone;
- a committed step updates the state in place, as ``step()`` does, after copying it into
  reusable undo buffers (what puts it back if a later phase of the method's step fails);
- the per-call cost of ``step()`` (profiler hooks, the graph-capture check, the lazy
  state initialisation) is not paid.

Anything this module does not recognise takes the stock path: another optimizer type (a
subclass too), a wrapped ``step()`` (a learning-rate scheduler), step hooks, a tensor
learning rate or betas, the ``capturable``, ``fused`` or ``differentiable`` options, a
gradient scaler's attributes, sparse gradients, and parameters whose state does not exist
yet (the first step creates it through ``step()``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import optimizer as optimizer_module
from torch.optim.adam import adam

from ._lagrangian import project_nonnegative_
from ._rows import RowView, State, StateUndo, gather_state, scatter_state

FAST_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW)
"""The optimizer types stepped functionally (exactly these types, not subclasses)."""

_MOMENTS = ("exp_avg", "exp_avg_sq")


def copy_all(targets: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """Copies each source into its target: one fused call where torch has it.

    ``torch._foreach_copy_`` (private) saves a dispatch per tensor; a torch without it gets
    one public ``copy_`` per tensor.
    """
    if not targets:
        return
    foreach_copy = getattr(torch, "_foreach_copy_", None)
    if foreach_copy is not None:
        foreach_copy(list(targets), list(sources))
        return
    for target, source in zip(targets, sources):
        target.copy_(source)


class Buffers:
    """Tensors reused from call to call to hold copies (no allocation once warm)."""

    def __init__(self) -> None:
        self._tensors: list[Tensor] = []

    def copies_of(self, sources: Sequence[Tensor]) -> list[Tensor]:
        """Copies of ``sources`` in this pool's tensors (reallocated where they differ)."""
        tensors = self._tensors
        if len(tensors) != len(sources) or any(
            t.shape != s.shape or t.dtype != s.dtype or t.device != s.device
            for t, s in zip(tensors, sources)
        ):
            tensors = [torch.empty_like(s, memory_format=torch.preserve_format) for s in sources]
            self._tensors = tensors
        copy_all(tensors, sources)
        return list(tensors)


class _Pools:
    """An optimizer's two pools: the extrapolation's scratch state and the committed
    step's undo copy (a method commits each optimizer once per step)."""

    def __init__(self) -> None:
        self.scratch = Buffers()
        self.undo = Buffers()


_POOLS: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Pools] = weakref.WeakKeyDictionary()


def _pools(optimizer: torch.optim.Optimizer) -> _Pools:
    pools = _POOLS.get(optimizer)
    if pools is None:
        pools = _POOLS[optimizer] = _Pools()
    return pools


def is_fast(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is a stock Adam or AdamW whose ``step()`` this module can do.

    A per-call check: hooks, wrappers and options may change between steps.
    """
    if type(optimizer) not in FAST_OPTIMIZERS:
        return False
    attributes = vars(optimizer)
    # A wrapped step() (a scheduler records its calls), or a gradient scaler's inputs to
    # the fused kernel: step() must run.
    if "step" in attributes or "grad_scale" in attributes or "found_inf" in attributes:
        return False
    if (
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or optimizer_module._global_optimizer_pre_hooks
        or optimizer_module._global_optimizer_post_hooks
    ):
        return False
    for group in optimizer.param_groups:
        if group["capturable"] or group["fused"] or group["differentiable"]:
            return False
        if not isinstance(group["lr"], float | int):
            return False
        if not all(isinstance(beta, float | int) for beta in group["betas"]):
            return False
    return True


class _Group:
    """One param group's tensors, in the order of ``adam``'s arguments."""

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.states: list[State] = []


def _collect(
    optimizer: torch.optim.Optimizer, views: Sequence[RowView]
) -> tuple[list[_Group], list[State]] | None:
    """Each group's dense parameters with a gradient, and the viewed tables' states.

    Returns:
        ``None`` if a parameter has no state yet or a gradient is sparse (the stock path
        then creates the state, or raises as ``step()`` does).
    """
    state = optimizer.state
    keys = ("step", *_MOMENTS)
    viewed = {id(view.table) for view in views}
    groups = []
    for group in optimizer.param_groups:
        collected = _Group()
        needed = (*keys, "max_exp_avg_sq") if group["amsgrad"] else keys
        for param in group["params"]:
            grad = param.grad
            if grad is None or id(param) in viewed:
                continue
            param_state = state.get(param)
            if not param_state or any(key not in param_state for key in needed):
                return None
            if grad.is_sparse:
                return None
            collected.params.append(param)
            collected.grads.append(grad)
            collected.states.append(param_state)
        groups.append(collected)
    table_states = []
    for view in views:
        table_state = state.get(view.table)
        if not table_state:
            return None
        table_states.append(table_state)
    return groups, table_states


def _keys(group: dict[str, Any]) -> tuple[str, ...]:
    """The state tensors ``adam`` reads and writes: moments, then the step count."""
    return (*_MOMENTS, "max_exp_avg_sq", "step") if group["amsgrad"] else (*_MOMENTS, "step")


def _call_adam(
    group: dict[str, Any], params: list[Tensor], grads: list[Tensor], state: list[list[Tensor]]
) -> None:
    """``torch.optim.adam.adam`` with the arguments ``Adam.step()`` passes it."""
    if not params:
        return
    beta1, beta2 = group["betas"]
    amsgrad = group["amsgrad"]
    exp_avgs, exp_avg_sqs = state[0], state[1]
    max_exp_avg_sqs = state[2] if amsgrad else []
    steps = state[-1]
    adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
        foreach=group["foreach"], capturable=False, differentiable=False, fused=None,
        grad_scale=None, found_inf=None, has_complex=any(torch.is_complex(p) for p in params),
        decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=amsgrad, beta1=beta1,
        beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
        maximize=group["maximize"],
    )  # fmt: skip


class Plan:
    """A functional step, ready: each group's dense parameters and the viewed tables'
    states, found by :func:`plan`."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        views: Sequence[RowView],
        groups: list[_Group],
        table_states: list[State],
    ) -> None:
        self._optimizer = optimizer
        self._views = views
        self._groups = groups
        self._table_states = table_states

    def step(self, commit_state: bool) -> StateUndo | None:
        """What :func:`._rows.step_optimizer` does, functionally.

        Runs under the caller's ``torch.no_grad()``. The dense parameters and the viewed
        tables' rows move; the viewed rows are projected where their view says so.

        Args:
            commit_state: If False, the optimizer's state is left as it was
                (extrapolation).

        Returns:
            With ``commit_state``, what puts the optimizer's state back; else ``None``.
        """
        optimizer = self._optimizer
        pools = _pools(optimizer)
        # Every group's dense state, flattened, copied in one call: into the scratch that
        # the extrapolation steps, or into the undo copy before the state is stepped in
        # place.
        layout = [_keys(group) for group in optimizer.param_groups]
        originals = [
            param_state[key]
            for keys, collected in zip(layout, self._groups)
            for key in keys
            for param_state in collected.states
        ]
        copies = (pools.undo if commit_state else pools.scratch).copies_of(originals)
        stepped = originals if commit_state else copies
        undo = StateUndo(optimizer.state) if commit_state else None
        if undo is not None:
            undo.keep_copies(originals, copies)
        tables = {
            id(view.table): (view, table_state)
            for view, table_state in zip(self._views, self._table_states)
        }
        position = 0
        for group, keys, collected in zip(optimizer.param_groups, layout, self._groups):
            count = len(collected.params)
            state = []
            for _ in keys:
                state.append(stepped[position : position + count])
                position += count
            params, grads = list(collected.params), list(collected.grads)
            rows: list[tuple[RowView, State, State]] = []
            for param in group["params"]:
                entry = tables.get(id(param))
                if entry is None:
                    continue
                view, table_state = entry
                row_state = gather_state(table_state, view.rows, view.table.shape)
                rows.append((view, table_state, row_state))
                params.append(view.values)
                grads.append(view.grad)
                for index, key in enumerate(keys):
                    state[index].append(row_state[key])
            _call_adam(group, params, grads, state)
            for view, table_state, row_state in rows:
                _write_rows(optimizer, view, table_state, row_state, undo)
        return undo


def plan(optimizer: torch.optim.Optimizer, views: Sequence[RowView]) -> Plan | None:
    """The functional step of ``optimizer`` on its parameters with a gradient and on
    ``views``, or ``None``: take the stock path (:func:`is_fast` refused the optimizer, a
    parameter's state does not exist yet, or a gradient is sparse)."""
    if not is_fast(optimizer):
        return None
    collected = _collect(optimizer, views)
    if collected is None:
        return None
    return Plan(optimizer, views, *collected)


def _write_rows(
    optimizer: torch.optim.Optimizer,
    view: RowView,
    table_state: State,
    row_state: State,
    undo: StateUndo | None,
) -> None:
    """Writes a view's stepped rows into its table and, when committing, their state."""
    values = view.values
    if view.project:
        project_nonnegative_(values)
    full = view.table.data
    full.index_copy_(0, view.rows, values)
    if undo is None:
        return
    table = view.table
    undo.keep_rows(table, table_state, view.rows, gather_state(table_state, view.rows, full.shape))
    optimizer.state[table] = scatter_state(table_state, row_state, view.rows, full.shape)
