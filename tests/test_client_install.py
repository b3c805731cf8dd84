"""`pip install ./client` into an empty venv gives a working client, without torch or faiss."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    from embedlens_client import Client
    for heavy in ("torch", "faiss", "embedlens", "gensim"):
        assert importlib.util.find_spec(heavy) is None, heavy + " is installed"
    with Client(sys.argv[1], timeout=30) as c:
        print(c.analogy(positive=["king", "woman"], negative=["man"], k=1)[0].token)
        print(c.lookup(["king", "queen"]).shape)
    """
)


@pytest.mark.slow
def test_client_installs_alone_and_works(tmp_path: Path, target: str) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    freeze = subprocess.run(
        [str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    assert "torch" not in freeze and "faiss" not in freeze, freeze
    r = subprocess.run(
        [str(py), "-c", SCRIPT, target], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["queen", "(2,", "384)"]
