"""Non-negative outputs without a final activation: constraints, a penalty, exp and softplus.

A network with linear layers (784, 784), (784, 784), (784, 2), ReLU between them and nothing
after the last, is fitted by MSE to generated targets that are often negative, so that an
unconstrained fit predicts negative values. Four ways to keep its outputs non-negative are
trained on the same minibatches with Adam (lr 1e-3):

- every output of every training example constrained ``>= 0`` (one indexed inequality per
  example), by ``default_optimizer(problem, primal_optimizer=adam)``: nothing else to set;
- the penalty ``alpha * relu(-pred)**2`` added to the loss;
- an ``exp`` or a ``softplus`` after the last layer.

Each reports the training MSE beside the lower bound of every feasible fit (the MSE of
predicting ``max(target, 0)``), the fraction of training outputs below ``-1e-3`` and the
fraction of held-out outputs below 0 (per-sample constraints bind the training examples
only; a final activation holds on every input).

Run it with ``python -m lagrange_opt.demo`` (about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from lagrange_opt import default_optimizer
from lagrange_opt.problems import (
    NEGATIVE_TOLERANCE,
    PositiveOutputs,
    RegressionData,
    regression_data,
    regression_network,
)


class Report(NamedTuple):
    """Final training MSE, the fractions of training outputs below ``-1e-3`` and of held-out
    outputs below 0, and the training time."""

    method: str
    loss: float
    fraction_negative: float
    held_out_negative: float
    seconds: float


def _batches(num_samples: int, batch_size: int, epochs: int, seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        batch
        for _ in range(epochs)
        for batch in torch.randperm(num_samples, generator=generator).split(batch_size)
    ]


def evaluate_fit(network: nn.Module, data: RegressionData) -> tuple[float, float]:
    """MSE and fraction of outputs below ``-1e-3`` on ``data``."""
    with torch.no_grad():
        predictions = network(data.inputs)
        loss = float(nn.functional.mse_loss(predictions, data.targets))
        negative = float((predictions < -NEGATIVE_TOLERANCE).float().mean())
    return loss, negative


def _report(
    method: str, model: nn.Module, data: RegressionData, held_out: RegressionData, start: float
) -> Report:
    loss, negative = evaluate_fit(model, data)
    with torch.no_grad():
        held_out_negative = float((model(held_out.inputs) < 0).float().mean())
    return Report(method, loss, negative, held_out_negative, time.perf_counter() - start)


def train_constrained(
    data: RegressionData,
    held_out: RegressionData,
    epochs: int,
    batch_size: int,
    lr: float,
    progress: bool,
) -> Report:
    """``default_optimizer`` with the user's Adam: one indexed inequality per example."""
    start = time.perf_counter()
    network = regression_network()
    problem = PositiveOutputs(network, num_samples=data.inputs.shape[0])
    adam = torch.optim.Adam(problem.primal_parameters(), lr=lr)
    optimizer = default_optimizer(problem, primal_optimizer=adam)
    batches = _batches(data.inputs.shape[0], batch_size, epochs, seed=1)
    for indices in tqdm(batches, desc="constraints", disable=not progress):
        inputs, targets = data.inputs[indices], data.targets[indices]
        optimizer.step(functools.partial(problem, inputs, targets, indices))
    return _report("constraints (default)", network, data, held_out, start)


def train_unconstrained(
    data: RegressionData,
    held_out: RegressionData,
    epochs: int,
    batch_size: int,
    lr: float,
    progress: bool,
    alpha: float = 0.0,
    output: str = "linear",
) -> Report:
    """Adam on ``mse + alpha * mean(relu(-pred)**2)``, after an ``output`` map (``"linear"``,
    ``"exp"`` or ``"softplus"``)."""
    start = time.perf_counter()
    maps: dict[str, nn.Module] = {"linear": nn.Identity(), "exp": _Exp(), "softplus": nn.Softplus()}
    model = nn.Sequential(regression_network(), maps[output])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _batches(data.inputs.shape[0], batch_size, epochs, seed=1)
    method = f"penalty, alpha={alpha:g}" if alpha else f"{output} output"
    for indices in tqdm(batches, desc=method, disable=not progress):
        predictions = model(data.inputs[indices])
        loss = nn.functional.mse_loss(predictions, data.targets[indices])
        if alpha:
            loss = loss + alpha * torch.relu(-predictions).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return _report(method, model, data, held_out, start)


class _Exp(nn.Module):
    def forward(self, inputs: Tensor) -> Tensor:
        return inputs.exp()


def lower_bound(targets: Tensor) -> float:
    """The MSE of predicting ``max(target, 0)``: no fit with non-negative outputs does
    better."""
    return float((targets.clamp(min=0) - targets).square().mean())


def format_table(reports: Sequence[Report], bound: float) -> str:
    """A plain-text table of the reports."""
    lines = [
        f"{'method':<24} {'train MSE':>10} {'over bound':>11} {'train < -1e-3':>14} "
        f"{'held-out < 0':>13} {'seconds':>8}"
    ]
    for report in reports:
        lines.append(
            f"{report.method:<24} {report.loss:>10.4f} {report.loss / bound - 1:>+11.1%} "
            f"{report.fraction_negative:>14.2%} {report.held_out_negative:>13.1%} "
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
    lr: float = 1e-3,
) -> list[Report]:
    """Trains every way on the same data and batches and prints the comparison."""
    torch.manual_seed(0)
    both = regression_data(2 * num_samples)
    data = RegressionData(both.inputs[:num_samples], both.targets[:num_samples])
    held_out = RegressionData(both.inputs[num_samples:], both.targets[num_samples:])
    bound = lower_bound(data.targets)
    print_fn(
        f"{num_samples} samples, {float((data.targets < 0).float().mean()):.1%} of targets "
        f"negative; {epochs} epochs of batches of {batch_size}, Adam at lr {lr:g}; no fit "
        f"with non-negative outputs has a training MSE below {bound:.4f}"
    )
    settings = (data, held_out, epochs, batch_size, lr, progress)
    reports = [
        train_constrained(*settings),
        train_unconstrained(*settings, alpha=alpha),
        train_unconstrained(*settings, output="exp"),
        train_unconstrained(*settings, output="softplus"),
    ]
    print_fn(format_table(reports, bound))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run(
        args.samples, args.epochs, args.batch_size, args.alpha,
        progress=not args.no_progress, lr=args.lr,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
