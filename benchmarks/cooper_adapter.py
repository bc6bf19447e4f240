"""Cooper 1.0.1 on the problems of :mod:`lagrange_opt.problems`, for side-by-side runs.

:class:`CooperProblem` wraps a :class:`~lagrange_opt.ConstrainedProblem` (declared with the
projection treatment, whose own multipliers are left unused) as a Cooper
``ConstrainedMinimizationProblem``: each constraint gets a Cooper multiplier (a
``DenseMultiplier``, or an ``IndexedMultiplier`` for an indexed constraint), which Cooper
projects onto ``>= 0`` for inequalities. Cooper writes inequalities as ``g(x) <= 0``, the
standard form of :func:`lagrange_opt._lagrangian.standard_form`.

:class:`CooperMethod` builds Cooper's ``ExtrapolationConstrainedOptimizer`` (with its
``ExtraSGD``) or ``SimultaneousOptimizer`` (with ``torch.optim.SGD``) at given learning
rates, and steps it with the same closure arguments as lagrange_opt's methods.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import cooper
import torch
from torch import Tensor

from lagrange_opt import ConstrainedProblem, ConstraintSpec
from lagrange_opt._evaluation import check_state
from lagrange_opt._lagrangian import standard_form, violation

Scheme = Literal["extrapolation", "simultaneous"]


class CooperStep(NamedTuple):
    """The objective and the largest violation at the point a Cooper step started from."""

    objective: Tensor
    max_violation: Tensor


class CooperProblem(cooper.ConstrainedMinimizationProblem):
    """A lagrange_opt problem seen through Cooper's interface.

    An indexed constraint of per-sample shape ``shape`` becomes ``num_samples * size``
    scalar constraints, sample ``i``'s element ``j`` at ``i * size + j``.
    """

    def __init__(self, problem: ConstrainedProblem) -> None:
        super().__init__()
        self.problem = problem
        self.specs: dict[cooper.Constraint, ConstraintSpec] = {}
        self.wrapped: dict[str, cooper.Constraint] = {}
        dtype = problem.primal_parameters()[0].dtype
        for name, constraint in problem.constraint_items():
            spec = constraint.spec
            if spec.treatment not in ("multiplier", "projection"):
                raise ValueError(f"constraint '{name}': declare it with treatment='projection'")
            multiplier = (
                cooper.multipliers.IndexedMultiplier(
                    num_constraints=math.prod(spec.table_shape), dtype=dtype
                )
                if spec.indexed
                else cooper.multipliers.DenseMultiplier(
                    num_constraints=math.prod(spec.shape), dtype=dtype
                )
            )
            constraint_type = (
                cooper.ConstraintType.EQUALITY
                if spec.kind == "equality"
                else cooper.ConstraintType.INEQUALITY
            )
            wrapped = cooper.Constraint(constraint_type=constraint_type, multiplier=multiplier)
            self.wrapped[name] = wrapped
            self.specs[wrapped] = spec
            self._register_constraint(name, wrapped)

    def compute_cmp_state(self, args: tuple[Any, ...] = ()) -> cooper.CMPState:
        objective, checked = check_state(self.problem, self.problem(*args))
        observed = {}
        for name, constraint, value, indices in checked:
            spec = constraint.spec
            features = None
            if indices is not None:
                size = math.prod(spec.shape)
                offsets = torch.arange(size, device=indices.device)
                features = (indices[:, None] * size + offsets).reshape(-1)
            standard = standard_form(value, spec).reshape(-1)
            observed[self.wrapped[name]] = cooper.ConstraintState(
                violation=standard, constraint_features=features
            )
        return cooper.CMPState(loss=objective, observed_constraints=observed)


class CooperMethod:
    """One of Cooper's constrained optimizers over a wrapped problem, with plain SGD steps.

    Args:
        problem: The problem, its inequalities declared with ``treatment="projection"``.
        scheme: ``"extrapolation"`` (``ExtrapolationConstrainedOptimizer`` with
            ``ExtraSGD``) or ``"simultaneous"`` (``SimultaneousOptimizer`` with SGD).
        lr: Primal learning rate.
        dual_lr: Dual learning rate.
    """

    def __init__(self, problem: ConstrainedProblem, scheme: Scheme, lr: float, dual_lr: float):
        self.cmp = CooperProblem(problem)
        primal = problem.primal_parameters()
        dual = list(self.cmp.dual_parameters())
        self.optimizer: cooper.optim.ConstrainedOptimizer
        if scheme == "extrapolation":
            self.optimizer = cooper.optim.ExtrapolationConstrainedOptimizer(
                cmp=self.cmp,
                primal_optimizers=cooper.optim.ExtraSGD(primal, lr=lr),
                dual_optimizers=cooper.optim.ExtraSGD(dual, lr=dual_lr, maximize=True),
            )
        else:
            self.optimizer = cooper.optim.SimultaneousOptimizer(
                cmp=self.cmp,
                primal_optimizers=torch.optim.SGD(primal, lr=lr),
                dual_optimizers=torch.optim.SGD(dual, lr=dual_lr, maximize=True),
            )

    def step(self, *args: Any) -> CooperStep:
        """One Cooper ``roll`` on the closure arguments ``args``."""
        roll_out = self.optimizer.roll(compute_cmp_state_kwargs={"args": args})
        state = roll_out.cmp_state
        maxima = [
            violation(constraint_state.violation.detach(), self.cmp.specs[constraint]).amax()
            for constraint, constraint_state in state.observed_constraints.items()
        ]
        max_violation = torch.stack(maxima).amax() if maxima else state.loss.new_zeros(())
        return CooperStep(state.loss.detach(), max_violation)
