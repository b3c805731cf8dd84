"""Configured limits: reported by Info, enforced with RESOURCE_EXHAUSTED naming the limit, fast;
deadlines: DEADLINE_EXCEEDED, and the work for a call whose client has gone stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedlens.config import Limits, ModelSpec
from embedlens.server import EmbedlensServer
from embedlens_client import (
    Client,
    ClientError,
    DeadlineExceededError,
    ResourceExhaustedError,
)
from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc

from .conftest import make_config, start_server
from .toy_model import toy_matrix, write_word2vec

LIMITS = Limits(
    max_k=7,
    max_batch=5,
    max_tokens=16,
    max_texts=2,
    max_request_bytes=64 * 1024,
    max_response_bytes=256 * 1024,
    max_concurrent_rpcs=3,
    max_terms=4,
)


@pytest.fixture(scope="module")
def small() -> Iterator[EmbedlensServer]:
    """MiniLM with small limits and two worker threads."""
    app = start_server(make_config(limits=LIMITS, workers=2))
    yield app
    app.stop(0)


@pytest.fixture(scope="module")
def c(small: EmbedlensServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{small.port}", timeout=60, retries=0) as client:
        yield client


def _sample(app: EmbedlensServer, name: str, **labels: str) -> float:
    v = app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_info_reports_every_configured_limit(c: Client) -> None:
    got = c.info().limits
    assert got is not None
    for name in Limits.__dataclass_fields__:
        assert getattr(got, name) == getattr(LIMITS, name), name
    assert c.models()[0].limits == got


CASES: list[tuple[str, Callable[[Client], object], list[str]]] = [
    ("k", lambda c: c.nearest("king", k=8), ["k=8", "max_k=7"]),
    ("analogy k", lambda c: c.analogy(["king"], k=8), ["max_k=7"]),
    ("nearest batch", lambda c: c.nearest_batch(["king"] * 6), ["6 queries", "max_batch=5"]),
    ("lookup batch", lambda c: c.lookup(["king"] * 6), ["6 items", "max_batch=5"]),
    ("analogy batch", lambda c: c.analogy_batch([(["king"], [])] * 6), ["max_batch=5"]),
    (
        "analogy terms",
        lambda c: c.analogy(["king", "woman", "queen"], ["man", "boy"]),
        ["5 terms", "max_terms=4"],
    ),
    ("texts", lambda c: c.contextual_embed(["a", "b", "c"]), ["3 texts", "max_texts=2"]),
    (
        "tokens",
        lambda c: c.contextual_embed("one two three four five six seven eight nine ten " * 2),
        ["22 tokens", "max_tokens=16"],
    ),
    (
        "nearest_k",
        lambda c: c.contextual_embed("river bank", nearest_k=8),
        ["nearest_k=8", "max_k=7"],
    ),
    (
        "response size",
        lambda c: c.contextual_embed(
            "the river bank flooded again today",
            points=["embed", "pos_embed", "resid_pre", "attn_out", "resid_mid", "mlp_out"],
        ),
        ["max_response_bytes=262144"],
    ),
    ("text characters", lambda c: c.tokenize("a" * 2000), ["2000 characters", "max_tokens=16"]),
    (
        "contextual characters",
        lambda c: c.contextual_embed("b" * 1025),
        ["1025 characters", "1024"],
    ),
    (
        "composed pieces",
        lambda c: c.lookup("qx " * 20, compose_subwords=True),
        ["max_tokens=16"],
    ),
    (
        "request bytes",
        lambda c: c.nearest_batch([np.ones(5000, np.float32)] * 4),
        ["larger than max", str(64 * 1024)],
    ),
]


@pytest.mark.parametrize("name,call,fragments", CASES, ids=[x[0] for x in CASES])
def test_over_a_limit_is_resource_exhausted_naming_it_and_fast(
    c: Client, name: str, call: Callable[[Client], object], fragments: list[str]
) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ResourceExhaustedError) as info:
        call(c)
    elapsed = time.perf_counter() - t0
    for fragment in fragments:
        assert fragment in info.value.details, (name, info.value.details)
    assert elapsed < 2.0, f"{name}: refused after {elapsed:.2f}s"
    assert [n.token for n in c.analogy(["king", "woman"], ["man"], k=1, exact=True)] == ["queen"]


def test_at_the_limit_is_served(c: Client) -> None:
    assert len(c.nearest("king", k=7)) == 7
    assert len(c.nearest_batch(["king"] * 5, k=1)) == 5
    assert c.analogy(["king", "woman", "queen"], ["man"], k=1)
    assert len(c.contextual_embed(["river bank", "central bank"])) == 2


def test_response_over_max_response_bytes_is_resource_exhausted(tmp_path: Path) -> None:
    """The transport's own check is the backstop for a response no estimate caught."""
    path = write_word2vec(tmp_path / "wide.vec", toy_matrix(50, 512))
    limits = Limits(max_response_bytes=4096)
    app = start_server(
        make_config(models=(ModelSpec("wide", str(path)),), cache_dir=tmp_path, limits=limits)
    )
    try:
        with Client(f"127.0.0.1:{app.port}", retries=0) as client:
            assert client.lookup("king").shape == (512,)  # 2 KiB: fits
            with pytest.raises(ResourceExhaustedError, match="larger than max"):
                client.lookup(["king", "queen", "man"])  # 6 KiB
            assert client.lookup("queen").shape == (512,)
    finally:
        app.stop(0)


class HeldStreams:
    """Open StreamNearest calls that send nothing until released: each holds an RPC slot (and a
    worker thread while one is free) without using the CPU."""

    def __init__(self, target: str, n: int) -> None:
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(target)
        stub = pb_grpc.EmbeddingServiceStub(self.channel)

        def requests() -> Iterator[pb.StreamNearestRequest]:
            self.release.wait(30)
            return
            yield  # a generator that yields nothing

        self.calls = [stub.StreamNearest(requests(), timeout=60) for _ in range(n)]

    def __enter__(self) -> HeldStreams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        for call in self.calls:
            list(call)  # drain: each ends OK once its request stream closes
        self.channel.close()


def _in_flight(app: EmbedlensServer, method: str) -> float:
    return _sample(app, "embedlens_in_flight_requests", grpc_method=method)


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_concurrent_rpcs_over_the_limit_are_resource_exhausted(
    small: EmbedlensServer, c: Client
) -> None:
    target = f"127.0.0.1:{small.port}"
    with HeldStreams(target, 3):
        _wait_for(lambda: _in_flight(small, "StreamNearest") >= 2)
        time.sleep(0.2)  # the third is admitted and queued for a worker thread
        with pytest.raises(ResourceExhaustedError, match="Concurrent RPC limit"):
            c.nearest("king", k=1)
    # slots free again
    assert c.nearest("king", k=1)


def test_a_call_that_expires_while_queued_never_starts(small: EmbedlensServer, c: Client) -> None:
    target = f"127.0.0.1:{small.port}"
    started = _sample(
        small,
        "grpc_server_started_total",
        grpc_method="Nearest",
        grpc_service="embedlens.v1.EmbeddingService",
        grpc_type="unary",
    )
    with HeldStreams(target, 2):  # both worker threads busy
        _wait_for(lambda: _in_flight(small, "StreamNearest") >= 2)
        with Client(target, timeout=0.3, retries=0) as hasty, pytest.raises(DeadlineExceededError):
            hasty.nearest("king", k=1)
    assert c.nearest("king", k=1)  # ...and then the next call runs
    after = _sample(
        small,
        "grpc_server_started_total",
        grpc_method="Nearest",
        grpc_service="embedlens.v1.EmbeddingService",
        grpc_type="unary",
    )
    assert after == started + 1  # the expired one was dropped before its handler ran


def _analogies(n: int) -> list[tuple[list[int], list[int]]]:
    ids = np.random.default_rng(0).integers(2000, 29000, size=(n, 3)).tolist()
    return [([a, b], [c]) for a, b, c in ids]


EXPENSIVE = {
    # exact k=1000 search for 4096 queries: about a minute of work on 2 cores; the index
    # searches 512 queries at a time and checks between chunks
    "Nearest": (lambda c: c.nearest_batch(_ids(4096), k=1000, exact=True), 5.0),
    # exact 3CosMul for 4096 analogies: several seconds of work; checkpoints between runs
    "Analogy": (
        lambda c: c.analogy_batch(_analogies(4096), k=5, method="3cosmul", exact=True),
        12.0,
    ),
}


def _ids(n: int) -> list[int]:
    return np.random.default_rng(1).integers(2000, 29000, size=n).tolist()


@pytest.mark.parametrize("method", sorted(EXPENSIVE))
def test_work_for_an_expired_call_stops(server: EmbedlensServer, target: str, method: str) -> None:
    """A huge exact batch with a 0.5 s deadline: the client gets DEADLINE_EXCEEDED at once and
    the server stops the work soon after (embedlens_abandoned_calls_total counts it)."""
    call, bound = EXPENSIVE[method]
    labels = {"grpc_method": method, "stage": "running"}
    before = _sample(server, "embedlens_abandoned_calls_total", **labels)
    t0 = time.monotonic()
    with Client(target, timeout=0.5, retries=0) as hasty, pytest.raises(DeadlineExceededError):
        call(hasty)
    expired = time.monotonic()
    assert expired - t0 < 5
    _wait_for(lambda: _sample(server, "embedlens_abandoned_calls_total", **labels) > before, 60.0)
    stopped_after = time.monotonic() - expired
    _wait_for(lambda: _in_flight(server, method) == 0)
    print(f"{method}: server stopped {stopped_after:.2f}s after the deadline")
    assert stopped_after < bound
    code = _sample(
        server,
        "grpc_server_handled_total",
        grpc_code="DeadlineExceeded",
        grpc_method=method,
        grpc_service="embedlens.v1.EmbeddingService",
        grpc_type="unary",
    )
    assert code >= 1
    # the server is still correct
    with Client(target, timeout=60) as c:
        assert c.analogy(["king", "woman"], ["man"], k=1, exact=True)[0].token == "queen"


def test_a_cancelled_call_stops_too(server: EmbedlensServer, target: str) -> None:
    labels = {"grpc_method": "Nearest", "stage": "running"}
    before = _sample(server, "embedlens_abandoned_calls_total", **labels)
    ids = _ids(4096)
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        request = pb.NearestRequest(
            queries=[pb.Query(id=i) for i in ids], options=pb.SearchOptions(k=1000, exact=True)
        )
        future = stub.Nearest.future(request, timeout=120)
        _wait_for(
            lambda: _sample(server, "embedlens_in_flight_requests", grpc_method="Nearest") >= 1
        )
        future.cancel()
        t_cancel = time.monotonic()
    _wait_for(lambda: _sample(server, "embedlens_abandoned_calls_total", **labels) > before, 20.0)
    stopped_after = time.monotonic() - t_cancel
    print(f"server stopped {stopped_after:.2f}s after the cancel")
    assert stopped_after < 5.0
    with pytest.raises(grpc.FutureCancelledError):
        future.result()


def test_client_error_for_limits_is_typed(c: Client) -> None:
    with pytest.raises(ClientError) as info:
        c.nearest("king", k=8)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
