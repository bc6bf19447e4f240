"""The README's quickstart runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 3
    return blocks


def _run(block: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_quickstart_runs_and_is_feasible() -> None:
    namespace = _run(_blocks()[0])
    result = namespace["result"]
    assert float(result.max_violation) < 1e-6
    with torch.no_grad():
        predictions = namespace["problem"].model(namespace["X"]).squeeze(-1)
    assert float(predictions.min()) > -1e-6


def test_network_quickstart_meets_every_constraint_at_the_last_iterate() -> None:
    namespace = _run(_blocks()[1])
    problem, X, y = namespace["problem"], namespace["X"], namespace["y"]
    with torch.no_grad():
        predictions = problem.model(X).squeeze(-1)
    assert float((y < 0).float().mean()) > 0.3  # the constraints bind
    assert float(predictions.min()) >= -1e-3  # every training output, on minibatches
    mse = float(torch.nn.functional.mse_loss(predictions, y))
    assert mse < 1.5 * float((y.clamp(min=0) - y).square().mean())  # near the feasible bound


def test_benchmark_problem_example_reaches_f_star() -> None:
    namespace = _run(_blocks()[2])
    result = namespace["result"]
    f_star = namespace["problem"].definition.f_star
    assert abs(float(result.objective) - f_star) / f_star <= 1e-6
    assert float(result.max_violation) <= 1e-6
