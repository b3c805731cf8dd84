"""The committed stubs match a fresh generation, and the protos pass `buf lint`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_generated_stubs_are_up_to_date() -> None:
    pytest.importorskip("grpc_tools")
    pytest.importorskip("mypy_protobuf")
    r = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _buf() -> str | None:
    local = ROOT / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_lint_passes() -> None:
    buf = _buf()
    if buf is None:
        if os.environ.get("EMBEDLENS_SKIP_BUF") == "1":
            pytest.skip("buf not installed and EMBEDLENS_SKIP_BUF=1")
        pytest.fail("buf not found: run `npm install` (package.json pins @bufbuild/buf)")
    r = subprocess.run(
        [buf, "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
