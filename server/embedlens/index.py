"""FAISS wrapper: the exact and approximate search structures over E.

Search returns `(scores, ids)`, each `(n_queries, k)`, best first; a row with fewer than k
answers is padded with id -1 and score -inf. Ids are rows of E.

- Exact search is brute force with BLAS (`faiss.knn`) over a contiguous matrix holding only the
  rows that may be answered (special tokens are never searchable), so no post-filtering can
  leave a query short of k answers. `restrict_vocab` is a prefix of that matrix (ids increase
  along it), so it costs nothing.
- Approximate search is an HNSW graph over the same rows (unit vectors for cosine, raw rows for
  dot product), built once and cached on disk keyed by a hash of its content and parameters.
  Extra filters (whole words only, restrict_vocab) go in as a FAISS ID selector, so the graph
  search itself skips them instead of returning fewer than k.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from . import neighbors
from .cancellation import checkpoint
from .errors import InvalidArgument
from .neighbors import NeighborTable

log = logging.getLogger(__name__)

COSINE = "cosine"
DOT = "dot"
METRICS = (COSINE, DOT)
_BUILD_CHUNK = 4096
_BLAS_MIN_QUERIES = 20  # exact searches of this many queries or more use one matrix product
_HNSW_PARALLEL_MIN = 8  # HNSW searches of this many queries or more use every core
# Queries per search call: between chunks, work for a caller that has gone away stops.
_SEARCH_CHUNK = 512


def as_queries(x: np.ndarray, d: int) -> np.ndarray:
    """Queries as a C-contiguous float32 (n, d) array, checked at the boundary."""
    q = np.ascontiguousarray(x, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != d:
        raise InvalidArgument(f"query vectors must have dimension {d}, got shape {tuple(x.shape)}")
    if not np.isfinite(q).all():
        raise InvalidArgument("query vectors must be finite (no NaN or Inf)")
    return q


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True).astype(np.float32)
    return np.divide(x, norms, out=np.zeros_like(x, dtype=np.float32), where=norms > 0)


# efSearch values tried, smallest first, when the default is tuned to a recall target.
EF_LADDER = (16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TUNE_PROBES = 500
TUNE_K = 10


@dataclass(frozen=True)
class HnswParams:
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 0  # 0: the smallest of EF_LADDER whose measured recall@10 >= target_recall
    target_recall: float = 0.99


@dataclass(frozen=True)
class Tuning:
    """The default efSearch of one metric's graph and the recall@10 measured with it."""

    ef_search: int
    recall: float
    probes: int
    tuned: bool  # False: the efSearch was configured, recall only measured


class VectorIndex:
    """Exact and HNSW search over the searchable rows of a matrix."""

    def __init__(
        self,
        matrix: np.ndarray,
        searchable: np.ndarray,
        whole_words: np.ndarray,
        *,
        params: HnswParams | None = None,
        neighbor_table_k: int = 0,
        neighbor_table_max_rows: int = 100_000,
        cache_dir: Path | None = None,
        progress: bool = True,
        name: str = "",
    ) -> None:
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
        self.name = name
        self.d = int(matrix.shape[1])
        self.n_total = int(matrix.shape[0])
        self.params = params or HnswParams()
        self.cache_dir = cache_dir
        self.progress = progress
        self.raw = matrix
        norms = np.linalg.norm(matrix, axis=1).astype(np.float32)
        self.norms = norms
        self.unit = unit_rows(np.asarray(matrix, dtype=np.float32))
        # The rows that may appear in answers, in increasing id order.
        self.rows = np.flatnonzero(searchable).astype(np.int64)
        self._word_rows = np.flatnonzero(searchable & whole_words).astype(np.int64)
        self._word_local = np.flatnonzero(whole_words[self.rows])
        self._exact: dict[tuple[str, bool], np.ndarray] = {}
        self._hnsw: dict[str, faiss.Index] = {}
        self._plain_params: dict[int, Any] = {}  # SearchParametersHNSW without a selector
        self.tuning: dict[str, Tuning] = {}
        # Exact neighbours of every row, for token/id queries (neighbors.py); 0: none.
        self.table_k = neighbor_table_k if self.n_total <= neighbor_table_max_rows else 0
        self.table: NeighborTable | None = None
        self._lock = threading.Lock()
        self.content_hash = hashlib.sha256(
            np.ascontiguousarray(matrix[self.rows], dtype=np.float32).tobytes()
        ).hexdigest()[:16]
        self.from_cache = False
        self.exact_description = "brute force inner product (faiss.knn, BLAS)"
        # FAISS 1.15's default threshold (128000) keeps request-sized batches off its BLAS
        # (matrix-matrix) path, so each query costs its own pass over E: measured 7 ms per
        # query for 32 queries, 1.2 ms with the threshold at 20 (docs/performance.md).
        faiss.cvar.distance_compute_blas_threshold = _BLAS_MIN_QUERIES

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def approximate_description(self) -> str:
        p = self.params
        t = self.tuning.get(COSINE)
        if t is None:
            ef = f"efSearch={p.ef_search or EF_LADDER[-1]}"
        else:
            how = f"tuned for recall@10 >= {p.target_recall:g}" if t.tuned else "configured"
            ef = f"efSearch={t.ef_search} ({how}; measured {t.recall:.3f} on {t.probes} probes)"
        return f"HNSW{p.m},Flat efConstruction={p.ef_construction} {ef}"

    def default_ef(self, metric: str) -> int:
        """The efSearch a search without its own uses: tuned or configured, else the largest
        of the ladder (a graph not tuned yet is searched carefully, never sloppily)."""
        t = self.tuning.get(metric)
        if t is not None:
            return t.ef_search
        return self.params.ef_search or EF_LADDER[-1]

    # ---- building -------------------------------------------------------------------------

    def build(self) -> None:
        """Build (or load from the cache) what the default cosine search needs."""
        self._exact_matrix(COSINE, False)
        self._hnsw_index(COSINE)
        if self.table_k:
            whole = hashlib.sha256(np.ascontiguousarray(self.raw, dtype=np.float32).tobytes())
            self.table = neighbors.load_or_build(
                self.unit,
                self.rows,
                self._exact_matrix(COSINE, False),
                self.table_k,
                path=neighbors.table_path(
                    self.cache_dir, whole.hexdigest()[:16], self.table_k, self.n_total
                ),
                progress=self.progress,
                name=self.name,
            )

    def _exact_matrix(self, metric: str, words_only: bool) -> np.ndarray:
        key = (metric, words_only)
        m = self._exact.get(key)
        if m is None:
            src = self.unit if metric == COSINE else self.raw
            rows = self._word_rows if words_only else self.rows
            m = np.ascontiguousarray(src[rows], dtype=np.float32)
            self._exact[key] = m
        return m

    def build_in_background(self, metric: str) -> threading.Thread:
        """Build (or load) another metric's HNSW index without blocking requests.

        Until it is ready, approximate searches with that metric are answered exactly:
        slower, never wrong, and no request waits for a build.
        """
        t = threading.Thread(
            target=self._hnsw_index, args=(metric,), name=f"hnsw-{metric}", daemon=True
        )
        t.start()
        return t

    def approximate_ready(self, metric: str) -> bool:
        return metric in self._hnsw

    def _hnsw_index(self, metric: str) -> faiss.Index:
        index = self._hnsw.get(metric)
        if index is not None:
            return index
        with self._lock:
            index = self._hnsw.get(metric)
            if index is None:
                index = self._load_or_build_hnsw(metric)
                self.tuning[metric] = self._tune(metric, index)
                self._hnsw[metric] = index
        return index

    def _tune(self, metric: str, index: faiss.Index) -> Tuning:
        """Measure recall@10 against exact search on a fixed sample of the graph's own rows and
        pick the smallest efSearch of EF_LADDER that reaches the target (or measure the
        configured one). A row is trivially its own nearest neighbour, so it is left out."""
        t0 = time.perf_counter()
        data = self._exact_matrix(metric, False)
        n = min(TUNE_PROBES, len(data))
        if n == 0:
            return Tuning(self.params.ef_search or EF_LADDER[0], 1.0, 0, False)
        local = np.sort(np.random.default_rng(0).choice(len(data), size=n, replace=False))
        q = data[local]
        k = min(TUNE_K + 1, len(data))
        with _threads(q, True):
            _, truth = faiss.knn(q, data, k, metric=faiss.METRIC_INNER_PRODUCT)

        def recall(ef: int) -> float:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(ef, k)
            _, got = index.search(q, k, params=params)
            hits, total = 0, 0
            for own, t, g in zip(local.tolist(), truth.tolist(), got.tolist()):
                want = [i for i in t if i != own][:TUNE_K]
                hits += len(set(want) & {i for i in g if i != own})
                total += len(want)
            return hits / max(total, 1)

        configured = self.params.ef_search
        if configured:
            result = Tuning(configured, recall(configured), n, False)
        else:
            result = Tuning(EF_LADDER[-1], 0.0, n, True)
            for ef in EF_LADDER:
                r = recall(ef)
                result = Tuning(ef, r, n, True)
                if r >= self.params.target_recall:
                    break
            else:
                log.warning(
                    "%s: %s HNSW reaches recall@10 %.3f at most (efSearch %d), under the target "
                    "%.3f; raise --hnsw-m or --hnsw-ef-construction",
                    self.name,
                    metric,
                    result.recall,
                    result.ef_search,
                    self.params.target_recall,
                )
        log.info(
            "%s: %s HNSW efSearch %d (%s): recall@10 %.4f on %d probes, in %.2fs",
            self.name,
            metric,
            result.ef_search,
            f"tuned for {self.params.target_recall:g}" if result.tuned else "configured",
            result.recall,
            n,
            time.perf_counter() - t0,
        )
        return result

    def _cache_path(self, metric: str) -> Path | None:
        if self.cache_dir is None:
            return None
        p = self.params
        key = f"{self.content_hash}-{metric}-hnsw{p.m}-efc{p.ef_construction}-n{self.size}"
        return self.cache_dir / "indexes" / f"{key}.faiss"

    def _load_or_build_hnsw(self, metric: str) -> faiss.Index:
        path = self._cache_path(metric)
        if path is not None and path.exists():
            t0 = time.perf_counter()
            try:
                index = faiss.read_index(str(path))
                if index.ntotal == self.size and index.d == self.d:
                    log.info(
                        "%s: loaded %s HNSW index from %s in %.2fs",
                        self.name,
                        metric,
                        path,
                        time.perf_counter() - t0,
                    )
                    self.from_cache = True
                    return index
                log.warning("%s: cached index %s does not match; rebuilding", self.name, path)
            except RuntimeError as exc:  # a truncated or foreign file: rebuild it
                log.warning(
                    "%s: cannot read cached index %s (%s); rebuilding", self.name, path, exc
                )
        t0 = time.perf_counter()
        faiss_metric = faiss.METRIC_INNER_PRODUCT
        index = faiss.IndexHNSWFlat(self.d, self.params.m, faiss_metric)
        index.hnsw.efConstruction = self.params.ef_construction
        data = self._exact_matrix(metric, False)
        bar = tqdm(
            total=len(data),
            desc=f"{self.name}: HNSW ({metric})",
            unit="vec",
            disable=not self.progress,
            leave=False,
        )
        for start in range(0, len(data), _BUILD_CHUNK):
            chunk = data[start : start + _BUILD_CHUNK]
            index.add(chunk)
            bar.update(len(chunk))
        bar.close()
        log.info(
            "%s: built %s HNSW index over %d vectors in %.1fs",
            self.name,
            metric,
            self.size,
            time.perf_counter() - t0,
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            faiss.write_index(index, str(tmp))
            os.replace(tmp, path)  # atomic: two replicas starting together never see half a file
        return index

    # ---- search ---------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        metric: str = COSINE,
        exact: bool = False,
        whole_words_only: bool = False,
        restrict_vocab: int = 0,
        exclude: list[set[int]] | None = None,
        ef_search: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows for each query, leaving out each query's `exclude` ids.

        For the cosine metric the queries must already be unit vectors (the caller decides how
        to normalise, e.g. gensim's mean of unit vectors).
        """
        if metric not in METRICS:
            raise InvalidArgument(f"metric must be one of {METRICS}, got {metric!r}")
        q = as_queries(queries, self.d)
        if len(q) > _SEARCH_CHUNK:
            parts = [
                self.search(
                    q[i : i + _SEARCH_CHUNK],
                    k,
                    metric=metric,
                    exact=exact,
                    whole_words_only=whole_words_only,
                    restrict_vocab=restrict_vocab,
                    exclude=exclude[i : i + _SEARCH_CHUNK] if exclude else None,
                    ef_search=ef_search,
                )
                for i in range(0, len(q), _SEARCH_CHUNK)
            ]
            return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
        checkpoint()
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        kk = k + extra
        use_exact = exact or (metric != COSINE and not self.approximate_ready(metric))
        with _threads(q, use_exact):
            if use_exact:
                scores, ids = self._search_exact(q, kk, metric, whole_words_only, restrict_vocab)
            else:
                scores, ids = self._search_hnsw(
                    q, kk, metric, whole_words_only, restrict_vocab, ef_search
                )
        return _drop_excluded(scores, ids, exclude, k) if exclude else (scores[:, :k], ids[:, :k])

    def search_rows(
        self,
        rows: np.ndarray,
        k: int,
        *,
        metric: str = COSINE,
        exact: bool = False,
        whole_words_only: bool = False,
        restrict_vocab: int = 0,
        exclude: list[set[int]] | None = None,
        ef_search: int = 0,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Queries that are rows of the matrix, answered from the neighbour table; None where
        the table cannot give exactly what search() would (neighbors.py says when)."""
        t = self.table
        if (
            t is None
            or metric != COSINE
            or whole_words_only
            or 0 < restrict_vocab < self.n_total
            or (ef_search and not exact)
        ):
            return None
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        if k + extra > t.k and t.k < self.size:
            return None
        if not (self.norms[rows] > 0).all():  # a zero row has no direction: search says so
            return None
        # only the first k + |excluded| columns can make the answer
        width = min(k + extra, t.k)
        scores, ids = t.scores[rows, :width], t.ids[rows, :width]
        if exclude:
            return _drop_excluded(scores, ids, exclude, k)
        return _pad(scores[:, :k], ids[:, :k], k)

    def exact_view(
        self, metric: str, words_only: bool, restrict_vocab: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, matrix) of the rows a search with these filters ranks; no copy is made."""
        xb = self._exact_matrix(metric, words_only)
        rows = self._word_rows if words_only else self.rows
        if restrict_vocab:
            cut = int(np.searchsorted(rows, restrict_vocab))
            xb, rows = xb[:cut], rows[:cut]
        return rows, xb

    def _search_exact(
        self, q: np.ndarray, k: int, metric: str, words_only: bool, restrict_vocab: int
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, xb = self.exact_view(metric, words_only, restrict_vocab)
        kk = min(k, len(xb))
        if kk == 0:
            return _empty(len(q), k)
        scores, local = faiss.knn(q, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        return _pad(scores, np.where(local >= 0, rows[np.maximum(local, 0)], -1), k)

    def _search_hnsw(
        self,
        q: np.ndarray,
        k: int,
        metric: str,
        words_only: bool,
        restrict_vocab: int,
        ef_search: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        index = self._hnsw_index(metric)
        kk = min(k, self.size)
        # A tuned efSearch is for k = 10; larger k get a beam of at least twice k.
        ef = max(ef_search, kk) if ef_search else max(self.default_ef(metric), 2 * kk)
        bitmap = None
        params = self._plain_params.get(ef)
        if params is None or words_only or restrict_vocab:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = ef
        if not (words_only or restrict_vocab):
            # No selector: searches only read it, so one object per efSearch serves all threads.
            self._plain_params.setdefault(ef, params)
        else:
            allowed = np.zeros(self.size, dtype=bool)
            allowed[self._word_local if words_only else slice(None)] = True
            if restrict_vocab:
                allowed[int(np.searchsorted(self.rows, restrict_vocab)) :] = False
            bitmap = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap))
        scores, local = index.search(q, kk, params=params)
        del bitmap  # the selector points into it: keep it alive until the search is done
        ids = np.where(local >= 0, self.rows[np.maximum(local, 0)], -1)
        scores = np.where(local >= 0, scores, -np.inf).astype(np.float32)
        return _pad(scores, ids, k)


@contextmanager
def _threads(q: np.ndarray, exact: bool) -> Iterator[None]:
    """FAISS's OpenMP threads for one search, set in the calling thread only.

    Measured on 2 cores (docs/performance.md): exact search (BLAS) is faster with one thread at
    every batch size, e.g. 32 queries 0.8 ms each against 1.8 ms with two; an OpenMP fork/join
    costs more than the second core gives back, and concurrent requests use that core anyway.
    HNSW parallelises over queries, so batches of 8 or more use every core (32 queries: 0.24
    against 0.49 ms each); smaller ones run on one. libgomp keeps the thread count per OS
    thread, so index builds and other requests are not affected.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if exact or len(q) < _HNSW_PARALLEL_MIN else before)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] >= k:
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)
    s, i = _empty(len(scores), k)
    s[:, : scores.shape[1]] = scores
    i[:, : ids.shape[1]] = ids
    return s, i


def _drop_excluded(
    scores: np.ndarray, ids: np.ndarray, exclude: list[set[int]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k answers of each row that are not in its `exclude` set."""
    n = len(ids)
    if n <= 4:  # a request or two: a loop beats the vectorised form's fixed costs
        out_s, out_i = _empty(n, k)
        for r, banned in enumerate(exclude):
            keep = [j for j, i in enumerate(ids[r].tolist()) if i >= 0 and i not in banned][:k]
            out_s[r, : len(keep)] = scores[r, keep]
            out_i[r, : len(keep)] = ids[r, keep]
        return out_s, out_i
    m = max(1, max((len(e) for e in exclude), default=0))
    banned_ids = np.full((n, m), -2, dtype=np.int64)
    for r, e in enumerate(exclude):
        if e:
            banned_ids[r, : len(e)] = list(e)
    keep = (ids >= 0) & ~(ids[:, :, None] == banned_ids[:, None, :]).any(axis=2)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept answers first, in rank order
    kept = np.take_along_axis(keep, order, axis=1)
    out_i = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
    out_s = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
    return _pad(out_s.astype(np.float32), out_i.astype(np.int64), k)
