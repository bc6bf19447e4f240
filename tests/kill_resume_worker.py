"""A training run that checkpoints atomically and resumes: test_kill_resume.py runs it,
kills it with SIGKILL and resumes it.

Three small problems with indexed (per-sample) constraints train in lockstep, one per
method (extra-gradient with the adaptive step and Adam/SGD, simultaneous descent-ascent
with SGD momentum/Adam, alternating descent-ascent on the augmented Lagrangian with
Adam/Adam), on minibatches drawn with replacement from torch's global generator, through
dropout. Every ``--every`` steps the run writes a checkpoint (the step, each problem's and
optimizer's state dict, the objectives so far and the generator's state) to a temporary
file in the checkpoint's directory and moves it into place with ``os.replace``; at the end
it writes the same to ``--out``. If the checkpoint exists when it starts, the run resumes
from it. It prints ``step K`` after each step and ``checkpoint K`` after each checkpoint.

Usage: python kill_resume_worker.py --checkpoint CKPT --out FINAL --steps N --every K
[--sleep SECONDS]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from typing import Any

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
)

NUM_SAMPLES = 32
BATCH = 8
RUNS = ("extragradient", "simultaneous", "alternating")
TRAINING_SEED = 1234


class PerSample(ConstrainedProblem):
    """A linear model with dropout on its inputs; per sample, its first output >= 0 (slack)
    and its second <= 1 (projection); its mean output equals 0.1."""

    data: Tensor
    targets: Tensor

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("data", torch.randn(NUM_SAMPLES, 4, generator=generator))
        self.register_buffer("targets", torch.randn(NUM_SAMPLES, 2, generator=generator) - 0.5)
        self.model = nn.Linear(4, 2)
        with torch.no_grad():
            self.model.weight.copy_(0.5 * torch.randn(2, 4, generator=generator))
            self.model.bias.copy_(0.1 * torch.randn(2, generator=generator))
        self.add_inequality("nonnegative", ">=", num_samples=NUM_SAMPLES, treatment="slack")
        self.add_inequality("at_most_one", "<=", num_samples=NUM_SAMPLES, treatment="projection")
        self.add_equality("mean", shape=(1,))

    def forward(self, indices: Tensor) -> ProblemState:
        inputs = nn.functional.dropout(self.data[indices], p=0.2, training=True)
        predictions = self.model(inputs)
        return ProblemState(
            (predictions - self.targets[indices]).square().mean(),
            {
                "nonnegative": IndexedValue(predictions[:, 0], indices),
                "at_most_one": IndexedValue(predictions[:, 1] - 1.0, indices),
                "mean": predictions.mean().reshape(1) - 0.1,
            },
        )


def build(run: str) -> tuple[PerSample, ConstrainedOptimizer]:
    problem = PerSample()
    primal_params = problem.primal_parameters()
    dual_params = problem.dual_parameters()
    if run == "extragradient":
        return problem, ExtraGradient(
            problem,
            torch.optim.Adam(primal_params, lr=0.01),
            torch.optim.SGD(dual_params, lr=0.05, maximize=True),
            step_size="adaptive",
        )
    if run == "simultaneous":
        return problem, SimultaneousGDA(
            problem,
            torch.optim.SGD(primal_params, lr=0.02, momentum=0.9),
            torch.optim.Adam(dual_params, lr=0.01, maximize=True),
        )
    assert run == "alternating", run
    return problem, AlternatingGDA(
        problem,
        torch.optim.Adam(primal_params, lr=0.01),
        torch.optim.Adam(dual_params, lr=0.01, maximize=True),
        formulation="augmented",
    )


def save_atomically(obj: Any, path: str) -> None:
    """Writes ``obj`` to a temporary file beside ``path``, then moves it into place: a
    reader (or a run killed midway) sees the old file or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def snapshot(
    step: int, runs: list[tuple[PerSample, ConstrainedOptimizer]], history: list[list[float]]
) -> dict[str, Any]:
    return {
        "step": step,
        "runs": [
            {"problem": problem.state_dict(), "optimizer": optimizer.state_dict()}
            for problem, optimizer in runs
        ],
        "history": history,
        "rng": torch.get_rng_state(),
    }


def train(checkpoint: str, out: str, steps: int, every: int, sleep: float = 0.0) -> None:
    runs = [build(run) for run in RUNS]
    torch.manual_seed(TRAINING_SEED)
    start = 0
    history: list[list[float]] = []
    if os.path.exists(checkpoint):
        saved = torch.load(checkpoint, weights_only=True)
        for (problem, optimizer), state in zip(runs, saved["runs"]):
            problem.load_state_dict(state["problem"])
            optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(saved["rng"])
        start = saved["step"]
        history = saved["history"]
        print(f"resumed {start}", flush=True)
    for step in range(start, steps):
        indices = torch.randint(NUM_SAMPLES, (BATCH,))  # with replacement: repeats
        objectives = []
        for problem, optimizer in runs:
            result = optimizer.step(functools.partial(problem, indices))
            objectives.append(float(result.objective))
        history.append(objectives)
        done = step + 1
        if done % every == 0 and done < steps:
            save_atomically(snapshot(done, runs, history), checkpoint)
            print(f"checkpoint {done}", flush=True)
        print(f"step {done}", flush=True)
        if sleep:
            time.sleep(sleep)
    save_atomically(snapshot(steps, runs, history), out)
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds after each step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(args.checkpoint, args.out, args.steps, args.every, args.sleep)


if __name__ == "__main__":
    main()
