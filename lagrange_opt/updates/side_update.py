"""One side's update: descent on the primal variables, ascent on the multipliers.

Each side steps its stock ``torch.optim`` optimizer; indexed tables step only the rows of
the batch (:mod:`.rows`). For the most common optimizer, ``torch.optim.SGD`` without
momentum or weight decay, whose update is :math:`p \\leftarrow p + \\eta\\, g` with a signed
step size :math:`\\eta`, the same update is applied directly with fused in-place tensor
operations: an indexed multiplier table then takes its batch entries' gradients with one
``index_add_`` (repeated indices add up), and the per-call cost of ``optimizer.step()``
(profiler hooks, state bookkeeping) is not paid. A stock ``torch.optim.Adam`` or ``AdamW``
is stepped functionally (:mod:`.fast_optimizers`): the same iterates, without the copies
of its state that a call of ``step()`` needs to be undone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.optim import optimizer as optimizer_module

from lagrange_opt.evaluation.terms import Term
from lagrange_opt.maths.casts import in_dtype
from lagrange_opt.maths.dual_restart import restarted_
from lagrange_opt.maths.lagrangian import project_nonnegative_
from lagrange_opt.updates.fast_optimizers import add_all_, copy_all, is_fast, plan
from lagrange_opt.updates.optimizer_group import OptimizerGroup
from lagrange_opt.updates.optimizer_params import params_of
from lagrange_opt.updates.rows import RowView, StateUndo, step_optimizer


def sgd_step_sizes(optimizer: torch.optim.Optimizer) -> list[float] | None:
    """The signed step size of each param group if the optimizer's step is plain SGD.

    .. math::

        p \\leftarrow p + \\eta_g\\, \\nabla p, \\qquad
        \\eta_g = \\begin{cases} \\text{lr}_g & \\text{maximize} \\\\
        -\\text{lr}_g & \\text{otherwise} \\end{cases}

    Returns:
        The sizes, one per group, if ``optimizer`` is a ``torch.optim.SGD`` with no momentum,
        no weight decay, a float learning rate, no step hooks and no wrapper around its
        ``step()`` (whose calls the direct update would skip), or an
        :class:`OptimizerGroup` of such (its groups are its members', in order: two SGDs
        step as one SGD with their two groups); else ``None``: use ``optimizer.step()``.
    """
    if _step_intercepted(optimizer):
        return None
    if type(optimizer) is OptimizerGroup:
        sizes: list[float] = []
        for member in optimizer.optimizers:
            member_sizes = sgd_step_sizes(member)
            if member_sizes is None:
                return None
            sizes += member_sizes
        return sizes
    if type(optimizer) is not torch.optim.SGD:
        return None
    sizes = []
    for group in optimizer.param_groups:
        learning_rate = group["lr"]
        if group["momentum"] != 0 or group["weight_decay"] != 0:
            return None
        if not isinstance(learning_rate, float | int):
            return None
        sizes.append(float(learning_rate) if group["maximize"] else -float(learning_rate))
    return sizes


def _step_intercepted(optimizer: torch.optim.Optimizer) -> bool:
    """Whether something runs around the optimizer's ``step()`` that a direct update
    would skip: a wrapper on the instance (a learning-rate scheduler records that it was
    called; or the user's) or a step hook."""
    return (
        "step" in vars(optimizer)
        or bool(optimizer._optimizer_step_pre_hooks)
        or bool(optimizer._optimizer_step_post_hooks)
        or bool(optimizer_module._global_optimizer_pre_hooks)
        or bool(optimizer_module._global_optimizer_post_hooks)
    )


def steps_from_origins(optimizer: torch.optim.Optimizer, sizes: list[float] | None) -> bool:
    """Whether :func:`primal_update` can step from given origins without a copy back
    first: plain SGD (``sizes``) and the functional Adam step (:func:`is_fast`)."""
    return sizes is not None or is_fast(optimizer)


def step(
    optimizer: torch.optim.Optimizer,
    views: Sequence[RowView],
    commit_state: bool,
    origins: Mapping[int, Tensor] | None = None,
) -> StateUndo | None:
    """The optimizer's own update, on its parameters with a gradient and on ``views``:
    functional for a stock Adam or AdamW (:mod:`.fast_optimizers`, the same iterates),
    else through ``optimizer.step()`` (:func:`.rows.step_optimizer`).

    Args:
        origins: For each dense parameter with a gradient (by ``id``), the point to step
            from instead of its current value.
    """
    functional = plan(optimizer, views)
    if functional is not None:
        return functional.step(commit_state, origins)
    if origins is not None:
        # step() steps from the parameters' values: put the origins there first.
        moved = [param for param in params_of(optimizer) if param.grad is not None]
        moved = [param for param in moved if id(param) in origins]
        copy_all(moved, [origins[id(param)] for param in moved])
    return step_optimizer(optimizer, views, commit_state)


def _size_of(optimizer: torch.optim.Optimizer, sizes: list[float]) -> dict[int, float]:
    return {
        id(param): size
        for group, size in zip(optimizer.param_groups, sizes)
        for param in group["params"]
    }


def _grad_of(leaf: Tensor) -> Tensor:
    """The gradient backward left on a leaf (zero if the leaf did not reach the output)."""
    if leaf.grad is None:
        return torch.zeros_like(leaf)
    return leaf.grad


def primal_update(
    optimizer: torch.optim.Optimizer,
    sizes: list[float] | None,
    terms: Sequence[Term],
    commit_state: bool,
    origins: Mapping[int, Tensor] | None = None,
) -> StateUndo | None:
    """Descent on every primal parameter with a ``.grad``, and on the slack rows ``terms`` read.

    Runs under the caller's ``torch.no_grad()``: a step opens it once for all its updates.

    Args:
        optimizer: The primal optimizer.
        sizes: ``sgd_step_sizes(optimizer)``.
        terms: The terms of the evaluation whose gradients are stepped along.
        commit_state: If False the optimizer's state is left as it was (extrapolation).

        origins: For each dense parameter with a gradient (by ``id``), the point to step
            from instead of its current value, written straight into the parameter by plain
            SGD and the functional Adam step (extra-gradient steps from its saved point
            without first copying it back; see :func:`steps_from_origins`).

    Returns:
        What puts the optimizer's state back, if the optimizer's own update committed it.
    """
    slacks = [term.slack for term in terms if term.slack is not None]
    if sizes is None:
        views = [
            RowView(
                read.table, read.rows, read.table.detach().index_select(0, read.rows),
                _grad_of(read.values), project=False,
            )
            for read in slacks
        ]  # fmt: skip
        return step(optimizer, views, commit_state, origins)
    for group, size in zip(optimizer.param_groups, sizes):
        params = [param for param in group["params"] if param.grad is not None]
        if origins is not None:
            # Two list-wide calls rather than a fused add per tensor: on a GPU the launches
            # are the cost (one more pass over the parameters in memory).
            copy_all(params, [origins[id(param)] for param in params])
        add_all_(params, [param.grad for param in params], size)
    if slacks:
        size_of = _size_of(optimizer, sizes)
        for read in slacks:
            if read.values.grad is not None:
                size = size_of[id(read.table)]
                read.table.index_add_(0, read.rows, read.values.grad * size)
    return None


def dual_update(
    optimizer: torch.optim.Optimizer | None,
    sizes: list[float] | None,
    terms: Sequence[Term],
    commit_state: bool,
) -> StateUndo | None:
    """Ascent on the multipliers ``terms`` read, along their residuals; projects those of
    projected inequalities (every inequality in the augmented Lagrangian) onto ``>= 0``.

    An indexed multiplier's gradient is the sum of its batch entries' residuals (a sample
    drawn twice steps twice as far), as in :func:`..maths.lagrangian.constraint_term` times the
    batch size: each sample's multiplier ascends on its own constraint. Runs under the
    caller's ``torch.no_grad()``.

    Args:
        optimizer: The dual optimizer (``None`` when no constraint has multipliers).
        sizes: ``sgd_step_sizes(optimizer)``.
        terms: The terms of the evaluation whose residuals are stepped along.
        commit_state: If False the optimizer's state is left as it was (extrapolation).

    Returns:
        What puts the optimizer's state back, if a stock ``optimizer.step()`` committed it.
    """
    if optimizer is None:
        return None
    if sizes is None:
        undo = _stock_dual_update(optimizer, terms, commit_state)
        _restart(terms)
        return undo
    size_of = _size_of(optimizer, sizes)
    for term in terms:
        multiplier = term.multiplier
        size = size_of[id(multiplier)]
        projected = term.projected
        indices = term.indices
        if indices is None:
            multiplier.add_(term.residual, alpha=size)
            if projected:
                project_nonnegative_(multiplier)
            continue
        multiplier.index_add_(0, indices, in_dtype(term.residual * size, multiplier.dtype))
        if projected:
            rows = project_nonnegative_(multiplier.index_select(0, indices))
            multiplier.index_copy_(0, indices, rows)
    _restart(terms)
    return None


def _restart(terms: Sequence[Term]) -> None:
    """The dual restarts of the constraints declared with them, after the dual step
    (:func:`..maths.dual_restart.restarted_`: the strictly satisfied elements' multipliers
    set to 0; of an indexed constraint, the batch's rows)."""
    for term in terms:
        if not term.constraint.spec.dual_restart:
            continue
        multiplier = term.multiplier
        if term.indices is None:
            restarted_(multiplier.data, term.standard)
            continue
        rows = restarted_(multiplier.index_select(0, term.indices), term.standard)
        multiplier.index_copy_(0, term.indices, rows)


def _stock_dual_update(
    optimizer: torch.optim.Optimizer, terms: Sequence[Term], commit_state: bool
) -> StateUndo | None:
    views = []
    for term in terms:
        multiplier = term.multiplier
        if term.indices is None:
            multiplier.grad = in_dtype(term.residual, multiplier.dtype)
            continue
        rows, inverse = torch.unique(term.indices, sorted=True, return_inverse=True)
        residual = in_dtype(term.residual, multiplier.dtype)
        grad = residual.new_zeros((rows.shape[0], *residual.shape[1:]))
        grad.index_add_(0, inverse, residual)
        values = multiplier.detach().index_select(0, rows)
        views.append(RowView(multiplier, rows, values, grad, term.projected))
    try:
        undo = step(optimizer, views, commit_state)
    finally:
        for term in terms:
            if term.indices is None:
                term.multiplier.grad = None
    for term in terms:
        if term.indices is None and term.projected:
            project_nonnegative_(term.multiplier.data)
    return undo
