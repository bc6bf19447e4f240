"""torch.compile: a closure that calls a compiled network, with every method.

Compilations are counted with a backend of our own (a ``torch.compile`` backend is a
callable ``(graph_module, example_inputs) -> callable``; this one counts the graphs it is
given and runs them as they are). Running the captured graph's ATen operations in the
order eager PyTorch runs them, it gives the eager iterates bitwise: the comparisons with
eager runs below have tolerance 0. Inductor (generated C++ kernels, which fuse and
reorder operations) is compared in float64 with a tolerance of 1e-10.

What the tests establish (docs/compile.md):

- one graph at the first step and none after it, for every method, with dense and indexed
  constraints: the package calls the closure under the same grad mode every time
  (``torch.enable_grad()``), the parameters are updated in place (same objects, shapes and
  strides: dynamo guards on those, not on their values or version counters), and the
  random number generators put back by extra-gradient are not guarded on;
- a batch of another size recompiles once (dynamo's "automatic dynamic" shapes), then the
  graph is shape-generic; ``dynamic=True`` or ``torch._dynamo.mark_dynamic`` avoid even
  that one; a batch of size 1 compiles once more in every mode (dynamo specialises sizes 0
  and 1);
- an evaluation under ``torch.no_grad()`` (validation) compiles one more graph, once;
- ``problem.compile()`` (the whole forward: network, loss, ``ProblemState``) is one graph
  too, and keeps the checkpoint keys of the eager problem.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lagrange_opt import (
    AlternatingGDA,
    ConstrainedOptimizer,
    ConstrainedProblem,
    ExtraGradient,
    IndexedValue,
    ProblemState,
    SimultaneousGDA,
    default_optimizer,
)

NUM_SAMPLES = 64
STEPS = 20

# Raised inside dynamo when it first compiles, not by this package.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it compiles and runs them as
    captured (no code generation)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable:
        self.graphs += 1
        return gm.forward


def network(dropout: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(8, 16), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(0.2))  # the methods' random number handling included
    return nn.Sequential(*layers, nn.Linear(16, 2))


class Outputs(ConstrainedProblem):
    """Least squares of a small network under dense or indexed constraints on its outputs.

    ``"dense"``: the batch mean of each output equals 0.3 (equality, shape (2,)) and the
    mean square output is at most 1 (inequality with a slack). ``"indexed"``: every output
    of every sample is ``>= 0`` (one slack per output and sample).
    """

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        if kind == "dense":
            self.add_equality("mean", shape=(2,))
            self.add_inequality("power", "<=", treatment="slack")
        else:
            self.add_inequality(
                "nonnegative", ">=", shape=(2,), num_samples=NUM_SAMPLES, treatment="slack"
            )

    def forward(self, inputs: Tensor, targets: Tensor, indices: Tensor) -> ProblemState:
        pred = self.net(inputs)
        loss = nn.functional.mse_loss(pred, targets)
        if self.kind == "dense":
            constraints = {"mean": pred.mean(0) - 0.3, "power": pred.square().mean() - 1.0}
        else:
            constraints = {"nonnegative": IndexedValue(pred, indices)}
        return ProblemState(loss, constraints)


def sgd_pair(
    method: type[ConstrainedOptimizer], **options: Any
) -> Callable[[ConstrainedProblem], ConstrainedOptimizer]:
    def build(problem: ConstrainedProblem) -> ConstrainedOptimizer:
        return method(
            problem,
            torch.optim.SGD(problem.primal_parameters(), lr=0.05),
            torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
            **options,
        )

    return build


METHODS: dict[str, Callable[[ConstrainedProblem], ConstrainedOptimizer]] = {
    "simultaneous": sgd_pair(SimultaneousGDA),
    "alternating": sgd_pair(AlternatingGDA),
    "extragradient": sgd_pair(ExtraGradient, step_size="fixed"),
    "default": default_optimizer,  # extra-gradient, adaptive, augmented, scaling
}


def data(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(NUM_SAMPLES, 8, generator=generator, dtype=dtype)
    targets = torch.randn(NUM_SAMPLES, 2, generator=generator, dtype=dtype)
    return inputs, targets


def batches(sizes: Sequence[int]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randperm(NUM_SAMPLES, generator=generator)[:size] for size in sizes]


def train(
    problem: ConstrainedProblem,
    optimizer: ConstrainedOptimizer,
    indices: Sequence[Tensor],
    steps: int,
    after_step: Callable[[int], None] = lambda step: None,
    mark_dynamic: bool = False,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """``steps`` steps cycling over ``indices``; returns every tensor of the problem (the
    network's parameters, multipliers, slacks), detached."""
    inputs, targets = data(dtype)
    for step in range(steps):
        batch = indices[step % len(indices)]
        x = inputs[batch]
        if mark_dynamic:
            torch._dynamo.mark_dynamic(x, 0)
        optimizer.step(lambda x=x, batch=batch: problem(x, targets[batch], batch))
        after_step(step)
    return [tensor.detach().clone() for tensor in [*problem.parameters(), *problem.buffers()]]


def run(
    method: str,
    kind: str,
    backend: Any,
    sizes: Sequence[int] = (16,),
    steps: int = STEPS,
    dynamic: bool | None = None,
    mark_dynamic: bool = False,
) -> tuple[list[Tensor], list[int]]:
    """Trains from seed 0 (initial weights and dropout masks); ``backend=None``: eager.
    Returns the final tensors and the graph count after each step."""
    torch.compiler.reset()
    torch.manual_seed(0)
    net: nn.Module = network()
    if backend is not None:
        net = torch.compile(net, backend=backend, dynamic=dynamic, fullgraph=True)
    problem = Outputs(net, kind)
    counts: list[int] = []
    record = (lambda step: counts.append(backend.graphs)) if backend is not None else None
    tensors = train(
        problem, METHODS[method](problem), batches(sizes), steps,
        record or (lambda step: None), mark_dynamic,
    )  # fmt: skip
    return tensors, counts


@pytest.mark.parametrize("kind", ["dense", "indexed"])
@pytest.mark.parametrize("method", list(METHODS))
def test_compiled_network_compiles_once_and_matches_eager(method: str, kind: str) -> None:
    counter = CountingBackend()
    compiled, counts = run(method, kind, counter)
    # One graph (fullgraph=True: no graph break) at the first step, none in the 19 after.
    assert counts == [1] * STEPS, f"graphs compiled after each step: {counts}"
    eager, _ = run(method, kind, None)
    assert len(compiled) == len(eager)
    for got, expected in zip(compiled, eager):
        # Tolerance 0: the counting backend runs the eager operations in the eager order.
        assert torch.equal(got, expected), float((got - expected).abs().max())
    initial, _ = run(method, kind, None, steps=0)
    moved = [not torch.equal(a, b) for a, b in zip(initial, eager)]
    assert sum(moved) >= len(list(network().parameters())), "the runs must move the point"


@pytest.mark.parametrize("method", ["simultaneous", "extragradient"])
def test_a_compiled_step_traces_and_matches_eager(method: str) -> None:
    """``torch.compile(optimizer.step)`` (which does not pay: docs/compile.md) still runs,
    with graph breaks, and gives the eager iterates: dynamo must be able to trace the step
    (a ``finally`` around it once made its bytecode transformation fail)."""
    results = []
    for compiled in (False, True):
        torch.compiler.reset()
        torch.manual_seed(0)
        problem = Outputs(network(), "dense")
        optimizer = METHODS[method](problem)
        step = torch.compile(optimizer.step, backend=CountingBackend()) if compiled else None
        inputs, targets = data()
        for batch in batches((16, 16, 16)):
            (step or optimizer.step)(
                functools.partial(problem, inputs[batch], targets[batch], batch)
            )
        results.append([tensor.detach().clone() for tensor in problem.parameters()])
    for got, expected in zip(results[1], results[0]):
        assert torch.equal(got, expected), float((got - expected).abs().max())


def test_no_recompilation_under_fail_on_recompile_stance() -> None:
    """The same claim through PyTorch's own check: with the stance ``fail_on_recompile``
    any compilation after the first step raises."""
    torch.compiler.reset()
    torch.manual_seed(0)
    problem = Outputs(torch.compile(network(), backend=CountingBackend()), "indexed")
    optimizer = default_optimizer(problem)
    indices = batches([16, 16, 16, 16])
    train(problem, optimizer, indices, 1)
    with torch.compiler.set_stance("fail_on_recompile"):
        train(problem, optimizer, indices, STEPS)
    # The check can fail: a batch of another size must compile.
    with (
        pytest.raises(RuntimeError, match="fail_on_recompile"),
        torch.compiler.set_stance("fail_on_recompile"),
    ):
        train(problem, optimizer, batches([5]), 1)


def test_compiled_problem_forward_is_one_graph() -> None:
    """``problem.compile()``: the whole forward (network, loss, ``ProblemState`` and
    ``IndexedValue``) in one graph with no graph break, bitwise the eager iterates."""
    counter = CountingBackend()
    torch.compiler.reset()
    torch.manual_seed(0)
    problem = Outputs(network(), "indexed")
    problem.compile(backend=counter, fullgraph=True)
    counts: list[int] = []
    compiled = train(
        problem, default_optimizer(problem), batches([16]), STEPS,
        lambda step: counts.append(counter.graphs),
    )  # fmt: skip
    assert counts == [1] * STEPS, counts
    eager, _ = run("default", "indexed", None)
    for got, expected in zip(compiled, eager):
        assert torch.equal(got, expected)
    # Compiled in place: the checkpoint keys are the eager ones (``torch.compile(network)``
    # puts ``_orig_mod.`` in them), so checkpoints load across compiled and eager runs.
    eager_problem = Outputs(network(), "indexed")
    assert list(problem.state_dict()) == list(eager_problem.state_dict())
    eager_problem.load_state_dict(problem.state_dict())
    wrapped = Outputs(torch.compile(network(), backend=counter), "indexed")
    assert any("_orig_mod." in key for key in wrapped.state_dict())


@pytest.mark.parametrize(
    ("dynamic", "mark_dynamic", "expected"),
    [
        # Automatic dynamic shapes: the batch of 6 recompiles once, with a symbolic batch
        # size; the batch of 11 then reuses that graph.
        (None, False, [1] * 4 + [2] * 8),
        (True, False, [1] * 12),  # every size symbolic from the start
        (None, True, [1] * 12),  # the inputs' batch dimension marked dynamic
        # Static shapes: one graph per distinct size (up to torch._dynamo's recompile
        # limit, 8, after which the function runs eagerly).
        (False, False, [1] * 4 + [2, 3] + [3] * 6),
    ],
    ids=["automatic", "dynamic=True", "mark_dynamic", "dynamic=False"],
)
def test_varying_batch_size(dynamic: bool | None, mark_dynamic: bool, expected: list[int]) -> None:
    counter = CountingBackend()
    sizes = [16, 16, 16, 16, 6, 11]  # an epoch of 81 samples would end with a short batch
    compiled, counts = run(
        "default", "indexed", counter, sizes, 12, dynamic=dynamic, mark_dynamic=mark_dynamic
    )
    assert counts == expected, counts
    eager, _ = run("default", "indexed", None, sizes, 12)
    for got, expected_tensor in zip(compiled, eager):
        # Symbolic shapes change no operation of the graph: still bitwise.
        assert torch.equal(got, expected_tensor)


@pytest.mark.parametrize("dynamic", [None, True])
def test_batch_of_one_compiles_once_more(dynamic: bool | None) -> None:
    """Dynamo specialises sizes 0 and 1 even with dynamic=True: a last batch of one sample
    costs one more graph, once."""
    counter = CountingBackend()
    _, counts = run("simultaneous", "indexed", counter, [16, 16, 1], 9, dynamic=dynamic)
    assert counts == [1, 1] + [2] * 7, counts


def test_evaluation_under_no_grad_compiles_one_more_graph_once() -> None:
    """Dynamo guards on the grad mode: a validation pass under ``torch.no_grad()`` gets a
    graph of its own, compiled once; training after it compiles nothing."""
    counter = CountingBackend()
    torch.compiler.reset()
    torch.manual_seed(0)
    net = torch.compile(network(), backend=counter)
    problem = Outputs(net, "indexed")
    optimizer = default_optimizer(problem)
    inputs, _ = data()
    indices = batches([16])
    train(problem, optimizer, indices, 2)
    assert counter.graphs == 1
    for _ in range(3):
        with torch.no_grad():
            net(inputs)
        train(problem, optimizer, indices, 2)
    assert counter.graphs == 2


def _has_cxx_compiler() -> bool:
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _has_cxx_compiler(), reason="inductor needs a C++ compiler on the CPU")
def test_inductor_matches_eager_in_float64() -> None:
    """Inductor's generated kernels (forward and backward) with the default method.

    The first run on a machine compiles C++ (about 20 s on 2 cores); later runs load the
    kernels from inductor's cache (about 4 s). Tolerance 1e-10 in float64: inductor fuses
    and reorders the operations (a reduction's order, ``a*b+c`` fused), which changes
    rounding at 1e-16 relative per operation, amplified over 20 steps, not by 1e6.
    """
    torch.compiler.reset()
    results = []
    for compiled in (True, False):
        torch.manual_seed(0)
        net: nn.Module = network(dropout=False).double()  # inductor draws its own masks
        if compiled:
            net = torch.compile(net, backend="inductor", dynamic=False, fullgraph=True)
        problem = Outputs(net, "indexed").double()
        optimizer = default_optimizer(problem)
        indices = batches([16, 16, 16, 16])
        tensors = train(problem, optimizer, indices, 1, dtype=torch.float64)
        if compiled:
            with torch.compiler.set_stance("fail_on_recompile"):
                tensors = train(problem, optimizer, indices, STEPS - 1, dtype=torch.float64)
        else:
            tensors = train(problem, optimizer, indices, STEPS - 1, dtype=torch.float64)
        results.append(tensors)
    torch.compiler.reset()
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
