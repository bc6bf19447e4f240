"""The self-tuned margins of per-sample inequalities under minibatch noise.

A per-sample (indexed) inequality's rows are read and stepped only when their sample is in
the batch; between two visits the other batches' steps move the network, and with it the
row. Multipliers make a row feasible at its visits on average; what the row does between
visits is noise. The margin :math:`m` of :func:`..maths.augmented.next_margin` holds every row
at :math:`g_i \\le -m` instead of 0, and follows the rows that were satisfied at their
previous visit: it grows when one of them **drifted** into violation, and decays while they
all stay feasible. A row still violated
since its previous visit is the multipliers' business (they have not converged yet), not
noise: counting it would grow the margin with the transient of the first epochs.

A few samples drift far more than the rest (unusual inputs): a global margin wide enough for
them would cost every active row. Each row therefore has a margin of its own on top,
:func:`next_row_margins`: it grows by what the row overshot when it drifted, and halves (by
default) at each visit where it did not.

Per constraint the state is two values per sample entry (its value at its last visit,
:math:`+\\infty` before the first: not yet eligible; its own margin), and one number per
step of the last epoch: the largest drifted row of that step's batch (:math:`-\\infty` if
none drifted or none was eligible). A step reads and writes the batch's rows only, on the
device of the multipliers, with no host synchronisation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lagrange_opt.evaluation.terms import Term
from lagrange_opt.maths.augmented import AugmentedLagrangian, next_margin
from lagrange_opt.maths.casts import in_dtype
from lagrange_opt.problem.constrained_problem import ConstrainedProblem

MAX_EPOCH_STEPS = 100_000
"""The most steps whose batch maxima a margin remembers (an epoch of more steps is cut)."""


def next_row_margins(
    config: AugmentedLagrangian, rows: Tensor, standard: Tensor, previous: Tensor
) -> Tensor:
    """The batch's rows' own margins after a visit: a row that drifted (satisfied at its
    previous visit, violated now) adds what it overshot; any other row's margin decays by
    ``row_margin_decay``.

    .. math::

        e_i \\leftarrow \\begin{cases} e_i + g_i & g_i > 0 \\ge g_i^\\text{previous} \\\\
        (1 - \\rho_e) \\, e_i & \\text{otherwise} \\end{cases}

    Example:
        >>> import torch
        >>> rule = AugmentedLagrangian(row_margin_decay=0.5)
        >>> next_row_margins(rule, torch.tensor([0.2, 0.2, 0.2]),
        ...                  torch.tensor([0.1, 0.1, -0.3]), torch.tensor([-0.1, 0.4, -0.2]))
        tensor([0.3000, 0.1000, 0.1000])
    """
    drifted = (previous <= 0) & (standard > 0)
    return torch.where(drifted, rows + standard, rows * (1 - config.row_margin_decay))


def drifted_worst(standard: Tensor, previous: Tensor) -> Tensor:
    """The largest value of the batch's rows that were satisfied at their previous visit
    (``-inf`` if none was).

    .. math::

        w_\\text{batch} = \\max \\{ g_i : g_i^\\text{previous} \\le 0 \\}

    Example:
        >>> import torch
        >>> drifted_worst(torch.tensor([0.3, 0.1, -0.2]), torch.tensor([0.5, -0.1, -0.3]))
        tensor(0.1000)
    """
    eligible = previous <= 0
    return torch.where(eligible, standard, -math.inf).amax()


class SampleMargins:
    """The margin of each per-sample inequality under the augmented Lagrangian, its rows'
    own margins (:attr:`rows`), the rows' values at their last visit and the last epoch's
    drifted maxima.

    Args:
        problem: The problem.
        augmented: The augmented Lagrangian's settings (``None``, or ``margin_rate=0``: no
            margins).
    """

    def __init__(self, problem: ConstrainedProblem, augmented: AugmentedLagrangian | None) -> None:
        self.augmented = augmented
        self.margins: dict[str, Tensor] = {}
        self._sizes: dict[str, int] = {}
        self._previous: dict[str, Tensor] = {}
        self.rows: dict[str, Tensor] = {}
        self._recent: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        if augmented is None or augmented.margin_rate == 0:
            return
        for name, constraint in problem.constraint_items():
            spec, multiplier = constraint.spec, constraint.multiplier
            if spec.num_samples is None or spec.kind != "inequality" or multiplier is None:
                continue
            self.margins[name] = multiplier.new_zeros(())
            self._sizes[name] = spec.num_samples

    def observe(self, terms: list[Term]) -> bool:
        """Updates the margins with one step's start evaluation; whether any changed."""
        augmented = self.augmented
        changed = False
        for term in terms:
            name = term.constraint.spec.name
            margin = self.margins.get(name)
            indices = term.indices
            if augmented is None or margin is None or indices is None or not indices.numel():
                continue
            standard = in_dtype(term.standard, margin.dtype)
            previous = self._previous.get(name)
            if previous is None:
                shape = (self._sizes[name], *standard.shape[1:])
                previous = self._previous[name] = standard.new_full(shape, math.inf)
            recent = self._recent.get(name)
            if recent is None:
                length = min(MAX_EPOCH_STEPS, -(-self._sizes[name] // indices.shape[0]))
                recent = self._recent[name] = margin.new_full((length,), -math.inf)
            count = self._counts.get(name, 0)
            before = previous.index_select(0, indices)
            recent[count % recent.shape[0]] = drifted_worst(standard, before)
            rows = self.rows.get(name)
            if rows is None:
                rows = self.rows[name] = torch.zeros_like(previous)
            rows.index_copy_(
                0, indices,
                next_row_margins(augmented, rows.index_select(0, indices), standard, before),
            )  # fmt: skip
            previous.index_copy_(0, indices, standard)
            self._counts[name] = count + 1
            self.margins[name] = next_margin(augmented, margin, recent.amax(), recent.shape[0])
            changed = True
        return changed

    def state_dict(self) -> dict[str, Any]:
        """The margins, the rows' last values and the recent maxima, copied."""
        return {
            "margins": {name: margin.clone() for name, margin in self.margins.items()},
            "previous": {name: rows.clone() for name, rows in self._previous.items()},
            "rows": {name: rows.clone() for name, rows in self.rows.items()},
            "recent": {name: recent.clone() for name, recent in self._recent.items()},
            "counts": dict(self._counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s result (an empty one: no margin has moved yet).

        Raises:
            ValueError: If the state names other constraints than this problem's margins,
                or a margin is negative or not finite.
        """
        margins = state.get("margins", {})
        if margins and set(margins) != set(self.margins):
            raise ValueError(
                f"the margins are for constraints {sorted(margins)}, this method keeps "
                f"margins for {sorted(self.margins)}"
            )
        for name, margin in margins.items():
            value = float(margin)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Invalid margin of constraint '{name}': {value}")
        for name, rows in state.get("rows", {}).items():
            if not bool((torch.isfinite(rows) & (rows >= 0)).all()):
                raise ValueError(
                    f"Invalid row margins of constraint '{name}': negative or not finite"
                )
        for name, previous in state.get("previous", {}).items():
            if bool(previous.isnan().any()):
                raise ValueError(f"Invalid last values of constraint '{name}': NaN")
        for part in ("previous", "rows"):
            for name, table in state.get(part, {}).items():
                if name not in self._sizes or table.shape[0] != self._sizes[name]:
                    raise ValueError(
                        f"the margins' {part} table of constraint '{name}' has shape "
                        f"{tuple(table.shape)}, not one row per sample"
                    )
        self.margins = {
            name: margins[name].clone().to(margin) if name in margins else margin.new_zeros(())
            for name, margin in self.margins.items()
        }
        self._previous = {name: rows.clone() for name, rows in state.get("previous", {}).items()}
        self.rows = {name: rows.clone() for name, rows in state.get("rows", {}).items()}
        self._recent = {name: recent.clone() for name, recent in state.get("recent", {}).items()}
        self._counts = {name: int(count) for name, count in state.get("counts", {}).items()}
