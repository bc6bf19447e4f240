"""A problem's constraint records: specs, constraint modules, the values a closure returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from lagrange_opt.problem.proxy import Proxy

Kind = Literal["equality", "inequality"]
Sense = Literal[">=", "<="]
Treatment = Literal["slack", "projection", "penalty"]
EqualityTreatment = Literal["multiplier", "penalty"]


class IndexedValue(NamedTuple):
    """The values of an indexed (per-sample) constraint on a minibatch.

    Attributes:
        value: Constraint values, shape ``(batch, *shape)``, or a :class:`Proxy` of two
            such tensors (a true value and its surrogate).
        indices: Integer sample indices, shape ``(batch,)``, each in ``[0, num_samples)``.
    """

    value: Tensor | Proxy
    indices: Tensor


class ProblemState(NamedTuple):
    """What :meth:`ConstrainedProblem.forward` returns: the objective and every constraint.

    **A constraint may be absent from one evaluation.** Leaving its name out of
    ``constraints``, or returning a value of size zero (an :class:`IndexedValue` with no
    indices, such as ``IndexedValue(pred[mask], indices[mask])`` on a batch with no sample
    selected), means that it is not observed on this batch: its multipliers and slacks are
    not updated and it adds nothing to the Lagrangian (no term, no penalty, no violation; a
    step where no constraint is observed reports a violation of 0), and the step's
    ``result.constraints`` has no entry for it. A constraint defined on a subset of the
    batch, such as a rate over the samples of one class, should be left out where the
    subset is empty rather than return the NaN of a mean over nothing. Both evaluations of
    an extra-gradient step must observe the same constraints.

    **Dtypes.** A constraint value may have any real floating-point dtype, not necessarily
    the problem's; integer, boolean and complex values are refused. The multipliers and
    slacks keep the dtype of their tables, the problem's (set by ``problem.to(dtype)``):
    what steps them (the residuals, the slacks set in the evaluation or in closed form, the
    violations reported) is computed in that dtype, the value being cast to it once (a
    value beyond its range is an error), while the gradient that reaches the model keeps
    the value's own dtype (a bfloat16 value under autocast backpropagates in bfloat16). A
    penalised constraint has no table: it keeps its value's dtype throughout.

    **Gradient paths.** Every value returned must depend on the parameters: a value
    computed under ``torch.no_grad()`` or detached is refused, naming the constraint. The
    objective may be constant (a feasibility problem); when every constraint observed is
    constant too, the error says so.

    **Proxy constraints.** A value with no useful gradient (a rate from hard predictions)
    is returned as ``Proxy(value, surrogate)`` (``IndexedValue(Proxy(value, surrogate),
    indices)`` if indexed): the true ``value`` steps the multipliers, sets the slacks and
    the augmented Lagrangian's estimates and is what the violations report, and needs no
    gradient path; the primal gradient follows the differentiable ``surrogate`` (each
    term's weight times its Jacobian). Both are validated like a value (shape, dtype,
    finiteness, naming which of the two is at fault); see docs/proxy.md. A rate over a
    subset of the batch (the positives of a class) is left out where the subset is empty.

    Attributes:
        objective: The scalar objective to minimise.
        constraints: For each constraint name observed in this evaluation, its value: a
            floating-point tensor of the declared shape, a :class:`Proxy` of two, or an
            :class:`IndexedValue` for an indexed constraint.
    """

    objective: Tensor
    constraints: Mapping[str, Tensor | Proxy | IndexedValue]


@dataclass(frozen=True)
class ConstraintSpec:
    """An immutable description of one declared constraint.

    Attributes:
        name: The constraint's name, unique within its problem.
        kind: ``"equality"`` (``value == 0``) or ``"inequality"``.
        sense: For inequalities, ``">="`` (``value >= 0``) or ``"<="`` (``value <= 0``).
        shape: Shape of one evaluation's value (of one sample's, if indexed).
        num_samples: Number of samples for an indexed constraint, ``None`` otherwise.
        treatment: ``"multiplier"`` or ``"penalty"`` for equalities; ``"slack"``,
            ``"projection"`` or ``"penalty"`` for inequalities.
        slack_margin: Lower bound of ``s**2`` when a slack is initialised.
        penalty_weight: The weight ``alpha`` of the penalty ``alpha * violation**2`` under
            the ``"penalty"`` treatment, else ``None``.
        dual_restart: Whether each dual step resets to 0 the multipliers of the elements
            (rows) strictly satisfied at the evaluated point (:mod:`..maths.dual_restart`).
    """

    name: str
    kind: Kind
    sense: Sense | None
    shape: tuple[int, ...]
    num_samples: int | None
    treatment: Treatment | EqualityTreatment
    slack_margin: float
    penalty_weight: float | None = None
    dual_restart: bool = False

    @property
    def indexed(self) -> bool:
        """Whether the constraint has one row of multipliers (and slacks) per sample."""
        return self.num_samples is not None

    @property
    def has_multiplier(self) -> bool:
        """Whether the constraint has Lagrange multipliers (every treatment but the penalty)."""
        return self.treatment != "penalty"

    @property
    def has_slack(self) -> bool:
        """Whether the inequality is written as an equality with a learnable slack."""
        return self.treatment == "slack"

    @property
    def table_shape(self) -> tuple[int, ...]:
        """Shape of the multiplier (and slack) tensor."""
        if self.num_samples is None:
            return self.shape
        return (self.num_samples, *self.shape)


class Constraint(nn.Module):
    """The learnable state of one constraint: its multiplier and, with a slack, the slack.

    Attributes:
        spec: The declaration.
        multiplier: Lagrange multipliers, shape ``spec.table_shape``, initialised to zero;
            ``None`` under the penalty treatment.
        slack: Slack variables of the same shape, or ``None`` without the slack treatment.
        slack_seen: Boolean buffer, one flag per sample (a single flag if not indexed):
            whether the slack was initialised from an observed value. An entry whose
            square is 0 is set again from the value it is observed with (see
            :meth:`ConstrainedProblem.add_inequality`).
    """

    multiplier: nn.Parameter | None
    slack: nn.Parameter | None
    slack_seen: Tensor | None

    def __init__(self, spec: ConstraintSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.has_multiplier:
            self.multiplier = nn.Parameter(torch.zeros(spec.table_shape))
        else:
            self.register_parameter("multiplier", None)
        if spec.has_slack:
            self.slack = nn.Parameter(torch.zeros(spec.table_shape))
            seen_shape = () if spec.num_samples is None else (spec.num_samples,)
            self.register_buffer("slack_seen", torch.zeros(seen_shape, dtype=torch.bool))
        else:
            self.register_parameter("slack", None)
            self.register_buffer("slack_seen", None)

    def extra_repr(self) -> str:
        spec = self.spec
        relation = "== 0" if spec.kind == "equality" else f"{spec.sense} 0"
        parts = [f"value {relation}", f"shape={spec.shape}"]
        if spec.indexed:
            parts.append(f"num_samples={spec.num_samples}")
        parts.append(f"treatment={spec.treatment!r}")
        if spec.penalty_weight is not None:
            parts.append(f"penalty_weight={spec.penalty_weight}")
        return ", ".join(parts)
