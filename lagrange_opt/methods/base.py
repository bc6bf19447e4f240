"""Saddle-point optimizers: descent on the parameters and slacks, ascent on the multipliers."""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch import distributed as dist

from lagrange_opt.diagnostics.step_result import StepResult, step_result
from lagrange_opt.evaluation.closure_call import check_closure
from lagrange_opt.evaluation.distributed import failing_together, synchronizer
from lagrange_opt.evaluation.evaluate import evaluate
from lagrange_opt.evaluation.micro_batches import MicroBatches
from lagrange_opt.evaluation.randomness import running_statistics
from lagrange_opt.evaluation.rank_scales import measure_scales_across_ranks
from lagrange_opt.evaluation.scaling import measure_scales, measure_scales_over
from lagrange_opt.evaluation.slacks import UndoLog
from lagrange_opt.evaluation.step_closure import Closure, StepClosure
from lagrange_opt.evaluation.term_checks import DeferredCheck, check_finite, finite_numbers_of
from lagrange_opt.evaluation.terms import Evaluation, Term
from lagrange_opt.maths.augmented import AugmentedLagrangian
from lagrange_opt.maths.formulation import Scales
from lagrange_opt.maths.hyperparameters import check_count
from lagrange_opt.methods.checks import (
    FormulationName,
    check_formulation,
    check_groups,
    check_membership,
    check_optimizer,
    check_row_optimizers,
)
from lagrange_opt.methods.formulation_state import FormulationState
from lagrange_opt.problem.constrained_problem import ConstrainedProblem
from lagrange_opt.problem.validation import NonFiniteError
from lagrange_opt.updates.loss_scaling import (
    GradientOverflow,
    LossScaling,
    check_grad_scaler,
    unscale_,
)
from lagrange_opt.updates.optimizer_group import as_optimizer
from lagrange_opt.updates.optimizer_params import params_of
from lagrange_opt.updates.rollback import Rollback, SavedPoint, evaluation_rows
from lagrange_opt.updates.side_update import (
    dual_update,
    primal_update,
    sgd_step_sizes,
    steps_from_origins,
)
from lagrange_opt.updates.written_check import check_written

GradientHook = Callable[[], object]
"""Called with no arguments after each backward pass of a step, before its gradients are
checked and used (gradient clipping)."""

PrimalOptimizer = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]


class StepSizes(NamedTuple):
    """Each side's :func:`sgd_step_sizes` (``None``: the side uses ``optimizer.step()``)."""

    primal: list[float] | None
    dual: list[float] | None


class ConstrainedOptimizer(abc.ABC):
    """Common interface of the saddle-point methods.

    Each method takes two stock ``torch.optim`` optimizers: the primal one over the model
    parameters and the slacks (descent), the dual one over the multipliers, built with
    ``maximize=True`` (ascent). The method forms the Lagrangian and calls ``backward``
    itself, once per evaluation; gradients present before a step are discarded. A step that
    raises leaves the parameters, slacks, multipliers and optimizer states as they were.

    Parameters bounded with :meth:`ConstrainedProblem.add_bounds` are projected onto their
    box after every primal update.

    Args:
        problem: The problem to solve.
        primal_optimizer: Optimizer over the model parameters and ``problem.slack_parameters()``,
            or several over disjoint parts of them (e.g. Adam for an encoder, SGD for a
            head), stepped as one :class:`OptimizerGroup`.
        dual_optimizer: Optimizer over ``problem.dual_parameters()`` with ``maximize=True``;
            ``None`` if every constraint has the penalty treatment (no multipliers).
        formulation: ``"lagrangian"`` (the Lagrangian), ``"augmented"`` (the augmented
            Lagrangian with the default :class:`AugmentedLagrangian` settings) or an
            :class:`AugmentedLagrangian` with settings of its own. In the augmented
            Lagrangian a slack is minimised in closed form (it stays in the primal
            optimizer but takes no step) and every inequality's multipliers are projected.
        scaling: Divide the objective and each constraint by the largest entry of its
            gradient at the first step (if above one); the first step then calls the
            closure once more. Every figure the user sees stays in the user's units.
        gradient_hook: Called with no arguments after every backward pass of a step (each
            evaluation), once the gradients are unscaled and before they are checked and
            used: e.g. ``lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)``.
            The slacks' gradients are the hook's to touch only if it is given them.
        grad_scaler: A ``torch.amp.GradScaler`` for float16 autocast
            (:mod:`..updates.loss_scaling`): the step scales every backward pass, unscales
            the gradients, skips itself (:attr:`StepResult.skipped`) when one overflowed
            and moves the scale along the scaler's schedule. Do not call the scaler's
            ``step`` or ``update`` yourself; checkpoint its ``state_dict`` beside this
            optimizer's.
        process_group: Data-parallel training (docs/distributed.md): ``"default"`` (the
            default ``torch.distributed`` process group) or a ``ProcessGroup``; every rank
            evaluates its shard and takes the same step. ``None``: a single process.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal_optimizer: PrimalOptimizer,
        dual_optimizer: torch.optim.Optimizer | None = None,
        *,
        formulation: FormulationName | AugmentedLagrangian = "lagrangian",
        scaling: bool = False,
        gradient_hook: GradientHook | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        process_group: dist.ProcessGroup | Literal["default"] | None = None,
    ) -> None:
        if not isinstance(problem, ConstrainedProblem):
            raise TypeError(f"problem must be a ConstrainedProblem, got {type(problem).__name__}")
        if gradient_hook is not None and not callable(gradient_hook):
            raise TypeError(f"gradient_hook must be callable, got {type(gradient_hook).__name__}")
        scaler = check_grad_scaler(grad_scaler)
        primal = as_optimizer("primal", primal_optimizer)
        check_optimizer("primal", primal, maximize=False)
        if dual_optimizer is not None:
            check_optimizer("dual", dual_optimizer, maximize=True)
        check_membership(problem, primal, dual_optimizer)
        check_row_optimizers(problem, primal, dual_optimizer)
        if not isinstance(scaling, bool):
            raise TypeError(f"scaling must be a bool, got {type(scaling).__name__}")
        self.formulation = check_formulation(formulation)
        self._formulation = FormulationState(
            problem, self.formulation, scaling, self._penalty_steps_dual()
        )
        self.problem = problem
        self.primal_optimizer = primal
        self.dual_optimizer = dual_optimizer
        self._indexed_tables = {
            id(param)
            for _, constraint in problem.constraint_items()
            if constraint.spec.indexed
            for param in (constraint.multiplier, constraint.slack)
            if param is not None
        }
        self._declared = list(problem.declared())
        self._statistics = running_statistics(problem)
        self._point = SavedPoint()
        self._names = {id(param): name for name, param in problem.named_parameters()}
        self.gradient_hook = gradient_hook
        self._loss_scaling = None if scaler is None else LossScaling(scaler)
        # ddp: the collectives of a data-parallel step (lagrange_opt.evaluation.distributed).
        self._sync = synchronizer(process_group, problem, params_of(primal), self._indexed_tables)

    def _penalty_steps_dual(self) -> bool:
        """Whether the multipliers' gradient carries the penalty coefficient (the adaptive
        step's dual metric); fixed-step methods step along the plain gradient."""
        return False

    def step(self, closure: Closure | Sequence[Closure]) -> StepResult:
        """Takes one step.

        A step that raises, in any phase, leaves every parameter, slack and multiplier,
        both optimizers' states, the running statistics of the problem's normalisation
        layers and the random number generators as they were (the gradients are cleared).

        Args:
            closure: Re-evaluates the problem on the current batch and returns its
                :class:`ProblemState`, e.g. ``lambda: problem(inputs, targets, indices)``;
                or a list of them, one per micro-batch of equal size (gradient
                accumulation, :mod:`..evaluation.micro_batches`: the step is the whole
                batch's, with one micro-batch's graph held at a time, at one forward pass more per
                micro-batch).

        Returns:
            The objective, Lagrangian and violations at the point the step started from.

        Raises:
            NonFiniteError: If a value, multiplier or gradient is NaN or infinite, naming it.
            ValueError, TypeError: If the closure's result does not match the declarations,
                or a param group's settings became invalid since the last step (a
                learning rate below 0), naming the side and the group.
        """
        # ddp: a check failing on one rank only is agreed on, not left to hang the others.
        with failing_together(self._sync):
            check_closure(closure, "step()")
            self._check_declarations()
            self._formulation.check_running()
            self._check_groups()
        rollback = Rollback(self._point, self._statistics)
        measured = self._formulation.needs_scales
        counted: StepClosure | MicroBatches
        if isinstance(closure, Sequence):
            closure = counted = MicroBatches(closure)
        else:
            closure = counted = StepClosure(closure)
        try:
            if measured:
                self._formulation.set_scales(self._measure_scales(closure))
                # The measuring call leaves no trace: the step's first evaluation sees the
                # same random numbers and statistics.
                rollback.rewind()
            result = self._step(closure, int(measured), rollback)
            if self._sync is not None:
                # ddp: a rank that failed after the step's last agreement tells the others.
                self._sync.agree(None)
        except BaseException as error:
            if self._sync is not None:
                self._sync.settle(error)
            self._clear_grads()
            rollback.restore()
            # The parameters moved back in place: what follows in the user's autocast
            # region must not see stale casts.
            torch.clear_autocast_cache()
            if measured:
                self._formulation.set_scales(None)
            if self._loss_scaling is None or not isinstance(error, GradientOverflow):
                raise
            self._loss_scaling.end_step(skipped=True)
            skipped = step_result(error.evaluation, counted.calls)
            return skipped._replace(skipped=True)
        torch.clear_autocast_cache()  # as above: the parameters moved
        params = params_of(self.primal_optimizer) if self._formulation.watches_primal else ()
        self._formulation.observe(result.evaluation, params)
        if self._loss_scaling is not None:
            self._loss_scaling.end_step(skipped=False)
        return result.result

    def _measure_scales(self, closure: StepClosure | MicroBatches) -> Scales:
        """The first step's scales, on the whole batch: over the micro-batches, or across
        the ranks of a process group."""
        params = params_of(self.primal_optimizer)
        closures = closure.each() if isinstance(closure, MicroBatches) else [closure]
        if self._sync is not None:
            return measure_scales_across_ranks(self._sync, self.problem, closures, params)
        if isinstance(closure, MicroBatches):
            return measure_scales_over(self.problem, closures, params)
        return measure_scales(self.problem, closure, params)

    def _check_declarations(self) -> None:
        declared = self.problem.declared()
        if len(declared) != len(self._declared):
            late = [name for name in declared if name not in self._declared]
            raise RuntimeError(
                f"constraint(s) {late} were declared after this optimizer was built, so no "
                "optimizer steps their multipliers: build the optimizers and the method again "
                "(over problem.dual_parameters() and problem.slack_parameters())"
            )

    def _check_groups(self) -> None:
        """Both optimizers' param groups, as when the method was built
        (:func:`check_groups`: host-side reads, no device synchronisation)."""
        check_groups("primal", self.primal_optimizer, maximize=False)
        if self.dual_optimizer is not None:
            check_groups("dual", self.dual_optimizer, maximize=True)

    @abc.abstractmethod
    def _step(self, closure: Closure, calls: int, rollback: Rollback) -> Outcome:
        """The method's step, after the scales are known; ``calls`` closure calls made.

        Whatever it changes before raising, ``rollback`` (or the method itself) puts back.
        """

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The primal optimizer's parameter groups, then the dual optimizer's."""
        dual_groups = [] if self.dual_optimizer is None else self.dual_optimizer.param_groups
        return [*self.primal_optimizer.param_groups, *dual_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the gradients of both optimizers' parameters."""
        self.primal_optimizer.zero_grad(set_to_none=set_to_none)
        if self.dual_optimizer is not None:
            self.dual_optimizer.zero_grad(set_to_none=set_to_none)

    def _clear_grads(self) -> None:
        # What zero_grad() does, without the profiler hooks of Optimizer.zero_grad, which
        # cost more than the rest of a small problem's step.
        for optimizer in (self.primal_optimizer, self.dual_optimizer):
            if optimizer is None:
                continue
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states, the formulation's and the loss scaling's count of steps
        without a skip. Multipliers and slacks are in ``problem.state_dict()``; a
        ``grad_scaler`` has its own ``state_dict``."""
        loss_scaling = self._loss_scaling
        return {
            "method": type(self).__name__,
            "primal": self.primal_optimizer.state_dict(),
            "dual": None if self.dual_optimizer is None else self.dual_optimizer.state_dict(),
            "formulation": self._formulation.state_dict(),
            "steps_without_skip": None if loss_scaling is None else loss_scaling.steps_without_skip,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned, all or nothing.

        Every part that can be checked before loading is (:meth:`_check_state`: its
        structure, and each number range-checked as the constructor checks it); then the
        formulation's and the optimizers' states load, and the loaded param groups are
        checked as the constructor checks them (a part that fails to load, or a group that
        fails its check, puts back the parts loaded before it); last the method's own
        numbers, checked already, are set.

        Raises:
            ValueError: If the state comes from another method or lacks a part, or a
                number in it is out of range (naming it and its value).
            TypeError: If a number in it is not a number.
        """
        self._check_state(state_dict)
        backup = copy.deepcopy(self.state_dict())
        try:
            self._load_parts(state_dict)
            self._check_groups()
        except BaseException:
            self._load_parts(backup)
            raise
        self._set_state(state_dict)

    def _check_state(self, state_dict: dict[str, Any]) -> None:
        """Checks, before anything loads, what :meth:`_set_state` will set and the parts'
        presence. A method with numbers of its own extends it (calling this one)."""
        missing = {"method", "primal", "dual", "formulation"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        method = state_dict["method"]
        if method != type(self).__name__:
            raise ValueError(f"state_dict is from {method}, not {type(self).__name__}")
        if (state_dict["dual"] is None) != (self.dual_optimizer is None):
            raise ValueError("state_dict and this optimizer disagree on having a dual optimizer")
        steps_without_skip = state_dict.get("steps_without_skip")
        if (steps_without_skip is None) != (self._loss_scaling is None):
            raise ValueError("state_dict and this optimizer disagree on having a grad_scaler")
        if steps_without_skip is not None:
            check_count("steps_without_skip", steps_without_skip, " in state_dict")

    def _set_state(self, state_dict: dict[str, Any]) -> None:
        """Sets the method's own numbers from a state :meth:`_check_state` accepted: it
        cannot raise (the parts before it are loaded already)."""
        if self._loss_scaling is not None:
            self._loss_scaling.steps_without_skip = state_dict["steps_without_skip"]

    def _load_parts(self, state_dict: dict[str, Any]) -> None:
        self._formulation.load_state_dict(state_dict["formulation"])
        self.primal_optimizer.load_state_dict(state_dict["primal"])
        if self.dual_optimizer is not None:
            self.dual_optimizer.load_state_dict(state_dict["dual"])

    # The pieces every method is made of.

    def _evaluate(
        self,
        closure: Closure,
        undo: UndoLog,
        expected_indices: Mapping[str, Tensor | None] | None = None,
    ) -> Evaluation:
        """Evaluates without checking the values: :meth:`_backward` checks them."""
        return evaluate(
            self.problem, closure, undo, expected_indices, self._formulation.current(),
            check_values=False, sync=self._sync,
        )  # fmt: skip

    def _evaluate_and_backward(
        self, closure: Closure, undo: UndoLog, check_grads: bool = True
    ) -> Evaluation:
        """Evaluates at the current point and backpropagates, both checked."""
        evaluation = self._evaluate(closure, undo)
        self._backward(evaluation, check_grads=check_grads)
        return evaluation

    def _evaluate_and_backward_deferred(
        self, closure: Closure, undo: UndoLog
    ) -> tuple[Evaluation, list[DeferredCheck]]:
        """Evaluates at the current point and backpropagates, the check of the values and
        gradients left to the check of what the step writes (one host read for both:
        :meth:`_check_written`) where it can wait: a single process without loss
        scaling. Else checked at once, as :meth:`_evaluate_and_backward` does."""
        evaluation = self._evaluate(closure, undo)
        if self._loss_scaling is not None or self._sync is not None:
            # Loss scaling decides at once whether the step is skipped; ranks agree at once.
            self._backward(evaluation)
            return evaluation, []
        self._backward(evaluation, check=False)
        params = params_of(self.primal_optimizer)
        numbers = finite_numbers_of(evaluation, params, slacks=True)
        return evaluation, [DeferredCheck(numbers, evaluation, params, True)]

    def _backward(
        self,
        evaluation: Evaluation,
        weights: list[Tensor] | None = None,
        check_grads: bool = True,
        check: bool = True,
    ) -> None:
        """Backpropagates (scaled, then unscaled, under loss scaling), runs the gradient
        hook, then (unless ``check`` is False: the caller defers it) checks the values
        and (unless told not to: gradients that no update commits) the gradients, with
        one host sync.

        Raises:
            GradientOverflow: Under loss scaling, if a gradient is not finite where the
                values are.
        """
        self._clear_grads()
        params = params_of(self.primal_optimizer)
        loss_scaling = self._loss_scaling
        if loss_scaling is None:
            evaluation.backward(weights)
        else:
            scale = loss_scaling.scale(params[0].device)
            evaluation.backward(weights, scale)
            unscale_(evaluation.gradients(params), scale)
        if self.gradient_hook is not None:
            self.gradient_hook()
        if not check:
            return
        checked = params if check_grads else ()
        try:
            check_finite(evaluation, checked, self._describe, slacks=check_grads)
        except NonFiniteError:
            if loss_scaling is None:
                raise
            check_finite(evaluation)  # a value at fault is not the scale's doing
            raise GradientOverflow(evaluation) from None

    def _describe(self, param: Tensor) -> str:
        name = self._names.get(id(param))
        if name is not None:
            return f"parameter '{name}'"
        for index, group in enumerate(self.primal_optimizer.param_groups):
            for position, member in enumerate(group["params"]):
                if member is param:
                    return (
                        f"parameter {position} of the primal optimizer's param group {index} "
                        f"(shape {tuple(param.shape)})"
                    )
        return f"a parameter of shape {tuple(param.shape)}"

    def _step_sizes(self) -> StepSizes:
        """Read once per step: a scheduler may change the learning rates between steps."""
        dual = self.dual_optimizer
        return StepSizes(
            sgd_step_sizes(self.primal_optimizer), None if dual is None else sgd_step_sizes(dual)
        )

    def _update(self, terms: Sequence[Term], sizes: StepSizes, rollback: Rollback | None) -> None:
        """Both sides' steps along the parameters' gradients and the residuals and slack
        gradients of ``terms``, from the current point (under the caller's
        ``torch.no_grad()``). With a ``rollback`` the optimizers' states advance and it keeps
        what puts them back; without, they are left as they were (an extrapolation)."""
        commit = rollback is not None
        undo = primal_update(self.primal_optimizer, sizes.primal, terms, commit)
        if rollback is not None:
            rollback.keep(undo)
        self.problem.project_bounds_()
        undo = dual_update(self.dual_optimizer, sizes.dual, terms, commit)
        if rollback is not None:
            rollback.keep(undo)

    def _update_from_point(
        self, rollback: Rollback, point: SavedPoint, evaluation: Evaluation, sizes: StepSizes
    ) -> None:
        """The step from the saved point along the gradients of ``evaluation`` (taken at
        another point: extra-gradient's extrapolated one)."""
        if not steps_from_origins(self.primal_optimizer, sizes.primal):
            point.restore()
            self._update(evaluation.terms, sizes, rollback)
            return
        # Plain SGD and torch's Adam step from the saved point straight into the
        # parameters they move: one pass over them instead of a copy back and an update.
        origins = point.origins()
        moved = {id(param) for param in params_of(self.primal_optimizer) if param.grad is not None}
        point.restore(skip=moved)
        undo = primal_update(
            self.primal_optimizer, sizes.primal, evaluation.terms, commit_state=True,
            origins=origins,
        )  # fmt: skip
        rollback.keep(undo)
        self.problem.project_bounds_()
        rollback.keep(dual_update(self.dual_optimizer, sizes.dual, evaluation.terms, True))

    def _save_point(self, rollback: Rollback, evaluation: Evaluation) -> None:
        """Saves, before the updates along ``evaluation``, both sides' points: the dense
        parameters and multipliers, and the indexed rows the updates move (copies already
        in the evaluation). Whatever the updates, a later phase may have to put them back:
        the check of what they wrote (:meth:`_check_written`) and, under data parallelism,
        the step's last agreement, which may raise on this rank for another rank's
        failure."""
        rollback.save_point(self._dense_parameters(), evaluation_rows(evaluation))

    def _check_written(self, terms: Sequence[Term], deferred: Sequence[DeferredCheck] = ()) -> None:
        """What the step's updates wrote, checked before the step commits, with the
        evaluations' ``deferred`` checks (:func:`..updates.written_check.check_written`:
        one host read for all)."""
        params = params_of(self.primal_optimizer)
        check_written(params, terms, self._indexed_tables, self._describe, deferred)

    def _dense_parameters(self) -> list[Tensor]:
        """Parameters of both optimizers except the indexed tables (stepped by rows)."""
        indexed = self._indexed_tables
        params = [*params_of(self.primal_optimizer), *params_of(self.dual_optimizer)]
        return [param for param in params if id(param) not in indexed]


class Outcome(NamedTuple):
    """What a method's step hands back: the result, and the evaluation at the point the
    step started from (the penalty-update rule observes it once the step succeeded)."""

    result: StepResult
    evaluation: Evaluation
