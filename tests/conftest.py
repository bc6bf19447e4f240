"""Shared fixtures: ``device`` runs a test once per available device (tests/helpers.DEVICES);
the process groups of the distributed tests start in the background (tests/spawned.py)."""

from __future__ import annotations

import os

import pytest
import spawned
import torch
from helpers import DEVICES

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Each pytest-xdist worker has a core's share: more intra-op threads than that only
    # spin against the other workers (about a tenth of the suite's time on 2 cores).
    torch.set_num_threads(1)


@pytest.fixture(params=DEVICES, ids=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """``"cpu"`` always, ``"cuda"`` when a GPU is present."""
    return request.param


@pytest.fixture(scope="session", autouse=True)
def _spawn_in_background(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Starts, at the first test, the spawned runs that the selected tests will read."""
    for name, spawn in spawned.SPAWNS.items():
        if any(spawn.read_by(item) for item in request.session.items):
            spawned.start(spawned.shared_root(tmp_path_factory), name)
