"""The recall-constrained digit classifier's pieces, shared by ``examples/rate_constraints.py``
and the network suite's ``recall`` row: the data split and the class recall, true and soft."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class DigitsSplit(NamedTuple):
    """Standardised features and labels of the train and test splits of ``load_digits``."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def digits_split(seed: int = 0) -> DigitsSplit:
    """scikit-learn's ``load_digits`` split 75/25 (stratified, by ``seed``), standardised
    with the training split's statistics (needs scikit-learn)."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    train_x = torch.tensor(x_train, dtype=torch.float32)
    test_x = torch.tensor(x_test, dtype=torch.float32)
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-3)
    return DigitsSplit(
        (train_x - mean) / std, torch.tensor(y_train), (test_x - mean) / std, torch.tensor(y_test)
    )


def class_recall(logits: Tensor, labels: Tensor, positive: int) -> Tensor:
    """The true recall of class ``positive``: its samples predicted as it (hard predictions).

    Example:
        >>> logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
        >>> class_recall(logits, torch.tensor([1, 1, 0]), positive=1)
        tensor(0.5000)
    """
    return (logits[labels == positive].argmax(1) == positive).float().mean()


def soft_class_recall(logits: Tensor, labels: Tensor, positive: int, temperature: float) -> Tensor:
    """A differentiable recall of class ``positive``: the mean over its samples of
    ``sigmoid(margin / temperature)``, ``margin`` its logit minus the largest other one.

    .. math::

        \\tilde r = \\frac{1}{|P|} \\sum_{i \\in P} \\sigma\\bigl((z_{i,p} -
        \\max_{k \\ne p} z_{i,k}) / T\\bigr)

    Example:
        >>> logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> soft_class_recall(logits, torch.tensor([1, 1]), positive=1, temperature=1.0)
        tensor(0.5000)
    """
    samples = logits[labels == positive]
    others = torch.cat([samples[:, :positive], samples[:, positive + 1 :]], dim=1)
    return torch.sigmoid((samples[:, positive] - others.amax(1)) / temperature).mean()
