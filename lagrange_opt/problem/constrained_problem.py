"""Declaring a constrained problem: constraints, their multipliers and slacks."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping
from typing import Any, get_args

import torch
from torch import Tensor, nn

from lagrange_opt.problem.bounds import Bounds, bound_tensor, check_loaded_box, crossing
from lagrange_opt.problem.constraints import (
    Constraint,
    ConstraintSpec,
    EqualityTreatment,
    Kind,
    ProblemState,
    Sense,
    Treatment,
)

_SENSES: tuple[str, ...] = get_args(Sense)
_TREATMENTS: tuple[str, ...] = get_args(Treatment)
_EQUALITY_TREATMENTS: tuple[str, ...] = get_args(EqualityTreatment)


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"constraint '{name}': shape must be a tuple of ints, got {shape!r}")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"constraint '{name}': invalid shape {tuple(shape)!r}")
    return tuple(shape)


def _check_num_samples(name: str, num_samples: Any) -> int | None:
    if num_samples is None:
        return None
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"constraint '{name}': invalid num_samples: {num_samples!r}")
    return num_samples


def _check_treatment(
    name: str, treatment: str, allowed: tuple[str, ...], penalty_weight: Any
) -> None:
    if treatment not in allowed:
        raise ValueError(
            f"constraint '{name}': invalid treatment {treatment!r}; "
            f"expected one of {', '.join(map(repr, allowed))}"
        )
    if treatment != "penalty":
        if penalty_weight is not None:
            raise ValueError(
                f"constraint '{name}': penalty_weight is only for treatment='penalty', "
                f"not {treatment!r}"
            )
        return
    if isinstance(penalty_weight, bool) or not isinstance(penalty_weight, (int, float)):
        raise ValueError(
            f"constraint '{name}': treatment='penalty' needs a penalty_weight, got "
            f"{penalty_weight!r}"
        )
    if not (math.isfinite(penalty_weight) and penalty_weight > 0):
        raise ValueError(f"constraint '{name}': invalid penalty_weight: {penalty_weight!r}")


class ConstrainedProblem(nn.Module, abc.ABC):
    """Base class of a constrained problem: minimise an objective subject to constraints.

    Subclass it, declare the constraints in ``__init__`` with :meth:`add_equality` and
    :meth:`add_inequality`, and implement :meth:`forward` to evaluate the objective and every
    constraint, on a batch if there is one. The model being trained may be a submodule or
    live outside the problem. The problem owns the multipliers and slacks: they are in its
    ``state_dict()`` and move with ``problem.to(device, dtype)``, which sets the dtype of the
    dual side (see :class:`ProblemState` for values of another dtype).

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, ProblemState
        >>> class AboveTwo(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.zeros(2))
        ...         self.add_inequality("sum", ">=")
        ...     def forward(self) -> ProblemState:
        ...         return ProblemState(self.x.square().sum(), {"sum": self.x.sum() - 2})
        >>> AboveTwo().constraints["sum"]
        Constraint(value >= 0, shape=(), treatment='projection')
    """

    def __init__(self) -> None:
        super().__init__()
        self.constraints = nn.ModuleDict()
        # The same constraints in a plain dict: the steps read it several times per call,
        # and ModuleDict access goes through nn.Module.__getattr__.
        self._declared: dict[str, Constraint] = {}
        self.parameter_bounds = nn.ModuleList()
        # The bounded parameters, beside their Bounds in parameter_bounds: a plain list, so
        # that a parameter registered elsewhere is not registered twice.
        self._bounded: list[tuple[Tensor, Bounds]] = []

    def __setattr__(self, name: str, value: Any) -> None:
        """Sets an attribute; a box of this problem (``self.box = self.add_bounds(...)``) is
        kept as a plain attribute, not registered a second time.

        Registered under its attribute too, the box's buffers would be in the state dict
        twice, and a load would copy both keys into them, the later silently winning.
        """
        if isinstance(value, Bounds) and any(
            value is bounds for _, bounds in self.__dict__.get("_bounded", ())
        ):
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @abc.abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> ProblemState:
        """Evaluates the objective and every declared constraint.

        Returns:
            A :class:`ProblemState` with a value for each declared constraint.
        """

    def add_equality(
        self,
        name: str,
        *,
        shape: tuple[int, ...] | int = (),
        num_samples: int | None = None,
        treatment: EqualityTreatment = "multiplier",
        penalty_weight: float | None = None,
    ) -> Constraint:
        """Declares the equality constraint ``value == 0``.

        Args:
            name: Unique name; :meth:`forward` returns the value under this key.
            shape: Shape of the value (of one sample's value if indexed).
            num_samples: If given, the constraint is indexed: one constraint per sample,
                evaluated on minibatches with :class:`IndexedValue`.
            treatment: ``"multiplier"`` (a Lagrange multiplier) or ``"penalty"`` (the
                quadratic penalty ``penalty_weight * value**2``, no multiplier).
            penalty_weight: The penalty's weight, required with ``treatment="penalty"``.

        Returns:
            The constraint's learnable state.
        """
        _check_treatment(name, treatment, _EQUALITY_TREATMENTS, penalty_weight)
        return self._add(name, "equality", None, shape, num_samples, treatment, 0.0, penalty_weight)

    def add_inequality(
        self,
        name: str,
        sense: Sense,
        *,
        shape: tuple[int, ...] | int = (),
        num_samples: int | None = None,
        treatment: Treatment = "projection",
        slack_margin: float = 1e-2,
        penalty_weight: float | None = None,
        dual_restart: bool = False,
    ) -> Constraint:
        """Declares the inequality ``value >= 0`` or ``value <= 0``.

        The sense has no default: ``">="`` means the returned value must be non-negative,
        ``"<="`` that it must be non-positive.

        With ``treatment="projection"`` (the default: under the augmented Lagrangian it is
        the same iteration as the slack, and with fixed steps on the plain Lagrangian it
        solves more of the benchmark, docs/benchmarks.md) the multiplier is projected onto
        ``>= 0`` after each dual step. With ``treatment="slack"`` the inequality becomes the
        equality ``g + s**2 = 0`` (``g`` being the value written as ``g <= 0``) with a slack
        ``s``: under the plain Lagrangian a learnable one that the primal optimizer updates,
        set on first observation so that ``s**2 = max(-g, slack_margin)`` (at ``s = 0`` its
        gradient vanishes and it would never move), and set again to ``s**2 = max(-g, 0)``
        wherever ``s**2`` has decayed to 0 (an active constraint's slack does, and it must
        grow again when the constraint turns inactive); under the augmented Lagrangian it is
        minimised in closed form. With ``treatment="penalty"`` there is no multiplier: the
        objective gains ``penalty_weight * max(g, 0)**2``, which only encourages
        feasibility.

        Args:
            name: Unique name; :meth:`forward` returns the value under this key.
            sense: ``">="`` or ``"<="``: the side of zero the value must be on.
            shape: Shape of the value (of one sample's value if indexed).
            num_samples: If given, the constraint is indexed (one per sample).
            treatment: ``"slack"``, ``"projection"`` or ``"penalty"``.
            slack_margin: Positive lower bound of ``s**2`` at initialisation.
            penalty_weight: The penalty's weight, required with ``treatment="penalty"``.
            dual_restart: Reset a multiplier to 0 at each dual step where its constraint
                is strictly satisfied (``treatment="projection"`` only): a constraint that
                holds stops pushing at once instead of waiting for its multiplier to
                decay, as in the controlled-sparsity work (Gallego-Posada et al., 2022).
                Not for constraints measured on minibatches: one satisfied batch would
                erase what the others built up.

        Returns:
            The constraint's learnable state.
        """
        if sense not in _SENSES:
            raise ValueError(
                f"constraint '{name}': invalid sense {sense!r}; use '>=' for value >= 0 "
                "or '<=' for value <= 0"
            )
        _check_treatment(name, treatment, _TREATMENTS, penalty_weight)
        if not (isinstance(slack_margin, (int, float)) and math.isfinite(slack_margin)):
            raise ValueError(f"constraint '{name}': invalid slack_margin: {slack_margin!r}")
        if slack_margin <= 0:
            raise ValueError(f"constraint '{name}': invalid slack_margin: {slack_margin!r}")
        if not isinstance(dual_restart, bool):
            raise TypeError(
                f"constraint '{name}': dual_restart must be a bool, got {dual_restart!r}"
            )
        if dual_restart and treatment != "projection":
            raise ValueError(
                f"constraint '{name}': dual_restart needs treatment='projection' (its multiplier "
                f"is projected onto >= 0), got treatment={treatment!r}"
            )
        return self._add(
            name, "inequality", sense, shape, num_samples, treatment, slack_margin, penalty_weight,
            dual_restart,
        )  # fmt: skip

    def _add(
        self,
        name: str,
        kind: Kind,
        sense: Sense | None,
        shape: Any,
        num_samples: Any,
        treatment: Treatment | EqualityTreatment,
        slack_margin: float,
        penalty_weight: float | None,
        dual_restart: bool = False,
    ) -> Constraint:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"invalid constraint name {name!r}: a non-empty string without '.'")
        if name in self.constraints:
            raise ValueError(f"constraint '{name}' is already declared")
        spec = ConstraintSpec(
            name=name,
            kind=kind,
            sense=sense,
            shape=_check_shape(name, shape),
            num_samples=_check_num_samples(name, num_samples),
            treatment=treatment,
            slack_margin=float(slack_margin),
            penalty_weight=None if penalty_weight is None else float(penalty_weight),
            dual_restart=dual_restart,
        )
        constraint = Constraint(spec)
        self.constraints[name] = constraint
        self._declared[name] = constraint
        return constraint

    def add_bounds(
        self,
        param: Tensor,
        lower: float | Tensor | None = None,
        upper: float | Tensor | None = None,
    ) -> Bounds:
        """Keeps ``lower <= param <= upper`` by projection: no multiplier, exactly feasible.

        The parameter is clamped onto its box now and after every primal update of every
        method (extrapolations included), so every iterate is feasible. Use it for simple
        bounds such as non-negative weights; a bound on a function of the parameters is a
        constraint (:meth:`add_inequality`).

        Args:
            param: A leaf tensor that the primal optimizer updates (a model's parameter).
            lower: A real number (a Python or NumPy scalar) within the range of
                ``param``'s dtype, or a tensor that broadcasts to ``param``'s shape (same
                dtype); ``None`` or ``-inf`` where there is no lower bound.
            upper: Likewise, ``None`` or ``inf`` where there is no upper bound.

        Returns:
            The box, whose ``lower`` and ``upper`` buffers are in this problem's state
            once, under ``parameter_bounds.<i>`` (kept as an attribute, ``self.box =
            self.add_bounds(...)``, it is not registered again). A loaded box is checked
            as a declared one, before anything loads.

        Raises:
            TypeError, ValueError: On a tensor that is not a leaf, a parameter bounded twice
                or one of this problem's multipliers or slacks, a NaN bound, a number
                beyond the range of the parameter's dtype, a bound of another dtype or
                shape, or a lower bound above the upper one.

        Example:
            >>> import torch
            >>> from lagrange_opt import ConstrainedProblem, ProblemState
            >>> class Weights(ConstrainedProblem):
            ...     def __init__(self) -> None:
            ...         super().__init__()
            ...         self.w = torch.nn.Parameter(torch.tensor([-1.0, 0.5, 3.0]))
            ...         self.add_bounds(self.w, lower=0.0, upper=2.0)
            ...     def forward(self) -> ProblemState:
            ...         return ProblemState(self.w.sum(), {})
            >>> Weights().w.tolist()
            [0.0, 0.5, 2.0]
        """
        if not isinstance(param, Tensor) or not param.is_leaf or not param.requires_grad:
            raise TypeError("add_bounds takes a leaf tensor that requires grad (a parameter)")
        if not param.dtype.is_floating_point:
            raise TypeError(f"add_bounds takes a floating-point parameter, got {param.dtype}")
        if any(bounded is param for bounded, _ in self._bounded):
            raise ValueError(
                f"the parameter of shape {tuple(param.shape)} already has bounds: give both "
                "sides in one call"
            )
        for name, constraint in self.constraint_items():
            if param is constraint.multiplier or param is constraint.slack:
                raise ValueError(
                    f"constraint '{name}': its multipliers and slacks cannot be bounded"
                )
        if lower is None and upper is None:
            raise ValueError("add_bounds needs a lower or an upper bound")
        label = self._describe_parameter(param)
        low = bound_tensor("lower", lower, param, -math.inf, label)
        high = bound_tensor("upper", upper, param, math.inf, label)
        crossed = crossing(low, high)
        if crossed is not None:
            raise ValueError(crossed)
        bounds = Bounds(low, high)
        self.parameter_bounds.append(bounds)
        self._bounded.append((param, bounds))
        bounds.project_(param)
        return bounds

    def _describe_parameter(self, param: Tensor) -> str:
        """Names a parameter in an error message: by its name in this problem if it has
        one (a model's parameter may live outside the problem), with its shape and dtype."""
        details = f"shape {tuple(param.shape)}, {param.dtype}"
        for name, candidate in self.named_parameters():
            if candidate is param:
                return f"parameter '{name}' ({details})"
        return f"the parameter of {details}"

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Called before this problem's own tensors and its submodules load: every box is
        # checked here, so that a refused checkpoint changes nothing.
        self._check_boxes_to_load(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_boxes_to_load(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Checks the boxes that ``state_dict`` holds as :meth:`add_bounds` checks a
        declared one (:func:`.bounds.check_loaded_box`), before anything loads.

        A box is in the state dict under ``parameter_bounds.<i>``. A checkpoint written
        while a box was also registered under an attribute (``self.box = ...``, before it
        was kept as a plain one) holds it under ``box`` too: the copy is taken if it holds
        the same values and dropped, refused if not. A box registered under a submodule's
        attribute as well is loaded through both names: they must agree.
        """
        if not self._bounded:
            return
        canonical = {
            id(bounds): f"{prefix}parameter_bounds.{i}."
            for i, bounds in enumerate(self.parameter_bounds)
        }
        # Each other name a box has, and whether its keys are to be dropped (a plain
        # attribute, which no longer loads).
        aliases: list[tuple[Bounds, str, bool]] = [
            (value, f"{prefix}{name}.", True)
            for name, value in vars(self).items()
            if isinstance(value, Bounds) and id(value) in canonical
        ]
        aliases += [
            (module, f"{prefix}{name}.", False)
            for name, module in self.named_modules(remove_duplicate=False)
            if isinstance(module, Bounds)
            and id(module) in canonical
            and f"{prefix}{name}." != canonical[id(module)]
        ]
        for box, alias, drop in aliases:
            for side in ("lower", "upper"):
                key, main = alias + side, canonical[id(box)] + side
                if key not in state_dict:
                    continue
                value = state_dict.pop(key) if drop else state_dict[key]
                if main not in state_dict:
                    state_dict[main] = value
                elif not _same(value, state_dict[main]):
                    raise ValueError(
                        f"the box of {self._describe_parameter(self._bounded_param(box))}: "
                        f"'{key}' and '{main}' hold different values for the same bound"
                    )
        for param, box in self._bounded:
            where = f"the box of {self._describe_parameter(param)}"
            check_loaded_box(box, state_dict, canonical[id(box)], where)

    def _bounded_param(self, box: Bounds) -> Tensor:
        return next(param for param, bounds in self._bounded if bounds is box)

    def bounded_parameters(self) -> list[tuple[Tensor, Bounds]]:
        """Each bounded parameter with its box, in the order declared."""
        return self._bounded

    def project_bounds_(self) -> None:
        """Clamps every bounded parameter onto its box (the methods call it after each
        primal update)."""
        for param, bounds in self._bounded:
            bounds.project_(param)

    def declared(self) -> Mapping[str, Constraint]:
        """The declared constraints by name, in declaration order."""
        return self._declared

    def constraint_items(self) -> Iterator[tuple[str, Constraint]]:
        """Yields ``(name, constraint)`` in declaration order, typed."""
        return iter(self._declared.items())

    def dual_parameters(self) -> list[nn.Parameter]:
        """The multipliers: give these to the dual optimizer (with ``maximize=True``).

        Empty if every constraint is penalised; the methods then take no dual optimizer.
        """
        return [c.multiplier for _, c in self.constraint_items() if c.multiplier is not None]

    def slack_parameters(self) -> list[nn.Parameter]:
        """The slacks: the primal optimizer must update them with the model parameters."""
        return [c.slack for _, c in self.constraint_items() if c.slack is not None]

    def primal_parameters(self) -> list[nn.Parameter]:
        """Every parameter of this module except the multipliers (the slacks included)."""
        multipliers = {id(p) for p in self.dual_parameters()}
        return [p for p in self.parameters() if id(p) not in multipliers]


def _same(a: Any, b: Any) -> bool:
    """Whether two loaded values are equal tensors (NaN where the other has NaN)."""
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        return a is b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    b = b.to(a.device)
    return bool(((a == b) | (a.isnan() & b.isnan())).all())
