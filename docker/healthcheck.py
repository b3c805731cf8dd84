"""Exit 0 when an embedlens server answers SERVING on the gRPC health service, 1 otherwise.

The image's HEALTHCHECK and the compose health checks run this: it needs only grpcio and
grpcio-health-checking, which the server has anyway, so the image carries no extra probe binary.

    python healthcheck.py [--address localhost:50051] [--service NAME] [--timeout 3]

The address defaults to localhost and $EMBEDLENS_PORT.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str, timeout: float) -> tuple[bool, str]:
    """(serving, what the server said) for one Health/Check call."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as err:
            return False, f"{err.code().name}: {err.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address", default=f"localhost:{os.environ.get('EMBEDLENS_PORT') or 50051}"
    )
    parser.add_argument(
        "--service",
        default="embedlens.v1.EmbeddingService",
        help="health service name ('' is the whole server)",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    ok, status = check(args.address, args.service, args.timeout)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
