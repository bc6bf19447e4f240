"""Proxy constraints: a true value for the dual side, a differentiable surrogate for the
primal side (Cotter, Jiang, Sridharan, "Two-player games for efficient non-convex
constrained optimization", ALT 2019).

A constraint such as a recall or a false-positive rate is computed from hard predictions:
its true value is piecewise constant, with a zero or missing gradient. Returned as
``Proxy(value, surrogate)``, the step reads the true value wherever the constraint is
*measured* (the multipliers' ascent direction, the slacks set from the value, the augmented
Lagrangian's estimates, the penalty's weight, the violations reported) and the surrogate
wherever the model is *moved* (the primal gradient).

Both are folded into one tensor here, so that the rest of the step (validation, terms,
micro-batches, process groups, scaling, :func:`~lagrange_opt.kkt`) handles a proxy as any
value: :func:`proxied` returns a tensor whose forward value is the true value and whose
backward pass sends its cotangent to the surrogate unchanged. Every term of the step is
``<w, output>`` with ``w`` computed from detached values and ``output`` the value as
returned, so for every treatment

.. math::

    \\text{dual side: } w(v), \\; r(v), \\; \\operatorname{viol}(v) \\qquad
    \\text{primal gradient: } w(v)^\\top \\frac{\\partial \\tilde v}{\\partial x}

with :math:`v` the true value and :math:`\\tilde v` the surrogate (docs/proxy.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

_PARTS: WeakIdKeyDictionary = WeakIdKeyDictionary()
"""The two parts of each proxied tensor while it lives (for the error messages)."""


class Proxy(NamedTuple):
    """A constraint value with a differentiable surrogate for its gradient.

    Return it in place of a constraint's value (``{"recall": Proxy(hard, soft)}``, or
    ``IndexedValue(Proxy(hard, soft), indices)`` for an indexed constraint). The true
    ``value`` is what the constraint means: the multipliers step along it, the slacks and
    the augmented Lagrangian's estimates are computed from it and the violations reported
    are its own; it needs no gradient path (hard predictions, a comparison, a count). The
    ``surrogate`` is what the model's gradient follows: each term's weight, computed from
    the true value, multiplies the surrogate's Jacobian. Both have the declared shape (the
    batch's rows first if indexed), a real floating-point dtype (not necessarily the same)
    and finite entries; the surrogate must depend on the parameters.

    Attributes:
        value: The true value, shape as declared.
        surrogate: A differentiable stand-in of the same shape.

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, Proxy, ProblemState
        >>> class Recall(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.scores = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.5, -3.0]))
        ...         self.add_inequality("recall", ">=")
        ...     def forward(self) -> ProblemState:
        ...         hard = (self.scores > 0).float().mean()  # no gradient path
        ...         soft = torch.sigmoid(self.scores).mean()
        ...         return ProblemState(self.scores.square().sum(),
        ...                             {"recall": Proxy(hard - 0.9, soft - 0.9)})
        >>> from lagrange_opt import kkt
        >>> round(kkt(Recall()).primal_feasibility, 6)  # the true recall is 0.5: 0.9 - 0.5
        0.4
    """

    value: Tensor
    surrogate: Tensor


class _Proxied(torch.autograd.Function):
    """The true value forward (NaN where the surrogate is not finite, so that the step's
    one finiteness check sees both), the identity into the surrogate backward."""

    @staticmethod
    def forward(ctx: Any, surrogate: Tensor, true: Tensor) -> Tensor:
        ctx.dtype = surrogate.dtype
        # A new tensor in every case: the dual side may keep it past the primal step.
        return torch.where(torch.isfinite(surrogate), true, torch.nan)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # The output has the true value's dtype; the surrogate's graph takes its own.
        return grad.to(ctx.dtype), None


def proxied(true: Tensor, surrogate: Tensor) -> Tensor:
    """One tensor for a validated :class:`Proxy`: ``true`` forward, ``surrogate`` backward.

    The result has the true value's dtype and is ``true`` wherever the surrogate is finite
    (NaN elsewhere); it requires grad if and only if the surrogate does, and its gradient
    is the surrogate's (the cotangent cast to the surrogate's dtype). A proxy whose two
    parts are one tensor is that tensor: a plain value.
    """
    if true is surrogate:
        return true
    combined: Tensor = _Proxied.apply(surrogate, true.detach())
    _PARTS[combined] = (true, surrogate)
    return combined


def measured_earlier(value: Tensor, true: Tensor) -> Tensor:
    """A value built by :func:`proxied` with its true value replaced by ``true``, measured
    earlier in the step on the same batch (same shape and dtype): ``true`` forward (NaN
    wherever ``value`` is not finite, so that a non-finite part of this evaluation is still
    caught), the identity into ``value``, and so into its surrogate, backward.

    Example:
        >>> import torch
        >>> scores = torch.tensor([0.5, -0.5], requires_grad=True)
        >>> now = proxied((scores > 0).float(), torch.sigmoid(scores))
        >>> held = measured_earlier(now, torch.tensor([1.0, 1.0]))
        >>> held.detach(), proxy_parts(held) is not None
        (tensor([1., 1.]), True)
    """
    held: Tensor = _Proxied.apply(value, true)
    parts = proxy_parts(value)
    if parts is not None:
        _PARTS[held] = parts
    return held


def proxy_parts(value: Tensor) -> tuple[Tensor, Tensor] | None:
    """The true value and the surrogate of a tensor built by :func:`proxied`, else ``None``."""
    parts: tuple[Tensor, Tensor] | None = _PARTS.get(value)
    return parts


def mark_combined(value: Tensor, parts: list[Tensor], indexed: bool) -> None:
    """Gives a combination of several values (micro-batches' averages or concatenations)
    the combined parts of those that are proxies, for the error messages.

    Args:
        value: The combined value, a leaf.
        parts: The values combined, in order; ``value`` is marked only if one is a proxy.
        indexed: Whether ``value`` concatenates the parts (else it averages them).
    """
    pairs = [proxy_parts(part) for part in parts]
    if all(pair is None for pair in pairs):
        return
    # A plain value among proxies is its own true value and surrogate.
    trues = [part if pair is None else pair[0] for part, pair in zip(parts, pairs)]
    surrogates = [part if pair is None else pair[1] for part, pair in zip(parts, pairs)]
    if indexed:
        true, surrogate = torch.cat(trues), torch.cat(surrogates)
    else:
        true, surrogate = torch.stack(trues).mean(0), torch.stack(surrogates).mean(0)
    _PARTS[value] = (true.detach(), surrogate.detach())
