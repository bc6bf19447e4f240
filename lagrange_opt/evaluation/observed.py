"""The constraints one evaluation observed, with their indices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    pass


class ObservedIndices(dict[str, Tensor | None]):
    """The constraints one evaluation observed, each with its indices (``None`` if dense).

    Given to :func:`evaluate` as ``expected_indices``, it says that a constraint missing
    from it was absent from the earlier evaluation, so that a later evaluation of the same
    step that observes it is refused (a plain mapping covers the constraints with
    multipliers only).
    """
