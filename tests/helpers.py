"""Small problems with known solutions, shared by the tests."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    OptimisticGDA,
    ProblemState,
    SimultaneousGDA,
)

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
"""The devices every device-meaningful test runs on: CPU always, CUDA when present."""

METHODS: list[type[ConstrainedOptimizer]] = [
    ExtraGradient, SimultaneousGDA, AlternatingGDA, OptimisticGDA,
]  # fmt: skip
TREATMENTS = ["slack", "projection"]

# (method, formulation, treatment); "default" is default_optimizer (adaptive, scaled): the
# cases that the distributed and the accumulation tests run against one whole batch.
METHODS_BY_NAME: dict[str, type[ConstrainedOptimizer]] = {
    "simultaneous": SimultaneousGDA,
    "alternating": AlternatingGDA,
    "extragradient": ExtraGradient,
    "optimistic": OptimisticGDA,
}
"""The fixed-step methods of CASES."""

CASES = [
    (method, formulation, treatment)
    for method in METHODS_BY_NAME
    for formulation in ("lagrangian", "augmented")
    for treatment in ("slack", "projection", "penalty")
] + [("default", "augmented", treatment) for treatment in ("slack", "projection", "penalty")]


class QuadraticProgram(ConstrainedProblem):
    """min 1/2 x'Qx - p'x s.t. x1 + x2 >= 2, Q = [[3, 1], [1, 2]], p = (1, 1).

    Solution x* = (2/3, 4/3), multiplier 7/3.
    """

    solution = (2 / 3, 4 / 3)
    multiplier = 7 / 3

    def __init__(
        self,
        treatment: str = "slack",
        dtype: torch.dtype = torch.float64,
        penalty_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2))
        self.register_buffer("Q", torch.tensor([[3.0, 1.0], [1.0, 2.0]]))
        self.register_buffer("p", torch.ones(2))
        self.add_inequality(
            "sum",
            ">=",
            treatment=treatment,  # type: ignore[arg-type]
            penalty_weight=penalty_weight,
        )
        self.to(dtype)

    def forward(self) -> ProblemState:
        objective = 0.5 * self.x @ self.Q @ self.x - self.p @ self.x
        return ProblemState(objective, {"sum": self.x.sum() - 2})


class MinNorm(ConstrainedProblem):
    """min ||x||^2 s.t. Ax = b: x* = pinv(A) b, multiplier -2 (AA')^-1 b."""

    def __init__(self, A: Tensor, b: Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("b", b)
        self.x = nn.Parameter(torch.zeros(A.shape[1], dtype=A.dtype))
        self.add_equality("Ax=b", shape=(A.shape[0],))
        self.to(A.device, A.dtype)

    def forward(self) -> ProblemState:
        return ProblemState(self.x.square().sum(), {"Ax=b": self.A @ self.x - self.b})


def sgd_pair(
    problem: ConstrainedProblem,
    lr: float,
    dual_lr: float | None = None,
    slack_lr: float | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Plain SGD on both sides; the slacks may get their own learning rate."""
    slacks = problem.slack_parameters()
    slack_ids = {id(p) for p in slacks}
    others = [p for p in problem.primal_parameters() if id(p) not in slack_ids]
    groups: list[dict[str, object]] = [{"params": others}]
    if slacks:
        groups.append({"params": slacks, "lr": lr if slack_lr is None else slack_lr})
    primal = torch.optim.SGD(groups, lr=lr)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=dual_lr or lr, maximize=True)
    return primal, dual


def steps_to_tolerance(
    step: Callable[[], object],
    error: Callable[[], float],
    tolerance: float,
    max_steps: int,
    hold: int = 50,
) -> int | None:
    """The first step after which error() stays <= tolerance for `hold` more steps."""
    first = None
    for k in range(1, max_steps + 1):
        step()
        if error() <= tolerance:
            if first is None:
                first = k
            elif k - first >= hold:
                return first
        else:
            first = None
    return None


MIXED_SAMPLES = 64


class Mixed(ConstrainedProblem):
    """A model outside the problem, an indexed slack inequality, a dense projected one and
    an equality: every kind of state the optimizers keep."""

    def __init__(self, model: nn.Module, data: Tensor, targets: Tensor) -> None:
        super().__init__()
        self.model = model
        self.data = data
        self.targets = targets
        self.add_inequality("nonnegative", ">=", num_samples=MIXED_SAMPLES, treatment="slack")
        self.add_inequality("weight_norm", "<=", treatment="projection")
        self.add_equality("mean", shape=(1,))
        self.add_inequality("bias", ">=", shape=(2,), treatment="slack")

    def forward(self, indices: Tensor) -> ProblemState:
        predictions = self.model(self.data[indices])
        first = predictions[:, 0]
        weight = self.model.weight
        return ProblemState(
            (predictions - self.targets[indices]).square().mean(),
            {
                "nonnegative": IndexedValue(first, indices),
                "weight_norm": weight.square().sum() - 1.0,
                "mean": predictions.mean().reshape(1) - 0.1,
                "bias": self.model.bias + 0.05,
            },
        )


MIXED_BASES = ("sgd", "plain-sgd", "hooked-sgd", "adam")


def build_mixed(
    method: type,
    base: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[Mixed, Any]:
    """A :class:`Mixed` problem and its optimizer. Bases: ``sgd`` (with momentum),
    ``plain-sgd`` (no momentum: the fused update), ``hooked-sgd`` (the same with a step hook,
    which sends it through ``optimizer.step()``) and ``adam``. The data and the initial
    values are drawn on the CPU, then moved to ``device``: the same on every device."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(MIXED_SAMPLES, 4, generator=generator, dtype=dtype)
    targets = torch.randn(MIXED_SAMPLES, 2, generator=generator, dtype=dtype) - 0.5
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    # The data are plain attributes of the problem (not buffers): moved here.
    problem = Mixed(model, data.to(device), targets.to(device)).to(device=device, dtype=dtype)
    primal_params = [*model.parameters(), *problem.slack_parameters()]
    dual_params = problem.dual_parameters()
    if base == "sgd":
        primal = torch.optim.SGD(primal_params, lr=0.01, momentum=0.5)
        dual = torch.optim.SGD(dual_params, lr=0.01, momentum=0.5, maximize=True)
    elif base in ("plain-sgd", "hooked-sgd"):
        primal = torch.optim.SGD(primal_params, lr=0.01)
        dual = torch.optim.SGD(dual_params, lr=0.05, maximize=True)
        if base == "hooked-sgd":
            for optimizer in (primal, dual):
                optimizer.register_step_pre_hook(lambda *_: None)
    else:
        assert base == "adam", base
        primal = torch.optim.Adam(primal_params, lr=0.01)
        dual = torch.optim.Adam(dual_params, lr=0.01, maximize=True)
    return problem, method(problem, primal, dual)


def mixed_batch(step: int, device: str | torch.device = "cpu") -> Tensor:
    """16 indices drawn with replacement (on the CPU, then moved): most batches repeat some."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randint(MIXED_SAMPLES, (16,), generator=generator).to(device)


def train_mixed(problem: Mixed, optimizer: Any, steps: range) -> None:
    """Steps on :func:`mixed_batch`, the indices on the problem's device."""
    for step in steps:
        indices = mixed_batch(step, problem.data.device)
        optimizer.step(lambda indices=indices: problem(indices))


def assert_bitwise_equal(left: Any, right: Any) -> None:
    """Nested dicts, lists and tuples of tensors and plain values are equal, bitwise."""
    if isinstance(left, Tensor):
        assert isinstance(right, Tensor)
        assert left.dtype == right.dtype and left.shape == right.shape
        assert torch.equal(left, right), "tensors differ"
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert_bitwise_equal(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right):
            assert_bitwise_equal(a, b)
    elif isinstance(left, float) and isinstance(right, float):
        assert struct.pack("<d", left) == struct.pack("<d", right), (left, right)
    else:
        assert left == right


@contextlib.contextmanager
def deterministic(device: str) -> Iterator[None]:
    """For comparing two runs bitwise: on CUDA, deterministic kernels (``index_add_`` and an
    accumulating ``index_put_``, which sum repeated indices, otherwise use atomics whose
    order varies from run to run); nothing on the CPU, whose kernels are deterministic."""
    if torch.device(device).type == "cpu":
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def snapshot(problem: nn.Module, optimizer: Any) -> dict[str, Any]:
    """A deep copy of the problem's and the optimizer's state dicts."""
    return copy.deepcopy({"problem": problem.state_dict(), "optimizer": optimizer.state_dict()})


def failure_state(problem: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Everything a failed step must leave as it was: :func:`snapshot` and the random
    generators' states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {**snapshot(problem, optimizer), "rng": torch.get_rng_state(), "cuda_rng": cuda}


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported as a module: its definitions, not its main."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
