"""A margin for held-out data, calibrated on a split of the training data.

Per-sample constraints bind the training samples only. Outputs on unseen inputs of the same
distribution fall below the boundary about as far as the outputs of a calibration split
(training samples held out of the constraints) do: constraining the training samples at
that offset above the boundary makes the same fraction of unseen outputs feasible
(docs/stochastic.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


def calibrated_offset(values: Tensor, fraction: float = 0.01) -> float:
    """The offset to ask of a ``>= 0`` constraint's training values so that about
    ``fraction`` of unseen values stay below 0: how far below 0 the lowest ``fraction`` of
    the calibration split's values reach (0 if they do not).

    .. math::

        \\delta = \\max\\bigl(0, \\; -q_{\\text{fraction}}(v_\\text{calibration})\\bigr)

    Use it as ``IndexedValue(pred - delta, indices)``, then train on.

    Args:
        values: The constraint's values on the calibration split (any shape), in the
            ``>= 0`` sense.
        fraction: The fraction of unseen values allowed below 0, in ``(0, 1)``.

    Raises:
        ValueError: If ``fraction`` is not in ``(0, 1)``, or ``values`` is empty or not
            finite.

    Example:
        >>> import torch
        >>> outputs = torch.tensor([0.5, 0.2, -0.01, 0.0, 0.3, -0.03, 0.1, 0.05])
        >>> round(calibrated_offset(outputs, fraction=0.1), 6)
        0.016
    """
    if not (isinstance(fraction, float) and 0.0 < fraction < 1.0):
        raise ValueError(f"Invalid fraction: {fraction}")
    if not values.numel():
        raise ValueError("no calibration value: the calibration split is empty")
    flat = values.detach().flatten().to(torch.float64)
    if not bool(torch.isfinite(flat).all()):
        bad = int((~torch.isfinite(flat)).sum())
        raise ValueError(f"{bad} of the {flat.numel()} calibration values are not finite")
    return max(0.0, -float(torch.quantile(flat, fraction)))
