"""Bench results: one row per measurement, our figure next to the baseline's, and the ratio."""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One line of the table.

    `ratio` is always "ours relative to the baseline, higher is better": a speed-up for
    times (baseline / ours), a fraction for rates (ours / baseline). `target` is the least
    ratio the issue asks for (None: report only).
    """

    id: str
    name: str
    ours: float | None = None
    baseline: float | None = None
    unit: str = ""
    baseline_name: str = ""
    ratio: float | None = None
    target: float | None = None
    condition: bool = True  # a side condition of the target (e.g. recall >= 0.98)
    skipped: str = ""  # why the row was not measured
    note: str = ""
    details: dict[str, object] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target and self.condition

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["met"] = self.met
        return _finite(d)


def time_ratio(ours: float, baseline: float) -> float:
    """Speed-up: how many times less time ours took."""
    return baseline / ours if ours > 0 else math.inf


def rate_ratio(ours: float, baseline: float) -> float:
    return ours / baseline if baseline > 0 else math.inf


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0 or 0.01 <= abs(x) < 100000:
        return f"{x:.3g}" if abs(x) < 10 else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}"
    return f"{x:.3g}"


def _ratio(r: Row) -> str:
    if r.ratio is None:
        return "—"
    return f"{r.ratio:.2f}×" if r.ratio < 10 else f"{r.ratio:.0f}×"


def _target(r: Row) -> str:
    if r.target is None:
        return "report"
    verdict = "—" if r.met is None else ("met" if r.met else "NOT met")
    t = f"{r.target:g}×" if r.target >= 1 else f"{100 * r.target:g}%"
    return f"≥ {t}: {verdict}"


def markdown(rows: list[Row]) -> str:
    """The table as Markdown (also readable as plain text)."""
    head = "| # | measurement | ours | baseline | ratio | target | notes |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.id} | {r.name} | — | — | — | {_target(r)} | skipped: {r.skipped} |")
            continue
        unit = f" {r.unit}" if r.unit else ""
        base = f"{_fmt(r.baseline)}{unit}" + (f" ({r.baseline_name})" if r.baseline_name else "")
        lines.append(
            f"| {r.id} | {r.name} | {_fmt(r.ours)}{unit} | {base} | {_ratio(r)} | "
            f"{_target(r)} | {r.note} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def write_json(path: Path, rows: list[Row], meta: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": meta, "rows": [r.to_dict() for r in rows]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _finite(x: object) -> object:
    """JSON has no inf/nan: they become strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
