"""Dual restarts: a multiplier reset to 0 where its constraint is strictly satisfied.

After each dual step, for an inequality declared with ``dual_restart=True``,

.. math::

    \\lambda_i \\leftarrow \\begin{cases} 0 & g_i < 0 \\\\ \\lambda_i & \\text{otherwise}
    \\end{cases}

with :math:`g_i` the element's value in the standard form ``g <= 0`` at the evaluated point
(the batch's rows of an indexed constraint). A constraint that holds stops acting on the
primal side at once, rather than after its multiplier has decayed step by step: the rule
of the controlled-sparsity work (Gallego-Posada et al., 2022) that humancompatible-train
offers too.
"""

from __future__ import annotations

from torch import Tensor


def restarted_(multipliers: Tensor, standard: Tensor) -> Tensor:
    """Sets to 0, in place, the ``multipliers`` whose ``standard`` value is below 0.

    Example:
        >>> import torch
        >>> restarted_(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([-1e-3, 0.0, 2.0]))
        tensor([0.0000, 0.5000, 0.5000])
    """
    return multipliers.masked_fill_(standard.to(multipliers.device) < 0, 0.0)
