"""Rows 2-4: requests per second through gRPC, ours against a baseline, from one client process.

Every row drives its server from one asyncio event loop with N concurrent coroutines, each
sending one request and awaiting the answer in a loop. Requests are serialised once up front
and responses are left as bytes, so the client does the same work for embedlens and for the
echo server, and the difference between the two is the server's own work.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np

from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb

SERVICE = "/embedlens.v1.EmbeddingService/"
_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "calls": self.calls,
            "errors": self.errors,
            "seconds": self.seconds,
        }


async def _drive(
    target: str,
    method: str,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    warmup: float,
    channels: int,
) -> Load:
    # Several channels, one connection each, when asked: a server with several processes on
    # one port (SO_REUSEPORT) gets connections, not calls, spread over them.
    options = _OPTIONS + ([("grpc.use_local_subchannel_pool", 1)] if channels > 1 else [])
    chans = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    calls = [ch.unary_unary(method) for ch in chans]  # bytes in, bytes out: nothing parsed
    latencies: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        call = calls[i % channels]
        j = i
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                await call(requests[j % len(requests)], timeout=60.0)
            except grpc.aio.AioRpcError:
                errors += 1
            t1 = time.perf_counter()
            if t0 >= t_measure and t1 <= t_end:
                latencies.append(t1 - t0)
            j += concurrency

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for ch in chans:
            await ch.close()
    lat = np.array(latencies) if latencies else np.zeros(1)
    return Load(
        rps=len(latencies) / seconds,
        p50_ms=float(np.percentile(lat, 50) * 1000),
        p99_ms=float(np.percentile(lat, 99) * 1000),
        calls=len(latencies),
        errors=errors,
        seconds=seconds,
    )


def drive(
    target: str,
    method: str,
    requests: list[bytes],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    channels: int = 1,
) -> Load:
    """Closed-loop load: `concurrency` callers, each one request in flight, for `seconds`,
    spread over `channels` connections."""
    return asyncio.run(_drive(target, method, requests, concurrency, seconds, warmup, channels))


def unary(target: str, method: str, request: bytes) -> bytes:
    """One call, raw bytes (to learn the response size, or to see an error)."""
    with grpc.insecure_channel(target, options=_OPTIONS) as ch:
        return bytes(ch.unary_unary(method)(request, timeout=60.0))


def nearest_requests(tokens: list[str], k: int, exact: bool) -> list[bytes]:
    return [
        pb.NearestRequest(
            queries=[pb.Query(token=t)], options=pb.SearchOptions(k=k, exact=exact)
        ).SerializeToString()
        for t in tokens
    ]


def nearest_vector_requests(vectors: np.ndarray, k: int, exact: bool) -> list[bytes]:
    """One raw-vector query per request: always a search (never the neighbour table)."""
    from embedlens_client.tensors import from_numpy

    return [
        pb.NearestRequest(
            queries=[pb.Query(vector=from_numpy(np.ascontiguousarray(v, dtype=np.float32)))],
            options=pb.SearchOptions(k=k, exact=exact),
        ).SerializeToString()
        for v in vectors
    ]


def lookup_requests(tokens: list[str]) -> list[bytes]:
    return [pb.LookupRequest(items=[pb.Query(token=t)]).SerializeToString() for t in tokens]


def contextual_requests(texts: list[str], points: tuple[str, ...]) -> list[bytes]:
    return [
        pb.ContextualEmbedRequest(texts=[t], points=list(points)).SerializeToString() for t in texts
    ]
