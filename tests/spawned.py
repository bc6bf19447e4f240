"""Process groups the suite spawns, started in the background when the session starts.

Each spawned run (two gloo ranks importing torch and running every case) is the slowest
set-up of its test module. Started by the first test's set-up rather than by the module's,
it runs while the workers test other modules; and under pytest-xdist, whose workers each
build a module's fixtures again, it runs once for the session: the first worker to claim
it starts it, and every worker reads the directory it fills.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Spawn(NamedTuple):
    """The tests that read a spawned run (a node id's start, from the test file's name on),
    and the run's commands given its output directory."""

    tests: str
    commands: Callable[[Path], list[list[str]]]

    def read_by(self, item: pytest.Item) -> bool:
        """Whether the selected test ``item`` reads this run."""
        return item.nodeid.rsplit("/", 1)[-1].startswith(self.tests)


def _python(path: str, *args: str) -> list[str]:
    """A command running the repository's script ``path`` with ``args``."""
    return [sys.executable, str(ROOT / path), *args]


SPAWNS: dict[str, Spawn] = {
    "distributed": Spawn(
        "test_distributed.py::",
        lambda outdir: [
            _python("tests/distributed_worker.py", str(outdir)),
            # The example's short run, beside every case on 2 ranks.
            _python("examples/ddp.py", "--epochs", "1", "--samples", "64", "--batch-size", "16"),
        ],
    ),
    "reliability_ranks": Spawn(
        "test_reliability_ranks.py::",
        lambda outdir: [_python("tests/reliability_ranks_worker.py", str(outdir))],
    ),
    "proxy_distributed": Spawn(
        "test_proxy.py::test_two_ranks_equal_one_process_on_the_whole_batch",
        lambda outdir: [_python("tests/proxy_distributed_worker.py", str(outdir))],
    ),
}

TIMEOUT_S = 240.0
"""Longest a spawned run may take; its processes are killed after it."""


class Finished(NamedTuple):
    """A spawned run's output directory and each command's return code (-9: killed)."""

    outdir: Path
    returncodes: list[int]

    def output(self, command: int) -> str:
        """What the command printed (stdout and stderr)."""
        return (self.outdir / f"output{command}.txt").read_text()


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every pytest-xdist worker of the session sees (the parent of their own)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def start(root: Path, name: str) -> None:
    """Starts the spawned run ``name`` unless a worker of the session already has.

    A thread waits for its processes and then writes their return codes, the sign that the
    run is over.
    """
    outdir = root / name
    try:
        outdir.mkdir()  # atomic: exactly one worker claims the run
    except FileExistsError:
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    processes = []
    for number, command in enumerate(SPAWNS[name].commands(outdir)):
        with (outdir / f"output{number}.txt").open("w") as output:
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
                )
            )

    def reap() -> None:
        deadline = time.monotonic() + TIMEOUT_S
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(deadline - time.monotonic(), 0.0)))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        # Written whole under another name first, so a reader never sees half of it.
        (outdir / "returncodes.tmp").write_text(" ".join(map(str, codes)))
        (outdir / "returncodes.tmp").rename(outdir / "returncodes.txt")

    threading.Thread(target=reap, daemon=True).start()


def finished(tmp_path_factory: pytest.TempPathFactory, name: str) -> Finished:
    """The spawned run ``name``, started now if no worker has, once it is over."""
    root = shared_root(tmp_path_factory)
    start(root, name)
    codes = root / name / "returncodes.txt"
    deadline = time.monotonic() + TIMEOUT_S + 30.0
    while not codes.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the spawned run {name!r} did not finish in {TIMEOUT_S + 30.0:.0f} s")
        time.sleep(0.05)
    return Finished(root / name, [int(code) for code in codes.read_text().split()])
