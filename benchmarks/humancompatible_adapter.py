"""humancompatible-train 0.4.2 dual optimizers, stepped on the same batches as lagrange_opt.

The peer is `humancompatible-train <https://pypi.org/project/humancompatible-train/>`_
(import name ``humancompatible.train``), version 0.4.2 (its wheel reports ``0.4.2.0``).
Its multiplier methods live in ``humancompatible.train.dual_optim``: each is a
``torch.optim.Optimizer`` subclass that creates and owns a *dense* vector of ``m`` dual
variables (one ``torch.nn.Parameter`` per constraint group, the groups stacked in order;
``.duals`` concatenates them). Its documented training loop pairs it with an ordinary
primal optimizer::

    lagrangian = dual.forward_update(loss, constraints)  # dual step, then surrogate
    lagrangian.backward()
    optimizer.step()
    optimizer.zero_grad()

``forward_update`` first updates the duals from the constraint values and clamps them to
their range, then builds the surrogate with the *post*-update duals. The constraint
argument must hold exactly ``m`` values: the peer has no notion of a per-sample constraint
indexed by sample id.

:class:`HumanCompatibleMethod` runs that loop, one call of :meth:`~HumanCompatibleMethod.step`
per batch, with one of two of the peer's classes, always registered with
``is_ineq=True`` (the constraints arrive in the standard form ``g <= 0``, so the duals are
clamped to ``[0, 100]``: the peer's default ``dual_range=(-100, 100)`` with its
non-negativity bound for inequalities), the duals started at zero (the peer's default) in
the parameters' dtype and device:

- ``"alm"``: ``dual_optim.ALM(m, lr=dual_lr, penalty=dual_lr, augmentation="hpr")``.
  ``dual_lr`` defaults to ``0.01``, the peer's default ``lr``. The peer's own default is
  ``penalty=0`` (plain Lagrangian dual ascent, no augmentation); the augmented scheme needs
  a positive penalty, and it is tied to the dual step because the peer's docstring notes
  that at ``lr == penalty`` its Hestenes-Powell-Rockafellar update becomes the classical
  method-of-multipliers update ``lambda <- max(0, lambda + penalty * g)``. ``"hpr"`` is what
  the peer selects by itself for a positive penalty; it is spelled out here. Momentum,
  dampening and restarts keep the peer's defaults (all off).
- ``"nupi"``: ``dual_optim.nuPI(m, ki=dual_lr)`` with the peer's defaults for the rest:
  ``nu=0.01``, ``kp=1.0``, ``penalty=0``. ``dual_lr`` is the integral gain ``ki`` (the
  peer documents it as "the dual step size of plain gradient ascent") and defaults to the
  peer's ``0.01``.

Per-sample constraints. Sample ``i``'s element ``j`` is scalar constraint ``i * k + j`` of
the peer's dense vector of ``num_constraints = num_samples * k`` duals. Each step scatters
the batch's rows into an otherwise zero vector of ``num_constraints`` values and hands that
to ``forward_update``: the surrogate is ``objective + (terms of the batch's rows)``, summed
over the batch (not averaged), and unvisited rows contribute nothing to it (a zero value
times its dual under the plain term, and exactly zero under HPR for a non-negative dual).
A zero value is still a *reading* to the peer's dual update, though: ALM leaves those duals
unchanged, but nuPI's controller would move them by its proportional term and decay its
error buffer. So after the backward pass every per-constraint tensor of the peer's group
(the duals and its ``momentum_buffer``) is put back to its pre-step value outside the batch's
rows: only the batch's duals and controller state move, by the peer's own rule. nuPI's
"first step" rule (its ``_momentum_initialized`` flag) is per group in the peer, so it
applies on the adapter's first step only; a sample first seen later takes the general
recursion with a zero error buffer. A sample repeated within a batch has its values added.
Each per-sample step costs ``O(num_constraints)`` for the scatter and the restore.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from humancompatible.train.dual_optim import ALM, DualOptimizer, nuPI
from torch import Tensor

Scheme = Literal["alm", "nupi"]

SCHEMES: tuple[Scheme, ...] = ("alm", "nupi")

DEFAULT_DUAL_LR = 0.01
"""The peer's default dual step: ``ALM``'s ``lr`` and ``nuPI``'s ``ki``."""


class HumanCompatibleMethod:
    """One of humancompatible-train's dual optimizers driving a caller's primal optimizer.

    Args:
        params: The network's parameters (they set the duals' dtype and device).
        primal: A torch optimizer over ``params``, built by the caller; this class zeroes
            its gradients and steps it.
        scheme: ``"alm"`` (the peer's ``ALM`` with the HPR augmentation, penalty equal to
            the dual step) or ``"nupi"`` (the peer's ``nuPI`` controller).
        num_constraints: Total number of scalar constraints: the length of a dense
            constraint vector, or ``num_samples * k`` for ``k`` constraints per sample.
        dual_lr: ALM's ``lr`` (and penalty) or nuPI's ``ki``; ``None`` for the peer's
            default, ``0.01``.
        equalities: How many of the dense constraints, first in the vector, are
            equalities ``h = 0``: they form a group of their own, registered with
            ``is_ineq=False`` (duals of either sign), before the inequalities' group.

    Attributes:
        dual: The peer's dual optimizer, holding the ``num_constraints`` duals.
        primal: The primal optimizer.
        scheme: The scheme.
        num_constraints: The number of scalar constraints.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        primal: torch.optim.Optimizer,
        scheme: Scheme,
        num_constraints: int,
        dual_lr: float | None = None,
        equalities: int = 0,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"invalid scheme {scheme!r}; expected one of {SCHEMES}")
        if num_constraints < 1:
            raise ValueError(f"num_constraints must be positive, got {num_constraints}")
        if not params:
            raise ValueError("params is empty")
        if not 0 <= equalities <= num_constraints:
            raise ValueError(f"equalities must lie in [0, {num_constraints}], got {equalities}")
        lr = DEFAULT_DUAL_LR if dual_lr is None else float(dual_lr)
        if lr <= 0:
            raise ValueError(f"dual_lr must be positive, got {lr}")
        reference = params[0]
        self.params = params
        self.primal = primal
        self.scheme: Scheme = scheme
        self.num_constraints = num_constraints
        self.equalities = equalities
        # The peer's groups, in the vector's order: the equalities, then the inequalities.
        sizes = [
            (size, kind)
            for size, kind in ((equalities, False), (num_constraints - equalities, True))
            if size
        ]
        self.dual: DualOptimizer
        for index, (size, is_ineq) in enumerate(sizes):
            init = torch.zeros(size, dtype=reference.dtype, device=reference.device)
            if index:
                settings: dict[str, Any] = {"init_duals": init, "is_ineq": is_ineq}
                self.dual.add_constraint_group(size, device=reference.device, **settings)
            elif scheme == "alm":
                self.dual = ALM(
                    size, lr=lr, init_duals=init, penalty=lr, is_ineq=is_ineq,
                    augmentation="hpr", device=reference.device,
                )  # fmt: skip
            else:
                self.dual = nuPI(
                    size, init_duals=init, ki=lr, is_ineq=is_ineq, device=reference.device
                )

    @property
    def multipliers(self) -> Tensor:
        """A copy of the current dual vector, of length ``num_constraints``."""
        duals: Tensor = self.dual.duals
        return duals.detach().clone()

    def _row_state(self) -> list[Tensor]:
        """The peer's per-constraint tensors: the duals, then any buffer of the same shape."""
        group: dict[str, Any] = self.dual.param_groups[0]
        duals: Tensor = group["params"][0]
        buffers = [
            value
            for key, value in group.items()
            if key != "params" and isinstance(value, Tensor) and value.shape == duals.shape
        ]
        return [duals, *buffers]

    def _scatter(self, standard: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's rows placed in a zero vector of ``num_constraints`` values, and the
        flat positions they went to."""
        if indices.ndim != 1 or indices.dtype != torch.int64:
            raise ValueError("indices must be a 1-D int64 tensor")
        batch = indices.shape[0]
        if standard.ndim not in (1, 2) or standard.shape[0] != batch:
            raise ValueError(
                f"per-sample constraints must have shape (batch,) or (batch, k) with batch "
                f"{batch}, got {tuple(standard.shape)}"
            )
        rows = standard.reshape(batch, -1)
        k = rows.shape[1]
        if self.num_constraints % k:
            raise ValueError(f"num_constraints {self.num_constraints} is not a multiple of {k}")
        num_samples = self.num_constraints // k
        if batch and (int(indices.min()) < 0 or int(indices.max()) >= num_samples):
            raise ValueError(f"indices must lie in [0, {num_samples})")
        offsets = torch.arange(k, device=indices.device)
        flat = (indices[:, None] * k + offsets).reshape(-1)
        full = rows.new_zeros(self.num_constraints).index_add(0, flat, rows.reshape(-1))
        return full, flat

    def step(self, objective: Tensor, standard: Tensor, indices: Tensor | None) -> None:
        """One training step of the peer's method on a batch.

        Zeroes the primal gradients, lets the peer update its duals and build its surrogate
        (``forward_update``), back-propagates the surrogate and steps the primal optimizer.

        Args:
            objective: The batch's scalar objective, attached to the parameters' graph.
            standard: Constraint values in the standard form ``g <= 0``: a 1-D tensor of
                ``num_constraints`` values when ``indices`` is ``None``; else one row per
                sample, of shape ``(batch,)`` or ``(batch, k)``.
            indices: ``None`` for dense constraints; else each row's sample id, a 1-D
                int64 tensor of length ``batch`` with values in ``[0, num_samples)``.
        """
        self.primal.zero_grad()
        if indices is None:
            if standard.numel() != self.num_constraints:
                raise ValueError(
                    f"expected {self.num_constraints} constraint values, got {standard.numel()}"
                )
            self.dual.forward_update(objective, standard.reshape(-1)).backward()
        else:
            full, flat = self._scatter(standard, indices)
            state = self._row_state()
            saved = [tensor.detach().clone() for tensor in state]
            # The surrogate holds the live dual tensor for its backward pass, so rows are
            # only restored once it has run.
            self.dual.forward_update(objective, full).backward()
            with torch.no_grad():
                for tensor, before in zip(state, saved):
                    moved = tensor[flat]
                    tensor.copy_(before)
                    tensor[flat] = moved
        self.primal.step()
