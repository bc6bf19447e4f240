"""The README's quickstart runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs_and_is_feasible(capsys: object) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    result = namespace["result"]
    assert float(result.max_violation) < 1e-6  # type: ignore[attr-defined]
    model = namespace["problem"].model  # type: ignore[attr-defined]
    predictions = model(namespace["X"]).squeeze(-1)
    assert float(predictions.min()) > -1e-6
