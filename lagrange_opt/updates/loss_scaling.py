"""Loss scaling for float16 training: a ``torch.amp.GradScaler`` that the step drives.

A method calls backward itself, once per evaluation (twice per extra-gradient step), so a
scaler cannot be driven as in a plain loop (``scaler.scale(loss).backward()``,
``scaler.step(optimizer)``, ``scaler.update()``): the step does it instead.

- Every backward pass starts from cotangents multiplied by the scale :math:`S` (what
  backward of :math:`S \\cdot \\mathcal{L}` would do), and the gradients it leaves (the
  primal parameters', the indexed slack rows') are divided by :math:`S` before anything
  reads them.
- A gradient that is not finite then is an overflow of the scaled backward: the step is
  skipped (everything put back, :attr:`StepResult.skipped` set) and the scale multiplied by
  the scaler's ``backoff_factor``. A value that is not finite is not the scale's doing and
  raises as without a scaler.
- After ``growth_interval`` steps in a row without a skip, the scale is multiplied by the
  scaler's ``growth_factor``: the schedule of ``GradScaler.update``, whose count of steps
  without a skip the method keeps (in its ``state_dict``).

.. math::

    (S, n) \\leftarrow \\begin{cases}
    (S \\beta_{\\text{backoff}}, 0) & \\text{overflow} \\\\
    (S \\beta_{\\text{growth}}, 0) & n + 1 = N_{\\text{interval}} \\\\
    (S, n + 1) & \\text{otherwise}
    \\end{cases}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lagrange_opt.evaluation.terms import Evaluation


class GradientOverflow(Exception):
    """A gradient of a scaled backward pass was not finite: the step is skipped.

    Attributes:
        evaluation: The evaluation at the point the step started from (its figures are the
            skipped step's result).
    """

    def __init__(self, evaluation: Evaluation) -> None:
        super().__init__("a gradient overflowed under loss scaling")
        self.evaluation = evaluation


class ScaleChange(NamedTuple):
    """What one step does to the loss scale.

    Attributes:
        factor: Multiplies the scale (1: unchanged).
        steps_without_skip: The count of steps in a row without a skip, after this one.
    """

    factor: float
    steps_without_skip: int


def scale_change(
    skipped: bool, steps_without_skip: int, scaler: torch.amp.GradScaler
) -> ScaleChange:
    """The schedule of ``GradScaler.update``, as a function of the step's outcome."""
    if skipped:
        return ScaleChange(scaler.get_backoff_factor(), 0)
    if steps_without_skip + 1 >= scaler.get_growth_interval():
        return ScaleChange(scaler.get_growth_factor(), 0)
    return ScaleChange(1.0, steps_without_skip + 1)


def check_grad_scaler(scaler: object) -> torch.amp.GradScaler | None:
    """The scaler to drive, ``None`` without one or if it is disabled (``enabled=False``)."""
    if scaler is None:
        return None
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"grad_scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    return scaler if scaler.is_enabled() else None


class LossScaling:
    """The scaler a method drives, and its count of steps in a row without a skip."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler
        self.steps_without_skip = 0

    def scale(self, device: torch.device) -> Tensor:
        """The current scale :math:`S`, a 0-dim float32 tensor on ``device`` (no host sync)."""
        return self.scaler.scale(torch.ones((), device=device))

    def end_step(self, skipped: bool) -> None:
        """Moves the scale along its schedule after a step that succeeded or was skipped."""
        change = scale_change(skipped, self.steps_without_skip, self.scaler)
        if change.factor != 1.0:
            self.scaler.update(self.scaler.get_scale() * change.factor)
        self.steps_without_skip = change.steps_without_skip


def unscale_(grads: Sequence[Tensor], scale: Tensor) -> None:
    """Divides the gradients of a scaled backward pass by the scale, in place."""
    if grads:
        torch._foreach_div_(list(grads), scale)
