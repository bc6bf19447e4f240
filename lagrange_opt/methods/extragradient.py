"""Extra-gradient, with a fixed or a backtracking step size."""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch import distributed as dist

from lagrange_opt.diagnostics.step_result import step_result
from lagrange_opt.evaluation.randomness import Buffers, rng_state, set_rng_state
from lagrange_opt.evaluation.step_closure import Closure
from lagrange_opt.evaluation.term_checks import DeferredCheck, finite_numbers_of
from lagrange_opt.evaluation.terms import Evaluation
from lagrange_opt.maths.augmented import AugmentedLagrangian
from lagrange_opt.maths.hyperparameters import check_learning_rate, check_real
from lagrange_opt.maths.stepsize import (
    AdaptiveStep,
    Trial,
    check_step_factor,
    dual_factor,
    interpolation_weight,
    judge_extrapolation,
    next_factor,
    step_size_option,
)
from lagrange_opt.methods.base import (
    ConstrainedOptimizer,
    GradientHook,
    Outcome,
    PrimalOptimizer,
    StepSizes,
)
from lagrange_opt.methods.checks import FormulationName
from lagrange_opt.methods.extrapolation_faults import blame_start_gradient, search_try
from lagrange_opt.methods.step_acceptance import (
    GradientBuffers,
    change_norms,
    interpolate,
    point_norm,
)
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.validation import NonFiniteError
from lagrange_opt.updates.loss_scaling import GradientOverflow
from lagrange_opt.updates.optimizer_params import params_of
from lagrange_opt.updates.rollback import Rollback, SavedPoint, evaluation_rows


class ExtraGradient(ConstrainedOptimizer):
    """Extra-gradient (Korpelevich, 1976): step to an extrapolated point, then step from the
    original point with the gradients found at the extrapolated one.

    With :math:`z = (x, s, \\lambda)` and :math:`F(z) = (\\nabla_x \\mathcal{L},
    \\nabla_s \\mathcal{L}, -\\nabla_\\lambda \\mathcal{L})`:

    .. math::

        z_{k+1/2} = z_k - \\eta F(z_k), \\qquad z_{k+1} = z_k - \\eta F(z_{k+1/2})

    where each plain step is the base optimizer's update. The extrapolation reads the base
    optimizers' state (momentum, Adam's moments) without changing it, so the state advances
    once per step, with the gradient at the extrapolated point. On bilinear games, where
    simultaneous descent-ascent spirals outwards, extra-gradient converges.

    With ``step_size=AdaptiveStep()`` (or ``"adaptive"``) the method chooses its own step
    (:mod:`lagrange_opt.maths.stepsize`): every learning rate is its group's base rate times a
    factor ``t``; an extrapolation whose operator changed too much against its move is
    shortened, its operator interpolated between the two evaluations, if it failed by a
    small margin, and otherwise redone from the saved point with a smaller ``t``
    (parameters, multipliers, slacks, optimizer state and the random number generators'
    state put back first); ``t`` grows after accepted steps. Under the augmented
    Lagrangian the multipliers step ``c`` times ``min(t, 1/2)``
    (:attr:`AdaptiveStep.max_dual_factor`): at factor 1 it would be the method of
    multipliers' dual step.
    With plain SGD the test is the one of the theory; with a stateful optimizer it acts on
    its learning rate with the same test, a heuristic (its moments are not put in the
    metric). Between steps each group's ``lr`` is its base rate, the one a learning-rate
    scheduler reads and writes (docs/dual.md): a step takes the rates it finds as its bases
    and steps with them times the factor.

    Each step calls the closure twice on the same batch (more after a redone rejection; the
    step's :attr:`StepResult.evaluations` says how many). The step holds one copy of the
    parameters and multipliers for the duration of the step (reused from step to step),
    and with the adaptive step one copy of their gradients.

    With ``same_randomness=True`` every evaluation of a step sees the random numbers the
    first one drew (the generators' state is put back before each: the same dropout
    masks), and the running statistics of the problem's normalisation layers keep the
    first evaluation's update only: a step then updates them once, at the point it starts
    from, as a plain training step does. Otherwise each evaluation draws anew and updates
    them (after a rejected try of the adaptive step, the retry draws what the rejected
    one drew).

    Args:
        problem: The problem to solve.
        primal_optimizer: Optimizer (or a list of them) over the parameters and slacks.
        dual_optimizer: Optimizer over the multipliers, ``maximize=True``.
        formulation: See :class:`ConstrainedOptimizer`.
        scaling: See :class:`ConstrainedOptimizer`.
        step_size: ``"fixed"`` (the optimizers' learning rates), ``"adaptive"`` (the
            default :class:`AdaptiveStep`) or an :class:`AdaptiveStep`.
        same_randomness: Make every evaluation of a step draw the same random numbers and
            update the running statistics once per step.
        gradient_hook: See :class:`ConstrainedOptimizer`.
        grad_scaler: See :class:`ConstrainedOptimizer`.
        process_group: See :class:`ConstrainedOptimizer` (docs/distributed.md).

    Example:
        >>> import torch
        >>> from lagrange_opt import ConstrainedProblem, ExtraGradient, ProblemState
        >>> class Problem(ConstrainedProblem):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.x = torch.nn.Parameter(torch.zeros(2))
        ...         self.add_inequality("sum", ">=")
        ...     def forward(self) -> ProblemState:
        ...         return ProblemState(self.x.square().sum(), {"sum": self.x.sum() - 2})
        >>> problem = Problem()
        >>> optimizer = ExtraGradient(
        ...     problem,
        ...     torch.optim.SGD(problem.primal_parameters(), lr=0.1),
        ...     torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        ... )
        >>> for _ in range(500):
        ...     result = optimizer.step(problem)
        >>> [round(v, 3) for v in problem.x.tolist()], round(float(result.max_violation), 6)
        ([1.0, 1.0], 0.0)
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal_optimizer: PrimalOptimizer,
        dual_optimizer: torch.optim.Optimizer | None = None,
        *,
        formulation: FormulationName | AugmentedLagrangian = "lagrangian",
        scaling: bool = False,
        step_size: Literal["fixed", "adaptive"] | AdaptiveStep = "fixed",
        same_randomness: bool = False,
        gradient_hook: GradientHook | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        process_group: dist.ProcessGroup | Literal["default"] | None = None,
    ) -> None:
        self.adaptive: AdaptiveStep | None = step_size_option(step_size)
        """The adaptive step's settings, ``None`` with a fixed step."""
        if not isinstance(same_randomness, bool):
            raise TypeError(f"same_randomness must be a bool, got {type(same_randomness).__name__}")
        super().__init__(
            problem, primal_optimizer, dual_optimizer, formulation=formulation, scaling=scaling,
            gradient_hook=gradient_hook, grad_scaler=grad_scaler,
            process_group=process_group,
        )  # fmt: skip
        self.same_randomness = same_randomness
        self._factor = 1.0 if self.adaptive is None else self.adaptive.initial
        self._base_lrs: list[float] = []
        self._scheduled: list[Any] = []
        self._read_bases()
        self._start_grads = GradientBuffers()
        self._replaying = False

    def _penalty_steps_dual(self) -> bool:
        return self.adaptive is not None

    def _defers_checks(self) -> bool:
        """Whether the evaluations' finiteness is not read at once: with a fixed step it is
        read with the check of what the step wrote, with the adaptive step with its test,
        one host read for them all; in a single process without loss scaling (which decides
        at once whether the step is skipped; ranks agree at once), and not in the replay of
        a step whose one read failed (:meth:`_step`)."""
        return self._loss_scaling is None and self._sync is None and not self._replaying

    def _checks_start_gradients(self) -> bool:
        """Whether the start's gradients are checked: the adaptive step's test reads them,
        and under loss scaling an overflow there skips the step; otherwise they only move
        the point to the extrapolated one, whose gradients are checked before any update
        commits."""
        return self.adaptive is not None or self._loss_scaling is not None

    @property
    def step_factor(self) -> float:
        """The factor ``t`` on the learning rates (1 with a fixed step)."""
        return self._factor

    def _read_bases(self) -> None:
        """Takes each group's ``lr`` as its base: between steps a scheduler (or the user)
        may have changed it, and the change is honoured."""
        self._scheduled = [group["lr"] for group in self.param_groups]
        self._base_lrs = [float(lr) for lr in self._scheduled]

    def _apply_factor(self, dual: float | None = None) -> None:
        """Sets each group's ``lr`` to its base times the factor, for the extrapolation (the
        multipliers' factor ``dual``, by default the capped :func:`dual_factor`)."""
        if self.adaptive is None:
            return
        primal_groups = len(self.primal_optimizer.param_groups)
        if dual is None:
            dual = dual_factor(self.adaptive, self._factor)
        for index, (group, base) in enumerate(zip(self.param_groups, self._base_lrs)):
            group["lr"] = base * (self._factor if index < primal_groups else dual)

    def _apply_sample_factor(self, sizes: StepSizes) -> StepSizes:
        """Sets the per-sample multiplier groups' ``lr`` to their base times
        :attr:`AdaptiveStep.sample_dual_factor` for the step's update, after the
        extrapolation (which moved them by the factor the test measured), and returns the
        update's step sizes."""
        sample = self._sample_groups()
        if not sample:
            return sizes
        assert self.adaptive is not None and self.adaptive.sample_dual_factor is not None
        for index in sample:
            group = self.param_groups[index]
            group["lr"] = self._base_lrs[index] * self.adaptive.sample_dual_factor
        return self._step_sizes()

    def _sample_groups(self) -> set[int]:
        """The indices (in :attr:`param_groups`) of the dual groups made of per-sample
        multiplier tables only, which step by :attr:`AdaptiveStep.sample_dual_factor`."""
        if self.dual_optimizer is None or self.adaptive is None:
            return set()
        if self.adaptive.sample_dual_factor is None:
            return set()
        first = len(self.primal_optimizer.param_groups)
        return {
            first + index
            for index, group in enumerate(self.dual_optimizer.param_groups)
            if group["params"] and all(id(p) in self._indexed_tables for p in group["params"])
        }

    def _restore_bases(self) -> None:
        """Puts back the rates the step found: a scheduler that multiplies the rate it reads
        (``StepLR``, ``ExponentialLR``) would otherwise compound the factor into its base."""
        if self.adaptive is None:
            return
        for group, scheduled in zip(self.param_groups, self._scheduled):
            group["lr"] = scheduled

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states, the formulation's and the step factor."""
        state = super().state_dict()
        state["step_factor"] = self._factor
        state["adaptive"] = self.adaptive is not None
        state["base_lrs"] = list(self._base_lrs)
        return state

    def _check_state(self, state_dict: dict[str, Any]) -> None:
        """Also the step: of the same kind, its factor in the range the constructor allows
        (1 with a fixed step) and each base rate a valid learning rate."""
        super()._check_state(state_dict)
        missing = {"step_factor", "base_lrs"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        if state_dict.get("adaptive") != (self.adaptive is not None):
            saved = "an adaptive" if state_dict.get("adaptive") else "a fixed"
            mine = "adaptive" if self.adaptive is not None else "fixed"
            raise ValueError(f"state_dict is from {saved} step; this optimizer's step is {mine}")
        check_step_factor(self.adaptive, state_dict["step_factor"], " in state_dict")
        bases = state_dict["base_lrs"]
        if not isinstance(bases, list | tuple):
            raise TypeError(f"base_lrs in state_dict must be a list, got {type(bases).__name__}")
        if len(bases) != len(self._base_lrs):
            raise ValueError(
                f"state_dict has {len(bases)} param groups, this optimizer {len(self._base_lrs)}"
            )
        for index, base in enumerate(bases):
            where = f" in state_dict['base_lrs'][{index}] ({self._group_name(index)})"
            check_learning_rate(check_real("learning rate", base, where), where)

    def _set_state(self, state_dict: dict[str, Any]) -> None:
        super()._set_state(state_dict)
        self._factor = float(state_dict["step_factor"])
        self._base_lrs = [float(lr) for lr in state_dict["base_lrs"]]

    def _group_name(self, index: int) -> str:
        """The param group at ``index`` of :attr:`param_groups`, as the messages name it."""
        primal = len(self.primal_optimizer.param_groups)
        if index < primal:
            return f"the primal optimizer's param group {index}"
        return f"the dual optimizer's param group {index - primal}"

    def _judge(
        self, point: SavedPoint, start_grads: list[Tensor | None], start: Evaluation,
        extrapolated: Evaluation, sizes: StepSizes, deferred: list[DeferredCheck],
    ) -> Trial:  # fmt: skip
        """Tests the extrapolation; with ``deferred`` (the start's check, not read yet) both
        evaluations' checks are read with the test's sums, one host read, and searched in
        the order of the step if one fails (a NaN is not a rejection)."""
        assert self.adaptive is not None
        bases = self._bases()
        moves = self._sgd_moves(sizes)
        sums = self._agreed(
            change_norms(point.params, point.copies, start_grads, bases, moves, start, extrapolated)
        )
        if deferred:
            params = params_of(self.primal_optimizer)
            checks = [*deferred[0].numbers, *finite_numbers_of(extrapolated, params, True)]
            values = torch.cat([sums, torch.stack(checks).to(sums)]).tolist()
            if not all(math.isfinite(value) for value in values[4:]):
                search_try(
                    point, start_grads, start, extrapolated, params, self._describe,
                    lambda: self._check_written(start.terms),
                )  # fmt: skip
            sums_read = values[:4]
        else:
            sums_read = sums.tolist()
        primal_operator, dual_operator, primal_point, dual_point = sums_read
        weight = dual_factor(self.adaptive, self._factor) / self._factor

        def start_norm() -> float:
            return float(self._agreed(point_norm(point.params, point.copies, bases, start)))

        return judge_extrapolation(
            self.adaptive,
            self._factor,
            primal_operator + weight * dual_operator,
            primal_point + dual_point / weight,
            start_norm,
        )

    def _sgd_moves(self, sizes: StepSizes) -> dict[int, float]:
        """For each primal parameter that plain SGD moved by exactly ``size * grad`` (before
        rounding; not projected onto bounds), ``abs(size)`` by ``id``: its move's norm is then
        read from its gradient, one pass where the difference of the points takes three.
        Low-precision parameters are left out: there rounding the point changes the move."""
        if sizes.primal is None:
            return {}
        bounded = {id(param) for param, _ in self.problem.bounded_parameters()}
        return {
            id(param): abs(size)
            for group, size in zip(self.primal_optimizer.param_groups, sizes.primal)
            for param in group["params"]
            if id(param) not in bounded and param.dtype in (torch.float32, torch.float64)
        }

    def _agreed(self, sums: Tensor) -> Tensor:
        """``sums`` as every rank will read them: rank 0's under data parallelism, so that no
        rounding difference can make the ranks call the closure unequally."""
        return sums if self._sync is None else self._sync.broadcast(sums)

    def _bases(self) -> dict[int, float]:
        """Each parameter's learning rate at ``t = 1``, by ``id`` (indexed tables too)."""
        return {
            id(param): base
            for group, base in zip(self.param_groups, self._base_lrs)
            for param in group["params"]
        }

    def _step(self, closure: Closure, calls: int, rollback: Rollback) -> Outcome:
        """One step; with :meth:`_defers_checks`, the start's values and the extrapolated
        evaluation are read with what the update wrote, once. A failure of that read is
        found after the update has overwritten the extrapolated point and the start's
        gradients, which name the culprit: the step is then put back and replayed with a
        read per evaluation (the closure called again, with the same random numbers),
        which raises the error the step would have raised at once."""
        if not self._defers_checks():
            return self._step_once(closure, calls, rollback, [])
        start_check: list[DeferredCheck] = []
        try:
            return self._step_once(closure, calls, rollback, start_check)
        except NonFiniteError as error:
            if len(start_check) < 2:  # not the one read: raised where it was found
                raise
            rollback.restore()
            self._clear_grads()
            self._replaying = True
            try:
                self._step_once(closure, calls, rollback, [])
            except BaseException as named:
                # The replay's error is the step's; the first pass's read is no context.
                raise named from None
            finally:
                self._replaying = False
            # The replay passed: the closure is not deterministic. The first pass's error.
            raise error from None

    def _step_once(
        self, closure: Closure, calls: int, rollback: Rollback, deferred: list[DeferredCheck]
    ) -> Outcome:
        # What a failed step puts back: the factor, and the bases it re-reads (a rate a
        # scheduler set since the last step is read again by the next step, not kept).
        factor, bases, scheduled = self._factor, self._base_lrs, self._scheduled
        try:
            if self.adaptive is not None:
                self._read_bases()
                self._apply_factor()
            if self._defers_checks():
                start = self._evaluate(closure, rollback.undo)
                self._backward(start, check=False)
                # With a fixed step its values only: its gradients move the point, checked as
                # the move; the adaptive step's test reads them too.
                params = params_of(self.primal_optimizer) if self.adaptive is not None else ()
                numbers = finite_numbers_of(start, params, bool(params))
                deferred.append(DeferredCheck(numbers, start, params, bool(params)))
            else:
                start = self._evaluate_and_backward(
                    closure, rollback.undo, check_grads=self._checks_start_gradients()
                )
            result = step_result(start, calls + 1)
            point = rollback.save_point(self._dense_parameters(), evaluation_rows(start))
            try:
                accepted = self._extrapolate(closure, rollback, start, point, deferred)
            except GradientOverflow:
                # The skipped step reports the figures at the point it started from.
                raise GradientOverflow(start) from None
            with torch.no_grad():
                sizes = self._apply_sample_factor(accepted.sizes)
                self._update_from_point(rollback, point, accepted.evaluation, sizes)
            # The adaptive step's test has read the evaluations' checks already.
            read = deferred if self.adaptive is None else ()
            self._check_written(accepted.evaluation.terms, read)
        except BaseException:
            self._restore_bases()
            self._factor, self._base_lrs, self._scheduled = factor, bases, scheduled
            raise
        self._clear_grads()
        if self.adaptive is not None:
            self._factor = next_factor(self.adaptive, self._factor, accepted.trial)
        self._restore_bases()
        return Outcome(result._replace(evaluations=result.evaluations + accepted.calls), start)

    def _extrapolate(
        self, closure: Closure, rollback: Rollback, start: Evaluation, point: SavedPoint,
        deferred: list[DeferredCheck],
    ) -> Extrapolation:  # fmt: skip
        """Steps to the extrapolated point and evaluates it there; with the adaptive step,
        retries from the saved point with a smaller factor until the test accepts it. On
        failure the step's rollback puts the point back.

        With ``deferred`` (the start's check, not read yet) the extrapolated evaluation's
        check joins it, to be read with what the update writes; an error raised at the
        extrapolated point (by the closure, or a value at fault) is explained first by the
        start's values and the move, as the checks read at once would have."""
        adaptive = self.adaptive
        indices = start.observed()
        start_grads: list[Tensor | None] = []
        if adaptive is not None:
            start_grads = self._start_grads.hold([p.grad for p in point.params])
        # Every try draws what the first one drew (or, with same_randomness, the start).
        rng = rollback.rng if self.same_randomness else rng_state()
        statistics = Buffers(self._statistics) if self.same_randomness else None
        calls = 0
        while True:
            sizes = self._step_sizes()
            with torch.no_grad():
                self._update(start.terms, sizes, None)
            if calls or self.same_randomness:
                set_rng_state(rng)
            try:
                extrapolated = self._evaluate(closure, rollback.undo, indices)
                self._backward(extrapolated, check=not deferred)
            except Exception as error:
                # A NonFiniteError is not a rejection, even with the adaptive step: a
                # shorter extrapolation cannot make a NaN in the data or the closure finite,
                # and retrying would bury the culprit under the retries' error. Raised at
                # once, named; the start's values first if they were not read.
                for check in deferred:
                    check.search(self._describe)
                if isinstance(error, NonFiniteError) or deferred:
                    blame_start_gradient(point, self._describe, error)
                    # Or the rows the extrapolation wrote (a multiplier's, a slack's).
                    self._check_written(start.terms)
                raise
            finally:
                if statistics is not None:
                    statistics.restore()
            calls += 1
            if adaptive is None:
                if deferred:
                    params = params_of(self.primal_optimizer)
                    numbers = finite_numbers_of(extrapolated, params, True)
                    deferred.append(DeferredCheck(numbers, extrapolated, params, True))
                return Extrapolation(extrapolated, sizes, Trial(True, 0.0), calls)
            trial = self._judge(point, start_grads, start, extrapolated, sizes, deferred)
            if trial.accepted:
                return Extrapolation(extrapolated, sizes, trial, calls)
            # Only under plain SGD, where the step is the theory's: with Adam the factor
            # scales a normalised step, which the interpolation misjudged (the default with
            # Adam diverged on the benchmark's network with it, not without).
            weight = None
            if sizes.primal is not None:
                weight = interpolation_weight(adaptive, self._factor, trial)
            if weight is not None:
                # The shorter extrapolation scales both sides' moves by the weight, so its
                # multipliers' factor is the weight times theirs, not the cap's rule at the
                # shorter factor.
                dual = weight * dual_factor(adaptive, self._factor)
                self._factor *= weight
                self._apply_factor(dual)
                interpolated = interpolate(point.params, start_grads, start, extrapolated, weight)
                return Extrapolation(
                    interpolated, self._step_sizes(), Trial(True, trial.lipschitz), calls
                )
            if calls > adaptive.max_retries:
                raise RuntimeError(
                    f"the adaptive step was rejected {calls} times in one step (step "
                    f"factor {self._factor:.3g}): the operator is not locally Lipschitz "
                    "here, or the closure is not deterministic"
                )
            self._factor = next_factor(adaptive, self._factor, trial)
            self._apply_factor()
            point.restore()
            for param, grad in zip(point.params, start_grads):
                param.grad = grad


class Extrapolation(NamedTuple):
    """The accepted extrapolation of a step.

    Attributes:
        evaluation: The evaluation at the extrapolated point, backpropagated.
        sizes: The step sizes it was taken with (the final update takes them too).
        trial: The test that accepted it (with a fixed step, accepted unseen).
        calls: Closure calls made to get it.
    """

    evaluation: Evaluation
    sizes: StepSizes
    trial: Trial
    calls: int
