"""Nearest neighbours and analogies over an EmbeddingSpace, with gensim's semantics.

- Nearest (cosine) ranks rows by cos(row, query); a token query leaves itself out by default.
  This is gensim's `most_similar(positive=[token])` and `similar_by_vector(vector)`.
- 3CosAdd is gensim's `most_similar(positive, negative)`: the mean of the inputs' unit vectors
  (weights +1 / -1, raw vectors used as given), normalised, then cosine.
- 3CosMul is gensim's `most_similar_cosmul` (Levy & Goldberg 2014, eq. 4, with cosines shifted to
  [0, 1]): prod_pos((1 + cos) / 2) / (prod_neg((1 + cos) / 2) + 1e-6).
- Every input token is left out of analogy answers unless the caller keeps them.
Special tokens are never searchable (see index.py), so they never appear in answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import exact_analogy
from .cancellation import checkpoint
from .errors import InvalidArgument
from .index import COSINE
from .spaces import EmbeddingSpace

COS_ADD = "3cosadd"
COS_MUL = "3cosmul"
METHODS = (COS_ADD, COS_MUL)
_COSMUL_EPS = 1e-6
# Queries per matrix product in exact 3CosMul: bounds the (rows x terms) score block.
_COSMUL_CHUNK = 128


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    metric: str = COSINE
    exact: bool = False
    whole_words_only: bool = False
    restrict_vocab: int = 0
    ef_search: int = 0


@dataclass(frozen=True)
class Term:
    """One input: a row of E (id set) or a raw vector (id None)."""

    vector: np.ndarray  # (d_model,) float32, as stored or as sent
    id: int | None = None


@dataclass(frozen=True)
class AnalogyQuery:
    positive: tuple[Term, ...]
    negative: tuple[Term, ...]

    def input_ids(self) -> set[int]:
        return {t.id for t in (*self.positive, *self.negative) if t.id is not None}


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or not np.isfinite(norm):
        raise InvalidArgument(f"{what} has zero length, so it has no direction to compare")
    return (v / norm).astype(np.float32)


def _gensim_term(t: Term) -> np.ndarray:
    # gensim normalises keys it looks up but uses raw vectors exactly as given.
    return _unit(t.vector, "a query vector") if t.id is not None else t.vector.astype(np.float32)


def _search_kwargs(opts: SearchOptions, exclude: list[set[int]] | None) -> dict[str, Any]:
    return {
        "metric": opts.metric,
        "exact": opts.exact,
        "whole_words_only": opts.whole_words_only,
        "restrict_vocab": opts.restrict_vocab,
        "exclude": exclude,
        "ef_search": opts.ef_search,
    }


def _exclusions(terms: list[Term], include_query: bool) -> list[set[int]] | None:
    return None if include_query else [{t.id} if t.id is not None else set() for t in terms]


def nearest_from_table(
    space: EmbeddingSpace, terms: list[Term], opts: SearchOptions, *, include_query: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    """nearest()'s answer from the neighbour table when every term is a row of E and the table
    holds exactly that answer (index.search_rows), else None. No search runs: a caller may
    answer from here without queueing for a batch."""
    if not all(t.id is not None for t in terms):
        return None
    rows = np.fromiter((t.id for t in terms), dtype=np.int64, count=len(terms))
    exclude = _exclusions(terms, include_query)
    return space.index.search_rows(rows, opts.k, **_search_kwargs(opts, exclude))


def nearest(
    space: EmbeddingSpace, terms: list[Term], opts: SearchOptions, *, include_query: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k): the closest rows to each term."""
    hit = nearest_from_table(space, terms, opts, include_query=include_query)
    if hit is not None:
        return hit
    if opts.metric == COSINE:
        q = np.stack([_unit(t.vector, "query vector") for t in terms])
    else:
        q = np.stack([t.vector for t in terms]).astype(np.float32)
    exclude = _exclusions(terms, include_query)
    return space.index.search(q, opts.k, **_search_kwargs(opts, exclude))


def analogy(
    space: EmbeddingSpace,
    queries: list[AnalogyQuery],
    opts: SearchOptions,
    *,
    method: str = COS_ADD,
    include_inputs: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k), for a batch of analogies."""
    if opts.metric != COSINE:
        raise InvalidArgument("Analogy ranks by cosine only; leave metric unset or use COSINE")
    if method not in METHODS:
        raise InvalidArgument(f"method must be one of {METHODS}, got {method!r}")
    for i, q in enumerate(queries):
        if not q.positive and not q.negative:
            raise InvalidArgument(f"analogy {i} has no positive and no negative terms")
        if method == COS_MUL and not q.positive:
            raise InvalidArgument(
                f"3CosMul needs at least one positive term (analogy {i} has none)"
            )
    if opts.exact:
        # Exact batches go through each distinct term's cosine column (exact_analogy.py);
        # 3CosAdd batches without shared words are cheaper as one product with the means.
        terms, term_queries = _term_table(space, queries, include_inputs)
        if method == COS_MUL or exact_analogy.worth_it(len(queries), len(terms)):
            rows, xb = space.index.exact_view(COSINE, opts.whole_words_only, opts.restrict_vocab)
            return exact_analogy.search(xb, rows, terms, term_queries, opts.k, method)
    exclude = None if include_inputs else [q.input_ids() for q in queries]
    means = np.stack([cosadd_vector(q, i) for i, q in enumerate(queries)])
    if method == COS_ADD:
        return space.index.search(
            means,
            opts.k,
            exact=opts.exact,
            whole_words_only=opts.whole_words_only,
            restrict_vocab=opts.restrict_vocab,
            exclude=exclude,
            ef_search=opts.ef_search,
        )
    return _cosmul_reranked(space, queries, means, opts, exclude)


def cosadd_vector(q: AnalogyQuery, i: int = 0) -> np.ndarray:
    """gensim's weighted mean of unit vectors (+1 positive, -1 negative), normalised."""
    terms = [(_gensim_term(t), 1.0) for t in q.positive] + [
        (_gensim_term(t), -1.0) for t in q.negative
    ]
    mean = sum(w * v for v, w in terms) / sum(abs(w) for _, w in terms)
    return _unit(np.asarray(mean, dtype=np.float32), f"analogy {i}'s combined vector")


def _cosmul_scores(cos: np.ndarray, n_pos: int) -> np.ndarray:
    """cos: (..., n_terms) with positives first -> 3CosMul scores (...)."""
    shifted = (1.0 + cos) / 2.0
    pos = np.prod(shifted[..., :n_pos], axis=-1)
    neg = np.prod(shifted[..., n_pos:], axis=-1)
    return (pos / (neg + _COSMUL_EPS)).astype(np.float32)


def _terms(q: AnalogyQuery) -> np.ndarray:
    return np.stack([_gensim_term(t) for t in (*q.positive, *q.negative)])  # (n_terms, d_model)


def _term_table(
    space: EmbeddingSpace, queries: list[AnalogyQuery], include_inputs: bool
) -> tuple[np.ndarray, list[exact_analogy.TermQuery]]:
    """Distinct terms as gensim uses them (unit rows of E, raw vectors as given), and each
    analogy as indices into them: a batch that shares words computes each word's cosines once."""
    slot: dict[int, int] = {}
    vectors: list[np.ndarray] = []

    def index_of(t: Term) -> int:
        if t.id is None:
            vectors.append(t.vector.astype(np.float32))
            return len(vectors) - 1
        j = slot.get(t.id)
        if j is None:
            j = slot[t.id] = len(vectors)
            vectors.append(space.index.unit[t.id])
        return j

    out = [
        exact_analogy.TermQuery(
            tuple(index_of(t) for t in q.positive),
            tuple(index_of(t) for t in q.negative),
            () if include_inputs else tuple(q.input_ids()),
        )
        for q in queries
    ]
    if slot and not (space.index.norms[list(slot)] > 0).all():
        raise InvalidArgument("a query vector has zero length, so it has no direction to compare")
    return np.stack(vectors).astype(np.float32, copy=False), out


def _cosmul_reranked(
    space: EmbeddingSpace,
    queries: list[AnalogyQuery],
    means: np.ndarray,
    opts: SearchOptions,
    exclude: list[set[int]] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate 3CosMul: HNSW candidates around the 3CosAdd point, re-ranked exactly.

    3CosMul and 3CosAdd agree on where the answer lies (close to every positive term, far from
    the negatives); a wide candidate list around the 3CosAdd point holds the 3CosMul top k.
    """
    n_candidates = max(10 * opts.k, 100)
    _, cand = space.index.search(
        means,
        n_candidates,
        exact=False,
        whole_words_only=opts.whole_words_only,
        restrict_vocab=opts.restrict_vocab,
        exclude=exclude,
        ef_search=max(opts.ef_search, n_candidates),
    )
    out_s = np.full((len(queries), opts.k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), opts.k), -1, dtype=np.int64)
    for j, q in enumerate(queries):
        if j % _COSMUL_CHUNK == 0:
            checkpoint()
        ids = cand[j][cand[j] >= 0]
        if len(ids) == 0:
            continue
        cos = space.index.unit[ids] @ _terms(q).T  # (n_candidates, n_terms)
        scores = _cosmul_scores(cos, len(q.positive))
        order = np.argsort(-scores, kind="stable")[: opts.k]
        out_s[j, : len(order)] = scores[order]
        out_i[j, : len(order)] = ids[order]
    return out_s, out_i


__all__ = [
    "COS_ADD",
    "COS_MUL",
    "AnalogyQuery",
    "SearchOptions",
    "Term",
    "analogy",
    "cosadd_vector",
    "nearest",
]
