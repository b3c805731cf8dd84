"""A bare gRPC echo server: the baseline for throughput rows.

The same runtime as embedlens (grpcio's synchronous server on a thread pool of the same size,
health service included) but no work: every unary call on any method gets back a fixed byte
string of the size of the real response. Requests and responses stay raw bytes, so nothing is
parsed. Run as `python bench/echo.py --port P --sizes Nearest=310,Lookup=1620`: the last part of
the method path picks the size (so the client calls the same paths as on embedlens).
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


class _Echo(grpc.GenericRpcHandler):
    def __init__(self, sizes: dict[str, int]) -> None:
        self.handlers = {
            name: grpc.unary_unary_rpc_method_handler(_replier(b"\x00" * size))
            for name, size in sizes.items()
        }

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(details.method.rsplit("/", 1)[-1])


def _replier(payload: bytes) -> Any:
    def reply(request: bytes, context: Any) -> bytes:
        return payload

    return reply


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sizes", required=True, help="METHOD=BYTES,... response size per method")
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    sizes = {m: int(n) for m, n in (part.split("=") for part in args.sizes.split(","))}
    server.add_generic_rpc_handlers((_Echo(sizes),))
    h = health.HealthServicer()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
