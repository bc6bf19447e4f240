"""The adaptive step's test on a step's two evaluations (:mod:`..maths.stepsize` has its rules):
the operator's change and the point's move in the step's metric, the point's norm for the
noise level, and the operator of a shortened extrapolation, interpolated between the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lagrange_opt.evaluation.terms import Evaluation, Term
from lagrange_opt.maths.norms import distances, norms
from lagrange_opt.updates.fast_optimizers import copy_all


class GradientBuffers:
    """Memory reused from step to step for the start's gradients, which the adaptive test
    reads after the second backward pass. Held as they are, they would keep the first
    pass's gradients alive, and the second pass's would take fresh memory and pay its page
    faults at every step; copied here, the first pass's memory goes back to the allocator
    before the second pass and is reused warm."""

    def __init__(self) -> None:
        self._buffers: list[Tensor | None] = []

    def hold(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Copies of ``grads`` (``None`` and sparse ones are kept as they are), valid until
        the next call."""
        if len(self._buffers) != len(grads):
            self._buffers = [None] * len(grads)
        held: list[Tensor | None] = []
        targets: list[Tensor] = []
        copied: list[Tensor] = []
        for index, grad in enumerate(grads):
            if grad is None or grad.is_sparse:
                held.append(grad)
                continue
            buffer = self._buffers[index]
            if buffer is None or not _same_layout(buffer, grad):
                buffer = self._buffers[index] = torch.empty_like(grad)
            held.append(buffer)
            targets.append(buffer)
            copied.append(grad)
        copy_all(targets, copied)
        return held


def _same_layout(buffer: Tensor, grad: Tensor) -> bool:
    return (buffer.shape, buffer.dtype, buffer.device, buffer.stride()) == (
        grad.shape,
        grad.dtype,
        grad.device,
        grad.stride(),
    )


def interpolate(
    dense: Sequence[Tensor],
    start_grads: Sequence[Tensor | None],
    start: Evaluation,
    extrapolated: Evaluation,
    weight: float,
) -> Evaluation:
    """The operator at the point ``weight`` of the way from the start to the extrapolated
    point, interpolated linearly (:mod:`..maths.stepsize`): the dense parameters' gradients and the
    slack rows' gradients in place, the residuals in the returned evaluation's terms.

    A gradient absent at one end is zero there.
    """
    for param, grad in zip(dense, start_grads):
        if param.grad is not None and grad is not None:
            param.grad.lerp_(grad, 1.0 - weight)
        elif param.grad is not None:
            param.grad.mul_(weight)
        elif grad is not None:
            param.grad = grad * (1.0 - weight)
    terms = []
    for before, after in zip(start.terms, extrapolated.terms):
        if before.slack is not None and after.slack is not None:
            values = after.slack.values
            values.grad = torch.lerp(
                _grad_or_zero(before.slack.values), _grad_or_zero(values), weight
            )
        terms.append(after._replace(residual=torch.lerp(before.residual, after.residual, weight)))
    return extrapolated._replace(terms=terms)


def change_norms(
    dense: Sequence[Tensor],
    copies: Sequence[Tensor],
    start_grads: Sequence[Tensor | None],
    bases: Mapping[int, float],
    sgd_moves: Mapping[int, float],
    start: Evaluation,
    extrapolated: Evaluation,
) -> Tensor:
    """The operator's change and the point's move, squared, in the step's metric
    (:mod:`..maths.stepsize`), for the primal variables and for the multipliers: four sums
    stacked so that one host sync reads them all.

    Dense parameters (the multipliers among them) move from their copies (or by
    ``sgd_moves[id] * grad``) and their gradient changes; an indexed multiplier's rows move
    from the values read and their gradient (the residual) changes; an indexed slack's rows
    likewise. A multiplier's entries weigh ``objective_weight / dual_scale``: the scaled
    problem's units.
    """
    sums = _SquaredNorms(4)
    operator, dual_operator, point, dual_point = range(4)
    multipliers = {id(term.multiplier) for term in start.terms}
    # The dense blocks' norms are taken list by list (maths.norms: one call per list).
    changed: list[tuple[Tensor, Tensor, float]] = []
    moves: list[tuple[Tensor, Tensor, float]] = []
    stepped: list[tuple[Tensor, float]] = []
    for param, copy, grad in zip(dense, copies, start_grads):
        if id(param) in multipliers:
            continue  # the multipliers' gradients are the residuals, below
        if grad is None or param.grad is None:
            continue
        base = bases[id(param)]
        changed.append((param.grad, grad, base))
        size = sgd_moves.get(id(param))
        if size is None:
            moves.append((param.detach(), copy, _inverse(base)))
        else:
            stepped.append((grad, size * size * _inverse(base)))
    for slot, pairs in ((operator, changed), (point, moves)):
        found = distances([left for left, _, _ in pairs], [right for _, right, _ in pairs])
        for norm, (_, _, metric) in zip(found, pairs):
            sums.add(slot, norm, metric)
    for norm, (_, metric) in zip(norms([grad for grad, _ in stepped]), stepped):
        sums.add(point, norm, metric)
    for before, after in zip(start.terms, extrapolated.terms):
        moved = before.multiplier.detach()
        if before.indices is not None:
            moved = moved.index_select(0, before.indices)
        base = bases[id(before.multiplier)]
        weight = _dual_weight(before)
        sums.add_weighted(dual_operator, after.residual - before.residual, base, weight)
        sums.add_weighted(dual_point, moved - before.multipliers_read, _inverse(base), weight)
        if before.slack is not None and after.slack is not None:
            slack = before.slack
            rows = slack.table.detach().index_select(0, slack.rows)
            base = bases[id(slack.table)]
            change = _grad_or_zero(after.slack.values) - _grad_or_zero(slack.values)
            sums.add(operator, torch.linalg.vector_norm(change), base)
            sums.add(point, torch.dist(rows, slack.values.detach()), _inverse(base))
    return sums.sums(start.total.device)


def point_norm(
    dense: Sequence[Tensor], copies: Sequence[Tensor], bases: Mapping[int, float],
    start: Evaluation,
) -> Tensor:  # fmt: skip
    """:math:`\\lVert z \\rVert_{\\beta^{-1}}^2` at the start, in the metric of
    :func:`change_norms`: the noise level's scale."""
    norm = _SquaredNorms(1)
    multipliers = {id(term.multiplier) for term in start.terms}
    for param, copy in zip(dense, copies):
        if id(param) not in multipliers and param.grad is not None:
            norm.add(0, torch.linalg.vector_norm(copy), _inverse(bases[id(param)]))
    for term in start.terms:
        norm.add_weighted(
            0, term.multipliers_read, _inverse(bases[id(term.multiplier)]), _dual_weight(term)
        )
        if term.slack is not None:
            slack = term.slack
            norm.add(
                0,
                torch.linalg.vector_norm(slack.values.detach()),
                _inverse(bases[id(slack.table)]),
            )
    return norm.sums(start.total.device)[0]


class _SquaredNorms:
    """Weighted sums of squared norms, ``slots`` of them, gathered block by block and
    reduced together: a block costs one reduction of its own, and the sums a few more
    operations in all (the test runs at every step; a network has many small blocks)."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._norms: list[Tensor] = []
        self._squares: list[Tensor] = []
        self._norm_weights: list[tuple[int, float]] = []
        self._square_weights: list[tuple[int, float]] = []

    def add(self, slot: int, norm: Tensor, weight: float) -> None:
        """Adds ``weight * norm**2`` to sum ``slot``; a block of learning rate 0 (a warm-up's
        start) does not move and has no place in the metric, where it would divide by 0."""
        if weight != 0.0:
            self._norms.append(norm)
            self._norm_weights.append((slot, weight))

    def add_weighted(
        self, slot: int, values: Tensor, weight: float, entries: Tensor | float
    ) -> None:
        """Adds ``weight * sum(entries * values**2)`` (a multiplier's block in the scaling's
        units) to sum ``slot``."""
        if weight != 0.0:
            self._squares.append((values.square() * entries).sum())
            self._square_weights.append((slot, weight))

    def sums(self, device: torch.device) -> Tensor:
        """The sums, in float64, in one tensor."""
        parts = []
        if self._norms:
            parts.append(torch.stack(self._norms).double().square())
        if self._squares:
            parts.append(torch.stack(self._squares).double())
        if not parts:
            return torch.zeros(self._slots, dtype=torch.float64, device=device)
        values = torch.cat(parts)
        if values.device != device:  # a same-device .to() is still an operator call
            values = values.to(device)
        coefficients = [[0.0] * values.numel() for _ in range(self._slots)]
        for column, (slot, weight) in enumerate(self._norm_weights + self._square_weights):
            coefficients[slot][column] = weight
        return torch.tensor(coefficients, dtype=torch.float64, device=device) @ values


def _inverse(base: float) -> float:
    """``1 / base``, and 0 for a learning rate of 0: such a block does not move."""
    return 0.0 if base == 0.0 else 1.0 / base


def _dual_weight(term: Term) -> Tensor | float:
    scale = term.rule.dual_scale
    return term.objective_weight if scale is None else term.objective_weight / scale


def _grad_or_zero(values: Tensor) -> Tensor:
    return torch.zeros_like(values) if values.grad is None else values.grad
