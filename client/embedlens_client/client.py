"""The embedlens client: numpy arrays and small dataclasses in and out, never raw protos."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from .errors import from_rpc_error
from .pb.embedlens.v1 import admin_pb2 as admin_pb
from .pb.embedlens.v1 import admin_pb2_grpc as admin_grpc
from .pb.embedlens.v1 import embedlens_pb2 as pb
from .pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc
from .tensors import from_numpy, to_numpy

QueryLike = str | int | np.integer | np.ndarray | Sequence[float]
T = TypeVar("T")

_METRICS = {"cosine": pb.METRIC_COSINE, "dot": pb.METRIC_DOT}
_METHODS = {"3cosadd": pb.ANALOGY_METHOD_COS_ADD, "3cosmul": pb.ANALOGY_METHOD_COS_MUL}
_POOLINGS = {
    None: pb.POOLING_UNSPECIFIED,
    "mean": pb.POOLING_MEAN,
    "first": pb.POOLING_FIRST,
    "last": pb.POOLING_LAST,
}


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
    max_terms: int = 0  # 0 from a server that predates the limit


@dataclass(frozen=True)
class ModelReload:
    """What AdminService/Reload did to one model (reloaded False: the old version serves)."""

    model: str
    reloaded: bool
    error: str
    seconds: float
    previous_content_hash: str
    content_hash: str


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


@dataclass(frozen=True)
class ContextualResult:
    """ContextualEmbed output for one text.

    `activations` maps point names ("embed", "blocks.3.resid_post", ...) to float32 arrays of
    shape (n_tokens, d_model), one row per entry of `tokens`, in forward-pass order.
    `nearest` maps the same names to one list of neighbours per token (empty unless nearest_k).
    `pooled` is the (d_model,) sentence vector when pooling was asked for.
    """

    tokens: list[Token]
    activations: dict[str, np.ndarray]
    nearest: dict[str, list[list[Neighbor]]]
    pooled: np.ndarray | None

    def position(self, token: str, occurrence: int = 0) -> int:
        """Index in `tokens` of a token text ("bank"), case-insensitive; ValueError if absent."""
        hits = [i for i, t in enumerate(self.tokens) if t.text.lower() == token.lower()]
        if len(hits) <= occurrence:
            raise ValueError(
                f"token {token!r} (occurrence {occurrence}) is not among "
                f"{[t.text for t in self.tokens]}"
            )
        return hits[occurrence]


def _contextual_result(m: pb.TextEmbedding) -> ContextualResult:
    return ContextualResult(
        tokens=[_token(t) for t in m.tokens],
        activations={a.name: np.array(to_numpy(a.values), dtype=np.float32) for a in m.activations},
        nearest={a.name: _neighbors(a.nearest) for a in m.activations},
        pooled=np.array(to_numpy(m.pooled), dtype=np.float32) if m.HasField("pooled") else None,
    )


def _limits(m: pb.Limits) -> Limits:
    return Limits(
        m.max_k,
        m.max_batch,
        m.max_tokens,
        m.max_texts,
        m.max_request_bytes,
        m.max_response_bytes,
        m.max_concurrent_rpcs,
        m.max_terms,
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


def tls_credentials(
    ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: `ca` to trust (default: the system's roots),
    `cert` + `key` to present a client certificate (mutual TLS)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both tls_cert and tls_key")

    def read(path: str | Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )


def _service_config(retries: int) -> str:
    """gRPC service config: round_robin over every resolved address; UNAVAILABLE, CANCELLED retried.

    round_robin sends each call to the next READY connection, so calls spread over all the
    addresses a target resolves to (pick_first, gRPC's default, sends them all to one), and an
    address that stops answering is skipped. A call that fails with UNAVAILABLE (its server
    went away or is still loading, or a load balancer found no replica) is tried again, on
    another address, after a randomized exponential backoff, within the call's deadline. So is
    one that fails with CANCELLED: a grpcio server that is shutting down cancels the calls that
    reach it after shutdown began (through a proxy's kept-alive connection, say) instead of
    refusing them. Every embedlens call only reads, so a repeat is safe; a call the caller
    cancels itself is never retried.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries > 0:
        config["methodConfig"] = [
            {
                "name": [{"service": "embedlens.v1.EmbeddingService"}],
                "retryPolicy": {
                    # gRPC caps attempts at 5 whatever is asked.
                    "maxAttempts": retries + 1,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    return json.dumps(config)


def channel_target(target: str | Sequence[str]) -> str:
    """The gRPC target for a "host:port" or URI string, or for a list of "host:port" addresses.

    gRPC has no target form for several host names, so a list becomes an `ipv4:` (or `ipv6:`)
    list of addresses, host names resolved once, here. To follow DNS as replicas come and go,
    give one "dns:///name:port" target instead: gRPC re-resolves it when a connection drops.
    """
    if isinstance(target, str):
        if not target.strip():
            raise ValueError("target must not be empty")
        return target
    addresses = list(target)
    if not addresses:
        raise ValueError("target must name at least one address")
    if len(addresses) == 1:
        _split_address(addresses[0])
        return addresses[0]  # one name: left to gRPC's DNS resolver, which follows changes
    resolved: list[tuple[socket.AddressFamily, str, int]] = []
    for address in addresses:
        for item in _resolve(address):
            if item not in resolved:
                resolved.append(item)
    if all(family == socket.AF_INET for family, _, _ in resolved):
        return "ipv4:" + ",".join(f"{ip}:{port}" for _, ip, port in resolved)
    # Mixed families: an IPv4 address is written IPv4-mapped, the one form ipv6: accepts.
    return "ipv6:" + ",".join(
        f"[{ip if family == socket.AF_INET6 else '::ffff:' + ip}]:{port}"
        for family, ip, port in resolved
    )


def _split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError for anything else."""
    if not isinstance(address, str) or "/" in address:
        raise ValueError(f"each address in a list must be 'host:port', got {address!r}")
    if address.startswith("["):
        host, sep, port_text = address[1:].partition("]:")
    else:
        host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"each address in a list must be 'host:port', got {address!r}")
    return host, int(port_text)


def _resolve(address: str) -> list[tuple[socket.AddressFamily, str, int]]:
    """(family, ip, port) for "host:port"; only a name's IPv4 addresses if it has any."""
    host, port = _split_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r} (from {address!r}): {exc}") from None
    found: list[tuple[socket.AddressFamily, str, int]] = [
        (family, str(sockaddr[0]), int(sockaddr[1]))
        for family, _, _, _, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]
    v4 = [f for f in found if f[0] == socket.AF_INET]
    return v4 or found


class Client:
    """A connection to an embedlens server.

    `target` is "host:port", a gRPC target such as "dns:///embedlens:50051", or a list of
    "host:port" addresses (balanced round-robin). Calls that fail with UNAVAILABLE or
    CANCELLED are retried with backoff (`retries` times, at most 4).
    """

    def __init__(
        self,
        target: str | Sequence[str] = "localhost:50051",
        *,
        timeout: float = 10.0,
        model: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        admin_token: str | None = None,
        retries: int = 4,
        max_message_bytes: int = 256 * 1024 * 1024,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        resolved = channel_target(target)
        self.target = resolved
        self.timeout = timeout
        self.model = model or ""
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._admin_metadata = (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        if credentials is None and (tls or tls_ca or tls_cert or tls_key):
            credentials = tls_credentials(tls_ca, tls_cert, tls_key)
        opts = [
            ("grpc.service_config", _service_config(retries)),
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
        self._admin = admin_grpc.AdminServiceStub(self._channel)

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

    def reload(
        self, models: Sequence[str] = (), *, timeout: float | None = None
    ) -> list[ModelReload]:
        """AdminService/Reload (needs `admin_token=`): rebuild models from their files."""
        try:
            r = self._admin.Reload(
                admin_pb.ReloadRequest(models=list(models)),
                timeout=timeout or max(self.timeout, 600.0),
                metadata=self._admin_metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err, "Reload") from None
        return [
            ModelReload(
                m.model, m.reloaded, m.error, m.seconds, m.previous_content_hash, m.content_hash
            )
            for m in r.results
        ]

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

    def contextual_embed(
        self,
        texts: str | Sequence[str],
        *,
        points: str | Sequence[str] = (),
        layers: int | Sequence[int] = (),
        skip_special_tokens: bool = False,
        nearest_k: int = 0,
        pooling: str | None = None,
        normalize: bool = False,
        half_precision: bool = False,
        model: str | None = None,
        timeout: float | None = None,
    ) -> list[ContextualResult]:
        """Run the model's transformer on texts; the residual stream at the chosen points.

        One ContextualResult per text, in order; a single str still gives a list of one.
        points: full names ("embed", "pos_embed", "blocks.3.resid_post", "final") or per-block
        kinds ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post") taken at every
        block in `layers` (negative layers count from the end; none: every block). No points:
        "resid_post" at the chosen layers.
        skip_special_tokens: leave [CLS]/[SEP] out of the result (the model still reads them).
        nearest_k: the k nearest static tokens of E (cosine, exact) for every returned vector.
        pooling: None, "mean", "first" or "last" of `final`; normalize L2-normalises it.
        half_precision: float16 on the wire (half the bytes); arrays come back as float32.
        """
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be None, 'mean', 'first' or 'last', got {pooling!r}")
        r = self._call(
            "ContextualEmbed",
            pb.ContextualEmbedRequest(
                model=self._model(model),
                texts=[texts] if isinstance(texts, str) else list(texts),
                points=[points] if isinstance(points, str) else list(points),
                layers=[layers] if isinstance(layers, (int, np.integer)) else list(layers),
                skip_special_tokens=skip_special_tokens,
                nearest_k=nearest_k,
                pooling=_POOLINGS[pooling],
                normalize=normalize,
                half_precision=half_precision,
            ),
            timeout=timeout,
        )
        return [_contextual_result(t) for t in r.results]
