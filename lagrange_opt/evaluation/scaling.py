"""Gradient-based scaling of the objective and the constraints, measured once.

As in IPOPT (Wachter and Biegler 2006, Sec. 3.8) and ALGENCAN, each function is divided by
the largest entry of its gradient at the first point, if that is above one:

.. math::

    s_f = \\max(1, \\lVert \\nabla f(x_0) \\rVert_\\infty), \\qquad
    s_{g_i} = \\max(1, \\lVert \\nabla g_i(x_0) \\rVert_\\infty)

so that a first step of unit size moves no variable by more than its unit. A dense
constraint gets one scale per element (up to :data:`MAX_ROWS` elements, each a backward
pass; a larger one gets the largest of its first :data:`MAX_ROWS` as one scale); an indexed
constraint one scale, the largest over its first rows in the batch (its rows are samples of
one kind).

A constraint not observed at the first step (left out of the closure's result, or with no
sample in the batch) keeps the scale 1 for the whole run: measuring it later would cost a
closure call at a step of its own, and change its units mid-run. The scales are tensors
in the dtype of the constraint's multipliers (the dual side's, see :mod:`.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lagrange_opt.evaluation.finiteness import check_constraint_values
from lagrange_opt.evaluation.micro_batches import MicroBatch
from lagrange_opt.maths.formulation import Scales
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import ProblemState
from lagrange_opt.problem.validation import NonFiniteError, check_state

MAX_ROWS = 64
"""Constraint elements whose gradients are measured one by one."""


def _check_finite_output(label: str, output: Tensor) -> None:
    if not bool(torch.isfinite(output.detach())):
        raise NonFiniteError(f"{label} is not finite at the first point: {float(output.detach())}")


def unit_scales(problem: ConstrainedProblem) -> dict[str, Tensor]:
    """Scale 1 for every constraint with multipliers, in their dtype and on their device
    (what a constraint not observed at the first step keeps)."""
    return {
        name: torch.ones((), dtype=multiplier.dtype, device=multiplier.device)
        for name, constraint in problem.constraint_items()
        if (multiplier := constraint.multiplier) is not None
    }


def constraint_scale(
    rows: Sequence[float], shape: torch.Size, indexed: bool, multiplier: Tensor
) -> Tensor:
    """A constraint's scale from its first elements' (rows') scales: one per element for a
    dense constraint of at most :data:`MAX_ROWS` elements, else the largest as one."""
    if not indexed and shape.numel() <= MAX_ROWS:
        scale = torch.tensor(list(rows), dtype=multiplier.dtype).reshape(shape)
    else:
        scale = torch.tensor(max(rows), dtype=multiplier.dtype)
    return scale.to(multiplier.device)


def _grad_inf_norm(label: str, output: Tensor, params: Sequence[Tensor]) -> float:
    """``max(1, ||d output / d params||_inf)``."""
    _check_finite_output(label, output)
    if not output.requires_grad:
        return 1.0
    grads = torch.autograd.grad(output, params, retain_graph=True, allow_unused=True)
    largest = max(
        (float(grad.abs().amax()) for grad in grads if grad is not None and grad.numel()),
        default=0.0,
    )
    if not largest < float("inf"):
        raise NonFiniteError(f"the gradient of {label} at the first point is not finite")
    return max(1.0, largest)


def measure_scales(
    problem: ConstrainedProblem, closure: Callable[[], ProblemState], params: Sequence[Tensor]
) -> Scales:
    """Calls the closure once and measures every scale from its gradients.

    Args:
        problem: The problem.
        closure: Evaluates it (the first step's batch).
        params: The primal parameters the gradients are taken with respect to.

    Returns:
        The objective's scale and, for every constraint with multipliers, its scales, in
        its multipliers' dtype and on their device (1 for a constraint not observed).

    Raises:
        NonFiniteError: If a value or a gradient at the first point is not finite, naming
            the objective or the constraint element.
    """
    params = [param for param in params if param.requires_grad]
    with torch.enable_grad():
        objective, checked = check_state(problem, closure())
        objective_scale = _grad_inf_norm("the objective", objective, params)
        check_constraint_values(checked)
        scales = unit_scales(problem)
        for name, constraint, value, indices in checked:
            multiplier = constraint.multiplier
            if multiplier is None:
                continue
            flat = value.reshape(-1)
            rows = [
                _grad_inf_norm(f"constraint '{name}' (element {i})", flat[i], params)
                for i in range(min(MAX_ROWS, flat.numel()))
            ]
            scales[name] = constraint_scale(rows, value.shape, indices is not None, multiplier)
    return Scales(objective_scale, scales)


class LocalGradients(NamedTuple):
    """What one process measures for the scales over its micro-batches (one closure, or
    several of equal size).

    Attributes:
        dense: The gradients of the objective (first row) and of each dense constraint's
            first :data:`MAX_ROWS` elements, averaged over the micro-batches, flattened, in
            float64 on the CPU: the rows of an average over the batch.
        dense_shapes: Each dense constraint with multipliers, in the order of its rows, with
            its value's shape.
        indexed: Each indexed constraint with multipliers and the largest
            ``max(1, ||grad||_inf)`` over its first :data:`MAX_ROWS` rows in the batch.
        observed: The constraints some micro-batch observed, in declaration order.
    """

    dense: Tensor
    dense_shapes: list[tuple[str, torch.Size]]
    indexed: dict[str, float]
    observed: list[str]


def local_gradients(
    problem: ConstrainedProblem,
    closures: Sequence[Callable[[], ProblemState]],
    params: Sequence[Tensor],
) -> LocalGradients:
    """Calls each closure once, holding one micro-batch's graph at a time, and measures the
    gradients the scales are read from (:class:`LocalGradients`).

    The objective and a dense constraint's element are averages over the micro-batches
    (weighted by their sizes if they are :class:`.micro_batches.MicroBatch` ones; a dense
    constraint's over the micro-batches that observed it): their gradients are summed over
    them, weighted, then divided by the weights' sum. An indexed constraint's rows
    belong each to one micro-batch: its scale is the largest over its first rows in the
    batch, as for one closure.
    """
    params = [param for param in params if param.requires_grad]
    sums: dict[str, Tensor] = {}
    totals: dict[str, float] = {}
    rows: dict[str, list[float]] = {}
    shapes: dict[str, torch.Size] = {}
    seen_anywhere: set[str] = set()
    for closure in closures:
        weight = closure.size if isinstance(closure, MicroBatch) else 1
        with torch.enable_grad():
            objective, checked = check_state(problem, closure())
            _check_finite_output("the objective", objective)
            check_constraint_values(checked)
            seen_anywhere.update(name for name, _, _, _ in checked)
            outputs = [("the objective", objective)]
            for name, constraint, value, indices in checked:
                if constraint.multiplier is None:
                    continue
                flat = value.reshape(-1)
                if indices is None:
                    shapes[name] = value.shape
                    outputs += [
                        (f"constraint '{name}' (element {i})", flat[i])
                        for i in range(min(MAX_ROWS, flat.numel()))
                    ]
                    continue
                seen = rows.setdefault(name, [])
                for i in range(min(MAX_ROWS - len(seen), flat.numel())):
                    label = f"constraint '{name}' (element {len(seen)})"
                    seen.append(_grad_inf_norm(label, flat[i], params))
            for label, output in outputs:
                grad = flat_grad(label, output, params) * weight
                sums[label] = grad if label not in sums else sums[label] + grad
                totals[label] = totals.get(label, 0) + weight
    indexed = {name: max(maxima) for name, maxima in rows.items()}
    # Declaration order: the ranks compare it, and read the dense rows in this order.
    observed = [name for name in problem.declared() if name in seen_anywhere]
    shapes = {name: shapes[name] for name in observed if name in shapes}
    labels = ["the objective"] + [
        f"constraint '{name}' (element {i})"
        for name, shape in shapes.items()
        for i in range(min(MAX_ROWS, shape.numel()))
    ]
    dense = torch.stack([sums[label] / totals[label] for label in labels])
    return LocalGradients(dense, list(shapes.items()), indexed, observed)


def scales_from(
    problem: ConstrainedProblem,
    norms: Sequence[float],
    dense_shapes: Sequence[tuple[str, torch.Size]],
    indexed: dict[str, float],
) -> Scales:
    """The scales from the rows' ``max(1, ||grad||_inf)`` (``norms``: the objective's, then
    each dense constraint's elements in ``dense_shapes`` order) and the indexed
    constraints' largest."""
    scales = unit_scales(problem)
    position = 1
    for name, shape in dense_shapes:
        multiplier = problem.declared()[name].multiplier
        assert multiplier is not None
        count = min(MAX_ROWS, shape.numel())
        scales[name] = constraint_scale(
            norms[position : position + count], shape, False, multiplier
        )
        position += count
    for name, largest in indexed.items():
        multiplier = problem.declared()[name].multiplier
        assert multiplier is not None
        scales[name] = constraint_scale([largest], torch.Size(), True, multiplier)
    return Scales(norms[0], scales)


def measure_scales_over(
    problem: ConstrainedProblem,
    closures: Sequence[Callable[[], ProblemState]],
    params: Sequence[Tensor],
) -> Scales:
    """:func:`measure_scales` on the batch that micro-batches of equal size make up, holding
    one micro-batch's graph at a time (:mod:`.micro_batches`, :func:`local_gradients`)."""
    local = local_gradients(problem, closures, params)
    norms = local.dense.abs().amax(dim=1).clamp(min=1.0).tolist()
    return scales_from(problem, norms, local.dense_shapes, local.indexed)


def flat_grad(label: str, output: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The gradient of ``output`` with respect to ``params``, flattened, checked finite."""
    _check_finite_output(label, output)
    if not output.requires_grad or not params:
        return torch.zeros(sum(param.numel() for param in params), dtype=torch.float64)
    grads = torch.autograd.grad(output, params, retain_graph=True, allow_unused=True)
    flat = torch.cat(
        [
            (torch.zeros(param.numel()) if grad is None else grad.reshape(-1)).to(
                device="cpu", dtype=torch.float64
            )
            for param, grad in zip(params, grads)
        ]
    )
    if not bool(torch.isfinite(flat).all()):
        raise NonFiniteError(f"the gradient of {label} at the first point is not finite")
    return flat
