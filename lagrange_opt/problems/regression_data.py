"""Generated regression data with negative targets, and the network the demo fits to it.

Shared by :mod:`lagrange_opt.demo`, the convergence benchmark's ``positive-outputs``
problem and the network suite, so that each fits the same data with the same network.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

INPUT_SIZE = 784
"""The inputs' width."""

NEGATIVE_TOLERANCE = 1e-3
"""An output below ``-NEGATIVE_TOLERANCE`` counts as violated in the reports."""


class RegressionData(NamedTuple):
    """Generated regression data: inputs ``(n, 784)`` and targets ``(n, 2)``."""

    inputs: Tensor
    targets: Tensor


def regression_data(num_samples: int, seed: int = 0) -> RegressionData:
    """Inputs on a 16-dimensional subspace; targets a smooth function of it, shifted down so
    that about a third of them are negative, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(num_samples, 16, generator=generator)
    basis = torch.randn(16, INPUT_SIZE, generator=generator) / 4.0
    inputs = latent @ basis
    weights = torch.randn(16, 2, generator=generator) / 4.0
    targets = torch.tanh(latent @ weights) - 0.1
    targets = targets + 0.1 * torch.randn(num_samples, 2, generator=generator)
    return RegressionData(inputs, targets)


def regression_network(seed: int = 0, hidden: int = INPUT_SIZE) -> nn.Sequential:
    """The network; its last layer has no activation, so it can output any real number."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(INPUT_SIZE, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 2),
    )
