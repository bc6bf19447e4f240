"""Non-negative outputs without a final activation: exact constraints against a penalty.

A network with linear layers (784, 784), (784, 784), (784, 2), ReLU between them and nothing
after the last, is fitted by MSE to generated targets that are often negative, so that an
unconstrained fit predicts negative values. Every output of every training example is
constrained to be ``>= 0`` by an indexed slack constraint, solved by extra-gradient; the
same network is also trained with the penalty ``alpha * relu(-pred)**2``. Both report the
training loss and the fraction of training outputs below ``-1e-3``.

Run it with ``python -m lagrange_opt.demo`` (about a minute and a half on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from lagrange_opt import ExtraGradient
from lagrange_opt.problems import PositiveOutputs

INPUT_SIZE = 784
NEGATIVE_TOLERANCE = 1e-3


class Dataset(NamedTuple):
    """Generated regression data: inputs ``(n, 784)`` and targets ``(n, 2)``."""

    inputs: Tensor
    targets: Tensor


def make_data(num_samples: int, seed: int = 0) -> Dataset:
    """Inputs on a 16-dimensional subspace; targets a smooth function of it, shifted down so
    that about a third of them are negative, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(num_samples, 16, generator=generator)
    basis = torch.randn(16, INPUT_SIZE, generator=generator) / 4.0
    inputs = latent @ basis
    weights = torch.randn(16, 2, generator=generator) / 4.0
    targets = torch.tanh(latent @ weights) - 0.1
    targets = targets + 0.1 * torch.randn(num_samples, 2, generator=generator)
    return Dataset(inputs, targets)


def make_network(seed: int = 0, hidden: int = INPUT_SIZE) -> nn.Sequential:
    """The network; its last layer has no activation, so it can output any real number."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(INPUT_SIZE, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 2),
    )


class Report(NamedTuple):
    """Final training loss and the fraction of training outputs below ``-1e-3``."""

    method: str
    loss: float
    fraction_negative: float
    seconds: float


def _batches(num_samples: int, batch_size: int, epochs: int, seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        batch
        for _ in range(epochs)
        for batch in torch.randperm(num_samples, generator=generator).split(batch_size)
    ]


def evaluate_fit(network: nn.Module, data: Dataset) -> tuple[float, float]:
    """MSE and fraction of outputs below ``-1e-3`` on the whole training set."""
    with torch.no_grad():
        predictions = network(data.inputs)
        loss = float(nn.functional.mse_loss(predictions, data.targets))
        negative = float((predictions < -NEGATIVE_TOLERANCE).float().mean())
    return loss, negative


def train_constrained(
    data: Dataset,
    epochs: int,
    batch_size: int,
    lr: float,
    slack_lr: float,
    dual_lr: float,
    progress: bool,
) -> Report:
    """Extra-gradient on the Lagrangian: Adam on the network and the slacks (each with its
    own learning rate), plain SGD ascent on the per-sample multipliers."""
    start = time.perf_counter()
    network = make_network()
    problem = PositiveOutputs(network, num_samples=data.inputs.shape[0], treatment="slack")
    groups: list[dict[str, Any]] = [
        {"params": network.parameters()},
        {"params": problem.slack_parameters(), "lr": slack_lr},
    ]
    primal = torch.optim.Adam(groups, lr=lr)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=dual_lr, maximize=True)
    optimizer = ExtraGradient(problem, primal, dual)
    batches = _batches(data.inputs.shape[0], batch_size, epochs, seed=1)
    for indices in tqdm(batches, desc="extra-gradient", disable=not progress):
        inputs, targets = data.inputs[indices], data.targets[indices]
        optimizer.step(functools.partial(problem, inputs, targets, indices))
    loss, negative = evaluate_fit(network, data)
    return Report("extra-gradient, slack", loss, negative, time.perf_counter() - start)


def train_penalty(
    data: Dataset, epochs: int, batch_size: int, lr: float, alpha: float, progress: bool
) -> Report:
    """Adam on ``mse + alpha * mean(relu(-pred)**2)``."""
    start = time.perf_counter()
    network = make_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    batches = _batches(data.inputs.shape[0], batch_size, epochs, seed=1)
    for indices in tqdm(batches, desc=f"penalty {alpha:g}", disable=not progress):
        predictions = network(data.inputs[indices])
        loss = nn.functional.mse_loss(predictions, data.targets[indices])
        penalty = torch.relu(-predictions).square().mean()
        optimizer.zero_grad()
        (loss + alpha * penalty).backward()
        optimizer.step()
    loss_value, negative = evaluate_fit(network, data)
    return Report(f"penalty, alpha={alpha:g}", loss_value, negative, time.perf_counter() - start)


def format_table(reports: Sequence[Report]) -> str:
    """A plain-text table of the reports."""
    lines = [f"{'method':<26} {'train MSE':>10} {'outputs < -1e-3':>16} {'seconds':>8}"]
    for report in reports:
        lines.append(
            f"{report.method:<26} {report.loss:>10.5f} {report.fraction_negative:>16.4%} "
            f"{report.seconds:>8.1f}"
        )
    return "\n".join(lines)


def run(
    num_samples: int = 1024,
    epochs: int = 150,
    batch_size: int = 256,
    alpha: float = 10.0,
    progress: bool = True,
    print_fn: Callable[[str], None] = print,
) -> list[Report]:
    """Trains both ways on the same data and prints the comparison."""
    torch.manual_seed(0)
    data = make_data(num_samples)
    print_fn(
        f"{num_samples} samples, {float((data.targets < 0).float().mean()):.1%} of targets "
        f"negative; {epochs} epochs of batches of {batch_size}"
    )
    reports = [
        train_constrained(
            data, epochs, batch_size, lr=1e-4, slack_lr=3e-3, dual_lr=0.2, progress=progress
        ),
        train_penalty(data, epochs, batch_size, lr=1e-4, alpha=alpha, progress=progress),
    ]
    print_fn(format_table(reports))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run(args.samples, args.epochs, args.batch_size, args.alpha, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
