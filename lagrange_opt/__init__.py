"""Train PyTorch models under equality and inequality constraints.

Declare the constraints on a :class:`ConstrainedProblem`, pick a saddle-point method
(:class:`ExtraGradient` by default), and call ``optimizer.step(closure)`` in a training loop.
"""

from ._optimizers import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ExtraGradient,
    SimultaneousGDA,
    StepResult,
)
from ._problem import (
    ConstrainedProblem,
    Constraint,
    ConstraintSpec,
    IndexedValue,
    ProblemState,
)

__version__ = "0.1.0"

__all__ = [
    "AlternatingGDA",
    "ConstrainedOptimizer",
    "ConstrainedProblem",
    "Constraint",
    "ConstraintSpec",
    "ExtraGradient",
    "IndexedValue",
    "ProblemState",
    "SimultaneousGDA",
    "StepResult",
    "__version__",
]
