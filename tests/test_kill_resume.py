"""A run killed with SIGKILL and resumed from its last checkpoint ends bitwise where an
uninterrupted run does (tests/kill_resume_worker.py is the training script)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="SIGKILL and os.replace semantics of POSIX"
)

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "kill_resume_worker.py"
ROOT = TESTS.parent
STEPS = 60
EVERY = 10
KILL_AFTER = 25  # the killed run has checkpointed at 10 and 20, and lost steps 21 to 25
TIMEOUT = 60.0


def _command(directory: Path, name: str, sleep: float = 0.0) -> list[str]:
    return [
        sys.executable,
        str(WORKER),
        "--checkpoint", str(directory / f"{name}.ckpt"),
        "--out", str(directory / f"{name}.final"),
        "--steps", str(STEPS),
        "--every", str(EVERY),
        "--sleep", str(sleep),
    ]  # fmt: skip


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = str(ROOT) if not path else f"{ROOT}{os.pathsep}{path}"
    return environment


def _start(command: list[str], stderr: Path) -> subprocess.Popen[str]:
    with stderr.open("w") as errors:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )


def _load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def assert_bitwise_equal(left: Any, right: Any, path: str = "<root>") -> None:
    """Nested dicts, lists and tuples of tensors and plain values are equal, bitwise."""
    if isinstance(left, Tensor):
        assert isinstance(right, Tensor), f"{path}: tensor vs {type(right).__name__}"
        assert left.dtype == right.dtype, f"{path}: dtype {left.dtype} vs {right.dtype}"
        assert left.shape == right.shape, f"{path}: shape {left.shape} vs {right.shape}"
        assert torch.equal(left, right), f"{path}: values differ\n{left}\n{right}"
    elif isinstance(left, dict):
        assert isinstance(right, dict), f"{path}: dict vs {type(right).__name__}"
        assert set(left) == set(right), f"{path}: keys differ"
        for key in left:
            assert_bitwise_equal(left[key], right[key], f"{path}.{key}")
    elif isinstance(left, (list, tuple)):
        assert isinstance(right, (list, tuple)), f"{path}: sequence vs {type(right).__name__}"
        assert len(left) == len(right), f"{path}: length {len(left)} vs {len(right)}"
        for index, (a, b) in enumerate(zip(left, right)):
            assert_bitwise_equal(a, b, f"{path}[{index}]")
    elif isinstance(left, float):
        assert isinstance(right, float), f"{path}: float vs {type(right).__name__}"
        assert struct.pack("<d", left) == struct.pack("<d", right), f"{path}: {left} vs {right}"
    else:
        assert type(left) is type(right) and left == right, f"{path}: {left!r} vs {right!r}"


def test_a_run_killed_and_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # The uninterrupted run, beside the one to be killed.
    straight = _start(_command(tmp_path, "straight"), tmp_path / "straight.err")
    try:
        _kill_and_resume(tmp_path, straight)
    finally:
        if straight.poll() is None:
            straight.kill()
            straight.wait()
        if straight.stdout is not None:
            straight.stdout.close()


def _kill_and_resume(tmp_path: Path, straight: subprocess.Popen[str]) -> None:
    # Slowed down so that the kill lands between its checkpoints, never after its end.
    killed = _start(_command(tmp_path, "run", sleep=0.02), tmp_path / "run.err")
    watchdog = threading.Timer(TIMEOUT, killed.kill)
    watchdog.start()
    try:
        assert killed.stdout is not None
        printed = []
        for line in killed.stdout:
            printed.append(line.strip())
            if printed[-1] == f"step {KILL_AFTER}":
                os.kill(killed.pid, signal.SIGKILL)
                break
        # What it printed between the line read and its death (a later checkpoint?).
        printed += [line.strip() for line in killed.stdout.read().splitlines()]
        killed.wait(timeout=TIMEOUT)
    finally:
        watchdog.cancel()
        if killed.poll() is None:
            killed.kill()
            killed.wait()
        if killed.stdout is not None:
            killed.stdout.close()
    errors = (tmp_path / "run.err").read_text()
    assert f"step {KILL_AFTER}" in printed, (printed, errors)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, errors)
    assert "done" not in printed
    assert not (tmp_path / "run.final").exists(), "the killed run finished before the kill"

    checkpoint = _load(tmp_path / "run.ckpt")
    assert checkpoint["step"] % EVERY == 0 and EVERY <= checkpoint["step"] < STEPS
    assert f"checkpoint {checkpoint['step']}" in printed
    assert len(checkpoint["history"]) == checkpoint["step"]

    resumed = subprocess.run(
        _command(tmp_path, "run"),
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.split("\n")
    assert lines[0] == f"resumed {checkpoint['step']}", resumed.stdout
    assert f"step {checkpoint['step'] + 1}" in lines and "done" in lines

    output, _ = straight.communicate(timeout=TIMEOUT)
    assert straight.returncode == 0, (tmp_path / "straight.err").read_text()
    assert "resumed" not in output and "done" in output

    expected = _load(tmp_path / "straight.final")
    actual = _load(tmp_path / "run.final")
    assert actual["step"] == expected["step"] == STEPS
    assert len(actual["history"]) == STEPS
    assert_bitwise_equal(expected, actual)
