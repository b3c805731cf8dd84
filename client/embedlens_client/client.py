"""The embedlens client: numpy arrays and small dataclasses in and out, never raw protos."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from .errors import from_rpc_error
from .pb.embedlens.v1 import embedlens_pb2 as pb
from .pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc
from .tensors import from_numpy, to_numpy

QueryLike = str | int | np.integer | np.ndarray | Sequence[float]
T = TypeVar("T")

_METRICS = {"cosine": pb.METRIC_COSINE, "dot": pb.METRIC_DOT}
_METHODS = {"3cosadd": pb.ANALOGY_METHOD_COS_ADD, "3cosmul": pb.ANALOGY_METHOD_COS_MUL}


@dataclass(frozen=True)
class Neighbor:
    token: str
    id: int
    score: float


@dataclass(frozen=True)
class Token:
    text: str
    id: int
    start: int
    end: int
    special: bool = False


@dataclass(frozen=True)
class Limits:
    max_k: int
    max_batch: int
    max_tokens: int
    max_texts: int
    max_request_bytes: int
    max_response_bytes: int
    max_concurrent_rpcs: int


@dataclass(frozen=True)
class IndexInfo:
    exact: str
    approximate: str
    indexed_vectors: int
    from_cache: bool
    content_hash: str


@dataclass(frozen=True)
class TransformerInfo:
    n_layers: int
    n_heads: int
    n_ctx: int
    d_mlp: int
    block_style: str
    positional: str
    causal: bool
    points: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    format: str
    vocab_size: int
    d_model: int
    n_layers: int  # 0 for static-only models
    is_default: bool
    lowercase: bool
    special_tokens: int
    index: IndexInfo
    transformer: TransformerInfo | None
    limits: Limits | None
    load_seconds: float


@dataclass(frozen=True)
class LookupResult:
    """How Lookup resolved one item (`id` is -1 and `composed` True for averaged pieces)."""

    token: str
    id: int
    composed: bool
    pieces: tuple[Token, ...]


def _limits(m: pb.Limits) -> Limits:
    return Limits(
        m.max_k,
        m.max_batch,
        m.max_tokens,
        m.max_texts,
        m.max_request_bytes,
        m.max_response_bytes,
        m.max_concurrent_rpcs,
    )


def _model_info(m: pb.ModelInfo, limits: pb.Limits | None) -> ModelInfo:
    tr = None
    if m.HasField("transformer"):
        t = m.transformer
        tr = TransformerInfo(
            t.n_layers,
            t.n_heads,
            t.n_ctx,
            t.d_mlp,
            t.block_style,
            t.positional,
            t.causal,
            tuple(t.points),
        )
    i = m.index
    return ModelInfo(
        name=m.name,
        source=m.source,
        format=m.format,
        vocab_size=m.vocab_size,
        d_model=m.d_model,
        n_layers=tr.n_layers if tr else 0,
        is_default=m.is_default,
        lowercase=m.lowercase,
        special_tokens=m.special_tokens,
        index=IndexInfo(i.exact, i.approximate, i.indexed_vectors, i.from_cache, i.content_hash),
        transformer=tr,
        limits=_limits(limits) if limits is not None else None,
        load_seconds=m.load_seconds,
    )


def _token(t: pb.Token) -> Token:
    return Token(t.text, t.id, t.start, t.end, t.special)


def _neighbors(lists: Iterable[pb.NeighborList]) -> list[list[Neighbor]]:
    return [[Neighbor(n.token, n.id, n.score) for n in nl.neighbors] for nl in lists]


def to_query(q: QueryLike) -> pb.Query:
    """str -> token, int -> id, array -> vector."""
    if isinstance(q, str):
        return pb.Query(token=q)
    if isinstance(q, (bool, np.bool_)):
        raise TypeError("a query is a token (str), an id (int) or a vector, not a bool")
    if isinstance(q, (int, np.integer)):
        return pb.Query(id=int(q))
    arr = np.asarray(q)
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"a query is a token (str), an id (int) or a vector, got {type(q).__name__}"
        )
    return pb.Query(vector=from_numpy(arr, np.float32))


def _retry_service_config(retries: int) -> str:
    """gRPC service config: retry UNAVAILABLE with backoff, round-robin over resolved addresses."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": "embedlens.v1.EmbeddingService"}],
                    "retryPolicy": {
                        "maxAttempts": max(2, retries + 1),
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


class Client:
    """A connection to an embedlens server.

    `target` is "host:port", a gRPC target such as "dns:///embedlens:50051", or a list of
    "host:port" addresses (balanced round-robin). Calls retry UNAVAILABLE with backoff.
    """

    def __init__(
        self,
        target: str | Sequence[str] = "localhost:50051",
        *,
        timeout: float = 10.0,
        model: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        retries: int = 4,
        max_message_bytes: int = 256 * 1024 * 1024,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if isinstance(target, str):
            if not target:
                raise ValueError("target must not be empty")
            resolved = target
        else:
            addresses = list(target)
            if not addresses:
                raise ValueError("target must name at least one address")
            resolved = addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)
        self.target = resolved
        self.timeout = timeout
        self.model = model or ""
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        opts = [
            ("grpc.service_config", _retry_service_config(retries)),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *options,
        ]
        if credentials is not None:
            self._channel = grpc.secure_channel(resolved, credentials, options=opts)
        else:
            self._channel = grpc.insecure_channel(resolved, options=opts)
        self._stub = pb_grpc.EmbeddingServiceStub(self._channel)

    # ---- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, name)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err, name) from None

    def _model(self, model: str | None) -> str:
        return self.model if model is None else model

    @staticmethod
    def _options(
        k: int,
        metric: str,
        exact: bool,
        whole_words_only: bool,
        restrict_vocab: int,
        ef_search: int,
    ) -> pb.SearchOptions:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        return pb.SearchOptions(
            k=k,
            metric=_METRICS[metric],
            exact=exact,
            whole_words_only=whole_words_only,
            restrict_vocab=restrict_vocab,
            ef_search=ef_search,
        )

    # ---- the API --------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        r = self._call("ListModels", pb.ListModelsRequest())
        return [_model_info(m, r.limits) for m in r.models]

    def info(self, model: str | None = None) -> ModelInfo:
        r = self._call("Info", pb.InfoRequest(model=self._model(model)))
        return _model_info(r.model, r.limits)

    def tokenize(
        self, text: str, model: str | None = None, *, skip_special_tokens: bool = False
    ) -> list[Token]:
        r = self._call(
            "Tokenize",
            pb.TokenizeRequest(
                model=self._model(model), text=text, skip_special_tokens=skip_special_tokens
            ),
        )
        return [_token(t) for t in r.tokens]

    def lookup_items(
        self,
        items: str | int | Sequence[str | int],
        model: str | None = None,
        *,
        compose_subwords: bool = False,
    ) -> tuple[np.ndarray, list[LookupResult]]:
        """Vectors (n, d_model) and how each item was resolved."""
        seq = [items] if isinstance(items, (str, int, np.integer)) else list(items)
        r = self._call(
            "Lookup",
            pb.LookupRequest(
                model=self._model(model),
                items=[to_query(i) for i in seq],
                compose_subwords=compose_subwords,
            ),
        )
        vectors = np.array(to_numpy(r.vectors), dtype=np.float32)
        info = [
            LookupResult(i.token, i.id, i.composed, tuple(_token(p) for p in i.pieces))
            for i in r.items
        ]
        return vectors, info

    def lookup(
        self,
        items: str | int | Sequence[str | int],
        model: str | None = None,
        *,
        compose_subwords: bool = False,
    ) -> np.ndarray:
        """One item -> (d_model,); a list -> (n, d_model); float32."""
        vectors, _ = self.lookup_items(items, model, compose_subwords=compose_subwords)
        single = isinstance(items, (str, int, np.integer))
        return vectors[0] if single else vectors

    def nearest_batch(
        self,
        queries: Sequence[QueryLike],
        k: int = 10,
        *,
        exact: bool = False,
        metric: str = "cosine",
        include_query: bool = False,
        whole_words_only: bool = False,
        restrict_vocab: int = 0,
        ef_search: int = 0,
        model: str | None = None,
    ) -> list[list[Neighbor]]:
        """The k nearest tokens to each query (token, id or vector), best first."""
        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            queries = list(queries)
        r = self._call(
            "Nearest",
            pb.NearestRequest(
                model=self._model(model),
                queries=[to_query(q) for q in queries],
                options=self._options(
                    k, metric, exact, whole_words_only, restrict_vocab, ef_search
                ),
                include_query=include_query,
            ),
        )
        return _neighbors(r.results)

    def nearest(self, query: QueryLike, k: int = 10, **kwargs: Any) -> list[Neighbor]:
        """The k nearest tokens to a token, an id or a vector; see nearest_batch for options."""
        return self.nearest_batch([query], k, **kwargs)[0]

    def analogy_batch(
        self,
        queries: Sequence[tuple[Sequence[QueryLike], Sequence[QueryLike]]],
        k: int = 10,
        *,
        method: str = "3cosadd",
        exact: bool = False,
        exclude_inputs: bool = True,
        whole_words_only: bool = False,
        restrict_vocab: int = 0,
        ef_search: int = 0,
        model: str | None = None,
        timeout: float | None = None,
    ) -> list[list[Neighbor]]:
        """Many analogies in one call: each is (positive terms, negative terms)."""
        if method not in _METHODS:
            raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
        r = self._call(
            "Analogy",
            pb.AnalogyRequest(
                model=self._model(model),
                queries=[
                    pb.AnalogyQuery(
                        positive=[to_query(p) for p in pos], negative=[to_query(n) for n in neg]
                    )
                    for pos, neg in queries
                ],
                method=_METHODS[method],
                options=self._options(
                    k, "cosine", exact, whole_words_only, restrict_vocab, ef_search
                ),
                include_inputs=not exclude_inputs,
            ),
            timeout=timeout,
        )
        return _neighbors(r.results)

    def analogy(
        self,
        positive: Sequence[QueryLike],
        negative: Sequence[QueryLike] = (),
        k: int = 10,
        **kwargs: Any,
    ) -> list[Neighbor]:
        """positive - negative: analogy(["king", "woman"], ["man"]) ~ queen."""
        if isinstance(positive, (str, np.ndarray)):
            positive = [positive]
        if isinstance(negative, (str, np.ndarray)):
            negative = [negative]
        return self.analogy_batch([(positive, negative)], k, **kwargs)[0]

    def contextual_embed(self, *args: Any, **kwargs: Any) -> Any:
        """Residual-stream points of the transformer for texts (see ContextualEmbed)."""
        r = self._call(
            "ContextualEmbed",
            pb.ContextualEmbedRequest(
                model=self._model(kwargs.get("model")), texts=list(args[0]) if args else []
            ),
        )
        return r
