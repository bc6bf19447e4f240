"""The package's optimizer inside a ``LightningModule``, resumable from Lightning's checkpoints.

How it fits Lightning (2.2 and later; docs/how-to/lightning.md):

- **Manual optimisation.** The package's step evaluates the closure and calls ``backward``
  itself (twice per extra-gradient step), so Lightning's automatic optimisation and
  ``manual_backward`` are not used. The step runs as the closure of the primal
  ``LightningOptimizer``'s ``step``, the call that advances ``trainer.global_step``; the
  torch optimizer's own update after that closure finds no gradient (the step leaves none)
  and moves nothing.
- **Checkpoints.** ``configure_optimizers`` returns the torch optimizers the package's
  optimizer steps, so Lightning saves and restores their states; the problem is a
  submodule, so its multipliers and slacks are in the checkpoint's ``state_dict``. The
  rest of the method's state (scales, penalty coefficients, margins, step factor) goes
  under :data:`CHECKPOINT_KEY` and is loaded back in ``on_train_start``, once Lightning has
  restored everything else (on one device it calls ``on_load_checkpoint`` before
  ``configure_optimizers`` builds the method).
- **Precision.** Under ``"16-mixed"`` Lightning scales the loss in ``manual_backward`` and
  steps a ``GradScaler`` around the optimizer, neither of which sees the package's own
  backward passes: the fit is refused by name (:data:`SUPPORTED_PRECISIONS`; on the CPU
  Lightning turns ``"16-mixed"`` into ``"bf16-mixed"``, which has no scaler and runs). The
  package has its own loss scaling (``grad_scaler=``, docs/training.md) for float16
  autocast outside Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision
except ImportError as error:  # pragma: no cover - the extra is installed in the tests
    raise ImportError(
        "lagrange_opt.lightning needs PyTorch Lightning: pip install 'lagrange_opt[lightning]'"
    ) from error
import torch

from lagrange_opt.diagnostics.log_scalars import scalars
from lagrange_opt.diagnostics.step_result import StepResult
from lagrange_opt.methods.base import ConstrainedOptimizer
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import ProblemState

CHECKPOINT_KEY = "lagrange_opt"
"""Where the method's own state goes in Lightning's checkpoint."""

SUPPORTED_PRECISIONS = ("32-true", "64-true", "bf16-mixed", "bf16-true", "16-true")
"""The Trainer precisions a :class:`ConstrainedModule` trains under: those without loss
scaling (``"16-mixed"`` scales the loss in a backward pass the package does not make)."""

_TORCH_OPTIMIZER_PARTS = ("primal", "dual")
"""The parts of ``ConstrainedOptimizer.state_dict()`` that Lightning saves already (its
``optimizer_states``): left out of :data:`CHECKPOINT_KEY` so that they are stored once."""


class ConstrainedModule(L.LightningModule):
    """A ``LightningModule`` whose training steps are the package's optimizer's steps.

    Subclass it: in ``__init__`` call ``super().__init__()`` and set ``self.problem`` to
    your :class:`~lagrange_opt.ConstrainedProblem` (a submodule: its multipliers are then
    moved and checkpointed with the weights); implement :meth:`configure_method`; override
    :meth:`closure` if a batch is not the problem's positional arguments. Each training step
    logs the step's figures (:func:`~lagrange_opt.scalars`, prefixed ``train/``).

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, ProblemState, default_optimizer
        >>> class Mean(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.zeros(2))
        ...         self.add_inequality("sum", ">=")
        ...     def forward(self, target: torch.Tensor) -> ProblemState:
        ...         return ProblemState((self.x - target).square().sum(), {"sum": self.x.sum() - 1})
        >>> class Module(ConstrainedModule):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.problem = Mean()
        ...     def configure_method(self) -> ConstrainedOptimizer:
        ...         return default_optimizer(self.problem)
        >>> Module().automatic_optimization
        False
    """

    problem: ConstrainedProblem

    def __init__(self) -> None:
        super().__init__()
        # The package's optimizer takes the steps; Lightning only counts them.
        self.automatic_optimization = False
        self.method: ConstrainedOptimizer | None = None
        """The package's optimizer, built by :meth:`configure_optimizers`."""
        self._loaded_method_state: dict[str, Any] | None = None

    def configure_method(self) -> ConstrainedOptimizer:
        """Builds the package's optimizer over ``self.problem`` (called once per fit, on
        the module's device): ``default_optimizer(self.problem)``, an ``ExtraGradient``
        with your optimizers, ...

        Raises:
            NotImplementedError: Unless a subclass implements it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement configure_method() -> ConstrainedOptimizer"
        )

    def closure(self, batch: Any) -> Callable[[], ProblemState]:
        """The closure of one batch: ``self.problem(*batch)`` (a tuple or list) or
        ``self.problem(batch)``; override it for any other layout."""
        if isinstance(batch, tuple | list):
            return lambda: self.problem(*batch)
        return lambda: self.problem(batch)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Builds the package's optimizer; returns the torch optimizers it steps, whose
        states Lightning checkpoints.

        Raises:
            ValueError: If the Trainer's precision is not in :data:`SUPPORTED_PRECISIONS`.
            TypeError: If :meth:`configure_method` returns no ``ConstrainedOptimizer``, or
                one with a list of primal optimizers.
        """
        precision = str(self.trainer.precision)
        plugin = self.trainer.precision_plugin
        scaled = isinstance(plugin, MixedPrecision) and plugin.scaler is not None
        if scaled or precision not in SUPPORTED_PRECISIONS:
            raise ValueError(
                f"precision {precision!r} is not supported by ConstrainedModule: Lightning "
                "scales the loss in manual_backward, and the package's step makes its own "
                f"backward passes; use one of {list(SUPPORTED_PRECISIONS)}, or the "
                "package's own loss scaling (grad_scaler=) outside Lightning"
            )
        method = self.configure_method()
        if not isinstance(method, ConstrainedOptimizer):
            raise TypeError(
                "configure_method() must return a ConstrainedOptimizer, got "
                f"{type(method).__name__}"
            )
        if not isinstance(method.primal_optimizer, torch.optim.Optimizer):
            raise TypeError(
                "ConstrainedModule steps one primal optimizer: configure_method() returned "
                "a method over a list of them"
            )
        self.method = method
        optimizers = [method.primal_optimizer]
        if method.dual_optimizer is not None:
            optimizers.append(method.dual_optimizer)
        return optimizers

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One step of the package's optimizer on the batch, counted by Lightning."""
        method = self.method
        assert method is not None, "configure_optimizers() builds the method"
        closure = self.closure(batch)

        def step() -> StepResult:
            result = method.step(closure)
            # The torch optimizer's own update runs after this closure: it must find no
            # gradient to apply.
            method.zero_grad(set_to_none=True)
            return result

        optimizers = self.optimizers()
        primal = optimizers[0] if isinstance(optimizers, list) else optimizers
        result: StepResult = primal.step(closure=step)
        size = _batch_size(batch)
        self.log_dict(scalars(result, prefix="train/"), on_step=True, on_epoch=False,
                      batch_size=size)  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the method's own state (the torch optimizers' are in the checkpoint's
        ``optimizer_states`` already)."""
        if self.method is not None:
            state = self.method.state_dict()
            for part in _TORCH_OPTIMIZER_PARTS:
                state.pop(part, None)
            checkpoint[CHECKPOINT_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps the method's state until Lightning has restored the rest."""
        self._loaded_method_state = checkpoint.get(CHECKPOINT_KEY)

    def on_train_start(self) -> None:
        """Loads the kept state, now that Lightning has restored the weights, the
        multipliers, the torch optimizers' states and its loops."""
        state, method = self._loaded_method_state, self.method
        if state is None or method is None:
            return
        dual = method.dual_optimizer
        parts = {
            "primal": method.primal_optimizer.state_dict(),
            "dual": None if dual is None else dual.state_dict(),
        }
        # load_state_dict wants every part: the torch optimizers' own, restored by
        # Lightning a moment ago, are loaded into them again unchanged.
        method.load_state_dict({**state, **parts})
        self._loaded_method_state = None


def _batch_size(batch: Any) -> int | None:
    """The batch's size as Lightning logs it: the first dimension of its first tensor."""
    first = batch[0] if isinstance(batch, tuple | list) and batch else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else None
