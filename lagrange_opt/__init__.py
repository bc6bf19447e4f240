"""Train PyTorch models under equality and inequality constraints.

Declare the constraints on a :class:`ConstrainedProblem`, pick a saddle-point method
(:func:`default_optimizer` builds one that needs no tuning: :class:`ExtraGradient` on the
augmented Lagrangian with a backtracking step and scaling), and call
``optimizer.step(closure)`` in a training loop; :func:`kkt` says how far a point is from a
solution, and :func:`scalars` turns a step's figures into a dict for a logger. Problems with
known solutions to try settings on are in :mod:`lagrange_opt.problems`.
"""

from lagrange_opt.diagnostics.kkt import ConstraintFigures, KKTResiduals, kkt
from lagrange_opt.diagnostics.log_scalars import scalars
from lagrange_opt.diagnostics.step_result import StepResult
from lagrange_opt.evaluation.micro_batches import MicroBatch
from lagrange_opt.maths.augmented import AugmentedLagrangian
from lagrange_opt.maths.calibration import calibrated_offset
from lagrange_opt.maths.stepsize import AdaptiveStep
from lagrange_opt.methods.base import ConstrainedOptimizer
from lagrange_opt.methods.default import (
    DEFAULT_AUGMENTED,
    DEFAULT_DUAL_LR,
    DEFAULT_LR,
    USER_PRIMAL_DUAL_LR,
    default_optimizer,
)
from lagrange_opt.methods.extragradient import ExtraGradient
from lagrange_opt.methods.gda import AlternatingGDA, SimultaneousGDA
from lagrange_opt.methods.optimistic import OptimisticGDA
from lagrange_opt.problem.bounds import Bounds
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import (
    Constraint,
    ConstraintSpec,
    IndexedValue,
    ProblemState,
    Treatment,
)
from lagrange_opt.problem.proxy import Proxy
from lagrange_opt.problem.validation import NonFiniteError
from lagrange_opt.updates.nupi import NuPI
from lagrange_opt.updates.optimizer_group import OptimizerGroup

__version__ = "0.1.0"

from lagrange_opt.diagnostics.best_iterate import BestIterate, Mixture, mixture_weights

__all__ = [
    "DEFAULT_AUGMENTED",
    "DEFAULT_DUAL_LR",
    "DEFAULT_LR",
    "USER_PRIMAL_DUAL_LR",
    "AdaptiveStep",
    "AlternatingGDA",
    "AugmentedLagrangian",
    "BestIterate",
    "Bounds",
    "ConstrainedOptimizer",
    "ConstrainedProblem",
    "Constraint",
    "ConstraintFigures",
    "ConstraintSpec",
    "ExtraGradient",
    "IndexedValue",
    "KKTResiduals",
    "MicroBatch",
    "Mixture",
    "NonFiniteError",
    "NuPI",
    "OptimisticGDA",
    "OptimizerGroup",
    "ProblemState",
    "Proxy",
    "SimultaneousGDA",
    "StepResult",
    "Treatment",
    "__version__",
    "calibrated_offset",
    "default_optimizer",
    "kkt",
    "mixture_weights",
    "scalars",
]
