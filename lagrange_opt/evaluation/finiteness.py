"""The finiteness checks of an evaluation: one host synchronisation when all is finite, a
detailed search that names the value at fault when not (with a process group, an agreement
of every rank on the outcome: :mod:`.distributed`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lagrange_opt.maths.formulation import TermRule
from lagrange_opt.maths.norms import norms
from lagrange_opt.problem.constraints import ConstraintSpec
from lagrange_opt.problem.proxy import proxy_parts
from lagrange_opt.problem.validation import Checked, NonFiniteError, first_non_finite

if TYPE_CHECKING:
    pass


def finite_numbers(tensors: Sequence[Tensor]) -> list[Tensor]:
    """One number per tensor, finite if every entry of the tensor is, without a host
    synchronisation: each tensor's 2-norm (:func:`..maths.norms.norms`, one call for the
    list), or each one's sum where the tensors sit on several devices.

    A norm that overflows (entries past about 1e19 in float32) reads "not finite" where
    every entry is, as a sum does past 3e38 / n: the callers' detailed searches then let
    such tensors pass. The tensors must record no gradient, or the call be made under
    ``torch.no_grad()`` (:func:`..maths.norms.norms`).

    Example:
        >>> import torch
        >>> [bool(torch.isfinite(number)) for number in
        ...  finite_numbers([torch.ones(3), torch.tensor([1.0, float("nan")])])]
        [True, False]
    """
    if any(tensor.device != tensors[0].device for tensor in tensors):
        return [tensor.sum() for tensor in tensors]
    return norms(tensors)


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
