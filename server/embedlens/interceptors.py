"""Server interceptors: the one exception -> status mapping, and the metrics of every RPC."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .errors import EmbedlensError, status_name
from .metrics import Metrics

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior, bool], Behavior]) -> Any:
    """The same handler with its behaviour wrapped (wrap gets whether it yields responses)."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **kwargs)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Domain exceptions become their status; anything else is a bug: INTERNAL, logged."""

    def __init__(self, service_prefix: str = "/embedlens.") -> None:
        self.prefix = service_prefix

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        method = details.method
        return _rewrap(handler, lambda b, streaming: self._wrap(b, streaming, method))

    @staticmethod
    def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
        if isinstance(exc, EmbedlensError):
            context.abort(grpc.StatusCode[status_name(exc)], str(exc))
        log.exception("bug while handling %s", method)
        context.abort(
            grpc.StatusCode.INTERNAL, f"internal error in {method} (logged on the server)"
        )

    def _wrap(self, behavior: Behavior, streaming: bool, method: str) -> Behavior:
        if streaming:

            def gen(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from behavior(request, context)
                except Exception as exc:
                    if context.code() is not None:  # already aborted with a status
                        raise
                    self._abort(context, exc, method)

            return gen

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except Exception as exc:
                if context.code() is not None:
                    raise
                self._abort(context, exc, method)

        return unary


class MetricsInterceptor(grpc.ServerInterceptor):
    """grpc_server_started/handled/handling_seconds for every RPC, as go-grpc-prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        labels = (_rpc_type(handler), service, method)
        return _rewrap(handler, lambda b, streaming: self._wrap(b, streaming, labels))

    def _finish(self, labels: tuple[str, str, str], context: Any, t0: float, failed: bool) -> None:
        code = context.code()
        name = ("Unknown" if failed else "OK") if code is None else _camel(code)
        self.m.handled.labels(*labels, name).inc()
        self.m.handling_seconds.labels(*labels).observe(time.perf_counter() - t0)
        self.m.in_flight.labels(labels[2]).dec()

    def _start(self, labels: tuple[str, str, str]) -> float:
        self.m.started.labels(*labels).inc()
        self.m.in_flight.labels(labels[2]).inc()
        return time.perf_counter()

    def _wrap(self, behavior: Behavior, streaming: bool, labels: tuple[str, str, str]) -> Behavior:
        m = self.m

        def counted(requests: Iterator[Any]) -> Iterator[Any]:
            for r in requests:
                m.msg_received.labels(*labels).inc()
                yield r

        def prepare(request: Any) -> Any:
            if labels[0] in ("client_stream", "bidi_stream"):
                return counted(request)
            m.msg_received.labels(*labels).inc()
            return request

        if streaming:

            def gen(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                t0 = self._start(labels)
                failed = True
                try:
                    for response in behavior(prepare(request), context):
                        m.msg_sent.labels(*labels).inc()
                        yield response
                    failed = False
                finally:
                    self._finish(labels, context, t0, failed)

            return gen

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            t0 = self._start(labels)
            failed = True
            try:
                response = behavior(prepare(request), context)
                m.msg_sent.labels(*labels).inc()
                failed = False
                return response
            finally:
                self._finish(labels, context, t0, failed)

        return unary


def _camel(code: grpc.StatusCode) -> str:
    """StatusCode.NOT_FOUND -> 'NotFound', the label value go-grpc-prometheus uses."""
    return "".join(part.capitalize() for part in code.name.split("_"))
