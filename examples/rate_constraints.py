"""A recall constraint on one class of a digit classifier: proxy constraints for rates.

A linear softmax classifier on scikit-learn's ``load_digits`` (8x8 images, 10 classes) is
trained with cross-entropy and an L2 penalty, on minibatches, subject to

    recall of digit 8 >= target        (the fraction of the 8s predicted as 8)

The recall is a rate of hard predictions: piecewise constant, with no useful gradient. It
is returned as ``Proxy(recall - target, soft_recall - target)`` (docs/proxy.md): the true
recall of the batch steps the multiplier and is what the violations report, and the
primal gradient follows the soft recall, the mean over the batch's 8s of
``sigmoid(margin / temperature)`` with ``margin`` the logit of class 8 minus the largest
other logit (``margin > 0``: predicted 8). A batch without an 8 leaves the constraint out.

The unconstrained model (the same loop without the constraint) is trained for contrast::

    python examples/rate_constraints.py                  # about 10 s on 2 cores
    python examples/rate_constraints.py --target 0.99 --epochs 60

A false-positive rate and demographic parity are written the same way (docs/proxy.md):
a rate of hard decisions as the true value, the same rate of sigmoids as the surrogate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lagrange_opt import ConstrainedProblem, ExtraGradient, ProblemState, Proxy
from lagrange_opt.problems import DigitsSplit, class_recall, digits_split, soft_class_recall

CLASS = 8


Data = DigitsSplit
"""Standardised features and labels of the train and test splits."""


def load(seed: int = 0) -> Data:
    """``load_digits`` split 75/25 (stratified), standardised with the train statistics."""
    return digits_split(seed)


def recall(logits: Tensor, labels: Tensor) -> Tensor:
    """The true recall of :data:`CLASS`: its samples predicted as it (hard predictions)."""
    return class_recall(logits, labels, CLASS)


def soft_recall(logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """A differentiable recall: the mean of ``sigmoid(margin / temperature)`` over the
    samples of :data:`CLASS`, ``margin`` being its logit minus the largest other one."""
    return soft_class_recall(logits, labels, CLASS, temperature)


class RecallConstrained(ConstrainedProblem):
    """Cross-entropy plus an L2 penalty, subject to ``recall >= target`` on every batch."""

    def __init__(self, data: Data, target: float, weight_decay: float, temperature: float) -> None:
        super().__init__()
        self.model = nn.Linear(data.train_x.shape[1], 10)
        self.data = data
        self.target = target
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.add_inequality("recall", ">=")

    def objective(self, logits: Tensor, labels: Tensor) -> Tensor:
        loss = nn.functional.cross_entropy(logits, labels)
        return loss + self.weight_decay * self.model.weight.square().sum()

    def forward(self, indices: Tensor) -> ProblemState:
        labels = self.data.train_y[indices]
        logits = self.model(self.data.train_x[indices])
        constraints = {}
        if bool((labels == CLASS).any()):  # a rate over no sample is left out, not NaN
            hard = recall(logits.detach(), labels)
            soft = soft_recall(logits, labels, self.temperature)
            constraints["recall"] = Proxy(hard - self.target, soft - self.target)
        return ProblemState(self.objective(logits, labels), constraints)


class Figures(NamedTuple):
    """Recall of :data:`CLASS` and accuracy on both splits, and the training time."""

    train_recall: float
    test_recall: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


def train(
    data: Data,
    constrained: bool,
    target: float = 0.98,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 0.01,
    dual_lr: float = 0.5,
    weight_decay: float = 0.01,
    temperature: float = 0.5,
    seed: int = 0,
) -> Figures:
    """Trains the classifier, with the recall constraint or without it (the same loop, the
    constraint left out of every batch), and measures it on both splits."""
    torch.manual_seed(seed)
    problem = RecallConstrained(data, target, weight_decay, temperature)
    primal = torch.optim.Adam(problem.primal_parameters(), lr=lr)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=dual_lr, maximize=True)
    optimizer = ExtraGradient(problem, primal, dual)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(data.train_y), generator=generator).split(batch_size):
            if constrained:
                optimizer.step(lambda batch=batch: problem(batch))
            else:
                optimizer.step(
                    lambda batch=batch: ProblemState(
                        problem.objective(problem.model(data.train_x[batch]), data.train_y[batch]),
                        {},
                    )
                )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        train_logits, test_logits = problem.model(data.train_x), problem.model(data.test_x)
    return Figures(
        float(recall(train_logits, data.train_y)),
        float(recall(test_logits, data.test_y)),
        float((train_logits.argmax(1) == data.train_y).float().mean()),
        float((test_logits.argmax(1) == data.test_y).float().mean()),
        seconds,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Figures]:
    """Trains both models and prints their recall of digit 8 on both splits.

    Returns:
        The figures of the ``"constrained"`` and the ``"unconstrained"`` model.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, default=0.98, help="the recall to reach")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate")
    parser.add_argument("--dual-lr", type=float, default=0.5, help="the multiplier's (SGD)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load(args.seed)
    settings = {
        "target": args.target, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "dual_lr": args.dual_lr, "weight_decay": args.weight_decay,
        "seed": args.seed,
    }  # fmt: skip
    results = {
        "unconstrained": train(data, constrained=False, **settings),
        "constrained": train(data, constrained=True, **settings),
    }
    print(f"recall of digit {CLASS} (target {args.target}), {args.epochs} epochs:")
    print("model           train recall  test recall  train acc  test acc  seconds")
    for name, figures in results.items():
        print(
            f"{name:<15} {figures.train_recall:>12.3f} {figures.test_recall:>12.3f} "
            f"{figures.train_accuracy:>10.3f} {figures.test_accuracy:>9.3f} "
            f"{figures.seconds:>8.1f}"
        )
    return results


if __name__ == "__main__":
    main()
