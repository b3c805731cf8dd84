"""The error contract: each bad input gets its status code and a helpful message, and the
server keeps serving afterwards. Nothing a client sends produces INTERNAL or UNKNOWN."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from embedlens_client import (
    Client,
    ClientError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc

Case = tuple[str, Callable[[Client], object], type[ClientError], list[str]]

CASES: list[Case] = [
    ("unknown token", lambda c: c.nearest("qwertyuiopzz"), NotFoundError, ["'qwertyuiopzz'"]),
    (
        "unknown tokens named together",
        lambda c: c.analogy(["kingzz", "woman"], ["manzz"]),
        NotFoundError,
        ["'kingzz'", "'manzz'"],
    ),
    (
        "unknown lookup",
        lambda c: c.lookup(["king", "zzzqqq"]),
        NotFoundError,
        ["'zzzqqq'", "compose_subwords"],
    ),
    ("id out of range", lambda c: c.nearest(30522), NotFoundError, ["30522", "0 to 30521"]),
    ("negative id", lambda c: c.lookup(-1), NotFoundError, ["-1"]),
    (
        "unknown model",
        lambda c: c.nearest("king", model="nope"),
        NotFoundError,
        ["'nope'", "'minilm'"],
    ),
    ("k = 0", lambda c: c.nearest("king", k=0), InvalidArgumentError, ["k must be between 1 and"]),
    ("negative k", lambda c: c.analogy(["king"], [], k=-3), InvalidArgumentError, ["got -3"]),
    (
        "k over the limit",
        lambda c: c.nearest("king", k=1_000_000),
        ResourceExhaustedError,
        ["max_k"],
    ),
    (
        "wrong vector dimension",
        lambda c: c.nearest(np.ones(10, np.float32)),
        InvalidArgumentError,
        ["(384,)", "(10,)"],
    ),
    (
        "NaN in a vector",
        lambda c: c.nearest(np.full(384, np.nan, np.float32)),
        InvalidArgumentError,
        ["NaN"],
    ),
    (
        "Inf in an analogy vector",
        lambda c: c.analogy([np.full(384, np.inf, np.float32)], ["man"]),
        InvalidArgumentError,
        ["NaN or Inf"],
    ),
    (
        "zero vector",
        lambda c: c.nearest(np.zeros(384, np.float32)),
        InvalidArgumentError,
        ["zero length"],
    ),
    ("empty query list", lambda c: c.nearest_batch([]), InvalidArgumentError, ["empty"]),
    ("empty lookup", lambda c: c.lookup([]), InvalidArgumentError, ["empty"]),
    ("empty analogy", lambda c: c.analogy([], []), InvalidArgumentError, ["no positive"]),
    (
        "cosmul without positives",
        lambda c: c.analogy([], ["man"], method="3cosmul"),
        InvalidArgumentError,
        ["at least one positive"],
    ),
    (
        "batch over the limit",
        lambda c: c.nearest_batch(["king"] * 5000),
        ResourceExhaustedError,
        ["max_batch"],
    ),
    (
        "vector in Lookup",
        lambda c: c.lookup_items([np.ones(384)]),  # type: ignore[list-item]
        InvalidArgumentError,
        ["not vectors"],
    ),
    (
        "negative restrict_vocab",
        lambda c: c.nearest("king", restrict_vocab=-5),
        InvalidArgumentError,
        ["restrict_vocab"],
    ),
    (
        "ef_search too large",
        lambda c: c.nearest("king", ef_search=10**6),
        InvalidArgumentError,
        ["ef_search"],
    ),
    (
        "compose a string of unknown characters",
        lambda c: c.lookup("\u2603\u2604", compose_subwords=True),
        NotFoundError,
        ["special"],
    ),
    (
        "compose whitespace",
        lambda c: c.lookup("   ", compose_subwords=True),
        InvalidArgumentError,
        ["no tokens"],
    ),
]


@pytest.mark.parametrize("name,call,error,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_status(
    client: Client,
    name: str,
    call: Callable[[Client], object],
    error: type[ClientError],
    fragments: list[str],
) -> None:
    with pytest.raises(error) as info:
        call(client)
    for fragment in fragments:
        assert fragment in info.value.details, (name, info.value.details)
    # ...and the server still answers correctly.
    assert client.analogy(["king", "woman"], ["man"], k=1, exact=True)[0].token == "queen"


def _raw_stub(target: str) -> tuple[grpc.Channel, pb_grpc.EmbeddingServiceStub]:
    ch = grpc.insecure_channel(target)
    return ch, pb_grpc.EmbeddingServiceStub(ch)


@pytest.mark.parametrize(
    "request_,fragment",
    [
        (pb.NearestRequest(queries=[pb.Query()]), "is empty"),
        (
            pb.NearestRequest(
                queries=[
                    pb.Query(vector=pb.Tensor(shape=[384], dtype=pb.DTYPE_FLOAT32, data=b"\0" * 7))
                ]
            ),
            "needs 1536 bytes",
        ),
        (
            pb.NearestRequest(
                queries=[pb.Query(vector=pb.Tensor(shape=[384], dtype=99, data=b"\0" * 1536))]
            ),
            "dtype",
        ),
        (
            pb.NearestRequest(
                queries=[pb.Query(vector=pb.Tensor(shape=[-1], dtype=pb.DTYPE_FLOAT32))]
            ),
            "non-negative",
        ),
        (
            pb.NearestRequest(
                queries=[
                    pb.Query(vector=pb.Tensor(shape=[384], dtype=pb.DTYPE_INT64, data=b"\0" * 3072))
                ]
            ),
            "float",
        ),
        (
            pb.NearestRequest(
                queries=[pb.Query(token="king")], options=pb.SearchOptions(metric=42)
            ),
            "metric",
        ),
        (
            pb.AnalogyRequest(
                queries=[pb.AnalogyQuery(positive=[pb.Query(token="king")])], method=9
            ),
            "method",
        ),
        (
            pb.AnalogyRequest(
                queries=[pb.AnalogyQuery(positive=[pb.Query(token="king")])],
                options=pb.SearchOptions(metric=pb.METRIC_DOT),
            ),
            "cosine only",
        ),
    ],
)
def test_malformed_messages_are_invalid_argument(
    target: str, request_: object, fragment: str
) -> None:
    ch, stub = _raw_stub(target)
    with ch:
        method = stub.Nearest if isinstance(request_, pb.NearestRequest) else stub.Analogy
        with pytest.raises(grpc.RpcError) as info:
            method(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()


def test_contextual_embed_is_a_clear_status_not_internal(target: str) -> None:
    ch, stub = _raw_stub(target)
    with ch, pytest.raises(grpc.RpcError) as info:
        stub.ContextualEmbed(pb.ContextualEmbedRequest(texts=[]), timeout=30)
    assert info.value.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
