"""The Lagrangian's gradient, taken as cotangents on the constraints' outputs."""

from __future__ import annotations

import pytest
import torch
from helpers import build_mixed, mixed_batch
from torch import Tensor

import lagrange_opt.evaluation.terms as evaluation_module
from lagrange_opt import ExtraGradient
from lagrange_opt.evaluation.evaluate import evaluate
from lagrange_opt.evaluation.slacks import UndoLog
from lagrange_opt.evaluation.terms import Evaluation
from lagrange_opt.maths import lagrangian as lag


def _gradients(problem: torch.nn.Module, state: Evaluation) -> list[Tensor]:
    """Every parameter's gradient, then each indexed slack's row gradient."""
    leaves = [
        *problem.parameters(),
        *(term.slack.values for term in state.terms if term.slack is not None),
    ]
    return [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad.clone() for leaf in leaves]


@pytest.mark.parametrize("engine", ["engine", "public-api"])
def test_backward_is_the_gradient_of_the_lagrangian(
    engine: str, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    if engine == "public-api":
        monkeypatch.setattr(evaluation_module, "_ENGINE_RUN_BACKWARD", None)
    problem, optimizer = build_mixed(ExtraGradient, "plain-sgd", dtype=torch.float64, device=device)
    for step in range(20):  # multipliers and slacks away from their initial values
        optimizer.step(lambda step=step: problem(mixed_batch(step, device)))
    indices = mixed_batch(99, device)
    state = evaluate(problem, lambda: problem(indices), UndoLog())
    problem.zero_grad()
    state.backward()
    fast = _gradients(problem, state)

    # The Lagrangian as its definition in _lagrangian builds it, one scalar graph.
    state = evaluate(problem, lambda: problem(indices), UndoLog())
    pieces = []
    for term in state.terms:
        spec = term.constraint.spec
        residual = term.output if spec.has_slack else lag.standard_form(term.output, spec)
        batch_size = None if term.indices is None else term.indices.shape[0]
        pieces.append(lag.constraint_term(term.multipliers_read, residual, batch_size))
    lagrangian = lag.lagrangian(state.objective, pieces + state.penalties)
    problem.zero_grad()
    lagrangian.backward()
    for term in state.terms:  # a sample's slack steps along its own term, not the mean
        if term.slack is not None and term.slack.values.grad is not None:
            term.slack.values.grad.mul_(term.output.shape[0])
    reference = _gradients(problem, state)

    assert any(bool(grad.abs().sum() > 0) for grad in fast)
    for got, expected in zip(fast, reference):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(state.lagrangian, lagrangian.detach(), rtol=1e-12, atol=1e-14)
