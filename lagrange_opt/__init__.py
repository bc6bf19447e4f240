"""Train PyTorch models under equality and inequality constraints.

Declare the constraints on a :class:`ConstrainedProblem`, pick a saddle-point method
(:func:`default_optimizer` builds one that needs no tuning: :class:`ExtraGradient` on the
augmented Lagrangian with a backtracking step and scaling), and call
``optimizer.step(closure)`` in a training loop; :func:`kkt` says how far a point is from a
solution, and :func:`scalars` turns a step's figures into a dict for a logger. Problems with
known solutions to try settings on are in :mod:`lagrange_opt.problems`.
"""

from ._accumulation import MicroBatch
from ._augmented import AugmentedLagrangian
from ._bounds import Bounds
from ._calibration import calibrated_offset
from ._defaults import (
    DEFAULT_AUGMENTED,
    DEFAULT_DUAL_LR,
    DEFAULT_LR,
    USER_PRIMAL_DUAL_LR,
    default_optimizer,
)
from ._extragradient import ExtraGradient
from ._gda import AlternatingGDA, SimultaneousGDA
from ._kkt import ConstraintFigures, KKTResiduals, kkt
from ._logging import scalars
from ._nupi import NuPI
from ._optimistic import OptimisticGDA
from ._optimizer_group import OptimizerGroup
from ._optimizers import ConstrainedOptimizer
from ._problem import (
    ConstrainedProblem,
    Constraint,
    ConstraintSpec,
    IndexedValue,
    ProblemState,
    Treatment,
)
from ._proxy import Proxy
from ._step_result import StepResult
from ._stepsize import AdaptiveStep
from ._validation import NonFiniteError

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_AUGMENTED",
    "DEFAULT_DUAL_LR",
    "DEFAULT_LR",
    "USER_PRIMAL_DUAL_LR",
    "AdaptiveStep",
    "AlternatingGDA",
    "AugmentedLagrangian",
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
    "scalars",
]
