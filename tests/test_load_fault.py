"""A short run of the load and fault suite (tests/load_fault.py) on a small model: steady load,
a reload, a SIGTERM and a killed replica under load, with zero failed calls. The full run (64
clients, 60 s per scenario, MiniLM) is in docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from .load_fault import SCENARIOS, markdown, scenario
from .toy_model import write_toy


@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_no_call_fails_under_load(tmp_path: Path, name: str) -> None:
    toy = tmp_path / "toy.vec"
    write_toy(toy)
    result = scenario(name, clients=8, seconds=4.0, model=f"toy={toy}", log_dir=tmp_path)
    print("\n" + markdown([result]))
    assert not result.errors, result.summary()
    assert result.calls > 100
    assert result.deliberate > 0  # the over-limit calls were refused, as they must be
    if name == "reload":
        assert result.events and "ok=True" in result.events[0]
    if name == "sigterm":
        assert "exit 0" in result.events[0]
