"""Row 6: cold and warm start to health SERVING, and resident memory after load."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .procs import rss_bytes, start_embedlens
from .table import Row


def payload_bytes(space: object, cache_dir: Path) -> dict[str, int]:
    """Bytes of what a served model must hold: E, the built index, the transformer weights."""
    matrix = space.matrix  # type: ignore[attr-defined]
    index_files = sum(p.stat().st_size for p in (cache_dir / "indexes").glob("*.faiss"))
    weights = 0
    source = Path(space.source)  # type: ignore[attr-defined]
    if source.is_dir():
        weights = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    return {"E": int(matrix.nbytes), "index": int(index_files), "weights": int(weights)}


def run(
    space: object, work: Path, log_dir: Path, server_args: tuple[str, ...], settle: float = 2.0
) -> tuple[list[Row], Path]:
    """Cold start in an empty cache, then a warm start from it; returns the rows and the cache."""
    cache = work / "startup-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    with start_embedlens(cache, log_dir, name="cold", args=server_args) as cold:
        time.sleep(settle)
        cold_rss = rss_bytes(cold.proc.pid)
    with start_embedlens(cache, log_dir, name="warm", args=server_args) as warm:
        time.sleep(settle)
        warm_rss = rss_bytes(warm.proc.pid)
    sizes = payload_bytes(space, cache)
    total = sum(sizes.values())
    mib = 1024 * 1024
    rows = [
        Row(
            "6a",
            "start-up to health SERVING: warm (cached index) vs cold (index built)",
            warm.ready_seconds,
            cold.ready_seconds,
            "s",
            "cold start, empty cache",
            cold.ready_seconds / warm.ready_seconds if warm.ready_seconds else None,
            note="subprocess `embedlens serve` until grpc.health.v1 says SERVING; the warm "
            "start includes interpreter, torch import and model load",
        ),
        Row(
            "6b",
            "resident memory after load vs bytes of E + index + weights",
            warm_rss / mib,
            total / mib,
            "MiB",
            "E + index + weights",
            total / warm_rss if warm_rss else None,
            note="ratio = payload / RSS (1.0 would mean nothing but the payload); "
            + ", ".join(f"{k} {v / mib:.0f} MiB" for k, v in sizes.items())
            + f"; RSS after a cold start {cold_rss / mib:.0f} MiB",
            details={"payload": sizes, "warm_rss": warm_rss, "cold_rss": cold_rss},
        ),
    ]
    return rows, cache
