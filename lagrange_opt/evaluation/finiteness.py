"""The finiteness checks of an evaluation: one host synchronisation when all is finite, a
detailed search that names the value at fault when not (with a process group, an agreement
of every rank on the outcome: :mod:`.distributed`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lagrange_opt.maths.formulation import TermRule
from lagrange_opt.problem.constraints import ConstraintSpec
from lagrange_opt.problem.proxy import proxy_parts
from lagrange_opt.problem.validation import Checked, NonFiniteError, first_non_finite

if TYPE_CHECKING:
    pass


def slack_variable(spec: ConstraintSpec, rule: TermRule) -> bool:
    """Whether the term's slack is a variable that the primal optimizer steps; in the
    augmented Lagrangian it is minimised in closed form instead."""
    return spec.has_slack and rule.penalty is None


def raise_for_bad_constraint(name: str, value: Tensor, indices: Tensor | None) -> None:
    """Raises :class:`NonFiniteError` if a constraint's value is not finite, naming its
    first non-finite entry (and, for an indexed constraint, that entry's sample; for a
    :class:`~lagrange_opt.Proxy`, the part at fault)."""
    if bool(torch.isfinite(value.detach()).all()):
        return
    for what, part in zip(("true value", "surrogate"), proxy_parts(value) or ()):
        if not bool(torch.isfinite(part.detach()).all()):
            raise NonFiniteError(
                f"constraint '{name}': its {what} has {first_non_finite(part, indices)}"
            )
    raise NonFiniteError(f"constraint '{name}' has {first_non_finite(value, indices)}")


def check_constraint_values(checked: Checked) -> None:
    """Raises :class:`NonFiniteError` naming the first non-finite constraint value.

    For the first step's scaling (:mod:`.scaling`), which measures the gradient of each
    element of a value one by one: a NaN in one row of a batch reaches every row's
    gradient through a parameter that multiplies the batch, and the error would blame the
    first element's gradient rather than the row and sample at fault. One check per value,
    at the first step only.
    """
    for name, _, value, indices in checked:
        raise_for_bad_constraint(name, value, indices)
