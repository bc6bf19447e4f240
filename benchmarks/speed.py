"""Speed benchmark: the cost of a constrained step, side by side with plain PyTorch and Cooper.

    python -m benchmarks.speed --out DIR [--quick]

writes ``DIR/speed.json`` (records with ``case``, ``variant``, ``threads``, ``ms_per_step``,
``ratio``; ``ratio`` is against the case's plain baseline) and ``DIR/speed.md``. Records
named ``ours / other`` (no ``ms_per_step``) give the paired ratio of one variant's time
over another's in the same case, for the targets stated against Cooper, the stock
``optimizer.step()`` path or the fixed step.

Every case is timed at 1 and at 2 threads. The variants of a case are timed in turns, block
by block, after a warm-up. ``ms_per_step`` is a variant's median block; ``ratio`` is the
median over blocks of its time over the baseline's in the same round, so that a slow spell
of the machine, which slows both sides of a pair alike, cancels out.

- ``tiny``: the 2-D QP of the tests, float64. Baselines: the same updates written by hand
  with plain ``torch.optim.SGD`` and autograd (``hand-extragradient``,
  ``hand-simultaneous``); Cooper's extrapolation and simultaneous optimizers.
- ``mlp-32`` and ``mlp-784``: networks 784-32-32-2 and 784-784-784-2, batch 256 of 10,240
  samples, every output of every sample constrained ``>= 0`` (indexed, projection).
  Baseline: one plain SGD step on the MSE (one forward and backward pass).
- ``adam-32-bB`` and ``adam-784-bB``: the same networks and constraints at batch ``B`` (128,
  256) with Adam on the primal side (plain SGD ascent on the multipliers). Baseline: one
  plain Adam step (forward, backward, ``Adam.step()``). ``-stock`` variants force the stock
  ``optimizer.step()`` path (a no-op step hook), which the functional Adam step replaces;
  ``-fused`` variants build every Adam with ``fused=True`` (torch's one-kernel update, on
  the CPU too), against the fused plain step (``plain-adam-fused``) as well;
  ``cooper-extrapolation`` is Cooper's extrapolation with its ``ExtraAdam``.
- ``optimistic`` variants of the networks' SGD cases: :class:`~lagrange_opt.OptimisticGDA`
  (one evaluation per step), compared with ``simultaneous`` as well.
- ``default`` variants of the networks' SGD cases: :func:`~lagrange_opt.default_optimizer`
  (extra-gradient with the adaptive step on the augmented Lagrangian), compared per step
  with the fixed-step ``extragradient`` of the same case and with ``default-fixed``, the
  default's configuration (its augmented Lagrangian ``DEFAULT_AUGMENTED`` with the
  per-sample margins, scaling, ``same_randomness``) with the fixed step: the cost of the
  adaptive step alone.
- ``indexed-N``: ``N`` indexed constraints in all, 512 seen per step, on a linear model of
  features computed from the sample index (so nothing scales with ``N`` but the tables).
  Baseline: the same step at ``N = 2e4``.
- ``memory``: bytes that extra-gradient keeps between steps beyond the parameters and the
  base optimizers' state, against the bytes of the primal parameters and slacks.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cooper
import torch
from torch import Tensor, nn
from tqdm import tqdm

from lagrange_opt import (
    DEFAULT_AUGMENTED,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    NuPI,
    OptimisticGDA,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)
from lagrange_opt.problems import PositiveOutputs, check_state, standard_form

from .cooper_adapter import CooperMethod

Step = Callable[[], object]


class Timing(NamedTuple):
    """One variant of one case, timed."""

    case: str
    variant: str
    threads: int
    ms_per_step: float


def time_side_by_side(
    steps: dict[str, Step],
    warmup: int,
    blocks: int,
    steps_per_block: int,
    synchronize: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """Milliseconds per step of each variant in each block, the variants timed in turns.

    ``synchronize`` waits for queued device work (``torch.cuda.synchronize`` on a GPU), so
    that a block's time includes the kernels its steps launched."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(blocks):
        for name, step in steps.items():
            synchronize()
            start = time.perf_counter()
            for _ in range(steps_per_block):
                step()
            synchronize()
            samples[name].append((time.perf_counter() - start) * 1e3 / steps_per_block)
    return samples


def paired_ratio(samples: list[float], baseline: list[float]) -> float:
    """The median over blocks of a variant's time over the baseline's in the same round:
    a slow spell of the machine slows both sides of a pair alike."""
    return statistics.median(a / b for a, b in zip(samples, baseline))


# (a) The tiny QP.


class TinyQP(ConstrainedProblem):
    """min 1/2 x'Qx - p'x s.t. x1 + x2 >= 2 (projection): x* = (2/3, 4/3)."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.register_buffer("Q", torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
        self.add_inequality("sum", ">=", treatment="projection")
        self.double()

    def forward(self) -> ProblemState:
        x = self.x
        return ProblemState(0.5 * x @ self.Q @ x - x.sum(), {"sum": x.sum() - 2})


def _hand_written(extrapolate: bool, lr: float) -> Step:
    """The QP's updates in plain torch: autograd, two SGD optimizers, projection by hand."""
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    multiplier = torch.zeros((), dtype=torch.float64, requires_grad=True)
    Q = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    primal = torch.optim.SGD([x], lr=lr)
    dual = torch.optim.SGD([multiplier], lr=lr, maximize=True)

    def gradients() -> None:
        primal.zero_grad()
        dual.zero_grad()
        lagrangian = 0.5 * x @ Q @ x - x.sum() + multiplier * (2 - x.sum())
        lagrangian.backward()

    def update() -> None:
        primal.step()
        dual.step()
        with torch.no_grad():
            multiplier.clamp_(min=0)

    def step() -> None:
        if extrapolate:
            saved_x, saved_multiplier = x.detach().clone(), multiplier.detach().clone()
            gradients()
            update()
            gradients()
            with torch.no_grad():
                x.copy_(saved_x)
                multiplier.copy_(saved_multiplier)
        else:
            gradients()
        update()

    return step


def tiny_case(quick: bool) -> dict[str, Step]:
    lr = 0.05
    steps: dict[str, Step] = {}
    for name, method in (("extragradient", ExtraGradient), ("simultaneous", SimultaneousGDA)):
        problem = TinyQP()
        optimizer = method(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=lr),
            torch.optim.SGD(problem.dual_parameters(), lr=lr, maximize=True),
        )
        steps[name] = _bind(optimizer.step, problem)
        steps[f"hand-{name}"] = _hand_written(name == "extragradient", lr)
    for scheme in ("extrapolation", "simultaneous"):
        cooper = CooperMethod(TinyQP(), scheme, lr, lr)  # type: ignore[arg-type]
        steps[f"cooper-{scheme}"] = cooper.step
    steps.update(_simultaneous_duals(TinyQP, lambda problem: problem, lr, lr))
    steps.update(_humancompatible(TinyQP(), lambda: (), lr, lr))
    return steps


def _simultaneous_duals(
    build: Callable[[], ConstrainedProblem],
    next_args: Callable[[ConstrainedProblem], Callable[[], ProblemState]],
    lr: float,
    dual_lr: float,
) -> dict[str, Step]:
    """Simultaneous descent-ascent on the augmented Lagrangian and with nuPI on the
    multipliers: the two methods humancompatible-train has, for its side of the pairs."""
    steps: dict[str, Step] = {}
    for name in ("simultaneous-augmented", "simultaneous-nupi"):
        problem = build()
        multipliers = problem.dual_parameters()
        dual: torch.optim.Optimizer = (
            NuPI(multipliers, lr=dual_lr, kp=1.0, maximize=True)
            if name.endswith("nupi")
            else torch.optim.SGD(multipliers, lr=dual_lr, maximize=True)
        )
        optimizer = SimultaneousGDA(
            problem, torch.optim.SGD(problem.primal_parameters(), lr=lr), dual,
            formulation="augmented" if name.endswith("augmented") else "lagrangian",
        )  # fmt: skip
        steps[name] = _bind(lambda o, p: o.step(next_args(p)), optimizer, problem)
    return steps


def _humancompatible(
    problem: ConstrainedProblem, next_args: Callable[[], tuple[Any, ...]], lr: float, dual_lr: float
) -> dict[str, Step]:
    """humancompatible-train 0.4.2's ALM and nuPI (:mod:`benchmarks.humancompatible_adapter`)
    with plain SGD on the problem's parameters, as its docs show; none where it does not
    install (it needs Python 3.11)."""
    try:
        from .humancompatible_adapter import HumanCompatibleMethod
    except ImportError:
        return {}
    steps: dict[str, Step] = {}
    for scheme in ("alm", "nupi"):
        fresh = copy.deepcopy(problem)
        params = list(fresh.parameters())
        state = fresh(*next_args())
        _, checked = check_state(fresh, state)
        indexed = checked[0][3] is not None
        # A per-sample constraint is num_samples * k of the peer's dense duals.
        count = (
            checked[0][1].multiplier.numel()
            if indexed
            else sum(value.numel() for _, _, value, _ in checked)
        )
        method = HumanCompatibleMethod(
            params, torch.optim.SGD(params, lr=lr), scheme, count, dual_lr
        )

        def step(method: Any = method, fresh: ConstrainedProblem = fresh) -> None:
            objective, checked = check_state(fresh, fresh(*next_args()))
            values = [standard_form(value, c.spec) for _, c, value, _ in checked]
            indices = checked[0][3]
            if indices is None:
                method.step(objective, torch.cat([v.reshape(-1) for v in values]), None)
            else:
                method.step(objective, values[0], indices)

        steps[f"hct-{scheme}"] = step
    return steps


def _cycling(step: Callable[[Any], object], batches: Sequence[Any]) -> Step:
    """A step that takes the next of ``batches`` (cycling) each time it is called."""
    cycle = itertools.cycle(batches)
    return lambda: step(next(cycle))


def _bind(function: Callable[..., object], *args: Any) -> Step:
    return lambda: function(*args)


# (b), (c) Networks with every output of every sample constrained.


def _mlp(hidden: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 2),
    )  # fmt: skip


MICRO_BATCHES = 4
"""Micro-batches of the gradient-accumulation variant of the network cases."""


def network_case(hidden: int, num_samples: int = 10_240, batch_size: int = 256) -> dict[str, Step]:
    next_batch = _batches(num_samples, batch_size)
    lr, dual_lr = 0.01, 0.1
    steps: dict[str, Step] = {}
    network = _mlp(hidden)
    steps["plain-sgd"] = _plain_step(
        network, torch.optim.SGD(network.parameters(), lr=lr), next_batch
    )
    methods = (
        ("simultaneous", SimultaneousGDA), ("extragradient", ExtraGradient),
        ("optimistic", OptimisticGDA),
    )  # fmt: skip
    for name, method in methods:
        problem = PositiveOutputs(_mlp(hidden), num_samples, "projection")
        optimizer = method(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=lr),
            torch.optim.SGD(problem.dual_parameters(), lr=dual_lr, maximize=True),
        )

        def constrained_step(optimizer: Any = optimizer, problem: Any = problem) -> None:
            batch = next_batch()
            optimizer.step(lambda: problem(*batch))

        steps[name] = constrained_step
    micro_problem = PositiveOutputs(_mlp(hidden), num_samples, "projection")
    micro = ExtraGradient(
        micro_problem,
        torch.optim.SGD(micro_problem.primal_parameters(), lr=lr),
        torch.optim.SGD(micro_problem.dual_parameters(), lr=dual_lr, maximize=True),
    )

    def micro_step() -> None:
        # The batch as 4 micro-batches (gradient accumulation): the same step, in two passes.
        parts = zip(*(part.chunk(MICRO_BATCHES) for part in next_batch()))
        micro.step([lambda part=part: micro_problem(*part) for part in parts])

    steps[f"extragradient-micro{MICRO_BATCHES}"] = micro_step
    accumulating = _mlp(hidden)
    accumulated = torch.optim.SGD(accumulating.parameters(), lr=lr)

    def plain_micro_step() -> None:
        # A plain accumulation loop over the same micro-batches: its baseline.
        accumulated.zero_grad()
        for inputs, targets, _ in zip(*(part.chunk(MICRO_BATCHES) for part in next_batch())):
            loss = nn.functional.mse_loss(accumulating(inputs), targets) / MICRO_BATCHES
            loss.backward()
        accumulated.step()

    steps[f"plain-sgd-micro{MICRO_BATCHES}"] = plain_micro_step
    default_problem = PositiveOutputs(_mlp(hidden), num_samples, "projection")
    default = default_optimizer(default_problem, lr=lr, dual_lr=dual_lr)

    def default_step() -> None:
        batch = next_batch()
        default.step(lambda: default_problem(*batch))

    steps["default"] = default_step
    # The default's configuration with the fixed step: what the adaptive step itself costs
    # (its formulation, margins and runaway check included, as default_optimizer builds it).
    fixed_problem = PositiveOutputs(_mlp(hidden), num_samples, "projection")
    fixed = ExtraGradient(
        fixed_problem,
        torch.optim.SGD(fixed_problem.primal_parameters(), lr=lr),
        torch.optim.SGD(fixed_problem.dual_parameters(), lr=dual_lr, maximize=True),
        formulation=DEFAULT_AUGMENTED, scaling=True, same_randomness=True,
    )  # fmt: skip

    def default_fixed_step() -> None:
        batch = next_batch()
        fixed.step(lambda: fixed_problem(*batch))

    steps["default-fixed"] = default_fixed_step
    steps.update(
        _simultaneous_duals(
            lambda: PositiveOutputs(_mlp(hidden), num_samples, "projection"),
            lambda problem: functools.partial(problem, *next_batch()),
            lr, dual_lr,
        )
    )  # fmt: skip
    steps.update(
        _humancompatible(
            PositiveOutputs(_mlp(hidden), num_samples, "projection"), next_batch, lr, dual_lr
        )
    )
    for scheme in ("simultaneous", "extrapolation"):
        problem = PositiveOutputs(_mlp(hidden), num_samples, "projection")
        cooper = CooperMethod(problem, scheme, lr, dual_lr / batch_size)  # type: ignore[arg-type]

        def cooper_step(cooper: CooperMethod = cooper) -> None:
            cooper.step(*next_batch())

        steps[f"cooper-{scheme}"] = cooper_step
    return steps


def _plain_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[Tensor, Tensor, Tensor]],
) -> Step:
    """One step of the unconstrained loss: the baseline of a network case."""

    def step() -> None:
        batch_inputs, batch_targets, _ = next_batch()
        optimizer.zero_grad()
        nn.functional.mse_loss(network(batch_inputs), batch_targets).backward()
        optimizer.step()

    return step


def _batches(num_samples: int, batch_size: int) -> Callable[[], tuple[Tensor, Tensor, Tensor]]:
    """Draws the next of 16 fixed batches (cycling) of a random data set."""
    # Drawn on the CPU (the same data on every device), then moved to the default device.
    generator = torch.Generator().manual_seed(0)
    device = torch.get_default_device()
    inputs = torch.randn(num_samples, 784, generator=generator, device="cpu").to(device)
    targets = torch.randn(num_samples, 2, generator=generator, device="cpu").to(device)
    batches = [
        torch.randperm(num_samples, generator=generator, device="cpu")[:batch_size].to(device)
        for _ in range(16)
    ]
    cycle = itertools.cycle(batches)

    def next_batch() -> tuple[Tensor, Tensor, Tensor]:
        indices = next(cycle)
        return inputs[indices], targets[indices], indices

    return next_batch


def cooper_extra_adam(problem: ConstrainedProblem, lr: float, dual_lr: float) -> CooperMethod:
    """Cooper's extrapolation with ``ExtraAdam`` on the primal side, ``ExtraSGD`` ascent."""
    method = CooperMethod(problem, "extrapolation", lr, dual_lr)
    method.optimizer = cooper.optim.ExtrapolationConstrainedOptimizer(
        cmp=method.cmp,
        primal_optimizers=cooper.optim.ExtraAdam(problem.primal_parameters(), lr=lr),
        dual_optimizers=cooper.optim.ExtraSGD(
            list(method.cmp.dual_parameters()), lr=dual_lr, maximize=True
        ),
    )
    return method


def adam_case(hidden: int, batch_size: int, num_samples: int = 10_240) -> dict[str, Step]:
    """Adam on the primal side: ours (functional Adam step, and forced through the stock
    ``optimizer.step()``), a plain Adam step, Cooper's ``ExtraAdam`` extrapolation."""
    next_batch = _batches(num_samples, batch_size)
    lr, dual_lr = 1e-3, 0.1
    steps: dict[str, Step] = {}
    for fused in (False, True):
        network = _mlp(hidden)
        plain = torch.optim.Adam(network.parameters(), lr=lr, fused=fused)
        steps["plain-adam-fused" if fused else "plain-adam"] = _plain_step(
            network, plain, next_batch
        )
    for name, method in (("simultaneous", SimultaneousGDA), ("extragradient", ExtraGradient)):
        for variant in ("", "-stock", "-fused"):
            problem = PositiveOutputs(_mlp(hidden), num_samples, "projection")
            primal = torch.optim.Adam(problem.primal_parameters(), lr=lr, fused=variant == "-fused")
            if variant == "-stock":
                primal.register_step_pre_hook(lambda *_: None)
            optimizer = method(
                problem, primal,
                torch.optim.SGD(problem.dual_parameters(), lr=dual_lr, maximize=True),
            )  # fmt: skip

            def constrained_step(optimizer: Any = optimizer, problem: Any = problem) -> None:
                batch = next_batch()
                optimizer.step(lambda: problem(*batch))

            steps[name + variant] = constrained_step
    cooper_method = cooper_extra_adam(
        PositiveOutputs(_mlp(hidden), num_samples, "projection"), lr, dual_lr / batch_size
    )
    steps["cooper-extrapolation"] = lambda: cooper_method.step(*next_batch())
    return steps


# (d) Indexed scaling.


class ManySamples(ConstrainedProblem):
    """A linear model on features computed from the index: only the tables grow with N."""

    def __init__(self, num_samples: int, treatment: str) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 1)
        self.register_buffer("frequencies", torch.linspace(1e-3, 1.0, 8))
        self.add_inequality(
            "nonnegative",
            ">=",
            num_samples=num_samples,
            treatment=treatment,  # type: ignore[arg-type]
        )

    def forward(self, indices: Tensor) -> ProblemState:
        features = torch.sin(indices[:, None].float() * self.frequencies)
        predictions = self.linear(features).squeeze(-1)
        loss = (predictions - features[:, 0]).square().mean()
        return ProblemState(loss, {"nonnegative": IndexedValue(predictions, indices)})


def indexed_case(sizes: Sequence[int], batch_size: int = 512) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    for num_samples in sizes:
        generator = torch.Generator().manual_seed(0)
        batches = [
            torch.randint(num_samples, (batch_size,), generator=generator) for _ in range(16)
        ]
        problem = ManySamples(num_samples, "slack")
        optimizer = ExtraGradient(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=0.01),
            torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        )

        step = _cycling(lambda indices, o=optimizer, p=problem: o.step(lambda: p(indices)), batches)
        steps[f"extragradient-{num_samples:.0e}"] = step
    return steps


# (e) Memory.


def held_bytes(optimizer: ExtraGradient) -> int:
    """Bytes of the tensors the method keeps between steps (the base optimizers excluded)."""
    return sum(copy.numel() * copy.element_size() for copy in optimizer._point.copies)


def memory_records(hidden: int = 784) -> list[dict[str, Any]]:
    problem = PositiveOutputs(_mlp(hidden), 10_240, "slack")
    primal = problem.primal_parameters()
    optimizer = ExtraGradient(
        problem,
        torch.optim.SGD(primal, lr=0.01),
        torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    indices = torch.arange(256)
    inputs, targets = torch.randn(256, 784), torch.randn(256, 2)
    for _ in range(3):
        optimizer.step(lambda: problem(inputs, targets, indices))
    primal_bytes = sum(p.numel() * p.element_size() for p in primal)
    held = held_bytes(optimizer)
    return [
        {"case": "memory", "variant": "primal+slack bytes", "threads": None,
         "ms_per_step": None, "ratio": None, "bytes": primal_bytes},
        {"case": "memory", "variant": "extragradient held bytes", "threads": None,
         "ms_per_step": None, "ratio": round(held / primal_bytes, 3), "bytes": held},
    ]  # fmt: skip


BASELINES = {"mlp-32": "plain-sgd", "mlp-784": "plain-sgd", "indexed": "extragradient-2e+04"}
ADAM_CASES = [(hidden, batch) for hidden in (32, 784) for batch in (128, 256)]
BASELINES.update({f"adam-{hidden}-b{batch}": "plain-adam" for hidden, batch in ADAM_CASES})


def _baseline(case: str, variant: str) -> str:
    if case == "tiny":
        # Each method against its own hand-written version; Cooper against extra-gradient's
        # or simultaneous GDA's as its scheme says.
        simultaneous = "simultaneous" in variant or variant.startswith("hct-")
        return "hand-simultaneous" if simultaneous else "hand-extragradient"
    return BASELINES[case]


# Targets stated against another variant of the same case (Cooper's, the stock path, the
# fixed step): (case, ours, other), recorded as paired ratios.
AGAINST_COOPER = [
    ("tiny", "extragradient", "cooper-extrapolation"),
    *(
        (case, ours, other)
        for case in ("tiny", "mlp-32", "mlp-784")
        for ours, other in (
            ("simultaneous-augmented", "hct-alm"),
            ("simultaneous-nupi", "hct-nupi"),
        )
    ),
    ("mlp-32", "simultaneous", "cooper-simultaneous"),
    ("mlp-32", "extragradient", "cooper-extrapolation"),
    ("mlp-784", "extragradient", "cooper-extrapolation"),
    *(
        (f"adam-{hidden}-b{batch}", ours, other)
        for hidden, batch in ADAM_CASES
        for ours, other in (
            ("extragradient", "cooper-extrapolation"),
            ("extragradient", "extragradient-stock"),
            ("simultaneous", "simultaneous-stock"),
            ("extragradient-fused", "plain-adam-fused"),
            ("simultaneous-fused", "plain-adam-fused"),
            ("extragradient-fused", "cooper-extrapolation"),
        )
    ),
    ("mlp-32", "optimistic", "simultaneous"),
    ("mlp-784", "optimistic", "simultaneous"),
    ("mlp-32", "default", "extragradient"),
    ("mlp-784", "default", "extragradient"),
    ("mlp-32", "default", "default-fixed"),
    ("mlp-784", "default", "default-fixed"),
    ("mlp-32", f"extragradient-micro{MICRO_BATCHES}", "extragradient"),
    ("mlp-784", f"extragradient-micro{MICRO_BATCHES}", "extragradient"),
    ("mlp-32", f"extragradient-micro{MICRO_BATCHES}", f"plain-sgd-micro{MICRO_BATCHES}"),
    ("mlp-784", f"extragradient-micro{MICRO_BATCHES}", f"plain-sgd-micro{MICRO_BATCHES}"),
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer blocks, smaller sizes")
    parser.add_argument(
        "--device", default="cpu", help="device of the network cases (e.g. cuda); the tiny, "
        "indexed and memory cases run on the CPU only",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    # A GPU times the networks only, at one thread setting: threads drive only the host there.
    on_cpu = device.type == "cpu"
    synchronize = (lambda: None) if on_cpu else torch.cuda.synchronize
    blocks = 3 if args.quick else 11
    sizes = [20_000, 200_000] if args.quick else [20_000, 200_000, 2_000_000, 20_000_000]
    cases: list[tuple[str, Callable[[], dict[str, Step]], int, int]] = [
        *([("tiny", lambda: tiny_case(args.quick), 50, 200)] if on_cpu else []),
        ("mlp-32", lambda: network_case(32), 20, 60),
        ("mlp-784", lambda: network_case(784), 3 if on_cpu else 20, 8 if on_cpu else 60),
        *(
            (f"adam-{hidden}-b{batch}", lambda h=hidden, b=batch: adam_case(h, b), *sizes_of)
            for hidden, batch in ADAM_CASES
            for sizes_of in [(20, 60) if hidden == 32 or not on_cpu else (3, 8)]
        ),
        *([("indexed", lambda: indexed_case(sizes), 20, 100)] if on_cpu else []),
    ]
    thread_settings = (1, 2) if on_cpu else (torch.get_num_threads(),)
    records: list[dict[str, Any]] = []
    progress = tqdm(total=len(thread_settings) * len(cases), desc="cases")
    torch.set_default_device(device)
    for threads in thread_settings:
        torch.set_num_threads(threads)
        for case, build, warmup, per_block in cases:
            samples = time_side_by_side(build(), warmup, blocks, per_block, synchronize)
            for variant, times in samples.items():
                ratio = paired_ratio(times, samples[_baseline(case, variant)])
                records.append(
                    {"case": case, "variant": variant, "threads": threads,
                     "ms_per_step": round(statistics.median(times), 4), "ratio": round(ratio, 3)}
                )  # fmt: skip
            for pair_case, ours, other in AGAINST_COOPER:
                if pair_case == case:
                    ratio = paired_ratio(samples[ours], samples[other])
                    records.append(
                        {"case": case, "variant": f"{ours} / {other}", "threads": threads,
                         "ms_per_step": None, "ratio": round(ratio, 3)}
                    )  # fmt: skip
            progress.update()
    progress.close()
    torch.set_default_device("cpu")
    if on_cpu:
        records += memory_records(32 if args.quick else 784)
    (args.out / "speed.json").write_text(json.dumps(records, indent=1) + "\n")
    table = markdown(records)
    (args.out / "speed.md").write_text(table)
    print(table)


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """The records as a table."""
    lines = [
        "| case | variant | threads | ms per step | ratio | bytes |",
        "|---|---|---|---|---|---|",
    ]
    for entry in records:
        cells = [
            entry["case"], entry["variant"], entry["threads"], entry["ms_per_step"],
            entry["ratio"], entry.get("bytes"),
        ]  # fmt: skip
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
