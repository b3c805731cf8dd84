"""Server interceptors: the one exception -> status mapping, and the metrics of every RPC.

Order on the server (outermost first): MetricsInterceptor, AuthInterceptor (auth.py),
ErrorInterceptor. The error interceptor also guards what gRPC Python would otherwise turn into
INTERNAL or UNKNOWN for reasons a client controls:
- a request frame that does not parse: INVALID_ARGUMENT (gRPC Python says INTERNAL);
- a call whose client is gone before a worker thread picks it up: dropped without doing its
  work; one that goes away while it runs stops at the next `cancellation.checkpoint()`;
- status details longer than a client accepts in trailing metadata (8 KiB by default): cut, so
  the client sees the real status instead of RESOURCE_EXHAUSTED from its own transport.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .cancellation import bound
from .errors import Cancelled, EmbedlensError, InvalidArgument, status_name
from .metrics import Metrics

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]
Deserializer = Callable[[bytes], Any]
# Status details travel in trailing metadata; gRPC clients refuse more than 8 KiB of it.
MAX_DETAILS_CHARS = 2000
HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _behavior(handler: grpc.RpcMethodHandler) -> Behavior:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def _non_blocking(handler: grpc.RpcMethodHandler) -> bool:
    """Health's Watch answers through a callback; wrapping it would tie up a worker thread."""
    return bool(getattr(_behavior(handler), "experimental_non_blocking", False))


def _rewrap(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behavior, bool], Behavior],
    deserializer: Deserializer | None = None,
) -> Any:
    """The same handler with its behaviour wrapped (wrap gets whether it yields responses)."""
    kwargs = {
        "request_deserializer": deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **kwargs)


def refuse(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, why: str) -> Any:
    """A handler of the same kind that answers `code` at once, without parsing the request."""

    def wrap(_behavior: Behavior, _streaming: bool) -> Behavior:
        def refused(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(code, why)

        return refused

    return _rewrap(handler, wrap, deserializer=_identity)


def _identity(raw: bytes) -> bytes:
    return raw


class Malformed:
    """A request frame that did not parse; the handler answers INVALID_ARGUMENT."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _guard(deserializer: Deserializer | None, what: str) -> Deserializer | None:
    """A deserializer that never raises: garbage becomes a Malformed marker."""
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(message_type, "full_name", what)

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            return Malformed(f"the request is not a valid {name} message ({exc})")

    return deserialize


def _requests(requests: Iterator[Any]) -> Iterator[Any]:
    for r in requests:
        if isinstance(r, Malformed):
            raise InvalidArgument(r.reason)
        yield r


def cut(details: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """Status details short enough to reach the client (the start says what was wrong)."""
    if len(details) <= limit:
        return details
    return f"{details[: limit - 40]}... ({len(details) - limit + 40} more characters)"


def _expired(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0.001


class ErrorInterceptor(grpc.ServerInterceptor):
    """Domain exceptions become their status; anything else is a bug: INTERNAL, logged.

    Once `draining` is set (shutdown has begun), calls that arrive are refused UNAVAILABLE, which
    clients retry elsewhere; health checks are still answered (NOT_SERVING).
    """

    def __init__(
        self, metrics: Metrics | None = None, draining: threading.Event | None = None
    ) -> None:
        self.metrics = metrics
        self.draining = draining or threading.Event()

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if self.draining.is_set() and not method.startswith(HEALTH_PREFIX):
            return refuse(
                handler,
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; retry (another replica will answer)",
            )
        guarded = _guard(handler.request_deserializer, method)
        if _non_blocking(handler):
            return _rewrap(handler, lambda b, _s: self._wrap_non_blocking(b), guarded)
        in_stream = bool(handler.request_streaming)
        return _rewrap(
            handler, lambda b, streaming: self._wrap(b, streaming, in_stream, method), guarded
        )

    def _abort(self, context: grpc.ServicerContext, exc: Exception, method: str) -> None:
        if isinstance(exc, Cancelled):
            self._abandoned(method, "running")
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _expired(context) else None
            context.abort(code or grpc.StatusCode.CANCELLED, str(exc))
        if isinstance(exc, EmbedlensError):
            context.abort(grpc.StatusCode[status_name(exc)], cut(str(exc)))
        log.exception("bug while handling %s", method)
        context.abort(
            grpc.StatusCode.INTERNAL, f"internal error in {method} (logged on the server)"
        )

    def _abandoned(self, method: str, stage: str) -> None:
        if self.metrics is not None:
            self.metrics.abandoned.labels(method.rpartition("/")[2], stage).inc()

    def _admit(
        self, request: Any, context: grpc.ServicerContext, in_stream: bool, method: str
    ) -> Any:
        """Refuse garbage, and drop a call whose client left while it waited for a thread."""
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, cut(request.reason))
        if not context.is_active():
            self._abandoned(method, "queued")
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _expired(context) else None
            context.abort(code or grpc.StatusCode.CANCELLED, "the caller left before work began")
        return _requests(request) if in_stream else request

    def _wrap_non_blocking(self, behavior: Behavior) -> Behavior:
        def call(request: Any, context: grpc.ServicerContext, **kwargs: Any) -> Any:
            if isinstance(request, Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, cut(request.reason))
            return behavior(request, context, **kwargs)

        call.experimental_non_blocking = True  # type: ignore[attr-defined]
        return call

    def _wrap(self, behavior: Behavior, streaming: bool, in_stream: bool, method: str) -> Behavior:
        if streaming:

            def gen(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    request = self._admit(request, context, in_stream, method)
                    responses = iter(behavior(request, context))
                    while True:
                        # bound around each step only: a generator must not hold the binding
                        # across a yield (the caller's context would carry it)
                        with bound(context.is_active):
                            try:
                                response = next(responses)
                            except StopIteration:
                                return
                        yield response
                except Exception as exc:
                    if context.code() is not None:  # already aborted with a status
                        raise
                    self._abort(context, exc, method)

            return gen

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                request = self._admit(request, context, in_stream, method)
                with bound(context.is_active):
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
        if handler is None or _non_blocking(handler):
            return handler
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
