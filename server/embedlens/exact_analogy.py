"""Exact 3CosAdd / 3CosMul for a batch of analogies, computed from per-term cosine columns.

An analogy's score for a row x depends on x only through the cosines cos(x, t) of x with each
input term t. A batch such as an analogy test set uses a few hundred distinct words across
thousands of questions, so this module

1. computes the cosine column of every *distinct* term once, with one BLAS matrix product
   (n_terms x n_rows) instead of one per question (n_questions x n_rows x d_model FLOPs);
2. groups questions that share every term but the last positive one (the "head": b - a in
   b - a + c, shared by every question of a relation), folds the head's columns into one row;
3. per question adds (3CosAdd) or multiplies (3CosMul) the head row with the tail's column:
   one vectorised pass over the rows instead of a matrix product;
4. takes the top k with a two-level selection (the maximum of each of width/32 blocks of 32
   rows, then only the k best blocks), which is exact and several times cheaper than a full top-k;
5. recomputes the k winners' scores with the reference formulas, so reported scores are those
   of gensim's `most_similar` / `most_similar_cosmul` to float32 rounding.

3CosAdd ranks by sum_j w_j cos(x, t_j), which orders rows exactly as gensim's
cos(x, normalised weighted mean) does (the two differ by a positive factor per question).
3CosMul ranks by prod_pos s_j / (prod_neg s_j + eps) with s = (1 + cos) / 2, rewritten as
(head factor) x s_tail. Inputs are excluded before the top k is taken, as in gensim.
Numbers stay numpy (single-threaded elementwise work): on a busy 2-core machine OpenMP-threaded
elementwise kernels lose more to barrier spinning than they gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cancellation import checkpoint
from .errors import InvalidArgument

COSMUL_EPS = 1e-6
_BLOCK = 32  # rows per block in the two-level top-k
_SUB = 64  # questions per vectorised pass: (64 x n_rows) float32 stays in the L2/L3 caches
# Most bytes the (distinct terms x rows) cosine table may take; larger batches are split.
_TABLE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TermQuery:
    """One analogy as indices into a term table: positives first, then negatives."""

    pos: tuple[int, ...]
    neg: tuple[int, ...]
    exclude: tuple[int, ...] = ()  # ids (rows of E) that must not be answered


def worth_it(n_queries: int, n_distinct_terms: int) -> bool:
    """True when the term-column route costs less than one matrix product per question."""
    return n_distinct_terms * 2 <= n_queries


def search(
    xb: np.ndarray,
    rows: np.ndarray,
    terms: np.ndarray,
    queries: list[TermQuery],
    k: int,
    method: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k), best first; padded with -inf / -1.

    xb: (n_rows, d) unit rows that may be answered, ids `rows` (increasing); terms: (n_terms, d)
    the term vectors as gensim uses them (unit rows of E, raw vectors as given); method
    '3cosadd' or '3cosmul'.
    """
    n = len(queries)
    shapes = _by_shape(queries)
    means = cosadd_means(terms, shapes) if method != "3cosmul" else None
    out_i = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or len(xb) == 0:
        return np.full((n, k), -np.inf, dtype=np.float32), out_i
    excluded = _local_excludes(rows, queries)
    max_terms = max(8, _TABLE_BYTES // (4 * (len(xb) + _BLOCK)))
    for idx in _chunks(queries, max_terms):
        out_i[idx] = _search_chunk(xb, rows, terms, queries, idx, excluded, k, method)
    return _rescore(xb, rows, terms, shapes, out_i, means)


def cosadd_means(terms: np.ndarray, shapes: dict[tuple[int, int], _Shape]) -> np.ndarray:
    """gensim's normalised weighted mean (+1 positive, -1 negative) of each question's terms."""
    n = sum(len(sh.idx) for sh in shapes.values())
    means = np.empty((n, terms.shape[1]), dtype=np.float32)
    for (n_pos, n_neg), sh in shapes.items():
        w = np.array([1.0] * n_pos + [-1.0] * n_neg, dtype=np.float32)
        mean = np.einsum("t,gtd->gd", w, terms[sh.terms]) / np.float32(n_pos + n_neg)
        norm = np.linalg.norm(mean, axis=1)
        if (bad := np.flatnonzero(~(norm > 0))).size:
            raise InvalidArgument(
                f"analogy {int(sh.idx[bad[0]])}'s combined vector has zero length, "
                "so it has no direction to compare"
            )
        means[sh.idx] = mean / norm[:, None]
    return means


@dataclass(frozen=True)
class _Shape:
    """The questions with the same number of positive and negative terms."""

    idx: np.ndarray  # (g,) question numbers
    terms: np.ndarray  # (g, n_pos + n_neg) term indices, positives first


def _by_shape(queries: list[TermQuery]) -> dict[tuple[int, int], _Shape]:
    members: dict[tuple[int, int], list[int]] = {}
    for j, q in enumerate(queries):
        members.setdefault((len(q.pos), len(q.neg)), []).append(j)
    return {
        s: _Shape(
            np.asarray(m, dtype=np.int64),
            np.array([(*queries[j].pos, *queries[j].neg) for j in m], dtype=np.int64).reshape(
                len(m), s[0] + s[1]
            ),
        )
        for s, m in members.items()
    }


def _chunks(queries: list[TermQuery], max_terms: int) -> list[np.ndarray]:
    """Consecutive runs of questions whose distinct terms fit in the cosine table."""
    n_terms = 1 + max((t for q in queries for t in (*q.pos, *q.neg)), default=0)
    if n_terms <= max_terms:
        return [np.arange(len(queries))]
    out: list[np.ndarray] = []
    start, seen = 0, set[int]()
    for j, q in enumerate(queries):
        new = (set(q.pos) | set(q.neg)) - seen
        if seen and len(seen) + len(new) > max_terms:
            out.append(np.arange(start, j))
            start, seen = j, set()
            new = set(q.pos) | set(q.neg)
        seen |= new
    out.append(np.arange(start, len(queries)))
    return out


def _search_chunk(
    xb: np.ndarray,
    rows: np.ndarray,
    terms: np.ndarray,
    queries: list[TermQuery],
    idx: np.ndarray,
    excluded: np.ndarray,
    k: int,
    method: str,
) -> np.ndarray:
    """Ids (len(idx), k) of the best rows for questions `idx`, ranked by the per-term key."""
    n_rows = len(xb)
    width = (n_rows // _BLOCK + 1) * _BLOCK  # whole blocks, and at least one padding column
    chunk = [queries[j] for j in idx]
    used = sorted({t for q in chunk for t in (*q.pos, *q.neg)})
    slot = {t: j for j, t in enumerate(used)}
    cosmul = method == "3cosmul"
    neutral = 1.0 if cosmul else 0.0  # adds / multiplies nothing
    # cos[j]: cosines of term used[j] with every row; the last row is for "no tail term".
    cos = np.full((len(used) + 1, width), neutral, dtype=np.float32)
    np.matmul(terms[used], xb.T, out=cos[: len(used), :n_rows])
    if cosmul:
        cos[: len(used), :n_rows] += 1.0
        cos[: len(used), :n_rows] *= 0.5  # shifted cosines s = (1 + cos) / 2

    # Heads: every term but the last positive one, folded into one row per distinct head.
    head_of: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    q_head = np.empty(len(chunk), dtype=np.int64)
    q_tail = np.empty(len(chunk), dtype=np.int64)
    for j, q in enumerate(chunk):
        pos = tuple(slot[t] for t in q.pos)
        q_head[j] = head_of.setdefault((pos[:-1], tuple(slot[t] for t in q.neg)), len(head_of))
        q_tail[j] = pos[-1] if pos else len(used)
    heads = np.empty((len(head_of), width), dtype=np.float32)
    for (hpos, hneg), h in head_of.items():
        _fold_head(heads[h], cos, hpos, hneg, cosmul)
    heads[:, n_rows:] = -np.inf  # padding never wins

    out_i = np.full((len(chunk), k), -1, dtype=np.int64)
    buf = np.empty((_SUB, width), dtype=np.float32)
    combine = np.multiply if cosmul else np.add
    for n_done, sel in enumerate(_runs(q_head)):
        if n_done % 16 == 0:
            checkpoint()  # stop here if the caller has gone away
        f = buf[: len(sel)]
        np.take(cos, q_tail[sel], axis=0, out=f, mode="clip")  # clip: no buffered copy
        h = q_head[sel]
        if h[0] == h[-1]:  # one head for the whole run: broadcast it
            combine(f, heads[h[0]], out=f)
        else:
            combine(f, heads[h], out=f)
        f[np.arange(len(sel))[:, None], excluded[idx[sel]]] = -np.inf
        top = top_k(f, k, n_rows)
        out_i[sel] = np.where(top >= 0, rows[np.minimum(np.maximum(top, 0), n_rows - 1)], -1)
    return out_i


def _runs(q_head: np.ndarray) -> list[np.ndarray]:
    """Questions in runs of at most _SUB: one run per large head group, small groups merged."""
    order = np.argsort(q_head, kind="stable")
    bounds = np.flatnonzero(np.diff(q_head[order])) + 1
    runs: list[np.ndarray] = []
    small: list[np.ndarray] = []
    for group in np.split(order, bounds):
        if len(group) >= 8:
            runs.extend(group[i : i + _SUB] for i in range(0, len(group), _SUB))
        else:
            small.append(group)
    if small:
        rest = np.concatenate(small)
        runs.extend(rest[i : i + _SUB] for i in range(0, len(rest), _SUB))
    return runs


def _fold_head(
    out: np.ndarray, cos: np.ndarray, pos: tuple[int, ...], neg: tuple[int, ...], cosmul: bool
) -> None:
    """out = sum(pos) - sum(neg) for 3CosAdd, prod(pos) / (prod(neg) + eps) for 3CosMul."""
    if cosmul:
        out[:] = 1.0
        for j in pos:
            out *= cos[j]
        den = np.ones_like(out)
        for j in neg:
            den *= cos[j]
        den += COSMUL_EPS
        out /= den
        return
    out[:] = 0.0
    for j in pos:
        out += cos[j]
    for j in neg:
        out -= cos[j]


def _local_excludes(rows: np.ndarray, queries: list[TermQuery]) -> np.ndarray:
    """(n, m) positions in `rows` of each question's excluded ids, padded with len(rows).

    Ids that are not in `rows` (not searchable under the filters) need no exclusion; they
    point at len(rows) too, which is a padding column in the search.
    """
    m = max((len(q.exclude) for q in queries), default=0)
    out = np.full((len(queries), max(m, 1)), len(rows), dtype=np.int64)
    flat = [(j, i, t) for j, q in enumerate(queries) for i, t in enumerate(q.exclude)]
    if not flat:
        return out
    q_idx, col, ids = (np.array(v, dtype=np.int64) for v in zip(*flat))
    pos = np.minimum(np.searchsorted(rows, ids), len(rows) - 1)
    out[q_idx, col] = np.where(rows[pos] == ids, pos, len(rows))
    return out


def top_k(f: np.ndarray, k: int, n_valid: int) -> np.ndarray:
    """Column indices of the k largest finite values of each row, best first; -1 if fewer.

    Scratch: f is overwritten. Small k: k rounds of a SIMD argmax. Larger k: two levels —
    split the columns into width/32 strided blocks (block b holds columns b, b + width/32, ...,
    so block maxima are 32 contiguous elementwise maxima), keep the k best blocks, then the k
    best of their 32k values. Exact: a block holding one of the k best values has a maximum at
    least the k-th best value, and at most k blocks can.
    """
    n, width = f.shape
    kk = min(k, n_valid)
    out = np.full((n, k), -1, dtype=np.int64)
    if kk <= 0:
        return out
    every = np.arange(n)
    if kk <= 16:
        for r in range(kk):
            best = f.argmax(axis=1)
            out[:, r] = np.where(np.isfinite(f[every, best]), best, -1)
            f[every, best] = -np.inf
        return out
    n_blocks = width // _BLOCK
    if kk * _BLOCK * 4 <= width:
        bmax = f.reshape(n, _BLOCK, n_blocks).max(axis=1)  # (n, n_blocks)
        blocks = np.argpartition(-bmax, kk - 1, axis=1)[:, :kk]
        cols = (blocks[:, :, None] + np.arange(_BLOCK) * n_blocks).reshape(n, -1)
        vals = np.take_along_axis(f, cols, axis=1)
    else:
        cols = np.broadcast_to(np.arange(width), (n, width))
        vals = f
    part = np.argpartition(-vals, kk - 1, axis=1)[:, :kk]
    best_vals = np.take_along_axis(vals, part, axis=1)
    order = np.argsort(-best_vals, axis=1, kind="stable")
    picked = np.take_along_axis(np.take_along_axis(cols, part, axis=1), order, axis=1)
    finite = np.isfinite(np.take_along_axis(best_vals, order, axis=1))
    out[:, :kk] = np.where(finite, picked, -1)
    return out


def _rescore(
    xb: np.ndarray,
    rows: np.ndarray,
    terms: np.ndarray,
    shapes: dict[tuple[int, int], _Shape],
    out_i: np.ndarray,
    means: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference scores of the k winners (gensim's formulas), best first."""
    ok = out_i >= 0
    loc = np.minimum(np.searchsorted(rows, np.maximum(out_i, 0)), len(rows) - 1)
    winners = xb[loc]  # (n, k, d)
    if means is not None:  # 3CosAdd: cosine with the normalised mean
        scores = np.einsum("nkd,nd->nk", winners, means)
    else:
        scores = np.empty(out_i.shape, dtype=np.float32)
        for (n_pos, _), sh in shapes.items():
            cos = np.einsum("gkd,gtd->gkt", winners[sh.idx], terms[sh.terms])
            shifted = (1.0 + cos) / 2.0
            pos = np.prod(shifted[..., :n_pos], axis=-1)
            neg = np.prod(shifted[..., n_pos:], axis=-1)
            scores[sh.idx] = pos / (neg + COSMUL_EPS)
    scores = np.where(ok, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(out_i, order, axis=1)
