"""The gRPC servicer: decode the request, call domain code, encode the reply. Nothing else.

Proto <-> numpy conversion lives in the `decode_*` / `encode_*` functions at the top.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc
from embedlens_client.tensors import from_numpy, to_numpy

from . import __version__
from .batching import Batcher, RunBatch
from .config import CHARS_PER_TOKEN, Limits
from .contextual import ContextualOptions, ContextualText, Prepared, embed_prepared, prepare
from .errors import InvalidArgument, NotFound, ResourceExhausted, quote_list
from .index import COSINE, DOT
from .metrics import Metrics
from .registry import ModelRegistry
from .similarity import (
    COS_ADD,
    COS_MUL,
    AnalogyQuery,
    SearchOptions,
    Term,
    analogy,
    nearest,
    nearest_from_table,
)
from .spaces import EmbeddingSpace, TokenSpan
from .transformer import point_names

DEFAULT_K = 10
MAX_EF_SEARCH = 4096
_METRICS = {pb.METRIC_UNSPECIFIED: COSINE, pb.METRIC_COSINE: COSINE, pb.METRIC_DOT: DOT}
_METHODS = {
    pb.ANALOGY_METHOD_UNSPECIFIED: COS_ADD,
    pb.ANALOGY_METHOD_COS_ADD: COS_ADD,
    pb.ANALOGY_METHOD_COS_MUL: COS_MUL,
}
_POOLINGS = {
    pb.POOLING_UNSPECIFIED: None,
    pb.POOLING_MEAN: "mean",
    pb.POOLING_FIRST: "first",
    pb.POOLING_LAST: "last",
}

# ---- proto -> domain ---------------------------------------------------------------------


def decode_vector(t: pb.Tensor, d_model: int, what: str) -> np.ndarray:
    """A (d_model,) float32 vector from a Tensor; INVALID_ARGUMENT says what was wrong."""
    try:
        arr = to_numpy(t)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    if arr.dtype.kind != "f":
        raise InvalidArgument(f"{what} must be a float tensor, got {arr.dtype}")
    if arr.size != d_model or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[0] != 1):
        raise InvalidArgument(
            f"{what} must have shape ({d_model},) for this model, got {tuple(arr.shape)}"
        )
    vec = arr.reshape(d_model).astype(np.float32)
    if not np.isfinite(vec).all():
        raise InvalidArgument(f"{what} contains NaN or Inf")
    return vec


def decode_terms(space: EmbeddingSpace, queries: list[pb.Query], what: str) -> list[Term]:
    """Tokens, ids or vectors as Terms; NOT_FOUND names every unknown token at once."""
    tokens = [q.token for q in queries if q.WhichOneof("query") == "token"]
    ids = iter(space.token_ids(tokens))  # raises NOT_FOUND naming all missing tokens
    terms = []
    for i, q in enumerate(queries):
        kind = q.WhichOneof("query")
        if kind == "token":
            row = next(ids)
        elif kind == "id":
            row = space.check_id(q.id)
        elif kind == "vector":
            terms.append(Term(decode_vector(q.vector, space.d_model, f"{what} {i}")))
            continue
        else:
            raise InvalidArgument(f"{what} {i} is empty: set token, id or vector")
        terms.append(Term(space.matrix[row], row))
    return terms


def decode_options(o: pb.SearchOptions, limits: Limits) -> SearchOptions:
    k = o.k if o.HasField("k") else DEFAULT_K
    if k < 1:
        raise InvalidArgument(f"k must be between 1 and {limits.max_k}, got {k}")
    if k > limits.max_k:
        raise ResourceExhausted(f"k={k} is over this server's limit max_k={limits.max_k}")
    metric = _METRICS.get(o.metric)
    if metric is None:
        raise InvalidArgument(f"metric must be COSINE or DOT, got enum value {o.metric}")
    if o.restrict_vocab < 0:
        raise InvalidArgument(f"restrict_vocab must be 0 (all) or positive, got {o.restrict_vocab}")
    if not 0 <= o.ef_search <= MAX_EF_SEARCH:
        raise InvalidArgument(f"ef_search must be between 0 and {MAX_EF_SEARCH}, got {o.ef_search}")
    return SearchOptions(
        k=k,
        metric=metric,
        exact=o.exact,
        whole_words_only=o.whole_words_only,
        restrict_vocab=int(o.restrict_vocab),
        ef_search=int(o.ef_search),
    )


def check_batch(n: int, limits: Limits, what: str) -> None:
    if n == 0:
        raise InvalidArgument(f"{what} must not be empty")
    if n > limits.max_batch:
        raise ResourceExhausted(
            f"{n} {what} is over this server's limit max_batch={limits.max_batch}"
        )


def check_text(text: str, limits: Limits, what: str) -> None:
    """Refuse a text too long to be max_tokens tokens before tokenizing it (no work done)."""
    if len(text) > limits.max_text_chars:
        raise ResourceExhausted(
            f"{what} has {len(text)} characters, over this server's limit of "
            f"{limits.max_text_chars} (max_tokens={limits.max_tokens} x {CHARS_PER_TOKEN})"
        )


def check_terms(queries: Sequence[pb.AnalogyQuery], limits: Limits) -> None:
    for i, q in enumerate(queries):
        n = len(q.positive) + len(q.negative)
        if n > limits.max_terms:
            raise ResourceExhausted(
                f"analogy {i} has {n} terms, over this server's limit max_terms={limits.max_terms}"
            )


def decode_contextual(r: pb.ContextualEmbedRequest) -> ContextualOptions:
    if r.pooling not in _POOLINGS:
        raise InvalidArgument(
            f"pooling must be UNSPECIFIED, MEAN, FIRST or LAST, got enum value {r.pooling}"
        )
    return ContextualOptions(
        points=tuple(r.points),
        layers=tuple(r.layers),
        skip_special_tokens=r.skip_special_tokens,
        nearest_k=r.nearest_k,
        pooling=_POOLINGS[r.pooling],
        normalize=r.normalize,
        half_precision=r.half_precision,
    )


# ---- domain -> proto ---------------------------------------------------------------------


def encode_neighbors(
    space: EmbeddingSpace, scores: np.ndarray, ids: np.ndarray, into: Any = None
) -> Any:
    """One NeighborList per query row, appended to `into` (a response's repeated field: no copy
    of the messages) or to a new list."""
    vocab = space.vocab
    out: Any = [] if into is None else into
    for row_scores, row_ids in zip(scores.tolist(), ids.tolist()):
        found = pb.NeighborList() if into is None else out.add()
        add = found.neighbors.add  # 2.4x faster than building Neighbor objects and a list
        for i, s in zip(row_ids, row_scores):
            if i >= 0:
                add(token=vocab[i], id=i, score=s)
        if into is None:
            out.append(found)
    return out


def encode_tokens(spans: list[TokenSpan]) -> list[pb.Token]:
    return [
        pb.Token(text=t.text, id=t.id, start=t.start, end=t.end, special=t.special) for t in spans
    ]


def encode_model_info(space: EmbeddingSpace, default: str) -> pb.ModelInfo:
    idx = space.index
    info = pb.ModelInfo(
        name=space.name,
        source=space.source,
        format=space.fmt,
        vocab_size=space.vocab_size,
        d_model=space.d_model,
        is_default=space.name == default,
        lowercase=space.lowercase,
        special_tokens=len(space.special_ids),
        load_seconds=space.load_seconds,
        index=pb.IndexInfo(
            exact=idx.exact_description,
            approximate=idx.approximate_description,
            indexed_vectors=idx.size,
            from_cache=idx.from_cache,
            content_hash=idx.content_hash,
        ),
    )
    tr = space.transformer
    if tr is not None:
        cfg = tr.cfg
        info.transformer.CopyFrom(
            pb.TransformerInfo(
                n_layers=cfg.n_layers,
                n_heads=cfg.n_heads,
                n_ctx=cfg.n_ctx,
                d_mlp=cfg.d_mlp,
                block_style=cfg.block_style,
                positional=cfg.positional,
                causal=cfg.causal,
                points=point_names(cfg.n_layers),
            )
        )
    return info


def encode_limits(limits: Limits) -> pb.Limits:
    return pb.Limits(
        max_k=limits.max_k,
        max_batch=limits.max_batch,
        max_tokens=limits.max_tokens,
        max_texts=limits.max_texts,
        max_request_bytes=limits.max_request_bytes,
        max_response_bytes=limits.max_response_bytes,
        max_concurrent_rpcs=limits.max_concurrent_rpcs,
        max_terms=limits.max_terms,
    )


def encode_contextual(
    space: EmbeddingSpace, results: list[ContextualText], half_precision: bool
) -> list[pb.TextEmbedding]:
    dtype = np.float16 if half_precision else np.float32
    out = []
    for r in results:
        msg = pb.TextEmbedding(
            tokens=encode_tokens(r.tokens),
            activations=[
                pb.Activation(
                    name=pv.point.name,
                    layer=pv.point.layer,
                    values=from_numpy(pv.values, dtype),
                    nearest=(
                        encode_neighbors(space, pv.nearest_scores, pv.nearest_ids)
                        if pv.nearest_scores is not None and pv.nearest_ids is not None
                        else []
                    ),
                )
                for pv in r.points
            ],
        )
        if r.pooled is not None:
            from_numpy(r.pooled, dtype, out=msg.pooled)
        out.append(msg)
    return out


# ---- cross-request batching (batching.py) ------------------------------------------------

Hits = tuple[np.ndarray, np.ndarray]


def _split(scores: np.ndarray, ids: np.ndarray, sizes: list[int]) -> list[Hits]:
    if len(sizes) == 1:
        return [(scores, ids)]
    cuts = np.cumsum(sizes)[:-1]
    return list(zip(np.split(scores, cuts), np.split(ids, cuts)))


def _run_nearest(key: Any, items: list[tuple[EmbeddingSpace, list[Term]]]) -> list[Hits]:
    opts: SearchOptions = key[1]
    terms = [t for _, ts in items for t in ts]
    scores, ids = nearest(items[0][0], terms, opts, include_query=key[2])
    return _split(scores, ids, [len(ts) for _, ts in items])


def _run_analogy(key: Any, items: list[tuple[EmbeddingSpace, list[AnalogyQuery]]]) -> list[Hits]:
    opts: SearchOptions = key[1]
    queries = [q for _, qs in items for q in qs]
    scores, ids = analogy(items[0][0], queries, opts, method=key[2], include_inputs=key[3])
    return _split(scores, ids, [len(qs) for _, qs in items])


def _batcher(
    run: RunBatch[Any, Any],
    method: str,
    max_queries: int,
    metrics: Metrics,
    max_wait: float = 0.0,
) -> Batcher:
    """A Batcher for `method` that records its waits and merged batch sizes."""
    queries = metrics.merged_queries.labels(method)
    requests = metrics.merged_requests.labels(method)

    def on_batch(n_queries: int, n_requests: int) -> None:
        queries.observe(n_queries)
        requests.observe(n_requests)

    return Batcher(
        run,
        max_queries=max_queries,
        max_wait=max_wait,
        on_wait=metrics.queue_wait.labels(method).observe,
        on_batch=on_batch,
    )


# A ContextualEmbed leader waits this long for company before its passes start. Without it,
# 16 closed-loop clients split into a lone caller (a pass of one text, ~20 ms for MiniLM on
# one core) and the 15 that queued behind it, over and over; 2 ms is under a tenth of the
# cheapest pass. Measured (16 clients, 8-32 tokens, 6 s, 3 alternating runs): 0 s 96, 72,
# 96 texts/s with 1, 27, 12 one-request batches; 2 ms 108, 103, 88 with 5, 5, 3.
CONTEXTUAL_MAX_WAIT = 0.002


def _run_contextual(
    key: Any, items: list[tuple[EmbeddingSpace, Prepared]]
) -> list[list[ContextualText]]:
    opts: ContextualOptions = key[1]
    return embed_prepared(items[0][0], opts, [p for _, p in items])


# ---- the servicer ------------------------------------------------------------------------


class EmbeddingService(pb_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: Limits, metrics: Metrics) -> None:
        self.registry = registry
        self.limits = limits
        self.metrics = metrics
        # Concurrent Nearest / Analogy calls with the same options share one search.
        self._nearest = _batcher(_run_nearest, "Nearest", limits.max_batch, metrics)
        self._analogy = _batcher(_run_analogy, "Analogy", limits.max_batch, metrics)
        # ContextualEmbed: a merged batch holds at most max_texts texts (one largest request's
        # worth), which contextual.embed_prepared cuts into passes by length.
        self._contextual = _batcher(
            _run_contextual, "ContextualEmbed", limits.max_texts, metrics, CONTEXTUAL_MAX_WAIT
        )
        # per-request batch sizes, children bound once
        methods = ("Lookup", "Nearest", "Analogy", "ContextualEmbed")
        self._sizes = {m: metrics.batch_size.labels(m) for m in methods}

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        space = self.registry.get(request.model)
        return pb.InfoResponse(
            model=encode_model_info(space, self.registry.default),
            limits=encode_limits(self.limits),
            server_version=__version__,
        )

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[encode_model_info(s, self.registry.default) for s in self.registry.all()],
            default_model=self.registry.default,
            limits=encode_limits(self.limits),
            server_version=__version__,
        )

    def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.ServicerContext
    ) -> pb.TokenizeResponse:
        space = self.registry.get(request.model)
        check_text(request.text, self.limits, "text")
        spans = space.tokenize(request.text, add_special_tokens=not request.skip_special_tokens)
        return pb.TokenizeResponse(model=space.name, tokens=encode_tokens(spans))

    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupResponse:
        space = self.registry.get(request.model)
        n = len(request.items)
        check_batch(n, self.limits, "items")
        self._sizes["Lookup"].observe(n)
        response = pb.LookupResponse(model=space.name)
        items = response.items
        # Rows of E by id, or (for a composed item) its averaged vector: one gather at the end.
        rows: list[int] = []
        composed: dict[int, np.ndarray] = {}
        missing: list[str] = []
        for i, q in enumerate(request.items):
            kind = q.WhichOneof("query")
            if kind == "id":
                row = space.check_id(q.id)
            elif kind == "token":
                found = space.find_token(q.token)
                if found is None and request.compose_subwords:
                    check_text(q.token, self.limits, f"item {i}")
                    composed[i], pieces = space.compose(q.token)
                    if len(pieces) > self.limits.max_tokens:
                        raise ResourceExhausted(
                            f"item {i} has {len(pieces)} pieces, over this server's limit "
                            f"max_tokens={self.limits.max_tokens}"
                        )
                    items.append(
                        pb.LookupItem(
                            token=q.token, id=-1, composed=True, pieces=encode_tokens(pieces)
                        )
                    )
                    rows.append(0)
                    continue
                if found is None:
                    missing.append(q.token)
                    continue
                row = found
            elif kind == "vector":
                raise InvalidArgument(f"item {i}: Lookup takes tokens or ids, not vectors")
            else:
                raise InvalidArgument(f"item {i} is empty: set token or id")
            rows.append(row)
            items.add(token=space.vocab[row], id=row)
        if missing:
            what = "token" if len(missing) == 1 else "tokens"
            raise NotFound(
                f"{what} {quote_list(missing)} not in the vocabulary of model {space.name!r} "
                "(set compose_subwords to average the tokenizer's pieces)"
            )
        vectors = space.matrix[rows]  # a fresh (n, d_model) float32 copy
        for i, vec in composed.items():
            vectors[i] = vec
        from_numpy(vectors, out=response.vectors)
        return response

    def Nearest(
        self, request: pb.NearestRequest, context: grpc.ServicerContext
    ) -> pb.NearestResponse:
        space = self.registry.get(request.model)
        check_batch(len(request.queries), self.limits, "queries")
        self._sizes["Nearest"].observe(len(request.queries))
        opts = decode_options(request.options, self.limits)
        terms = decode_terms(space, list(request.queries), "query")
        hit = nearest_from_table(space, terms, opts, include_query=request.include_query)
        if hit is not None:  # tokens and ids the neighbour table answers: nothing to batch
            scores, ids = hit
        else:
            key = (id(space), opts, request.include_query)
            scores, ids = self._nearest.submit(key, (space, terms), len(terms))
        response = pb.NearestResponse(model=space.name)
        encode_neighbors(space, scores, ids, response.results)
        return response

    def Analogy(
        self, request: pb.AnalogyRequest, context: grpc.ServicerContext
    ) -> pb.AnalogyResponse:
        space = self.registry.get(request.model)
        check_batch(len(request.queries), self.limits, "queries")
        check_terms(request.queries, self.limits)
        self._sizes["Analogy"].observe(len(request.queries))
        opts = decode_options(request.options, self.limits)
        method = _METHODS.get(request.method)
        if method is None:
            raise InvalidArgument(
                f"method must be COS_ADD or COS_MUL, got enum value {request.method}"
            )
        # Decode every term of the batch at once, so NOT_FOUND names all unknown tokens.
        flat = [t for q in request.queries for t in (*q.positive, *q.negative)]
        terms = iter(decode_terms(space, flat, "analogy term"))
        queries = [
            AnalogyQuery(
                tuple(next(terms) for _ in q.positive), tuple(next(terms) for _ in q.negative)
            )
            for q in request.queries
        ]
        key = (id(space), opts, method, request.include_inputs)
        scores, ids = self._analogy.submit(key, (space, queries), len(queries))
        response = pb.AnalogyResponse(model=space.name)
        encode_neighbors(space, scores, ids, response.results)
        return response

    def ContextualEmbed(
        self, request: pb.ContextualEmbedRequest, context: grpc.ServicerContext
    ) -> pb.ContextualEmbedResponse:
        space = self.registry.get(request.model)
        opts = decode_contextual(request)
        for i, text in enumerate(request.texts[: self.limits.max_texts]):
            check_text(text, self.limits, f"text {i}")
        # Every check is made here, so a bad request fails alone before it joins a batch.
        prepared = prepare(space, list(request.texts), opts, self.limits)
        n = len(prepared.spans)
        results = self._contextual.submit((id(space), opts), (space, prepared), n)
        self._sizes["ContextualEmbed"].observe(n)
        return pb.ContextualEmbedResponse(
            model=space.name, results=encode_contextual(space, results, opts.half_precision)
        )

    def StreamNearest(
        self, request_iterator: Iterator[pb.StreamNearestRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamNearestResponse]:
        for message in request_iterator:
            yield pb.StreamNearestResponse(response=self.Nearest(message.request, context))

    def StreamAnalogy(
        self, request_iterator: Iterator[pb.StreamAnalogyRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamAnalogyResponse]:
        for message in request_iterator:
            yield pb.StreamAnalogyResponse(response=self.Analogy(message.request, context))
