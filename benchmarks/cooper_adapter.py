"""Cooper 1.0.1 on the problems of :mod:`lagrange_opt.problems`, for side-by-side runs.

:class:`CooperProblem` wraps a :class:`~lagrange_opt.ConstrainedProblem` (declared with the
projection treatment, whose own multipliers are left unused) as a Cooper
``ConstrainedMinimizationProblem``: each constraint gets a Cooper multiplier (a
``DenseMultiplier``, or an ``IndexedMultiplier`` for an indexed constraint), which Cooper
projects onto ``>= 0`` for inequalities. Cooper writes inequalities as ``g(x) <= 0``, the
standard form of :func:`lagrange_opt.problems.standard_form`. Under the augmented
formulation every constraint uses Cooper's ``cooper.formulations.AugmentedLagrangian`` with
a fixed penalty coefficient (a ``DensePenaltyCoefficient``, or an
``IndexedPenaltyCoefficient`` for an indexed constraint).

:class:`CooperMethod` builds one of Cooper's constrained optimizers at given learning rates
and steps it with the same closure arguments as lagrange_opt's methods:

- ``"extrapolation"``: ``ExtrapolationConstrainedOptimizer`` with ``ExtraSGD`` on both
  sides (two evaluations per step);
- ``"simultaneous"``: ``SimultaneousOptimizer`` with ``torch.optim.SGD`` (one);
- ``"nupi"``: ``SimultaneousOptimizer`` with ``torch.optim.SGD`` on the primal side and
  Cooper's ``nuPI`` on the multipliers (gains ``kp``, ``ki = 1``, ``nu = 0``, its average
  started at zero: the settings of :class:`lagrange_opt.NuPI` it is compared with);
- ``"augmented"``: the ``AugmentedLagrangian`` formulation with the optimizer Cooper's
  documentation prescribes for it, ``AlternatingPrimalDualOptimizer`` with
  ``torch.optim.SGD`` on both sides: a primal step, then a dual step with the violations
  re-evaluated at the new primal point (two evaluations per step).

Variable bounds declared with :meth:`~lagrange_opt.ConstrainedProblem.add_bounds` are kept
the way lagrange_opt keeps them: the parameters are projected onto their box after every
primal update of Cooper's (its extrapolation included). A problem with bounds and no
constraint has no multiplier, and Cooper's constrained optimizers refuse an empty dual
optimizer: every scheme then runs Cooper's ``UnconstrainedOptimizer`` with
``torch.optim.SGD`` (projected gradient descent, one evaluation per step).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import cooper
import torch
from torch import Tensor

from lagrange_opt import ConstrainedProblem, ConstraintSpec, KKTResiduals, kkt
from lagrange_opt.problems import check_state, standard_form, violation

Scheme = Literal["extrapolation", "simultaneous", "augmented", "nupi"]

SCHEMES: tuple[Scheme, ...] = ("extrapolation", "simultaneous", "augmented", "nupi")


class CooperStep(NamedTuple):
    """The objective and the largest violation at the point a Cooper step started from, and
    how many times the step evaluated the problem."""

    objective: Tensor
    max_violation: Tensor
    evaluations: int = 1


class CooperProblem(cooper.ConstrainedMinimizationProblem):
    """A lagrange_opt problem seen through Cooper's interface.

    An indexed constraint of per-sample shape ``shape`` becomes ``num_samples * size``
    scalar constraints, sample ``i``'s element ``j`` at ``i * size + j``.

    Args:
        problem: The problem, its inequalities declared with ``treatment="projection"``.
        penalty: ``None`` for Cooper's ``Lagrangian`` formulation; a penalty coefficient
            for its ``AugmentedLagrangian`` formulation, with that fixed coefficient.

    Attributes:
        evaluations: How many times :meth:`compute_cmp_state` evaluated the problem.
        first_state: The first state computed since :meth:`start_step` (the state at the
            point the step started from).
    """

    def __init__(self, problem: ConstrainedProblem, penalty: float | None = None) -> None:
        super().__init__()
        self.problem = problem
        self.specs: dict[cooper.Constraint, ConstraintSpec] = {}
        self.wrapped: dict[str, cooper.Constraint] = {}
        self.evaluations = 0
        self.first_state: cooper.CMPState | None = None
        dtype = problem.primal_parameters()[0].dtype
        for name, constraint in problem.constraint_items():
            spec = constraint.spec
            if spec.treatment not in ("multiplier", "projection"):
                raise ValueError(f"constraint '{name}': declare it with treatment='projection'")
            size = math.prod(spec.table_shape if spec.indexed else spec.shape)
            multiplier_type = (
                cooper.multipliers.IndexedMultiplier
                if spec.indexed
                else cooper.multipliers.DenseMultiplier
            )
            multiplier = multiplier_type(num_constraints=size, dtype=dtype)
            constraint_type = (
                cooper.ConstraintType.EQUALITY
                if spec.kind == "equality"
                else cooper.ConstraintType.INEQUALITY
            )
            if penalty is None:
                wrapped = cooper.Constraint(constraint_type=constraint_type, multiplier=multiplier)
            else:
                coefficient_type = (
                    cooper.penalty_coefficients.IndexedPenaltyCoefficient
                    if spec.indexed
                    else cooper.penalty_coefficients.DensePenaltyCoefficient
                )
                wrapped = cooper.Constraint(
                    constraint_type=constraint_type,
                    formulation_type=cooper.formulations.AugmentedLagrangian,
                    multiplier=multiplier,
                    penalty_coefficient=coefficient_type(torch.tensor(penalty, dtype=dtype)),
                )
            self.wrapped[name] = wrapped
            self.specs[wrapped] = spec
            self._register_constraint(name, wrapped)

    def start_step(self) -> None:
        """Forgets the first state, before a step."""
        self.first_state = None

    def compute_cmp_state(self, args: tuple[Any, ...] = ()) -> cooper.CMPState:
        objective, checked = check_state(self.problem, self.problem(*args))
        self.evaluations += 1
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
        state = cooper.CMPState(loss=objective, observed_constraints=observed)
        if self.first_state is None:
            self.first_state = state
        return state

    def copy_multipliers_(self, scale: float = 1.0) -> None:
        """Writes Cooper's multipliers into the wrapped problem's own (unused) ones, times
        ``scale``, so that :func:`lagrange_opt.kkt` measures Cooper's point.

        lagrange_opt averages an indexed constraint's terms over the batch where Cooper
        sums them: pass the batch size as ``scale`` for an indexed problem.
        """
        for name, wrapped in self.wrapped.items():
            own = self.problem.constraints[name].multiplier
            assert own is not None and wrapped.multiplier is not None
            weight = wrapped.multiplier.weight.detach()
            factor = scale if self.specs[wrapped].indexed else 1.0
            with torch.no_grad():
                own.copy_(weight.reshape(own.shape) * factor)


def _project_after_primal_updates(
    optimizer: cooper.optim.CooperOptimizer, problem: ConstrainedProblem
) -> None:
    """Makes ``optimizer`` project the bounded parameters after each of its primal updates
    (``primal_step``, and ``primal_extrapolation_step`` where it has one)."""
    for name in ("primal_step", "primal_extrapolation_step"):
        update = getattr(optimizer, name, None)
        if update is None:
            continue

        def projected(update: Any = update) -> None:
            update()
            problem.project_bounds_()

        setattr(optimizer, name, projected)


class CooperMethod:
    """One of Cooper's constrained optimizers over a wrapped problem, with plain SGD steps.

    Args:
        problem: The problem, its inequalities declared with ``treatment="projection"``.
        scheme: ``"extrapolation"`` (``ExtrapolationConstrainedOptimizer`` with
            ``ExtraSGD``), ``"simultaneous"`` (``SimultaneousOptimizer`` with SGD) or
            ``"augmented"`` (the ``AugmentedLagrangian`` formulation with
            ``AlternatingPrimalDualOptimizer`` and SGD).
        lr: Primal learning rate.
        dual_lr: Dual learning rate.
        penalty: The fixed penalty coefficient of the augmented scheme.
        kp: The proportional gain of the nuPI scheme.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        scheme: Scheme,
        lr: float,
        dual_lr: float,
        penalty: float = 1.0,
        kp: float = 0.0,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"invalid scheme {scheme!r}; expected one of {SCHEMES}")
        self.problem = problem
        self.scheme = scheme
        self.cmp = CooperProblem(problem, penalty if scheme == "augmented" else None)
        primal = problem.primal_parameters()
        dual = list(self.cmp.dual_parameters())
        self.optimizer: cooper.optim.CooperOptimizer
        if not dual:
            self.optimizer = cooper.optim.UnconstrainedOptimizer(
                cmp=self.cmp, primal_optimizers=torch.optim.SGD(primal, lr=lr)
            )
        elif scheme == "extrapolation":
            self.optimizer = cooper.optim.ExtrapolationConstrainedOptimizer(
                cmp=self.cmp,
                primal_optimizers=cooper.optim.ExtraSGD(primal, lr=lr),
                dual_optimizers=cooper.optim.ExtraSGD(dual, lr=dual_lr, maximize=True),
            )
        elif scheme == "simultaneous":
            self.optimizer = cooper.optim.SimultaneousOptimizer(
                cmp=self.cmp,
                primal_optimizers=torch.optim.SGD(primal, lr=lr),
                dual_optimizers=torch.optim.SGD(dual, lr=dual_lr, maximize=True),
            )
        elif scheme == "nupi":
            self.optimizer = cooper.optim.SimultaneousOptimizer(
                cmp=self.cmp,
                primal_optimizers=torch.optim.SGD(primal, lr=lr),
                dual_optimizers=cooper.optim.nuPI(
                    dual, lr=dual_lr, Kp=kp, Ki=1.0, ema_nu=0.0,
                    init_type=cooper.optim.nuPIInitType.ZEROS, maximize=True,
                ),
            )  # fmt: skip
        else:
            self.optimizer = cooper.optim.AlternatingPrimalDualOptimizer(
                cmp=self.cmp,
                primal_optimizers=torch.optim.SGD(primal, lr=lr),
                dual_optimizers=torch.optim.SGD(dual, lr=dual_lr, maximize=True),
            )
        _project_after_primal_updates(self.optimizer, problem)

    def step(self, *args: Any) -> CooperStep:
        """One Cooper ``roll`` on the closure arguments ``args``; the figures are those of
        the point the roll started from."""
        self.cmp.start_step()
        before = self.cmp.evaluations
        self.optimizer.roll(compute_cmp_state_kwargs={"args": args})
        state = self.cmp.first_state
        assert state is not None
        maxima = [
            violation(constraint_state.violation.detach(), self.cmp.specs[constraint]).amax()
            for constraint, constraint_state in state.observed_constraints.items()
        ]
        max_violation = torch.stack(maxima).amax() if maxima else state.loss.new_zeros(())
        return CooperStep(state.loss.detach(), max_violation, self.cmp.evaluations - before)

    def kkt(self, args: tuple[Any, ...] = (), scale: float = 1.0) -> KKTResiduals:
        """:func:`lagrange_opt.kkt` at Cooper's current point and multipliers (copied into
        the problem's own, see :meth:`CooperProblem.copy_multipliers_`), evaluated on
        ``args``."""
        self.cmp.copy_multipliers_(scale)
        return kkt(self.problem, lambda: self.problem(*args))
