"""A bare gRPC echo server: the baseline for throughput rows.

The same runtime as embedlens (grpcio's synchronous server on a thread pool of the same size,
health service included) but no work: every unary call on any method gets back a fixed byte
string of the size of the real response. Requests and responses stay raw bytes, so nothing is
parsed. Run as `python bench/echo.py --port P --sizes Nearest=310,Lookup=1620`: the last part of
the method path picks the size (so the client calls the same paths as on embedlens).

`--processes N` runs N copies on the one port (gRPC sets SO_REUSEPORT), as `embedlens serve
--processes N` does: the baseline for a multi-process embedlens at equal process count.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
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
    p.add_argument("--processes", type=int, default=1, help="copies on the same port")
    args = p.parse_args()
    copies = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--port",
                str(args.port),
                "--sizes",
                args.sizes,
                "--workers",
                str(args.workers),
            ]
        )
        for _ in range(args.processes - 1)
    ]
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
    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:  # whoever started us is gone (killed): stop too
            break
    for c in copies:
        c.terminate()
    server.stop(1).wait()
    for c in copies:
        c.wait()


if __name__ == "__main__":
    main()
