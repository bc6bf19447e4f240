"""The constraints one evaluation observed, with their indices and the true values of its
proxies.

**A proxy is measured once per step.** A :class:`~lagrange_opt.Proxy`'s true value (a
recall, a rate: a count of hard predictions) is piecewise constant in the parameters, and
on a minibatch it is a noisy estimate. A later evaluation of the same step (extra-gradient's
extrapolated point, a retry of the adaptive step) sees the same batch after a move fitted
to it, so its count is biased towards feasibility: the multipliers, stepped with it, would
settle where the batch *after its own step* is feasible, not the data. Every evaluation of
a step therefore reads the true value measured at the point the step starts from (the
surrogate, which moves the model, is read where the evaluation is). The operator the
adaptive step's test compares then differs in the proxies' dual part by nothing, as it
should for a function with no Lipschitz constant to measure (docs/proxy.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lagrange_opt.problem.proxy import measured_earlier, proxy_parts
from lagrange_opt.problem.validation import Checked


class ObservedIndices(dict[str, Tensor | None]):
    """The constraints one evaluation observed, each with its indices (``None`` if dense).

    Given to :func:`evaluate` as ``expected_indices``, it says that a constraint missing
    from it was absent from the earlier evaluation, so that a later evaluation of the same
    step that observes it is refused (a plain mapping covers the constraints with
    multipliers only).

    Args:
        indices: Each observed constraint's indices.
        measured: The true values of the constraints returned as proxies, detached: what
            every later evaluation of the step reads in their place.
    """

    def __init__(
        self, indices: Mapping[str, Tensor | None], measured: Mapping[str, Tensor] | None = None
    ) -> None:
        super().__init__(indices)
        self.measured: dict[str, Tensor] = dict(measured or {})


def same_indices(indices: Tensor, previous: Tensor) -> bool:
    """Whether an evaluation's indices are those an earlier one of the step observed.

    The same tensor is equal to itself without a comparison, which reads the device (on
    a GPU it waits for every queued kernel): a closure that returns the batch's own
    indices tensor both times costs nothing here. (Refilled in place between the calls,
    it would be the earlier evaluation's record too: a comparison could not tell either.)
    """
    return indices is previous or torch.equal(indices, previous)


def observed_in(checked: Checked) -> ObservedIndices:
    """The constraints of an evaluation's validated values, and its proxies' true values."""
    return ObservedIndices(
        {name: indices for name, _, _, indices in checked},
        {
            name: value.detach().clone()
            for name, _, value, _ in checked
            if proxy_parts(value) is not None
        },
    )


def with_measured(checked: Checked, expected: Mapping[str, Tensor | None]) -> Checked:
    """``checked`` with each proxy's true value replaced by the one an earlier evaluation of
    the step measured (its surrogate unchanged); ``checked`` itself if there is none."""
    measured = expected.measured if isinstance(expected, ObservedIndices) else {}
    if not measured:
        return checked
    return [
        (name, constraint, measured_earlier(value, measured[name]) if name in measured else value,
         indices)
        for name, constraint, value, indices in checked
    ]  # fmt: skip
