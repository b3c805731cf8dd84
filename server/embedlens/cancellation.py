"""Cooperative cancellation: work for a caller that has gone away stops between chunks.

gRPC Python cannot interrupt a handler thread. When a client cancels or its deadline passes,
the call is marked inactive and the handler keeps running until it returns, so batched domain
work asks, between chunks, whether anyone still waits for the answer:

    for chunk in chunks:
        checkpoint()          # raises Cancelled if the caller is gone
        ...

The error interceptor binds each call's liveness (`context.is_active`) while its handler runs,
so domain code never sees grpc. Outside a call (unit tests, the CLI) checkpoint() does nothing.
Work handed to another thread (a request batcher) takes `current()` along and asks it there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from .errors import Cancelled

Liveness = Callable[[], bool]

_live: ContextVar[Liveness | None] = ContextVar("embedlens_call_liveness", default=None)


def _always() -> bool:
    return True


def checkpoint() -> None:
    """Raise Cancelled if the current call's client has cancelled or its deadline passed."""
    live = _live.get()
    if live is not None and not live():
        raise Cancelled("the call was cancelled or its deadline passed; its work was stopped")


def current() -> Liveness:
    """The current call's liveness test, to take along to another thread (True outside calls)."""
    return _live.get() or _always


def bind(live: Liveness) -> Token[Liveness | None]:
    """Make `live` the test checkpoint() asks until unbind(token): bound() without a generator,
    for the per-call path (a generator context manager costs more than the rest of a Lookup)."""
    return _live.set(live)


def unbind(token: Token[Liveness | None]) -> None:
    _live.reset(token)


@contextmanager
def bound(live: Liveness) -> Iterator[None]:
    """Make `live` the liveness test that checkpoint() asks, for the duration of a handler."""
    token = _live.set(live)
    try:
        yield
    finally:
        _live.reset(token)
