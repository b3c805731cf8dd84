"""The benchmark suite runs end to end with tiny bounds and writes its table and JSON.

No timing is asserted (the machine is shared and noisy): only that every row is produced,
with our figure, the baseline's, the ratio and the target verdict, or a reason to skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT

pytest.importorskip("gensim")

ROW_IDS = [
    "1a",
    "1b",
    "2a",
    "2b",
    "2c",
    "2d",
    "2e",
    "3",
    "3b",
    "4",
    "5a",
    "5b",
    "5c",
    "6a",
    "6b",
    "7a",
    "7b",
    "7c",
]


def _tiny_model(path: Path, questions: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["Athens", "Greece", "Berlin", "Germany", "Paris", "France", "Rome", "Italy"]
    words += [f"word{i}" for i in range(300)]
    with path.open("w") as f:
        f.write(f"{len(words)} 16\n")
        for w in words:
            f.write(w + " " + " ".join(f"{x:.5f}" for x in rng.normal(size=16)) + "\n")
    pairs = [words[i : i + 2] for i in range(0, 8, 2)]
    lines = [": capitals"] + [f"{a} {b} {c} {d}" for a, b in pairs for c, d in pairs if a != c]
    questions.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_quick_bench_writes_every_row(tmp_path: Path) -> None:
    model, questions = tmp_path / "tiny.txt", tmp_path / "questions.txt"
    _tiny_model(model, questions)
    out, table = tmp_path / "results.json", tmp_path / "table.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--model",
            f"tiny={model}",
            "--analogies",
            str(questions),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--markdown",
            str(table),
            "--scale-n",
            "5000",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] and data["machine"]["date"]
    rows = {r["id"]: r for r in data["rows"]}
    assert list(rows) == ROW_IDS
    for rid, r in rows.items():
        if r["skipped"]:
            assert rid == "4" and "not available" in r["skipped"]  # static model: no transformer
            continue
        assert isinstance(r["ours"], float) and isinstance(r["baseline"], float), rid
        assert r["ratio"] is not None and r["unit"], rid
        assert r["met"] in (True, False) if r["target"] is not None else r["met"] is None
    assert rows["1a"]["details"]["accuracy_equal_within_0.1_point"] is True
    assert rows["1b"]["details"]["accuracy_equal_within_0.1_point"] is True
    assert rows["2a"]["details"]["recall_at_10"] > 0.9
    text = table.read_text()
    assert text.startswith("| # | measurement | ours | baseline | ratio | target | notes |")
    assert all(f"| {rid} |" in text for rid in ROW_IDS)
    assert "met" in text and proc.stdout.count("\n| ") >= len(ROW_IDS)
