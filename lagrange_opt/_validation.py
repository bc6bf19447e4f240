"""Validating what a closure returned against the problem's declarations."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ._problem import ConstrainedProblem, Constraint, IndexedValue, ProblemState


def _describe_shape(tensor: Tensor) -> str:
    return str(tuple(tensor.shape))


def _unpack(name: str, constraint: Constraint, entry: object) -> tuple[Tensor, Tensor | None]:
    spec = constraint.spec
    if spec.num_samples is not None:
        if not isinstance(entry, IndexedValue):
            raise ValueError(
                f"constraint '{name}' is indexed (num_samples={spec.num_samples}) but was "
                f"evaluated without indices: return IndexedValue(value, indices)"
            )
        value, indices = entry
        if not isinstance(value, Tensor) or not isinstance(indices, Tensor):
            raise TypeError(f"constraint '{name}': IndexedValue must hold two tensors")
        if (
            indices.dtype.is_floating_point
            or indices.dtype.is_complex
            or indices.dtype == torch.bool
        ):
            raise TypeError(
                f"constraint '{name}': indices must be an integer tensor, got {indices.dtype}"
            )
        if indices.ndim != 1:
            raise ValueError(
                f"constraint '{name}': indices must be 1-D, got shape {_describe_shape(indices)}"
            )
        expected = (indices.shape[0], *spec.shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"constraint '{name}': value has shape {_describe_shape(value)}, expected "
                f"{expected} ({indices.shape[0]} indices, declared shape {spec.shape})"
            )
        return value, indices.long()
    if isinstance(entry, IndexedValue):
        raise ValueError(
            f"constraint '{name}' is not indexed: return its value as a tensor, not IndexedValue"
        )
    if not isinstance(entry, Tensor):
        raise TypeError(f"constraint '{name}': value must be a tensor, got {type(entry).__name__}")
    if tuple(entry.shape) != spec.shape:
        raise ValueError(
            f"constraint '{name}': value has shape {_describe_shape(entry)}, "
            f"declared shape {spec.shape}"
        )
    return entry, None


def first_non_finite(tensor: Tensor) -> str:
    """Describes the non-finite entries of a tensor: how many, the first and where."""
    bad = (~torch.isfinite(tensor.detach())).nonzero()
    position = tuple(int(i) for i in bad[0])
    first = float(tensor.detach()[position])
    return f"{bad.shape[0]} non-finite value(s), first {first} at {position}"


def check_index_range(name: str, constraint: Constraint, indices: Tensor) -> None:
    """Raises IndexError naming the first index outside the constraint's table."""
    num_samples = constraint.spec.table_shape[0]
    outside = (indices < 0) | (indices >= num_samples)
    if bool(outside.any()):
        bad = indices[outside]
        raise IndexError(
            f"constraint '{name}': index {int(bad[0])} out of range for num_samples={num_samples}"
        )


Checked = list[tuple[str, Constraint, Tensor, Tensor | None]]


class NonFiniteError(ValueError):
    """An objective, constraint value, multiplier or slack that is NaN or infinite."""


def check_state(problem: ConstrainedProblem, state: object) -> tuple[Tensor, Checked]:
    """Validates the structure of what a closure returned against the declarations.

    The values themselves (finite, indices in range) are checked by :func:`evaluate`.

    Returns:
        The objective and, per constraint in declaration order, its value and indices.

    Raises:
        TypeError, ValueError: naming the constraint and what is wrong.
    """
    if not isinstance(state, ProblemState):
        raise TypeError(f"the closure must return a ProblemState, got {type(state).__name__}")
    objective = state.objective
    if not isinstance(objective, Tensor):
        raise TypeError(f"objective must be a tensor, got {type(objective).__name__}")
    if objective.ndim != 0:
        raise ValueError(f"objective must be a scalar, got shape {_describe_shape(objective)}")
    values = state.constraints
    if not isinstance(values, dict | Mapping):  # dict first: the ABC check is slower
        raise TypeError(f"ProblemState.constraints must be a mapping, got {type(values).__name__}")
    declared = problem.declared()
    unknown = [name for name in values if name not in declared]
    if unknown:
        raise ValueError(
            f"the closure returned undeclared constraint(s) {unknown}; declared: {list(declared)}"
        )
    checked = []
    for name, constraint in declared.items():
        if name not in values:
            raise ValueError(f"the closure returned no value for constraint '{name}'")
        value, indices = _unpack(name, constraint, values[name])
        checked.append((name, constraint, value, indices))
    return objective, checked
