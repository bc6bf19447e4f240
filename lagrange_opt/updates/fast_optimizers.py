"""Torch's own Adam and AdamW stepped through their functional API, without ``step()``.

The stock path (:func:`.rows.step_optimizer`) calls ``optimizer.step()``, which is user
code as far as a method's step is concerned (hooks, wrappers, subclasses): it may raise
half-way, so the step hands it fresh clones of the states it changes and keeps the
originals. For an unmodified ``torch.optim.Adam`` or ``torch.optim.AdamW`` the update is
known: this module computes what ``step()`` computes, with bitwise the same iterates, and

- an extrapolation (the state left as it was) writes the would-be moments into scratch
  tensors reused from step to step: the state is read, never copied or written;
- a committed step writes the new moments into spare tensors that then replace the
  state's; the old tensors, kept by the undo until the method's step ends, are the next
  commit's spares: no copy, no allocation;
- on the CPU, torch's single-tensor update is written out of place, operation for
  operation; with ``foreach=True``, with ``fused=True`` (one kernel for the whole update,
  on the CPU too) or off the CPU, the public ``torch.optim.adam.adam`` (what ``step()``
  calls, with the same options) steps the target tensors after the state is copied into
  them;
- the per-call cost of ``step()`` (profiler hooks, the graph-capture check, the lazy
  state initialisation) is not paid.

Anything this module does not recognise takes the stock path: another optimizer type (a
subclass too), a wrapped ``step()`` (a learning-rate scheduler), step hooks, a tensor
learning rate or betas, the ``capturable`` or ``differentiable`` options, a
gradient scaler's attributes, sparse gradients, and parameters whose state does not exist
yet (the first step creates it through ``step()``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import optimizer as optimizer_module
from torch.optim.adam import adam

from lagrange_opt.maths.lagrangian import project_nonnegative_
from lagrange_opt.updates.rows import RowView, State, StateUndo, gather_state, scatter_state

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


def add_all_(targets: Sequence[Tensor], tensors: Sequence[Tensor], alpha: float) -> None:
    """Adds ``alpha`` times each tensor to its target, in place: one fused call where
    torch has it.

    ``torch._foreach_add_`` (private) saves a dispatch per tensor (on a GPU, a kernel
    launch); a torch without it gets one public ``add_`` per tensor, with the same result.
    """
    if not targets:
        return
    foreach_add = getattr(torch, "_foreach_add_", None)
    if foreach_add is not None:
        foreach_add(list(targets), list(tensors), alpha=alpha)
        return
    for target, tensor in zip(targets, tensors):
        target.add_(tensor, alpha=alpha)


Buffers = dict[int, list[Tensor]]
"""Per parameter (by ``id``), tensors reused from step to step."""


class _Pools:
    """An optimizer's reused tensors: the extrapolation's moments (``scratch``), the
    committed step's new moments (``spare``: they become the state, and the old moments,
    kept to undo the step, the next step's spare) and the denominators."""

    def __init__(self) -> None:
        self.scratch: Buffers = {}
        self.spare: Buffers = {}
        self.denominators: dict[int, Tensor] = {}


_POOLS: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Pools] = weakref.WeakKeyDictionary()


def _pools(optimizer: torch.optim.Optimizer) -> _Pools:
    pools = _POOLS.get(optimizer)
    if pools is None:
        pools = _POOLS[optimizer] = _Pools()
    return pools


def _buffers(pool: Buffers, key: int, sources: Sequence[Tensor]) -> list[Tensor]:
    """``pool``'s tensors for ``key`` shaped like ``sources``, reallocated where they
    differ or where they are the sources themselves (a state put back by an undo).

    The tensors of one parameter's state are its moments, of its shape, dtype and
    device, and its step count: the first tensor stands for the others.
    """
    tensors = pool.get(key)
    if tensors is not None and len(tensors) == len(sources):
        first, source = tensors[0], sources[0]
        if (
            first.shape == source.shape
            and first.dtype == source.dtype
            and first.device == source.device
            and all(t is not s for t, s in zip(tensors, sources))
        ):
            return tensors
    tensors = [torch.empty_like(s, memory_format=torch.preserve_format) for s in sources]
    pool[key] = tensors
    return tensors


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
        if group["capturable"] or group["differentiable"]:
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


def _complete(param_state: State, keys: tuple[str, ...]) -> bool:
    """Whether a parameter's state holds every tensor ``keys`` names (a state loaded from
    another configuration, or a step count kept as a number, takes the stock path)."""
    return all(isinstance(param_state.get(key), Tensor) for key in keys)


def _collect(
    optimizer: torch.optim.Optimizer, views: Sequence[RowView]
) -> tuple[list[_Group], list[State]] | None:
    """Each group's dense parameters with a gradient, and the viewed tables' states.

    Returns:
        ``None`` if a parameter has no state yet (or not the state of its group's
        settings) or a gradient is sparse (the stock path then creates the state, or
        raises as ``step()`` does).
    """
    state = optimizer.state
    viewed = {id(view.table) for view in views}
    table_keys: dict[int, tuple[str, ...]] = {}
    groups = []
    for group in optimizer.param_groups:
        collected = _Group()
        keys = _keys(group)
        for param in group["params"]:
            grad = param.grad
            if id(param) in viewed:
                table_keys[id(param)] = keys
                continue
            if grad is None:
                continue
            param_state = state.get(param)
            if param_state is None or not _complete(param_state, keys) or grad.is_sparse:
                return None
            collected.params.append(param)
            collected.grads.append(grad)
            collected.states.append(param_state)
        groups.append(collected)
    table_states = []
    for view in views:
        table_state = state.get(view.table)
        if table_state is None or not _complete(table_state, table_keys[id(view.table)]):
            return None
        table_states.append(table_state)
    return groups, table_states


def _keys(group: dict[str, Any]) -> tuple[str, ...]:
    """The state tensors ``adam`` reads and writes: moments, then the step count."""
    return (*_MOMENTS, "max_exp_avg_sq", "step") if group["amsgrad"] else (*_MOMENTS, "step")


def _call_adam(
    group: dict[str, Any], params: list[Tensor], grads: list[Tensor], state: list[list[Tensor]]
) -> None:
    """``torch.optim.adam.adam`` with the arguments ``Adam.step()`` passes it: the state
    lists in the order of :func:`_keys`, stepped in place."""
    if not params:
        return
    beta1, beta2 = group["betas"]
    amsgrad = group["amsgrad"]
    adam(
        params, grads, state[0], state[1], state[2] if amsgrad else [], state[-1],
        foreach=group["foreach"], capturable=False, differentiable=False, fused=group["fused"],
        grad_scale=None, found_inf=None, has_complex=any(torch.is_complex(p) for p in params),
        decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=amsgrad, beta1=beta1,
        beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
        maximize=group["maximize"],
    )  # fmt: skip


def _single_tensor(group: dict[str, Any], params: Sequence[Tensor]) -> bool:
    """Whether ``Adam.step()`` takes its single-tensor loop here (``foreach`` not asked
    for, every parameter real and on the CPU, where torch has no foreach default; Adam
    requires gradients like their parameters): the loop :func:`_adam_into` writes out of
    place, operation for operation."""
    return (
        group["foreach"] is not True
        and not group["fused"]
        and all(p.device.type == "cpu" and not p.is_complex() for p in params)
    )


def _adam_into(
    group: dict[str, Any],
    param: Tensor,
    grad: Tensor,
    sources: Sequence[Tensor],
    targets: Sequence[Tensor],
    origin: Tensor | None,
    denominator: Tensor,
) -> None:
    """One parameter's update of ``torch.optim.adam._single_tensor_adam`` (torch 2.x,
    ``capturable`` and ``differentiable`` off, float hyperparameters), with the state read
    from ``sources`` and written to ``targets`` (moments, then the step count, as
    :func:`_keys` orders them; the same tensors for an update in place) and the parameter
    stepped from ``origin`` (``None``: from itself). The same operations on the same
    values, so the same bits; ``tests/test_fast_optimizers.py`` checks it against
    ``step()``.
    """
    beta1, beta2 = group["betas"]
    lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
    if group["maximize"]:
        grad = -grad
    step_t = torch.add(sources[-1], 1, out=targets[-1])
    base = param if origin is None else origin
    if weight_decay != 0:
        if group["decoupled_weight_decay"]:
            base = torch.mul(base, 1 - lr * weight_decay, out=param)
        else:
            grad = grad.add(base, alpha=weight_decay)
    exp_avg = torch.lerp(sources[0], grad, 1 - beta1, out=targets[0])
    exp_avg_sq = torch.mul(sources[1], beta2, out=targets[1])
    exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
    step = step_t.item()
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    second = exp_avg_sq
    if group["amsgrad"]:
        second = torch.maximum(sources[2], exp_avg_sq, out=targets[2])
    denom = torch.sqrt(second, out=denominator)
    torch.div(denom, bias_correction2_sqrt, out=denom).add_(eps)
    torch.addcdiv(base, exp_avg, denom, value=-step_size, out=param)


def _denominator(pool: dict[int, Tensor], param: Tensor) -> Tensor:
    """A reused tensor like ``param`` for Adam's denominator."""
    tensor = pool.get(id(param))
    if tensor is None or (tensor.shape, tensor.dtype, tensor.device) != (
        param.shape,
        param.dtype,
        param.device,
    ):
        tensor = pool[id(param)] = torch.empty_like(param)
    return tensor


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

    def step(
        self, commit_state: bool, origins: Mapping[int, Tensor] | None = None
    ) -> StateUndo | None:
        """What :func:`.rows.step_optimizer` does, functionally.

        Runs under the caller's ``torch.no_grad()``. The dense parameters and the viewed
        tables' rows move; the viewed rows are projected where their view says so.

        An extrapolation writes the new moments into scratch tensors: the state is not
        read back or copied. A committed step writes them into spare tensors that then
        replace the state's (the undo puts the old ones back): no copy either.

        Args:
            commit_state: If False, the optimizer's state is left as it was
                (extrapolation).
            origins: For each dense parameter (by ``id``), the point to step from instead
                of its current value, written straight into the parameter.

        Returns:
            With ``commit_state``, what puts the optimizer's state back; else ``None``.
        """
        optimizer = self._optimizer
        pools = _pools(optimizer)
        pool = pools.spare if commit_state else pools.scratch
        undo = StateUndo(optimizer.state) if commit_state else None
        tables = {
            id(view.table): (view, table_state)
            for view, table_state in zip(self._views, self._table_states)
        }
        for group, collected in zip(optimizer.param_groups, self._groups):
            keys = _keys(group)
            sources = [[state[key] for key in keys] for state in collected.states]
            targets = [
                _buffers(pool, id(param), source)
                for param, source in zip(collected.params, sources)
            ]
            rows: list[tuple[RowView, State, State]] = []
            for param in group["params"]:
                entry = tables.get(id(param))
                if entry is not None:
                    view, table_state = entry
                    row_state = gather_state(table_state, view.rows, view.table.shape)
                    rows.append((view, table_state, row_state))
            # The rows' state is gathered into copies: stepped in place.
            row_tensors = [[row_state[key] for key in keys] for _, _, row_state in rows]
            params = [*collected.params, *(view.values for view, _, _ in rows)]
            grads = [*collected.grads, *(view.grad for view, _, _ in rows)]
            if _single_tensor(group, params):
                for index, (param, grad) in enumerate(zip(params, grads)):
                    dense = index < len(sources)
                    source = sources[index] if dense else row_tensors[index - len(sources)]
                    target = targets[index] if dense else source
                    origin = origins.get(id(param)) if origins is not None and dense else None
                    denominator = _denominator(pools.denominators, param)
                    _adam_into(group, param, grad, source, target, origin, denominator)
            else:
                copy_all(
                    [t for target in targets for t in target],
                    [s for source in sources for s in source],
                )
                if origins is not None:
                    moved = [p for p in collected.params if id(p) in origins]
                    copy_all(moved, [origins[id(p)] for p in moved])
                state_lists = [list(column) for column in zip(*targets, *row_tensors)]
                _call_adam(group, params, grads, state_lists)
            for param, state, source, target in zip(
                collected.params, collected.states, sources, targets
            ):
                if undo is None:
                    continue
                undo.keep_entries(state, dict(zip(keys, source)))
                state.update(zip(keys, target))
                # The old tensors, kept by the undo until the method's step ends, are
                # the next committed step's spare (a method commits once per step).
                pool[id(param)] = source
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
