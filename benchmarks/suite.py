"""The convergence benchmark's problems: each with its learning rates, budgets and reference.

:data:`BENCHMARKS` maps a name to a builder of its :class:`Benchmark` (quick or full):
the Hock-Schittkowski problems, non-negative least squares on scikit-learn's diabetes data,
a per-sample constrained linear model and the ``positive-outputs`` network.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lagrange_opt import ConstrainedProblem, Treatment
from lagrange_opt.problems import (
    HOCK_SCHITTKOWSKI,
    NEGATIVE_TOLERANCE,
    NonlinearProgram,
    NonNegativeLeastSquares,
    NonNegativePredictions,
    PositiveOutputs,
)

from . import references

Args = tuple[Any, ...]
"""The closure arguments of one step."""

HS_LR = 0.01
HS_DUAL_LR = 0.05
"""The Hock-Schittkowski problems' fixed learning rates (primal and slacks, dual): those the
benchmark chose for plain SGD (docs/benchmarks.md). They are no longer the package defaults,
which now belong to :func:`lagrange_opt.default_optimizer`'s adaptive step."""


class Final(NamedTuple):
    """A run's figures on all the data at its end."""

    objective: float
    max_violation: float
    fraction_violated: float | None = None


class Benchmark(NamedTuple):
    """A problem of the suite with its learning rates and step budgets.

    Attributes:
        name: The problem's name in the table.
        build: Builds a fresh problem for a treatment and penalty weight.
        f_star: The optimal value, ``None`` if unknown.
        lr: Primal learning rate (plain SGD), for every fixed-step method.
        dual_lr: Dual learning rate (plain SGD ascent).
        slack_lr: The slacks' learning rate (slack treatment only).
        steps: Step budget; ``quick_steps`` with ``--quick``.
        quick_steps: Step budget of a quick run.
        batches: The closure arguments of step ``k`` (a minibatch), for a budget.
        final: The objective, max violation and fraction of violated outputs on all the
            data, after the run.
        reference: SLSQP's objective and max violation, or ``None`` where it does not apply.
        reparametrised: Builds the problem with a positive output map (``exp``,
            ``softplus``), for the methods that need no constraint.
        batch_size: Samples per step of an indexed problem. lagrange_opt averages an indexed
            constraint's terms over the batch where Cooper sums them, so Cooper's multipliers
            are lagrange_opt's divided by the batch size, and Cooper gets the equivalent
            dual learning rate ``dual_lr / batch_size``.
        lower_bound: A lower bound of every feasible point's objective, where no optimum is
            known.
        full_args: The closure arguments that evaluate all the data (for the KKT residuals).
    """

    name: str
    build: Callable[[Treatment, float | None], ConstrainedProblem]
    f_star: float | None
    lr: float
    dual_lr: float
    slack_lr: float
    steps: int
    quick_steps: int
    batches: Callable[[int], Sequence[Args]] | None = None
    final: Callable[[ConstrainedProblem], Final] | None = None
    reference: Callable[[], tuple[float, float]] | None = None
    reparametrised: Callable[[str], ConstrainedProblem] | None = None
    batch_size: int | None = None
    lower_bound: float | None = None
    full_args: Args = ()


def no_batches(steps: int) -> Sequence[Args]:
    """The closure arguments of a full-batch problem's steps: none."""
    return [()] * steps


def _hock_schittkowski(name: str, quick: bool) -> Benchmark:
    definition = HOCK_SCHITTKOWSKI[name]
    return Benchmark(
        name=name,
        build=lambda treatment, weight: NonlinearProgram(definition, treatment, weight),
        f_star=definition.f_star,
        lr=HS_LR,
        dual_lr=HS_DUAL_LR,
        slack_lr=HS_LR,
        steps=50_000,
        quick_steps=200,
        reference=lambda: references.slsqp(NonlinearProgram(definition, "projection")),
    )


def _nnls(quick: bool) -> Benchmark:
    X, y = references.diabetes()
    f_star = references.nnls_objective(X, y)
    return Benchmark(
        name="nnls-diabetes",
        build=lambda treatment, weight: NonNegativeLeastSquares(X, y, treatment, weight),
        f_star=f_star,
        lr=0.05,
        dual_lr=0.05,
        slack_lr=0.001,
        steps=50_000,
        quick_steps=300,
        reference=lambda: references.slsqp(NonNegativeLeastSquares(X, y, "projection")),
    )


@functools.cache
def _per_sample_reference() -> tuple[float, float]:
    X, y = references.per_sample_data()
    return references.slsqp(NonNegativePredictions(X, y, "projection"))


def _per_sample(quick: bool) -> Benchmark:
    X, y = references.per_sample_data()
    # f* is SLSQP's optimum: computed once per process, it also serves as the reference run.
    reference = _per_sample_reference()
    return Benchmark(
        name="nonnegative-linear",
        build=lambda treatment, weight: NonNegativePredictions(X, y, treatment, weight),
        batch_size=X.shape[0],
        f_star=reference[0],
        lr=0.05,
        dual_lr=0.05 * X.shape[0],
        slack_lr=0.05,
        steps=50_000,
        quick_steps=300,
        reference=lambda: reference,
    )


def network_lower_bound(targets: Tensor) -> float:
    """The MSE of predicting ``max(target, 0)``: no fit whose every output is ``>= 0`` has a
    lower MSE, since each output's squared error is smallest at the target clipped to
    ``[0, inf)``.

    Example:
        >>> network_lower_bound(torch.tensor([[1.0, -2.0], [0.5, -1.0]]))
        1.25
    """
    return float((targets.clamp(min=0) - targets).square().mean())


def _network(quick: bool) -> Benchmark:
    data = references.network_data(quick)
    num_samples = data.inputs.shape[0]
    batch_size = 256
    hidden = 64 if quick else 784

    def build(treatment: Treatment, weight: float | None) -> ConstrainedProblem:
        network = references.network(hidden)
        return PositiveOutputs(network, num_samples, treatment, weight)

    def reparametrised(output: str) -> ConstrainedProblem:
        activation = nn.Softplus() if output == "softplus" else references.Exp()
        network = nn.Sequential(references.network(hidden), activation)
        return PositiveOutputs(network, num_samples, "projection")

    def batches(steps: int) -> Sequence[Args]:
        generator = torch.Generator().manual_seed(0)
        chosen: list[Args] = []
        while len(chosen) < steps:
            for indices in torch.randperm(num_samples, generator=generator).split(batch_size):
                chosen.append((data.inputs[indices], data.targets[indices], indices))
        return chosen[:steps]

    def final(problem: ConstrainedProblem) -> Final:
        assert isinstance(problem, PositiveOutputs)
        with torch.no_grad():
            predictions = problem.network(data.inputs)
            loss = nn.functional.mse_loss(predictions, data.targets)
        return Final(
            float(loss),
            float((-predictions).clamp(min=0).max()),
            float((predictions < -NEGATIVE_TOLERANCE).double().mean()),
        )

    return Benchmark(
        name="positive-outputs",
        build=build,
        f_star=None,
        lr=0.05,
        dual_lr=1.0,
        slack_lr=0.005,
        batch_size=batch_size,
        steps=600,
        quick_steps=30,
        batches=batches,
        final=final,
        reparametrised=reparametrised,
        lower_bound=network_lower_bound(data.targets),
        full_args=(data.inputs, data.targets, torch.arange(num_samples)),
    )


BENCHMARKS: dict[str, Callable[[bool], Benchmark]] = {
    **{name: functools.partial(_hock_schittkowski, name) for name in HOCK_SCHITTKOWSKI},
    "nnls-diabetes": _nnls,
    "nonnegative-linear": _per_sample,
    "positive-outputs": _network,
}
"""The problem set: each entry builds its benchmark, quick (``True``) or full."""


def budget(benchmark: Benchmark, quick: bool, max_steps: int | None = None) -> int:
    """A run's step budget: the benchmark's (quick or full), capped at ``max_steps`` on a
    full-batch problem (a minibatch problem always takes its whole budget)."""
    steps = benchmark.quick_steps if quick else benchmark.steps
    if max_steps is not None and benchmark.batches is None:
        steps = min(steps, max_steps)
    return steps
