"""The server's one interceptor: metrics, authentication, draining and error mapping of every RPC.

`CallPipeline` builds each method's wrapped handler once (the token check itself is auth.py's).
It also guards what gRPC Python would otherwise turn into INTERNAL or UNKNOWN for reasons a
client controls:
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

from .cancellation import bind, bound, unbind
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


AuthCheck = Callable[[str, Any], "str | None"]


class CallPipeline(grpc.ServerInterceptor):
    """Metrics, authentication, draining and error mapping for every call, in that order.

    One interceptor, and the wrapped handler of each method is built once and cached: gRPC
    Python calls an interceptor for every RPC, and three stacked interceptors that rebuilt their
    handlers per call cost about 0.45 ms of a 1 ms Lookup (docs/performance.md). Per call only
    the checks that depend on the call run: the bearer token (`auth`, None when the call may
    proceed, else why not) and whether shutdown has begun.

    - Metrics: grpc_server_started/handled/handling_seconds/msg_* as go-grpc-prometheus, every
      call counted, refused ones included.
    - Once `draining` is set, calls are refused UNAVAILABLE, which clients retry elsewhere;
      health checks are still answered (NOT_SERVING).
    - Domain exceptions become their status; anything else is a bug: INTERNAL, logged.
    """

    def __init__(
        self,
        metrics: Metrics,
        auth: AuthCheck | None = None,
        draining: threading.Event | None = None,
    ) -> None:
        self.m = metrics
        self.auth = auth
        self.draining = draining or threading.Event()
        self._handlers: dict[str, Any] = {}

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        refusal = None
        if self.auth is not None:
            why = self.auth(method, details.invocation_metadata)
            if why is not None:
                log.debug("refused a call to %s: %s", method, why)
                refusal = (grpc.StatusCode.UNAUTHENTICATED, why)
        if refusal is None and self.draining.is_set() and not method.startswith(HEALTH_PREFIX):
            refusal = (
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; retry (another replica will answer)",
            )
        if refusal is None:
            cached = self._handlers.get(method)
            if cached is not None:
                return cached
        handler = continuation(details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED, nothing cached
            return None
        if refusal is not None:
            if _non_blocking(handler):
                return refuse(handler, *refusal)
            return _rewrap(refuse(handler, *refusal), self._metered(method, handler))
        wrapped = self._build(handler, method)
        self._handlers[method] = wrapped  # the same handler object every time: no lock needed
        return wrapped

    def _build(self, handler: grpc.RpcMethodHandler, method: str) -> Any:
        guarded = _guard(handler.request_deserializer, method)
        if _non_blocking(handler):
            return _rewrap(handler, lambda b, _s: self._wrap_non_blocking(b), guarded)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, _MethodMetrics(self.m, handler, method)),
                request_deserializer=guarded,
                response_serializer=handler.response_serializer,
            )
        in_stream = bool(handler.request_streaming)
        metered = self._metered(method, handler)
        return _rewrap(
            handler,
            lambda b, streaming: metered(self._wrap(b, streaming, in_stream, method), streaming),
            guarded,
        )

    # ---- errors ---------------------------------------------------------------------------

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
        self.m.abandoned.labels(method.rpartition("/")[2], stage).inc()

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

    def _unary(self, behavior: Behavior, method: str, mm: _MethodMetrics) -> Behavior:
        """The unary path, metrics and error mapping in one frame: every RPC but the streams."""
        admit, abort = self._admit, self._abort

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            t0 = mm.begin()
            failed = True
            try:
                request = admit(request, context, False, method)
                token = bind(context.is_active)
                try:
                    response = behavior(request, context)
                finally:
                    unbind(token)
                mm.sent.inc()
                failed = False
                return response
            except Exception as exc:
                if context.code() is not None:  # already aborted with a status
                    raise
                abort(context, exc, method)
            finally:
                mm.end(context, t0, failed)

        return unary

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

    # ---- metrics of streams and refused calls -----------------------------------------------

    def _metered(
        self, method: str, handler: grpc.RpcMethodHandler
    ) -> Callable[[Behavior, bool], Behavior]:
        mm = _MethodMetrics(self.m, handler, method)
        counted_stream = mm.labels[0] in ("client_stream", "bidi_stream")

        def counted(requests: Iterator[Any]) -> Iterator[Any]:
            for r in requests:
                mm.received.inc()
                yield r

        def prepare(request: Any) -> Any:
            if counted_stream:
                return counted(request)
            mm.received.inc()
            return request

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            if streaming:

                def gen(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    t0 = mm.begin(count_request=False)
                    failed = True
                    try:
                        for response in behavior(prepare(request), context):
                            mm.sent.inc()
                            yield response
                        failed = False
                    finally:
                        mm.end(context, t0, failed)

                return gen

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                t0 = mm.begin(count_request=False)
                failed = True
                try:
                    response = behavior(prepare(request), context)
                    mm.sent.inc()
                    failed = False
                    return response
                finally:
                    mm.end(context, t0, failed)

            return unary

        return wrap


class _MethodMetrics:
    """One method's metric children, bound once: `labels()` costs a lock and a lookup per call."""

    __slots__ = (
        "_codes",
        "_handled",
        "in_flight",
        "labels",
        "received",
        "seconds",
        "sent",
        "started",
    )

    def __init__(self, m: Metrics, handler: grpc.RpcMethodHandler, method: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.labels = (_rpc_type(handler), service, name)
        self.started = m.started.labels(*self.labels)
        self.received = m.msg_received.labels(*self.labels)
        self.sent = m.msg_sent.labels(*self.labels)
        self.seconds = m.handling_seconds.labels(*self.labels)
        self.in_flight = m.in_flight.labels(name)
        self._handled = m.handled
        self._codes: dict[str, Any] = {}

    def begin(self, count_request: bool = True) -> float:
        self.started.inc()
        self.in_flight.inc()
        if count_request:
            self.received.inc()
        return time.perf_counter()

    def end(self, context: Any, t0: float, failed: bool) -> None:
        code = context.code()
        name = ("Unknown" if failed else "OK") if code is None else _camel(code)
        child = self._codes.get(name)
        if child is None:
            child = self._codes[name] = self._handled.labels(*self.labels, name)
        child.inc()
        self.seconds.observe(time.perf_counter() - t0)
        self.in_flight.dec()


def _camel(code: grpc.StatusCode) -> str:
    """StatusCode.NOT_FOUND -> 'NotFound', the label value go-grpc-prometheus uses."""
    return "".join(part.capitalize() for part in code.name.split("_"))
