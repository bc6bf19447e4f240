"""Checks of what a method is built with: its optimizers, which parameters each holds, the
formulation. Each raises a message that names the optimizer, the param group or the
constraint at fault."""

from __future__ import annotations

import inspect
from typing import Literal

import torch

from lagrange_opt.maths.augmented import AugmentedLagrangian, check_augmented
from lagrange_opt.maths.hyperparameters import check_group_rate
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.updates.nupi import NuPI, check_settings
from lagrange_opt.updates.optimizer_group import OptimizerGroup, holder
from lagrange_opt.updates.optimizer_params import params_of
from lagrange_opt.updates.rows import ELEMENTWISE_OPTIMIZERS

FormulationName = Literal["lagrangian", "augmented"]


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's ``step`` cannot be called without a closure (LBFGS)."""
    closure = inspect.signature(type(optimizer).step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def check_optimizer(label: str, optimizer: object, maximize: bool) -> None:
    """What a method is built with: a ``torch.optim.Optimizer`` (or a group of them) whose
    ``step()`` needs no closure, with valid param groups (:func:`check_groups`).

    Raises:
        TypeError, ValueError: Naming the optimizer and, where it applies, the param group.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"the {label} optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if isinstance(optimizer, OptimizerGroup):
        for index, member in enumerate(optimizer.optimizers):
            check_optimizer(f"{label} (group member {index})", member, maximize)
        return
    if _needs_closure(optimizer):
        raise TypeError(
            f"the {label} optimizer {type(optimizer).__name__} needs a closure in step(): the "
            "methods evaluate the problem themselves and step along the gradients they found; "
            "use an optimizer whose step() takes no closure (SGD, Adam, ...)"
        )
    check_groups(label, optimizer, maximize)


def check_groups(label: str, optimizer: torch.optim.Optimizer, maximize: bool) -> None:
    """Checks each param group's settings: the learning rate (finite, ``>= 0``; 0 is a
    warm-up's start), no weight decay on the dual side, the direction, and a
    :class:`NuPI`'s gains.

    Run when a method is built, after it loads a state and at the start of every step: a
    learning-rate scheduler (a ``LambdaLR`` going below 0) or the user may change a group
    between steps. It reads host-side numbers only (a learning rate held in a tensor off
    the CPU is not read), a few dictionary reads per group: no device synchronisation.

    Args:
        label: ``"primal"`` or ``"dual"``, as the messages name the optimizer.
        optimizer: The optimizer, or an :class:`OptimizerGroup` (each member checked).
        maximize: Whether the optimizer must ascend (the dual side).

    Raises:
        TypeError, ValueError: Naming the side and the param group, e.g. ``Invalid
            learning rate in the dual optimizer (param group 0): -1.0``.
    """
    if isinstance(optimizer, OptimizerGroup):
        for index, member in enumerate(optimizer.optimizers):
            check_groups(f"{label} (group member {index})", member, maximize)
        return
    nupi = isinstance(optimizer, NuPI)
    for index, group in enumerate(optimizer.param_groups):
        where = f" in the {label} optimizer (param group {index})"
        check_group_rate(group.get("lr", 0.0), where)
        weight_decay = group.get("weight_decay", 0.0)
        if maximize and weight_decay != 0.0:
            raise ValueError(
                f"Invalid weight decay in the dual optimizer (param group {index}): "
                f"{float(weight_decay)}; it pulls the multipliers towards 0, so the iteration "
                "converges to a biased, infeasible point: build it with weight_decay=0"
            )
        if bool(group.get("maximize", False)) != maximize:
            expected = "maximize: build it with maximize=True" if maximize else "minimize"
            raise ValueError(
                f"the {label} optimizer must {expected} (param group {index} has "
                f"maximize={group.get('maximize', False)})"
            )
        if nupi:
            check_settings(group, where)


def check_membership(
    problem: ConstrainedProblem,
    primal_optimizer: torch.optim.Optimizer,
    dual_optimizer: torch.optim.Optimizer | None,
) -> None:
    primal = {id(param) for param in params_of(primal_optimizer)}
    dual = {id(param) for param in params_of(dual_optimizer)}
    for name, constraint in problem.constraint_items():
        if constraint.multiplier is None:
            continue
        if dual_optimizer is None:
            raise ValueError(
                f"constraint '{name}' has multipliers but no dual optimizer was given: "
                "build one over problem.dual_parameters() with maximize=True"
            )
        if id(constraint.multiplier) not in dual:
            raise ValueError(
                f"the multiplier of constraint '{name}' is not in the dual optimizer: "
                "build it over problem.dual_parameters()"
            )
        if id(constraint.multiplier) in primal:
            raise ValueError(
                f"the multiplier of constraint '{name}' is in the primal optimizer: "
                "multipliers take ascent steps in the dual optimizer only"
            )
        if constraint.slack is not None and id(constraint.slack) not in primal:
            raise ValueError(
                f"the slack of constraint '{name}' is not in the primal optimizer: "
                "add problem.slack_parameters() to it"
            )
    multipliers = {id(param) for param in problem.dual_parameters()}
    for param in params_of(dual_optimizer):
        if id(param) not in multipliers:
            raise ValueError(
                f"the dual optimizer holds a tensor of shape {tuple(param.shape)} that is not a "
                "multiplier of this problem"
            )


def check_row_optimizers(
    problem: ConstrainedProblem,
    primal_optimizer: torch.optim.Optimizer,
    dual_optimizer: torch.optim.Optimizer | None,
) -> None:
    """An indexed table is stepped by rows: its optimizer's state must be elementwise."""
    for name, constraint in problem.constraint_items():
        if not constraint.spec.indexed:
            continue
        for label, optimizer, table in (
            ("dual", dual_optimizer, constraint.multiplier),
            ("primal", primal_optimizer, constraint.slack),
        ):
            if table is None or optimizer is None:
                continue
            optimizer = holder(optimizer, table)
            if not isinstance(optimizer, ELEMENTWISE_OPTIMIZERS):
                known = ", ".join(cls.__name__ for cls in ELEMENTWISE_OPTIMIZERS)
                raise TypeError(
                    f"constraint '{name}' is indexed: the {label} optimizer steps only the "
                    f"batch's rows of its table, which needs elementwise state, and "
                    f"{type(optimizer).__name__} is not known to keep it; use one of {known}"
                )


def check_formulation(
    formulation: FormulationName | AugmentedLagrangian,
) -> AugmentedLagrangian | None:
    """The augmented Lagrangian's settings, or ``None`` for the plain Lagrangian."""
    if isinstance(formulation, AugmentedLagrangian):
        return check_augmented(formulation)
    if formulation == "augmented":
        return AugmentedLagrangian()
    if formulation == "lagrangian":
        return None
    raise ValueError(
        f"invalid formulation {formulation!r}; expected 'lagrangian', 'augmented' or an "
        "AugmentedLagrangian"
    )
