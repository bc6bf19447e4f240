"""A constrained regression trained by PyTorch Lightning, resumable from Lightning's checkpoints.

A linear model is fitted to generated data whose targets are mostly negative, subject to
one indexed inequality per training sample: the output on every training sample must be
``>= 0``. The ``LightningModule`` uses manual optimisation and hands each minibatch of
``(x, y, index)`` to the package's optimizer. The ``ConstrainedProblem`` holding the
multipliers is a submodule, so Lightning's checkpoint holds them beside the weights::

    python examples/lightning_recipe.py                     # 4 s of training on 2 cores
    python examples/lightning_recipe.py --method fixed
    python examples/lightning_recipe.py --resume-at 100     # stop, checkpoint, resume

The module is a :class:`lagrange_opt.lightning.ConstrainedModule` (the optional extra
``lagrange_opt[lightning]``): it gives the module its problem and says which of the
package's optimizers steps it; Lightning counts the steps, logs the figures, and its
checkpoints hold the multipliers, both torch optimizers' states and the method's own state
(docs/how-to/lightning.md; tests/test_lightning.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import lagrange_opt
from lagrange_opt import (
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
)
from lagrange_opt.lightning import ConstrainedModule


def make_data(num_samples: int = 48, features: int = 256, seed: int = 0) -> TensorDataset:
    """Inputs, targets (about two thirds of them negative) and each sample's index.

    More features than samples: a linear model can meet every constraint and fit every
    other target exactly, so the constrained fit is known in closed form
    (:func:`solution`). The index names the sample's row of the multiplier table,
    whichever batch the sample lands in.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, features, generator=generator) / features**0.5
    weights = torch.randn(features, generator=generator)
    noise = 0.1 * torch.randn(num_samples, generator=generator)
    y = x @ weights - 0.5 + noise
    return TensorDataset(x, y, torch.arange(num_samples))


def solution(y: Tensor) -> tuple[Tensor, Tensor]:
    """The constrained least-squares fit's outputs and multipliers on the training set.

    With linearly independent inputs (more features than samples) the outputs can take
    any values, so the problem splits into one per sample: minimise ``(p - y)**2`` subject
    to ``p >= 0``, solved by ``p = max(y, 0)`` with the multiplier ``2 * max(-y, 0)``,
    the derivative of the sample's loss there.
    """
    return y.clamp(min=0.0), 2.0 * (-y).clamp(min=0.0)


def make_loader(data: TensorDataset, batch_size: int = 16, seed: int = 0) -> DataLoader:
    """Minibatches of ``(x, y, index)``, shuffled in an order fixed by ``seed`` and the epoch.

    ``DataLoader(shuffle=True)`` draws each epoch's order from the global random number
    generator, whose state a Lightning checkpoint does not hold, so a resumed run would
    see other batches than an uninterrupted one. ``DistributedSampler`` with one replica
    shuffles with a generator seeded by ``seed + epoch``, and Lightning calls its
    ``set_epoch`` at the start of every epoch, the first one after a resume included.
    """
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


class NonNegativeRegression(ConstrainedProblem):
    """Least squares with one inequality per training sample: its output must be ``>= 0``.

    Args:
        num_samples: Size of the training set (rows of the multiplier table).
        features: Number of input features.
    """

    def __init__(self, num_samples: int, features: int) -> None:
        super().__init__()
        self.model = nn.Linear(features, 1)
        self.add_inequality("nonnegative", ">=", num_samples=num_samples)

    def forward(self, x: Tensor, y: Tensor, indices: Tensor) -> ProblemState:
        """The batch's mean squared error, and its outputs as the rows ``indices``."""
        pred = self.model(x).squeeze(-1)
        loss = nn.functional.mse_loss(pred, y)
        return ProblemState(loss, {"nonnegative": IndexedValue(pred, indices)})


class ConstrainedRegression(ConstrainedModule):
    """:class:`NonNegativeRegression` trained by the package under Lightning.

    Args:
        num_samples: Size of the training set.
        features: Number of input features.
        method: ``"default"``: :func:`lagrange_opt.default_optimizer`, nothing to tune;
            ``"fixed"``: :class:`lagrange_opt.ExtraGradient` with fixed learning rates.
        lr: Primal learning rate of the fixed-step method.
        dual_lr: Dual learning rate of the fixed-step method.
        momentum: Momentum of the fixed-step method's primal SGD.
    """

    def __init__(
        self,
        num_samples: int,
        features: int,
        method: str = "default",
        lr: float = 0.5,
        dual_lr: float = 1.0,
        momentum: float = 0.0,
    ) -> None:
        super().__init__()
        if method not in ("default", "fixed"):
            raise ValueError(f"method must be 'default' or 'fixed', got {method!r}")
        self.save_hyperparameters()
        self.problem = NonNegativeRegression(num_samples, features)

    def configure_method(self) -> ConstrainedOptimizer:
        """The package's optimizer; a batch ``(x, y, indices)`` is the problem's arguments."""
        if self.hparams["method"] == "default":
            return lagrange_opt.default_optimizer(self.problem)
        primal = torch.optim.SGD(
            self.problem.primal_parameters(), lr=self.hparams["lr"],
            momentum=self.hparams["momentum"],
        )  # fmt: skip
        dual = torch.optim.SGD(self.problem.dual_parameters(), lr=self.hparams["dual_lr"],
                               maximize=True)  # fmt: skip
        return ExtraGradient(self.problem, primal, dual)


def make_trainer(max_epochs: int, root: str | Path, **settings: Any) -> L.Trainer:
    """A one-device CPU Trainer with deterministic algorithms, no progress bar, no model
    summary, no logger and no checkpoint callback, unless ``settings`` say otherwise."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "deterministic": True,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
        "default_root_dir": str(root),
    }
    return L.Trainer(max_epochs=max_epochs, **{**defaults, **settings})


@torch.no_grad()
def outputs(module: ConstrainedRegression, data: TensorDataset) -> Tensor:
    """The model's output on every training sample."""
    x = data.tensors[0].to(module.device, module.dtype)
    return module.problem.model(x).squeeze(-1).cpu()


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Trains (optionally stopping, checkpointing and resuming in a new Trainer) and prints
    the final figures against the closed-form solution.

    Returns:
        ``min_output`` (the smallest training output), ``output_error`` and
        ``multiplier_error`` (the largest distances from :func:`solution`), ``mse`` and
        ``steps`` (``trainer.global_step``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000, help="epochs in all (1000)")
    parser.add_argument("--samples", type=int, default=48, help="training samples (48)")
    parser.add_argument("--features", type=int, default=256, help="input features (256)")
    parser.add_argument("--batch-size", type=int, default=16, help="minibatch size (16)")
    parser.add_argument(
        "--method", choices=["default", "fixed"], default="default",
        help="default_optimizer (the default), or extra-gradient with fixed learning rates",
    )  # fmt: skip
    parser.add_argument(
        "--resume-at", type=int, default=None, metavar="EPOCH",
        help="stop after this many epochs, save a checkpoint and resume from it with a new "
        "Trainer and a new module",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation, order (0)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)
    data = make_data(args.samples, args.features, args.seed)
    loader = make_loader(data, args.batch_size, args.seed)
    module = ConstrainedRegression(args.samples, args.features, method=args.method)
    with tempfile.TemporaryDirectory() as root:
        trainer = make_trainer(args.epochs, root)
        if args.resume_at is None:
            trainer.fit(module, loader)
        else:
            first = make_trainer(args.resume_at, root)
            first.fit(module, loader)
            path = Path(root) / "stopped.ckpt"
            first.save_checkpoint(path, weights_only=False)  # optimizer states included
            # A new module, as in a new process: the weights, the multipliers and both
            # optimizers' states come from the checkpoint.
            module = ConstrainedRegression(args.samples, args.features, method=args.method)
            trainer.fit(module, loader, ckpt_path=path, weights_only=True)

    y = data.tensors[1]
    pred = outputs(module, data)
    best_pred, best_multipliers = solution(y)
    multipliers = module.problem.dual_parameters()[0].detach()
    figures = {
        "min_output": float(pred.min()),
        "output_error": float((pred - best_pred).abs().max()),
        "multiplier_error": float((multipliers - best_multipliers).abs().max()),
        "mse": float(nn.functional.mse_loss(pred, y)),
        "steps": float(trainer.global_step),
    }
    print(
        f"{args.method}: {args.epochs} epochs, {trainer.global_step} steps, "
        f"{time.perf_counter() - started:.1f} s\n"
        f"  smallest training output {figures['min_output']:.1e} (constraint: >= 0; "
        f"{float((y < 0).float().mean()):.0%} of the targets are negative)\n"
        f"  largest distance from the solution: outputs {figures['output_error']:.1e}, "
        f"multipliers {figures['multiplier_error']:.1e}\n"
        f"  train MSE {figures['mse']:.4f} (the solution's "
        f"{float(nn.functional.mse_loss(best_pred, y)):.4f})"
    )
    return figures


if __name__ == "__main__":
    main()
