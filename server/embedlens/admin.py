"""AdminService: operator RPCs (reload). The auth interceptor admits only the admin token."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from embedlens_client.pb.embedlens.v1 import admin_pb2 as admin_pb
from embedlens_client.pb.embedlens.v1 import admin_pb2_grpc as admin_grpc

from .registry import ReloadResult

Reloader = Callable[[Sequence[str]], list[ReloadResult]]


def encode_reload(r: ReloadResult) -> admin_pb.ModelReload:
    return admin_pb.ModelReload(
        model=r.model,
        reloaded=r.reloaded,
        error=r.error,
        seconds=r.seconds,
        previous_content_hash=r.previous_content_hash,
        content_hash=r.content_hash,
    )


class AdminService(admin_grpc.AdminServiceServicer):
    def __init__(self, reload: Reloader) -> None:
        self._reload = reload

    def Reload(
        self, request: admin_pb.ReloadRequest, context: grpc.ServicerContext
    ) -> admin_pb.ReloadResponse:
        results = self._reload(list(request.models))
        return admin_pb.ReloadResponse(results=[encode_reload(r) for r in results])
