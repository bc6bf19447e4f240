"""Shared fixtures: ``device`` runs a test once per available device (tests/helpers.DEVICES)."""

from __future__ import annotations

import pytest
from helpers import DEVICES


@pytest.fixture(params=DEVICES, ids=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """``"cpu"`` always, ``"cuda"`` when a GPU is present."""
    return request.param
