"""KKT diagnostics: per-constraint figures of a step, and the residuals of a point.

At a solution of :math:`\\min f(x)` s.t. :math:`h(x) = 0`, :math:`g(x) \\le 0`,
:math:`l \\le x \\le u`, with the Lagrangian
:math:`\\mathcal{L} = f + \\langle \\mu, h \\rangle + \\langle \\lambda, g \\rangle`:

.. math::

    \\underbrace{\\lVert x - P_{[l,u]}(x - \\nabla_x \\mathcal{L}) \\rVert_\\infty}_{
    \\text{stationarity}} = 0, \\quad
    \\underbrace{\\max(|h|, g^+)}_{\\text{primal feasibility}} = 0, \\quad
    \\underbrace{\\max(-\\lambda)^+}_{\\text{dual feasibility}} = 0, \\quad
    \\underbrace{\\max |\\lambda g|}_{\\text{complementarity}} = 0

(the projected gradient's form of stationarity holds the bounds' multipliers implicitly).
Everything is in the user's units, whatever scaling the method applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch import distributed as dist

from lagrange_opt.evaluation.closure_call import check_closure
from lagrange_opt.evaluation.distributed import synchronizer
from lagrange_opt.evaluation.randomness import Buffers, rng_state, running_statistics, set_rng_state
from lagrange_opt.maths import lagrangian as lag
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.constraints import ConstraintSpec, ProblemState
from lagrange_opt.problem.validation import check_state, gradient_path_fault


class ConstraintFigures(NamedTuple):
    """One constraint's figures in a step, as detached 0-dim tensors.

    Attributes:
        max_violation: Its largest violation in the step's evaluation.
        multiplier_norm: The largest absolute multiplier read (``None`` without multipliers).
    """

    max_violation: Tensor
    multiplier_norm: Tensor | None


class ConstraintReport(Mapping[str, ConstraintFigures]):
    """Per-constraint figures of a step, computed when read: a step pays for none.

    Only the constraints observed in the step's evaluation are in the mapping: one that the
    closure left out, or returned with zero entries, has no figures (``name in report`` is
    false, ``report.get(name)`` is ``None``, ``report[name]`` raises ``KeyError``).
    """

    def __init__(
        self,
        standards: Sequence[tuple[ConstraintSpec, Tensor]],
        multipliers: Mapping[str, Tensor],
    ) -> None:
        self._standards = {spec.name: (spec, standard) for spec, standard in standards}
        self._multipliers = multipliers

    def __getitem__(self, name: str) -> ConstraintFigures:
        if name not in self._standards:
            raise KeyError(
                f"no figures for constraint {name!r}: not observed in this step (left out of "
                "the closure's result, or of size zero), or not declared"
            )
        spec, standard = self._standards[name]
        multipliers = self._multipliers.get(name)
        return ConstraintFigures(
            lag.violation(standard, spec).amax(),
            None if multipliers is None else multipliers.abs().amax(),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._standards)

    def __len__(self) -> int:
        return len(self._standards)

    def __repr__(self) -> str:
        return f"ConstraintReport({list(self._standards)})"


class KKTResiduals(NamedTuple):
    """The KKT residuals of a point, in the user's units (see :func:`kkt`).

    Attributes:
        stationarity: :math:`\\lVert x - P(x - \\nabla_x \\mathcal{L}) \\rVert_\\infty`.
        primal_feasibility: The largest constraint violation.
        dual_feasibility: The largest negative part of an inequality multiplier.
        complementarity: The largest :math:`|\\lambda_i g_i|` of an inequality.
    """

    stationarity: float
    primal_feasibility: float
    dual_feasibility: float
    complementarity: float

    def converged(self, tol: float = 1e-6) -> bool:
        """The stopping test: every residual at or below ``tol``.

        Example:
            >>> KKTResiduals(1e-7, 0.0, 0.0, 2e-7).converged(1e-6)
            True
        """
        return all(residual <= tol for residual in self)


def kkt(
    problem: ConstrainedProblem,
    closure: Callable[[], ProblemState] | None = None,
    params: Sequence[Tensor] | None = None,
    *,
    process_group: dist.ProcessGroup | Literal["default"] | None = None,
) -> KKTResiduals:
    """The KKT residuals at the current parameters and multipliers.

    Indexed constraints follow the Lagrangian's convention (terms averaged over the
    batch), so evaluate every sample, or a large batch, for a meaningful figure.
    Constraints under the penalty treatment count in primal feasibility, and their penalty
    in the Lagrangian; slacks are left out of stationarity (``g + s**2 = 0`` and
    complementarity cover them). A constraint that the closure does not observe (left out,
    or of size zero) counts in none of the residuals.

    **No side effects.** The closure runs in the modules' current mode (training mode
    draws dropout masks and normalises with the batch's statistics, as the step does), and
    what it changes besides the residuals is put back when ``kkt`` returns or raises: the
    random number generators' states (the CPU one and, once CUDA is in use, every CUDA
    device's) and the running statistics of the normalisation layers registered in the
    problem (those of :data:`..evaluation.randomness.NORMALIZATION_LAYERS`). ``kkt(problem)`` and
    then a step therefore give bitwise the step alone, which draws the same masks that
    ``kkt`` evaluated with; no parameter's ``.grad`` is touched. A model that lives
    outside the problem is not seen: register it in the problem (or call ``model.eval()``
    around ``kkt``) for its statistics to be kept. For the residuals of the model as used
    at inference (no dropout, the running statistics), call ``problem.eval()`` first.

    Args:
        problem: The problem.
        closure: Evaluates it; ``problem()`` if ``None``.
        params: The primal parameters; the problem's own (slacks excluded) if ``None``.
        process_group: Data-parallel evaluation (docs/distributed.md): each rank's closure
            evaluates its shard, and every rank gets the whole batch's residuals: the
            objective and dense constraint values averaged across ranks before the
            Lagrangian is formed, the gradients averaged (one ``all_reduce`` of the
            parameters' size), the largest violation, negative multiplier and product
            taken over the ranks. Call it on every rank.

    Raises:
        TypeError: If ``closure`` is not callable (the problem's value, ``problem(idx)``,
            passed for the function ``lambda: problem(idx)``).
        ValueError: If a constraint value (or the objective and every constraint) has no
            gradient path to the parameters, as a step does.
        RuntimeError: With a process group, if the closure failed on another rank.

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, ProblemState, kkt
        >>> class Problem(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        ...         self.add_inequality("sum", ">=", treatment="projection")
        ...     def forward(self) -> ProblemState:
        ...         return ProblemState(self.x.square().sum(), {"sum": self.x.sum() - 2})
        >>> problem = Problem()
        >>> with torch.no_grad():
        ...     _ = problem.constraints["sum"].multiplier.fill_(2.0)
        >>> kkt(problem).converged(1e-9)
        True
    """
    if closure is not None:
        check_closure(closure, "kkt()", micro_batches=False)
    if params is None:
        slacks = {id(slack) for slack in problem.slack_parameters()}
        params = [p for p in problem.primal_parameters() if id(p) not in slacks]
    params = [param for param in params if param.requires_grad]
    rng = rng_state()
    statistics = Buffers(running_statistics(problem))
    try:
        return _residuals(problem, closure, params, process_group)
    finally:
        # The closure's draws and its updates of the running statistics are undone, so
        # that a step after kkt() is the step without it.
        set_rng_state(rng)
        statistics.restore()


def _residuals(
    problem: ConstrainedProblem,
    closure: Callable[[], ProblemState] | None,
    params: Sequence[Tensor],
    process_group: dist.ProcessGroup | Literal["default"] | None,
) -> KKTResiduals:
    """:func:`kkt`'s evaluation and residuals, its side effects left to the caller."""
    sync = synchronizer(process_group, problem, params, set())
    with torch.enable_grad():
        try:
            state = closure() if closure is not None else problem()
            objective, checked = check_state(problem, state)
            fault = gradient_path_fault(objective, checked)
            if fault is not None:
                raise ValueError(fault)
        except BaseException as error:
            if sync is not None:
                sync.agree(error)
            raise
        if sync is not None:
            sync.agree(None, [name for name, _, _, _ in checked])
            objective, checked = sync.average_dense(objective, checked)
        lagrangian = objective
        primal = dual = complementarity = 0.0
        for _, constraint, value, indices in checked:
            spec = constraint.spec
            standard = lag.standard_form(value, spec)
            batch = None if indices is None else indices.shape[0]
            primal = max(primal, float(lag.violation(standard.detach(), spec).amax()))
            if constraint.multiplier is None:
                lagrangian = lagrangian + lag.penalty_term(standard, spec, batch)
                continue
            multipliers = constraint.multiplier.detach()
            if indices is not None:
                multipliers = multipliers.index_select(0, indices.long())
            lagrangian = lagrangian + lag.constraint_term(multipliers, standard, batch)
            if spec.kind == "inequality":
                dual = max(dual, float(multipliers.neg().clamp(min=0).amax()))
                products = (multipliers * standard.detach()).abs()
                complementarity = max(complementarity, float(products.amax()))
        # A constant Lagrangian: a constant objective and no constraint observed.
        differentiable = bool(params) and lagrangian.requires_grad
        grads: Sequence[Tensor | None] = (
            torch.autograd.grad(lagrangian, params, allow_unused=True)
            if differentiable
            else [None] * len(params)
        )
    finite = _all_finite([objective, *(value for _, _, value, _ in checked)], grads)
    if sync is not None:
        # Every rank returns the same residuals: a NaN on one rank is infinite on all.
        grads = sync.average_gradients(params, grads)
        *largest, flag = sync.largest([primal, dual, complementarity, 0.0 if finite else 1.0])
        primal, dual, complementarity = largest
        finite = flag == 0.0
    boxes = {id(param): bounds for param, bounds in problem.bounded_parameters()}
    stationarity = 0.0
    for param, grad in zip(params, grads):
        if grad is None:
            continue
        bounds = boxes.get(id(param))
        if bounds is not None:
            moved = torch.clamp(param.detach() - grad, bounds.lower, bounds.upper)
            grad = param.detach() - moved
        stationarity = max(stationarity, float(grad.abs().amax()))
    residuals = (stationarity, primal, dual, complementarity)
    # max() drops a NaN that comes second: a point with NaN anywhere is as far as can be.
    if not (finite and all(math.isfinite(r) for r in residuals)):
        return KKTResiduals(math.inf, math.inf, math.inf, math.inf)
    return KKTResiduals(*residuals)


def _all_finite(values: Sequence[Tensor], grads: Sequence[Tensor | None]) -> bool:
    """Whether the values (a proxy's surrogate included: its NaN is in its value, see
    :func:`..problem.proxy.proxied`) and the gradients are finite."""
    tensors = [*(value.detach() for value in values), *(g for g in grads if g is not None)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
