"""Row 7: a synthetic N x 256 matrix (1,000,000 rows by default) under flat, HNSW and IVF-PQ.

The data are clustered like real embeddings (unit vectors around 1,000 random centres), not
uniform noise, on which no approximate index does well. Queries are fresh points from the same
distribution; recall@10 is against exact search. Building runs on every core; single-query
latency is measured with one FAISS thread (on 2 cores, OpenMP fork/join for one query costs
more than it saves). An HNSW build that would not finish within its time budget stops early:
recall and latency are then measured over the rows it holds, and the full build time is
extrapolated linearly from the measured insertion rate (a lower bound: insertion slows down
slowly, about with log N, as the graph grows).
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from .procs import rss_bytes
from .table import Row, time_ratio

D = 256
N_QUERIES = 200
K = 10
_ADD_CHUNK = 20000


def synthetic(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(data (n, D), queries (N_QUERIES, D)), unit rows around 1,000 centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, D)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, D), dtype=np.float32)
        for s in range(0, m, 100000):
            e = min(m, s + 100000)
            x = centres[rng.integers(0, len(centres), e - s)]
            x += rng.normal(scale=0.6, size=(e - s, D)).astype(np.float32)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(N_QUERIES)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def _p50_single(index: faiss.Index, q: np.ndarray) -> float:
    """Median seconds of one-query searches, with one FAISS thread."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for i in range(len(q)):
            t0 = time.perf_counter()
            index.search(q[i : i + 1], K)
            times.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times))


def _bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).size)


def run(n: int, *, hnsw_budget_s: float, ivf_nlist: int = 1024, pq_m: int = 32) -> list[Row]:
    t0 = time.perf_counter()
    x, q = synthetic(n)
    gen_s = time.perf_counter() - t0
    mib = 1024 * 1024
    rows: list[Row] = []

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(D)
    flat.add(x)
    flat_build = time.perf_counter() - t0
    _, truth = flat.search(q, K)
    flat_p50 = _p50_single(flat, q[:50])
    flat_bytes = int(flat.ntotal) * D * 4
    del flat
    rows.append(
        Row(
            "7a",
            f"scale {n:,} × {D}: flat (exact), p50 one-query latency",
            flat_p50 * 1000,
            flat_p50 * 1000,
            "ms",
            "flat",
            1.0,
            note=f"build {flat_build:.1f}s, {flat_bytes / mib:.0f} MiB, recall@10 1.000",
            details={"build_s": flat_build, "bytes": flat_bytes, "recall_at_10": 1.0},
        )
    )

    # HNSW, with faiss's default efConstruction=40 (200 would take several times longer here).
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    added = 0
    while added < n and time.perf_counter() - t0 < hnsw_budget_s:
        hnsw.add(x[added : added + _ADD_CHUNK])
        added = min(n, added + _ADD_CHUNK)
    built_s = time.perf_counter() - t0
    rate = added / built_s
    full_s = built_s if added == n else n / rate
    hnsw.hnsw.efSearch = 128
    if added == n:
        hnsw_truth = truth
    else:  # exact answers over the rows the partial graph holds
        part = faiss.IndexFlatIP(D)
        part.add(x[:added])
        _, hnsw_truth = part.search(q, K)
        del part
    _, found = hnsw.search(q, K)
    hnsw_recall = _recall(found, hnsw_truth)
    hnsw_p50 = _p50_single(hnsw, q[:100])
    hnsw_bytes = _bytes(hnsw) * n // added
    del hnsw
    partial = (
        ""
        if added == n
        else (
            f"; stopped at {added:,} rows after {built_s:.0f}s ({rate:,.0f} rows/s): full build "
            f"extrapolated ≥ {full_s / 60:.0f} min, recall/latency over the {added:,} rows"
        )
    )
    rows.append(
        Row(
            "7b",
            f"scale {n:,} × {D}: HNSW32 (efC 40, efSearch 128), p50 one-query latency",
            hnsw_p50 * 1000,
            flat_p50 * 1000,
            "ms",
            "flat",
            time_ratio(hnsw_p50, flat_p50),
            note=f"build {full_s:.0f}s{' (extrapolated)' if added < n else ''}, "
            f"{hnsw_bytes / mib:.0f} MiB, recall@10 {hnsw_recall:.3f}{partial}",
            details={
                "build_s": full_s,
                "measured_build_s": built_s,
                "rows_built": added,
                "rows_per_s": rate,
                "bytes": hnsw_bytes,
                "recall_at_10": hnsw_recall,
            },
        )
    )

    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(D)
    ivf = faiss.IndexIVFPQ(quantizer, D, ivf_nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    train = x[np.random.default_rng(1).choice(n, size=min(n, 40 * ivf_nlist), replace=False)]
    ivf.train(train)
    for s in range(0, n, 100000):
        ivf.add(x[s : s + 100000])
    ivf_build = time.perf_counter() - t0
    ivf.nprobe = 16
    _, found = ivf.search(q, K)
    ivf_recall = _recall(found, truth)
    ivf_p50 = _p50_single(ivf, q[:100])
    ivf_bytes = _bytes(ivf)
    del ivf, x
    rows.append(
        Row(
            "7c",
            f"scale {n:,} × {D}: IVF{ivf_nlist},PQ{pq_m} (nprobe 16), p50 one-query latency",
            ivf_p50 * 1000,
            flat_p50 * 1000,
            "ms",
            "flat",
            time_ratio(ivf_p50, flat_p50),
            note=f"build {ivf_build:.0f}s (train on {len(train):,}), {ivf_bytes / mib:.0f} MiB, "
            f"recall@10 {ivf_recall:.3f}",
            details={
                "build_s": ivf_build,
                "bytes": ivf_bytes,
                "recall_at_10": ivf_recall,
                "data_generation_s": gen_s,
                "process_rss_after": rss_bytes_self(),
            },
        )
    )
    return rows


def rss_bytes_self() -> int:
    import os

    return rss_bytes(os.getpid())
