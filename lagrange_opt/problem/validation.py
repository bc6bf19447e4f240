"""Validating what a closure returned against the problem's declarations.

A constraint is *observed* in an evaluation when the closure returned a value of non-zero
size for it. One left out of :attr:`ProblemState.constraints`, or returned with zero
entries (an :class:`IndexedValue` with no indices), is absent from that evaluation: it is
validated like any other value, then left out of what :func:`check_state` returns, so that
it enters nothing (no term, no penalty, no violation, no multiplier update).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import Constraint, ConstraintSpec, IndexedValue, ProblemState
from lagrange_opt.problem.proxy import Proxy, proxied, proxy_parts


def _describe_shape(tensor: Tensor) -> str:
    return str(tuple(tensor.shape))


def _check_value_dtype(name: str, value: Tensor, what: str = "value") -> None:
    """Constraint values are real floating-point numbers (any float dtype: the dual side is
    computed in the dtype of the multipliers, see :class:`ProblemState`)."""
    if not value.dtype.is_floating_point:
        raise TypeError(
            f"constraint '{name}': {what} has dtype {value.dtype}; a constraint value must be a "
            "real floating-point tensor (float16, bfloat16, float32 or float64)"
        )


def _check_dense(name: str, spec: ConstraintSpec, part: Tensor, what: str = "value") -> None:
    _check_value_dtype(name, part, what)
    if tuple(part.shape) != spec.shape:
        raise ValueError(
            f"constraint '{name}': {what} has shape {_describe_shape(part)}, "
            f"declared shape {spec.shape}"
        )


def _check_rows(
    name: str, spec: ConstraintSpec, part: Tensor, rows: int, what: str = "value"
) -> None:
    _check_value_dtype(name, part, what)
    expected = (rows, *spec.shape)
    if tuple(part.shape) != expected:
        raise ValueError(
            f"constraint '{name}': {what} has shape {_describe_shape(part)}, expected "
            f"{expected} ({rows} indices, declared shape {spec.shape})"
        )


def _proxy_value(name: str, spec: ConstraintSpec, proxy: Proxy, rows: int | None) -> Tensor:
    """The one tensor of a :class:`Proxy` (:func:`.proxy.proxied`), each part's dtype and
    shape checked first (``rows``: an indexed constraint's batch size)."""
    for what, part in (("true value", proxy.value), ("surrogate", proxy.surrogate)):
        if not isinstance(part, Tensor):
            raise TypeError(
                f"constraint '{name}': Proxy's {what} must be a tensor, got {type(part).__name__}"
            )
        if rows is None:
            _check_dense(name, spec, part, what)
        else:
            _check_rows(name, spec, part, rows, what)
    true, surrogate = proxy
    if true.device != surrogate.device:
        raise ValueError(
            f"constraint '{name}': Proxy's true value is on {true.device}, its surrogate on "
            f"{surrogate.device}; both must be on one device"
        )
    return proxied(true, surrogate)


def _unpack(name: str, constraint: Constraint, entry: object) -> tuple[Tensor, Tensor | None]:
    spec = constraint.spec
    if spec.num_samples is not None:
        if not isinstance(entry, IndexedValue):
            raise ValueError(
                f"constraint '{name}' is indexed (num_samples={spec.num_samples}) but was "
                f"evaluated without indices: return IndexedValue(value, indices)"
            )
        value, indices = entry
        if not isinstance(indices, Tensor) or not isinstance(value, Tensor | Proxy):
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
        if indices.dtype != torch.int64:  # a same-dtype .long() is still an operator call
            indices = indices.long()
        if isinstance(value, Proxy):
            return _proxy_value(name, spec, value, indices.shape[0]), indices
        _check_rows(name, spec, value, indices.shape[0])
        return value, indices
    if isinstance(entry, IndexedValue):
        raise ValueError(
            f"constraint '{name}' is not indexed: return its value as a tensor, not IndexedValue"
        )
    if isinstance(entry, Proxy):
        return _proxy_value(name, spec, entry, None), None
    if not isinstance(entry, Tensor):
        raise TypeError(f"constraint '{name}': value must be a tensor, got {type(entry).__name__}")
    _check_dense(name, spec, entry)
    return entry, None


def first_non_finite(tensor: Tensor, indices: Tensor | None = None) -> str:
    """Describes the non-finite entries of a tensor: how many, the first and where.

    Args:
        tensor: The tensor, with at least one non-finite entry.
        indices: For the rows of an indexed constraint, their sample indices: the first
            entry's sample is named too (the data at fault).
    """
    bad = (~torch.isfinite(tensor.detach())).nonzero()
    position = tuple(int(i) for i in bad[0])
    first = float(tensor.detach()[position])
    where = _sample(position, indices)
    return f"{bad.shape[0]} non-finite value(s), first {first} at {position}{where}"


def first_out_of_range(value: Tensor, dtype: torch.dtype, indices: Tensor | None = None) -> str:
    """Describes the finite entries of ``value`` that are not finite once cast to ``dtype``
    (``indices``: as in :func:`first_non_finite`)."""
    detached = value.detach()
    bad = (torch.isfinite(detached) & ~torch.isfinite(detached.to(dtype))).nonzero()
    position = tuple(int(i) for i in bad[0])
    return (
        f"{bad.shape[0]} value(s) beyond the range of {dtype}, first "
        f"{float(detached[position])} at {position}{_sample(position, indices)}"
    )


def _sample(position: tuple[int, ...], indices: Tensor | None) -> str:
    """``", sample index 17"``: the sample of an indexed row, ``""`` for a dense value."""
    if indices is None or not position:
        return ""
    return f", sample index {int(indices[position[0]])}"


def _outside(indices: Tensor, num_samples: int) -> Tensor:
    return (indices < 0) | (indices >= num_samples)


def any_outside_table(constraint: Constraint, indices: Tensor) -> Tensor:
    """A 0-dim bool tensor: whether an index is outside the constraint's table (no host sync)."""
    return _outside(indices, constraint.spec.table_shape[0]).any()


def check_index_range(name: str, constraint: Constraint, indices: Tensor) -> None:
    """Raises IndexError naming the first index outside the constraint's table."""
    num_samples = constraint.spec.table_shape[0]
    outside = _outside(indices, num_samples)
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
        The objective and, per constraint observed, in declaration order, its value and
        indices. A constraint left out of the result, or returned with zero entries, is
        not observed in this evaluation and is not listed.

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
            continue  # not observed on this batch
        value, indices = _unpack(name, constraint, values[name])
        if value.numel() == 0:
            continue  # an indexed constraint with no sample in the batch
        checked.append((name, constraint, value, indices))
    return objective, checked


def gradient_path_fault(objective: Tensor, checked: Checked) -> str | None:
    """What lacks a gradient path to the parameters, or ``None`` if nothing does.

    A constraint value that does not require grad cannot be moved by any step: its
    multiplier would grow while nothing changes (a forward pass under ``torch.no_grad()``,
    or a value detached from the parameters). A constant constraint is refused even where
    it would be meant (one on parameters frozen for a while): no step can act on it, and
    leaving it out of that evaluation says so. The objective may be constant (a
    feasibility problem); the message says so when no constraint has a path either. The
    value the user returned is checked: a slack residual ``g + s**2`` requires grad
    through ``s`` alone. A :class:`Proxy`'s true value may be constant (hard
    predictions): its surrogate, which the primal gradient follows, must have a path.
    Reading ``requires_grad`` costs no host synchronisation.

    Returns:
        An error message naming the constraint (or everything) without a path.
    """
    constant = [(name, value) for name, _, value, _ in checked if not value.requires_grad]
    if not constant:
        return None
    if not objective.requires_grad and len(constant) == len(checked):
        listed = ", ".join(f"'{name}'" for name, _ in constant)
        return (
            f"the objective and every constraint ({listed}) have no gradient path to the "
            "parameters (computed under torch.no_grad() or detached?)"
        )
    name, value = constant[0]
    if proxy_parts(value) is not None:
        return (
            f"constraint '{name}': its surrogate has no gradient path to the parameters "
            "(computed under torch.no_grad() or detached?): the primal step follows the "
            "surrogate; only the true value of a Proxy may be constant"
        )
    return (
        f"constraint '{name}' has no gradient path to the parameters (computed under "
        "torch.no_grad() or detached?): no step can move it; leave it out of "
        "ProblemState.constraints where it is not observed"
    )
