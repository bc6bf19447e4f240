"""lagrange_opt.lightning.ConstrainedModule, through examples/lightning_recipe.py: the
package's optimizer inside a Lightning ``LightningModule`` (manual optimisation, CPU, one
device), Lightning's checkpoints resuming it exactly, the precisions it refuses."""

from __future__ import annotations

import csv
import math
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import load_example

L = pytest.importorskip("lightning")

from lagrange_opt.lightning import CHECKPOINT_KEY, ConstrainedModule  # noqa: E402

EPOCHS = 300
"""The training run: 48 samples in batches of 16, so 900 steps of the recipe's fixed-step
extra-gradient (its default needs 3,000 for the same accuracy; the tests below resume it
and compare it with a plain loop)."""

FEASIBILITY_TOL = 1e-4
"""Every training output must be >= -FEASIBILITY_TOL at the end (measured: -8.2e-6)."""

SOLUTION_TOL = 1e-3
"""Outputs and multipliers within this of the closed-form solution (measured: 1.1e-4 and
1.0e-4)."""


recipe = load_example("lightning_recipe")


@pytest.fixture(autouse=True, scope="module")
def _restore_global_state() -> Iterator[None]:
    """``Trainer(deterministic=True)`` and ``seed_everything`` change process-wide state
    (deterministic algorithms, cuDNN's benchmark flag, environment variables, the global
    random number generators) and leave it so: put it back for the tests that follow."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    names = ("CUBLAS_WORKSPACE_CONFIG", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    environment = {name: os.environ.get(name) for name in names}
    generators = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda_generators = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    random.setstate(generators[0])
    np.random.set_state(generators[1])
    torch.random.set_rng_state(generators[2])
    if cuda_generators is not None:
        torch.cuda.set_rng_state_all(cuda_generators)


class Trained:
    """One training run of the recipe, shared by the tests that read it."""

    def __init__(self, root: Path) -> None:
        L.seed_everything(0, verbose=False)
        self.data = recipe.make_data()
        self.module = recipe.ConstrainedRegression(
            len(self.data), self.data.tensors[0].shape[1], method="fixed"
        )
        logger = L.pytorch.loggers.CSVLogger(root, name="csv", version=0)
        self.trainer = recipe.make_trainer(EPOCHS, root, logger=logger, log_every_n_steps=1)
        self.trainer.fit(self.module, recipe.make_loader(self.data))
        self.metrics = Path(logger.log_dir) / "metrics.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("trained"))


def test_training_reaches_the_constrained_solution(trained: Trained) -> None:
    y = trained.data.tensors[1]
    assert float(y.min()) < -1.0  # the least-squares fit, y itself, breaks the constraint
    pred = recipe.outputs(trained.module, trained.data)
    assert float(pred.min()) >= -FEASIBILITY_TOL
    best_pred, best_multipliers = recipe.solution(y)
    multipliers = trained.module.problem.dual_parameters()[0].detach()
    assert torch.allclose(pred, best_pred, rtol=0.0, atol=SOLUTION_TOL)
    assert torch.allclose(multipliers, best_multipliers, rtol=0.0, atol=SOLUTION_TOL)
    # Lightning counted every step: max_steps and the checkpoints' names read this.
    assert trained.trainer.global_step == EPOCHS * 3


def test_logged_keys_include_the_per_constraint_figures(trained: Trained) -> None:
    with trained.metrics.open() as file:
        rows = list(csv.DictReader(file))
    figures = {
        "train/objective", "train/lagrangian", "train/max_violation", "train/mean_violation",
        "train/violation/nonnegative", "train/multiplier_norm/nonnegative",
    }  # fmt: skip
    assert figures <= set(rows[0])
    assert len(rows) == EPOCHS * 3  # one row per step (log_every_n_steps=1)
    assert [int(row["step"]) for row in rows] == list(range(EPOCHS * 3))
    assert all(math.isfinite(float(row[key])) for row in rows for key in figures)
    # The figures are the step's: violated at the start, feasible at the end.
    assert float(rows[0]["train/violation/nonnegative"]) > 0.01
    assert float(rows[-1]["train/violation/nonnegative"]) <= FEASIBILITY_TOL
    assert float(rows[-1]["train/multiplier_norm/nonnegative"]) > 0.1


def _assert_bitwise_equal(left: Any, right: Any, where: str = "") -> None:
    """Nested dicts, lists and tensors equal, tensors with ``torch.equal``."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype, where
        assert torch.equal(left, right), where
    elif isinstance(left, dict):
        assert isinstance(right, dict) and left.keys() == right.keys(), where
        for key in left:
            _assert_bitwise_equal(left[key], right[key], f"{where}/{key}")
    elif isinstance(left, list | tuple):
        assert type(left) is type(right) and len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right)):
            _assert_bitwise_equal(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


def _method_state(module: Any) -> dict[str, Any]:
    """The package optimizer's own state (without the torch optimizers')."""
    state = module.method.state_dict()
    return {key: value for key, value in state.items() if key not in ("primal", "dual")}


@pytest.mark.parametrize("method", ["default", "fixed"])
@pytest.mark.parametrize("source", ["ModelCheckpoint", "save_checkpoint"])
def test_resume_from_a_lightning_checkpoint_is_exact(
    method: str, source: str, tmp_path: Path
) -> None:
    """6 epochs straight equal 3 epochs, a Lightning checkpoint, and 3 more epochs in a new
    Trainer with a new module (``fit(..., ckpt_path=...)``), bitwise: the weights, the
    multipliers, both torch optimizers' states and the package optimizer's own state. The
    checkpoint is the one ``ModelCheckpoint`` wrote after epoch 3 of the straight run, or
    ``trainer.save_checkpoint`` after a separate 3-epoch run."""
    total, stop = 6, 3
    data = recipe.make_data()
    features = data.tensors[0].shape[1]
    # With momentum the primal SGD has a state to restore; the default's SGD has none, but
    # the method has scales, penalties, the update rule's window and a step factor.
    settings = {"method": method, "momentum": 0.5 if method == "fixed" else 0.0}

    def new_module() -> Any:
        L.seed_everything(0, verbose=False)
        return recipe.ConstrainedRegression(len(data), features, **settings)

    straight = new_module()
    saver = L.pytorch.callbacks.ModelCheckpoint(tmp_path / "every", save_top_k=-1)
    trainer = recipe.make_trainer(total, tmp_path, enable_checkpointing=True, callbacks=[saver])
    trainer.fit(straight, recipe.make_loader(data))

    if source == "ModelCheckpoint":
        # Named from the epoch and trainer.global_step: 3 steps per epoch were counted.
        path = tmp_path / "every" / f"epoch={stop - 1}-step={3 * stop}.ckpt"
        assert path.exists(), sorted(p.name for p in (tmp_path / "every").iterdir())
    else:
        first = new_module()
        stopped = recipe.make_trainer(stop, tmp_path)
        stopped.fit(first, recipe.make_loader(data))
        path = tmp_path / "stopped.ckpt"
        stopped.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert CHECKPOINT_KEY in checkpoint and len(checkpoint["optimizer_states"]) == 2
    saved = checkpoint[CHECKPOINT_KEY]
    if method == "default":  # something to restore, that a fresh optimizer would lack
        assert saved["formulation"]["scales"] is not None and saved["step_factor"] != 1.0
    else:
        assert checkpoint["optimizer_states"][0]["state"]  # the momentum buffers

    resumed = new_module()
    again = recipe.make_trainer(total, tmp_path)
    again.fit(resumed, recipe.make_loader(data), ckpt_path=path, weights_only=True)

    assert again.global_step == trainer.global_step == 3 * total
    _assert_bitwise_equal(resumed.state_dict(), straight.state_dict(), "module")
    for index, (mine, theirs) in enumerate(zip(again.optimizers, trainer.optimizers)):
        _assert_bitwise_equal(mine.state_dict(), theirs.state_dict(), f"optimizer {index}")
    _assert_bitwise_equal(_method_state(resumed), _method_state(straight), "method")
    assert resumed.problem.dual_parameters()[0].abs().max() > 0  # the multipliers moved


@pytest.mark.parametrize("method", ["default", "fixed"])
def test_lightning_steps_equal_a_plain_loop(method: str, tmp_path: Path) -> None:
    """The Trainer adds nothing to the package's steps: the torch optimizer's own update
    after the closure (``LightningOptimizer.step`` -> ``SGD.step(closure)``) moves nothing,
    momentum included. 3 epochs through Lightning equal the same steps in a plain loop over
    the same batches, bitwise."""
    data = recipe.make_data()
    features = data.tensors[0].shape[1]
    settings = {"method": method, "momentum": 0.5 if method == "fixed" else 0.0}

    L.seed_everything(0, verbose=False)
    trained = recipe.ConstrainedRegression(len(data), features, **settings)
    trainer = recipe.make_trainer(3, tmp_path)
    trainer.fit(trained, recipe.make_loader(data))

    L.seed_everything(0, verbose=False)
    plain = recipe.ConstrainedRegression(len(data), features, **settings)
    plain.method = plain.configure_method()
    loader = recipe.make_loader(data)
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for x, y, indices in loader:
            plain.method.step(lambda x=x, y=y, indices=indices: plain.problem(x, y, indices))

    _assert_bitwise_equal(trained.state_dict(), plain.state_dict(), "module")
    _assert_bitwise_equal(trained.method.state_dict(), plain.method.state_dict(), "optimizer")
    assert trainer.global_step == 9


def test_bf16_mixed_trains_under_autocast(tmp_path: Path) -> None:
    """Lightning enters bfloat16 autocast around ``training_step``: every evaluation of the
    package's step runs under it, and the run heads for the solution (20 epochs: every
    output above -0.05, from -2.6 for the targets)."""
    L.seed_everything(0, verbose=False)
    data = recipe.make_data()
    module = recipe.ConstrainedRegression(len(data), data.tensors[0].shape[1])
    trainer = recipe.make_trainer(20, tmp_path, precision="bf16-mixed")
    trainer.fit(module, recipe.make_loader(data))
    assert trainer.global_step == 60
    assert float(recipe.outputs(module, data).min()) >= -0.05


def test_a_loss_scaling_precision_is_refused(tmp_path: Path) -> None:
    """A GradScaler around the optimizer never sees the package's backward passes: the fit
    is refused by name (on CUDA "16-mixed" builds this plugin; on the CPU by hand)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    data = recipe.make_data()
    module = recipe.ConstrainedRegression(len(data), data.tensors[0].shape[1])
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = recipe.make_trainer(1, tmp_path, precision=None, plugins=[plugin])
    with pytest.raises(ValueError, match=r"^precision '16-mixed' is not supported by Constr"):
        trainer.fit(module, recipe.make_loader(data))
    assert trainer.global_step == 0


class _NoMethod(ConstrainedModule):
    def __init__(self) -> None:
        super().__init__()
        self.problem = recipe.NonNegativeRegression(4, 2)


class _NotAMethod(_NoMethod):
    def configure_method(self) -> Any:
        return torch.optim.SGD(self.problem.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("module", "error", "message"),
    [
        (_NoMethod, NotImplementedError,
         "_NoMethod must implement configure_method() -> ConstrainedOptimizer"),
        (_NotAMethod, TypeError, "configure_method() must return a ConstrainedOptimizer, got SGD"),
    ],
)  # fmt: skip
def test_a_module_without_a_method_is_refused(
    module: type, error: type[Exception], message: str, tmp_path: Path
) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(4, 2), torch.randn(4), torch.arange(4))
    trainer = recipe.make_trainer(1, tmp_path)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        trainer.fit(module(), torch.utils.data.DataLoader(data, batch_size=2))
