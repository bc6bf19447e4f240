"""The network suite: per-sample and rate constraints on networks trained by minibatches.

Each row is a task (a network, its data, a batch size, a number of epochs) with a primal
optimizer (plain SGD or Adam), run with 3 seeds; each method reports the **final iterate**:

- training violations: the fraction of constrained outputs (or samples) beyond ``1e-3``
  and the largest violation; for the recall task, the training recall;
- training and held-out loss, held-out violations (outputs below 0, samples above the
  loss bound, held-out recall), closure calls per step and seconds.

Tasks (``TASKS``):

- ``positive-784-b256``, ``positive-784-b64``, ``positive-32-b256``, ``positive-32-b64``:
  the benchmark's positive-outputs network (784-784-784-2 or 784-32-32-2, no final
  activation) on 1,024 generated samples (:func:`lagrange_opt.problems.regression_data`),
  every output ``>= 0``; 1,024 more samples of the same distribution held out.
- ``digits-regression``: an MLP (32-64-64-2) predicting the ink of the bottom-left and
  bottom-right quarters of scikit-learn's ``load_digits`` images from the top half,
  standardised and shifted so that a third of the targets are negative (the readings of a
  non-negative quantity with a biased sensor), every output ``>= 0``; batch 128.
- ``moons-full``, ``moons-b64``: feasible learning (Ramirez et al., 2025): two moons, 512
  points, noise 0.1, an MLP 2-64-64-2, no objective, every sample's cross-entropy ``<=
  0.511`` (probability of its label ``>= 0.6``); full batch and batch 64.
- ``recall``: the recall-constrained digit classifier of ``examples/rate_constraints.py``
  (recall of digit 8 ``>= 0.95`` on every batch, through :class:`~lagrange_opt.Proxy`).

Methods (``METHODS``): ``default`` (:func:`lagrange_opt.default_optimizer`; with the Adam
rows, the user's Adam passed as ``primal_optimizer``), ``unconstrained``, ``exp`` and
``softplus`` outputs (regression rows), Cooper 1.0.1's augmented Lagrangian and
extrapolation (:mod:`benchmarks.cooper_adapter`; plain SGD, its only primal optimizer
there) and humancompatible-train 0.4.2's ALM and nuPI
(:mod:`benchmarks.humancompatible_adapter`, with the row's optimizer).

Run ``python -m benchmarks.networks`` (``--quick``: the small network's rows, 1 seed, for
CI; ``--tasks``, ``--methods``, ``--seeds`` choose a subset); it writes ``networks.json``,
``networks.md`` and the figures to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from lagrange_opt import (
    ConstrainedProblem,
    IndexedValue,
    ProblemState,
    Proxy,
    calibrated_offset,
    default_optimizer,
)
from lagrange_opt.problems import (
    PositiveOutputs,
    class_recall,
    digits_split,
    regression_data,
    regression_network,
    soft_class_recall,
)

TOLERANCE = 1e-3
"""A training output (or sample) counts as violated beyond this."""

ADAM_LR = 1e-3
SGD_LR = 0.05
"""The peers' and the references' learning rates (Adam's usual one; the benchmark's SGD)."""


class Split(NamedTuple):
    """Inputs and targets (regression targets, or class labels)."""

    inputs: Tensor
    targets: Tensor


class Task(NamedTuple):
    """One row of the suite.

    Attributes:
        name: The row's name.
        kind: ``"outputs"`` (every output ``>= 0``), ``"losses"`` (every sample's
            cross-entropy ``<= bound``) or ``"recall"``.
        data: Builds the train and held-out splits from a seed.
        network: Builds the network (no final activation) from a seed.
        batch_size: Samples per batch (``None``: the whole training set).
        epochs: Passes over the training set.
        bound: The loss bound of a ``"losses"`` task, the recall target of ``"recall"``.
    """

    name: str
    kind: str
    data: Callable[[int], tuple[Split, Split]]
    network: Callable[[int], nn.Module]
    batch_size: int | None
    epochs: int
    bound: float = 0.0


# Data.


def _positive_data(seed: int) -> tuple[Split, Split]:
    del seed  # one data set: the seeds vary the network and the batches
    data = regression_data(2048)
    return (
        Split(data.inputs[:1024], data.targets[:1024]),
        Split(data.inputs[1024:], data.targets[1024:]),
    )


def _digits_data(seed: int) -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0
    inputs = images[:, :4, :].reshape(len(images), -1)
    targets = torch.stack([images[:, 4:, :4].mean((1, 2)), images[:, 4:, 4:].mean((1, 2))], 1)
    targets = (targets - targets.mean(0)) / targets.std(0) - 0.4
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1400], order[1400:]
    mean, std = inputs[train].mean(0), inputs[train].std(0).clamp(min=1e-3)
    inputs = (inputs - mean) / std
    return Split(inputs[train], targets[train]), Split(inputs[test], targets[test])


def _moons_data(seed: int) -> tuple[Split, Split]:
    from sklearn.datasets import make_moons

    x, y = make_moons(1024, noise=0.1, random_state=seed)
    inputs, labels = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return Split(inputs[:512], labels[:512]), Split(inputs[512:], labels[512:])


def _recall_data(seed: int) -> tuple[Split, Split]:
    data = digits_split(seed)
    return Split(data.train_x, data.train_y), Split(data.test_x, data.test_y)


def _mlp(sizes: Sequence[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _positive_network(hidden: int) -> Callable[[int], nn.Module]:
    return lambda seed: regression_network(seed=seed, hidden=hidden)


LOSS_BOUND = -math.log(0.6)
"""Feasible learning's bound: a sample's cross-entropy at probability 0.6 for its label."""

RECALL_CLASS = 8
RECALL_TARGET = 0.95

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("positive-784-b256", "outputs", _positive_data, _positive_network(784), 256, 150),
        Task("positive-784-b64", "outputs", _positive_data, _positive_network(784), 64, 40),
        Task("positive-32-b256", "outputs", _positive_data, _positive_network(32), 256, 150),
        Task("positive-32-b64", "outputs", _positive_data, _positive_network(32), 64, 40),
        Task("digits-regression", "outputs", _digits_data,
             functools.partial(_mlp, (32, 64, 64, 2)), 128, 100),
        Task("moons-full", "losses", _moons_data, functools.partial(_mlp, (2, 64, 64, 2)),
             None, 1000, LOSS_BOUND),
        Task("moons-b64", "losses", _moons_data, functools.partial(_mlp, (2, 64, 64, 2)),
             64, 125, LOSS_BOUND),
        Task("recall", "recall", _recall_data, functools.partial(_mlp, (64, 10)), 32, 20,
             RECALL_TARGET),
    )
}  # fmt: skip
QUICK_TASKS = ("positive-32-b256", "moons-full")


# Problems.


class SampleLosses(ConstrainedProblem):
    """Feasible learning: no objective, every sample's cross-entropy ``<= bound``."""

    def __init__(self, network: nn.Module, num_samples: int, bound: float) -> None:
        super().__init__()
        self.network = network
        self.bound = bound
        self.add_inequality("losses", "<=", num_samples=num_samples)

    def forward(self, inputs: Tensor, labels: Tensor, indices: Tensor) -> ProblemState:
        losses = nn.functional.cross_entropy(self.network(inputs), labels, reduction="none")
        # No objective: a zero that depends on the parameters (Ramirez et al.'s problem).
        objective = losses.sum() * 0.0
        return ProblemState(objective, {"losses": IndexedValue(losses - self.bound, indices)})


def recall(logits: Tensor, labels: Tensor) -> Tensor:
    """The true recall of :data:`RECALL_CLASS` (hard predictions)."""
    return class_recall(logits, labels, RECALL_CLASS)


def soft_recall(logits: Tensor, labels: Tensor, temperature: float = 0.5) -> Tensor:
    """The soft recall of :data:`RECALL_CLASS` at ``temperature``."""
    return soft_class_recall(logits, labels, RECALL_CLASS, temperature)


class RecallConstrained(ConstrainedProblem):
    """Cross-entropy plus ``0.01 * ||W||^2``, subject to the batch's recall ``>= target``."""

    def __init__(self, network: nn.Module, target: float) -> None:
        super().__init__()
        self.network = network
        self.target = target
        self.add_inequality("recall", ">=")

    def objective(self, logits: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits, labels) + _weight_decay(self.network)

    def forward(self, inputs: Tensor, labels: Tensor, indices: Tensor) -> ProblemState:
        del indices
        logits = self.network(inputs)
        constraints = {}
        if bool((labels == RECALL_CLASS).any()):
            constraints["recall"] = Proxy(
                recall(logits.detach(), labels) - self.target,
                soft_recall(logits, labels) - self.target,
            )
        return ProblemState(self.objective(logits, labels), constraints)


def _weight_decay(network: nn.Module) -> Tensor:
    """The recall task's L2 penalty, ``0.01 * ||W||^2`` on the linear layer's weights."""
    weight = network[0].weight
    assert isinstance(weight, Tensor)
    return 0.01 * weight.square().sum()


def build_problem(task: Task, network: nn.Module, num_samples: int) -> ConstrainedProblem:
    """The task's problem over ``network``, every inequality with projected multipliers."""
    if task.kind == "outputs":
        return PositiveOutputs(network, num_samples, "projection")
    if task.kind == "losses":
        return SampleLosses(network, num_samples, task.bound)
    return RecallConstrained(network, task.bound)


# Measurements.


class Figures(NamedTuple):
    """What a method leaves at its final iterate on one seed of one row."""

    violated: float
    largest: float
    loss: float
    test_loss: float
    test_violated: float
    calls_per_step: float
    seconds: float


def task_loss(task: Task, outputs: Tensor, targets: Tensor) -> Tensor:
    """The task's training loss: MSE, or the mean cross-entropy."""
    if task.kind == "outputs":
        return nn.functional.mse_loss(outputs, targets)
    return nn.functional.cross_entropy(outputs, targets)


def violations(task: Task, outputs: Tensor, targets: Tensor) -> Tensor:
    """Each constrained quantity's violation in the constraint's units (one for recall)."""
    if task.kind == "outputs":
        violation = (-outputs).clamp(min=0).reshape(-1)
    elif task.kind == "losses":
        losses = nn.functional.cross_entropy(outputs, targets, reduction="none")
        violation = (losses - task.bound).clamp(min=0)
    else:
        violation = (task.bound - recall(outputs, targets)).clamp(min=0).reshape(1)
    # A run that diverged (NaN outputs) violates everything, as far as a user can tell.
    return torch.where(violation.isnan(), math.inf, violation)


def measure(
    task: Task, predict: Callable[[Tensor], Tensor], train: Split, test: Split
) -> dict[str, float]:
    """The final iterate's figures on both splits (held-out: outputs below 0, samples above
    the bound, the recall's shortfall)."""
    with torch.no_grad():
        outputs, test_outputs = predict(train.inputs), predict(test.inputs)
        train_violations = violations(task, outputs, train.targets)
        test_violations = violations(task, test_outputs, test.targets)
    return {
        "violated": float((train_violations > TOLERANCE).double().mean()),
        "largest": float(train_violations.max()),
        "loss": float(task_loss(task, outputs, train.targets)),
        "test_loss": float(task_loss(task, test_outputs, test.targets)),
        "test_violated": float((test_violations > 0).double().mean()),
        "recall": float(recall(outputs, train.targets)) if task.kind == "recall" else math.nan,
        "test_recall": (
            float(recall(test_outputs, test.targets)) if task.kind == "recall" else math.nan
        ),
    }


# Methods: each trains on the task's batches and returns (predict, closure calls).

Batch = tuple[Tensor, Tensor, Tensor]
Trainer = Callable[[Task, Split, nn.Module, str, list[Batch], Callable[[int], None]], int]


def _primal(optimizer: str, params: Any) -> torch.optim.Optimizer:
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=ADAM_LR)
    return torch.optim.SGD(params, lr=SGD_LR)


def _default_method(problem: ConstrainedProblem, optimizer: str) -> Any:
    """:func:`default_optimizer` over ``problem``: with the row's Adam as
    ``primal_optimizer``, or its own backtracking SGD."""
    if optimizer == "adam":
        adam = torch.optim.Adam(problem.primal_parameters(), lr=ADAM_LR)
        return default_optimizer(problem, primal_optimizer=adam)
    return default_optimizer(problem)


def train_default(
    task: Task, train: Split, network: nn.Module, optimizer: str, batches: list[Batch],
    record: Callable[[int], None],
) -> int:  # fmt: skip
    """:func:`default_optimizer`; with Adam, the user's Adam as ``primal_optimizer``."""
    problem = build_problem(task, network, len(train.targets))
    method = _default_method(problem, optimizer)
    calls = 0
    for step, batch in enumerate(batches):
        calls += method.step(functools.partial(problem, *batch)).evaluations
        record(step + 1)
    return calls


CALIBRATION_SHARE = 0.2
"""The share of the training samples held out of the constraints to calibrate the offset."""

CALIBRATION_FRACTION = 0.005
"""The fraction of held-out outputs the calibrated offset allows below 0."""

CALIBRATED_PHASE = 5 / 6
"""The share of the steps trained before the offset is calibrated."""


class OffsetOutputs(PositiveOutputs):
    """:class:`PositiveOutputs` asking every training output for ``offset`` above 0."""

    def __init__(self, network: nn.Module, num_samples: int) -> None:
        super().__init__(network, num_samples, "projection")
        self.offset = 0.0

    def forward(self, inputs: Tensor, targets: Tensor, indices: Tensor) -> ProblemState:
        state = super().forward(inputs, targets, indices)
        value = state.constraints["nonnegative"]
        assert isinstance(value, IndexedValue)
        shifted = IndexedValue(value.value - self.offset, value.indices)
        return ProblemState(state.objective, {"nonnegative": shifted})


def train_calibrated(
    task: Task, train: Split, network: nn.Module, optimizer: str, batches: list[Batch],
    record: Callable[[int], None],
) -> int:  # fmt: skip
    """The default with a held-out margin (docs/stochastic.md): a fifth of the training
    samples is left out of the loss and the constraints for the first five sixths of the
    steps; then :func:`~lagrange_opt.calibrated_offset` measures how far their outputs fall
    below 0, and every training sample is constrained at that offset for the rest."""
    num_samples = len(train.targets)
    problem = OffsetOutputs(network, num_samples)
    method = _default_method(problem, optimizer)
    # The global generator, seeded per run: a split of its own, apart from the batches'.
    order = torch.randperm(num_samples)
    calibration = order[: int(CALIBRATION_SHARE * num_samples)]
    held = torch.zeros(num_samples, dtype=torch.bool)
    held[calibration] = True
    switch = int(CALIBRATED_PHASE * len(batches))
    calls = 0
    for step, (inputs, targets, indices) in enumerate(batches):
        if step == switch:
            with torch.no_grad():
                outputs = network(train.inputs[calibration])
            problem.offset = calibrated_offset(outputs, fraction=CALIBRATION_FRACTION)
        if step < switch:
            kept = ~held[indices]
            if not bool(kept.any()):
                record(step + 1)
                continue
            inputs, targets, indices = inputs[kept], targets[kept], indices[kept]
        calls += method.step(functools.partial(problem, inputs, targets, indices)).evaluations
        record(step + 1)
    return calls


def train_unconstrained(
    task: Task, train: Split, network: nn.Module, optimizer: str, batches: list[Batch],
    record: Callable[[int], None],
) -> int:  # fmt: skip
    """The row's optimizer on the loss alone (mean cross-entropy for feasible learning)."""
    del train
    primal = _primal(optimizer, network.parameters())
    for step, (inputs, targets, _) in enumerate(batches):
        primal.zero_grad()
        loss = task_loss(task, network(inputs), targets)
        if task.kind == "recall":
            loss = loss + _weight_decay(network)
        loss.backward()
        primal.step()
        record(step + 1)
    return len(batches)


def train_cooper(scheme: Literal["augmented", "extrapolation"]) -> Trainer:
    """Cooper 1.0.1 (its only primal optimizer here is SGD, at the row's rate for SGD;
    the dual step of the benchmark's network, per sample)."""

    def run(
        task: Task, train: Split, network: nn.Module, optimizer: str, batches: list[Batch],
        record: Callable[[int], None],
    ) -> int:  # fmt: skip
        from benchmarks.cooper_adapter import CooperMethod

        del optimizer
        problem = build_problem(task, network, len(train.targets))
        scale = batches[0][2].shape[0] if task.kind != "recall" else 1
        method = CooperMethod(problem, scheme, SGD_LR, 1.0 / scale)
        calls = 0
        for step, batch in enumerate(batches):
            calls += method.step(*batch).evaluations
            record(step + 1)
        return calls

    return run


def train_humancompatible(scheme: Literal["alm", "nupi"]) -> Trainer:
    """humancompatible-train 0.4.2's ALM or nuPI with the row's optimizer and the peer's
    default dual step."""

    def run(
        task: Task, train: Split, network: nn.Module, optimizer: str, batches: list[Batch],
        record: Callable[[int], None],
    ) -> int:  # fmt: skip
        from benchmarks.humancompatible_adapter import HumanCompatibleMethod

        params = list(network.parameters())
        per_sample = 1 if task.kind == "losses" else int(train.targets.shape[1:].numel())
        count = 1 if task.kind == "recall" else len(train.targets) * per_sample
        method = HumanCompatibleMethod(params, _primal(optimizer, params), scheme, count)
        for step, (inputs, targets, indices) in enumerate(batches):
            outputs = network(inputs)
            loss = task_loss(task, outputs, targets)
            if task.kind == "recall":
                loss = loss + _weight_decay(network)
            if task.kind == "outputs":
                method.step(loss, -outputs, indices)
            elif task.kind == "losses":
                losses = nn.functional.cross_entropy(outputs, targets, reduction="none")
                method.step(loss * 0.0, losses - task.bound, indices)
            elif bool((targets == RECALL_CLASS).any()):
                shortfall = task.bound - soft_recall(outputs, targets)
                method.step(loss, shortfall.reshape(1), None)
            else:  # a batch with no sample of the class: the constraint is absent
                method.step(loss, loss.new_zeros(1), None)
            record(step + 1)
        return len(batches)

    return run


def train_reparametrised(output: str) -> Trainer:
    """The row's optimizer on the loss of the network followed by ``exp`` or ``softplus``:
    every output positive by construction."""

    def run(
        task: Task, train: Split, network: nn.Module, optimizer: str, batches: list[Batch],
        record: Callable[[int], None],
    ) -> int:  # fmt: skip
        del train
        activation = nn.Softplus() if output == "softplus" else _Exp()
        model = nn.Sequential(network, activation)
        primal = _primal(optimizer, model.parameters())
        for step, (inputs, targets, _) in enumerate(batches):
            primal.zero_grad()
            task_loss(task, model(inputs), targets).backward()
            primal.step()
            record(step + 1)
        return len(batches)

    return run


class _Exp(nn.Module):
    def forward(self, inputs: Tensor) -> Tensor:
        return inputs.exp()


METHODS: dict[str, Trainer] = {
    "default": train_default,
    "default-calibrated": train_calibrated,
    "unconstrained": train_unconstrained,
    "exp": train_reparametrised("exp"),
    "softplus": train_reparametrised("softplus"),
    "cooper-augmented": train_cooper("augmented"),
    "cooper-extrapolation": train_cooper("extrapolation"),
    "hct-alm": train_humancompatible("alm"),
    "hct-nupi": train_humancompatible("nupi"),
}
"""The methods; ``exp`` and ``softplus`` run on the regression rows only, Cooper with SGD."""


def applies(method: str, task: Task, optimizer: str) -> bool:
    """Whether ``method`` has a run on ``task`` with ``optimizer``."""
    if method in ("exp", "softplus", "default-calibrated"):
        return task.kind == "outputs"
    if method.startswith("cooper"):
        return optimizer == "sgd" and task.kind != "recall"
    return True


class Job(NamedTuple):
    """One run: a task, an optimizer, a method and a seed."""

    task: str
    optimizer: str
    method: str
    seed: int
    points: int


def run_job(job: Job) -> dict[str, Any]:
    """Trains one method on one row and seed; the figures and the trace (violated
    fraction and loss on the whole training set at ``points`` steps)."""
    torch.set_num_threads(1)
    task = TASKS[job.task]
    train, test = task.data(job.seed)
    network = task.network(job.seed)
    num_samples = len(train.targets)
    batch_size = task.batch_size or num_samples
    generator = torch.Generator().manual_seed(job.seed + 1)
    batches = [
        (train.inputs[indices], train.targets[indices], indices)
        for _ in range(task.epochs)
        for indices in torch.randperm(num_samples, generator=generator).split(batch_size)
    ]
    every = max(1, len(batches) // job.points)
    trace: list[tuple[int, float, float]] = []
    activation: Callable[[Tensor], Tensor] = {
        "exp": torch.exp, "softplus": nn.functional.softplus
    }.get(job.method, lambda outputs: outputs)  # fmt: skip

    def predict(inputs: Tensor) -> Tensor:
        return activation(network(inputs))

    def record(step: int) -> None:
        if step % every == 0 or step == len(batches):
            figures = measure(task, predict, train, test)
            trace.append((step, figures["violated"], figures["loss"]))

    torch.manual_seed(job.seed)
    start = time.perf_counter()
    calls = METHODS[job.method](task, train, network, job.optimizer, batches, record)
    seconds = time.perf_counter() - start
    figures = measure(task, predict, train, test)
    return {
        **job._asdict(), **figures, "calls_per_step": calls / len(batches),
        "seconds": seconds, "steps": len(batches), "trace": trace,
    }  # fmt: skip


# Reporting.


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per row, optimizer and method: the worst and the mean over the seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault((result["task"], result["optimizer"], result["method"]), []).append(
            result
        )
    lines = []
    for (task, optimizer, method), runs in groups.items():

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return sum(run[key] for run in runs) / len(runs)

        lines.append({
            "task": task, "optimizer": optimizer, "method": method, "seeds": len(runs),
            "violated_max": max(run["violated"] for run in runs),
            "largest_max": max(run["largest"] for run in runs),
            "recall_min": min(run["recall"] for run in runs),
            **{key: mean(key) for key in (
                "loss", "test_loss", "test_violated", "calls_per_step", "seconds",
                "test_recall",
            )},
        })  # fmt: skip
    return lines


def markdown(lines: list[dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    rows = [
        "| row | optimizer | method | seeds | violated (worst seed) | largest | loss | "
        "held-out loss | held-out violated | recall (min) | calls/step | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        recall_text = "-" if math.isnan(line["recall_min"]) else f"{line['recall_min']:.3f}"
        rows.append(
            f"| {line['task']} | {line['optimizer']} | {line['method']} | {line['seeds']} | "
            f"{line['violated_max']:.2%} | {line['largest_max']:.2g} | {line['loss']:.4f} | "
            f"{line['test_loss']:.4f} | {line['test_violated']:.1%} | {recall_text} | "
            f"{line['calls_per_step']:.2f} | {line['seconds']:.1f} |"
        )
    return "\n".join(rows)


def figure(results: list[dict[str, Any]], path: Path, optimizer: str = "adam") -> None:
    """Violated fraction and loss against the step of seed 0, one column per row, one
    colour per method throughout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in results if r["seed"] == 0 and r["optimizer"] == optimizer]
    tasks = list(dict.fromkeys(r["task"] for r in chosen))
    if not tasks:
        return
    colours = {method: f"C{index}" for index, method in enumerate(METHODS)}
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks), 5.5), squeeze=False)
    for column, task in enumerate(tasks):
        for result in (r for r in chosen if r["task"] == task):
            steps = [point[0] for point in result["trace"]]
            style = {"color": colours[result["method"]], "label": result["method"]}
            axes[0][column].plot(steps, [p[1] for p in result["trace"]], **style)
            axes[1][column].plot(steps, [p[2] for p in result["trace"]], **style)
        axes[0][column].set_title(task, fontsize=9)
        axes[0][column].set_yscale("symlog", linthresh=1e-3)
        axes[1][column].set_yscale("log")
        axes[1][column].set_xlabel("step")
    axes[0][0].set_ylabel("violated fraction (train)")
    axes[1][0].set_ylabel("training loss")
    handles = {
        line.get_label(): line for row in axes for panel in row for line in panel.get_lines()
    }
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI's short run")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS))
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS))
    parser.add_argument("--optimizers", nargs="+", choices=("sgd", "adam"), default=["sgd", "adam"])
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--points", type=int, default=50, help="trace points per run")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results/networks"))
    parser.add_argument(
        "--reuse", type=Path, help="an earlier networks.json: its runs are kept for the jobs "
        "it holds, except those of the methods given with --rerun",
    )  # fmt: skip
    parser.add_argument("--rerun", nargs="+", default=[], choices=sorted(METHODS))
    args = parser.parse_args(argv)
    tasks = args.tasks or (list(QUICK_TASKS) if args.quick else list(TASKS))
    methods = args.methods or (["default", "unconstrained"] if args.quick else list(METHODS))
    seeds = args.seeds or (1 if args.quick else 3)
    jobs = [
        Job(task, optimizer, method, seed, args.points)
        for task in tasks
        for optimizer in args.optimizers
        for method in methods
        if applies(method, TASKS[task], optimizer)
        for seed in range(seeds)
    ]
    reused: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    if args.reuse is not None:
        for run in json.loads(args.reuse.read_text())["runs"]:
            if run["method"] not in args.rerun:
                reused[(run["task"], run["optimizer"], run["method"], run["seed"])] = run
    all_jobs = jobs
    results = [reused[key] for job in jobs if (key := job[:4]) in reused]
    jobs = [job for job in jobs if job[:4] not in reused]
    args.out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(run_job, jobs):
            results.append(result)
            print(
                f"{result['task']:<18} {result['optimizer']:<4} {result['method']:<21} "
                f"seed {result['seed']}: violated {result['violated']:.2%}, "
                f"loss {result['loss']:.4f}, {result['seconds']:.1f} s",
                flush=True,
            )
    order = {job[:4]: position for position, job in enumerate(all_jobs)}
    results.sort(key=lambda run: order[(run["task"], run["optimizer"], run["method"], run["seed"])])
    lines = summarise(results)
    (args.out / "networks.json").write_text(json.dumps({"runs": results, "summary": lines}))
    table = markdown(lines)
    (args.out / "networks.md").write_text(table + "\n")
    figure(results, args.out / "networks-adam.png", "adam")
    figure(results, args.out / "networks-sgd.png", "sgd")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
