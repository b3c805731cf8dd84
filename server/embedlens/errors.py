"""Domain exceptions and the one table that maps them to gRPC status codes.

Domain code raises these; the error interceptor (interceptors.py) turns them into statuses.
This module does not import grpc: the table holds status-code names.
"""

from __future__ import annotations


class EmbedlensError(Exception):
    """Base of every error a client can cause; the message is sent to the client."""

    status = "INTERNAL"


class NotFound(EmbedlensError):
    """Unknown token, id out of range, unknown model."""

    status = "NOT_FOUND"


class InvalidArgument(EmbedlensError):
    """Malformed input: bad k, wrong dimension, NaN, empty lists, bad point names."""

    status = "INVALID_ARGUMENT"


class ResourceExhausted(EmbedlensError):
    """Over a configured limit (k, batch size, tokens, concurrency, message size)."""

    status = "RESOURCE_EXHAUSTED"


class Unavailable(EmbedlensError):
    """Model still loading, or the server shutting down."""

    status = "UNAVAILABLE"


class FailedPrecondition(EmbedlensError):
    """The model cannot do this (e.g. ContextualEmbed on a static-only model)."""

    status = "FAILED_PRECONDITION"


class Unimplemented(EmbedlensError):
    """Part of the API that this server does not implement yet."""

    status = "UNIMPLEMENTED"


class Unauthenticated(EmbedlensError):
    """Missing or wrong auth token."""

    status = "UNAUTHENTICATED"


class Cancelled(EmbedlensError):
    """The caller is gone (cancelled, or its deadline passed): the work for it stopped.

    The interceptor sends DEADLINE_EXCEEDED when the call's deadline has passed, else CANCELLED;
    the client has usually seen its own status already, so this is mostly for metrics and logs.
    """

    status = "CANCELLED"


# The one exception -> status table. Anything not listed here is a bug: INTERNAL, logged.
STATUS_BY_EXCEPTION: dict[type[EmbedlensError], str] = {
    cls: cls.status
    for cls in (
        NotFound,
        InvalidArgument,
        ResourceExhausted,
        Unavailable,
        FailedPrecondition,
        Unimplemented,
        Unauthenticated,
        Cancelled,
    )
}


def status_name(exc: BaseException) -> str:
    """The gRPC status-code name for an exception (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_EXCEPTION:
            return STATUS_BY_EXCEPTION[cls]  # type: ignore[index]
    return "INTERNAL"


def quote_list(items: list[str], limit: int = 5, width: int = 60) -> str:
    """'a', 'b' and 3 more: for naming offending items in messages without huge output.

    Each item is cut to `width` characters: a client that sends a 10 MB "token" gets a
    readable message, not its token back.
    """
    shown = ", ".join(_short_repr(i, width) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _short_repr(item: str, width: int) -> str:
    if len(item) <= width:
        return repr(item)
    return f"{item[:width]!r}... ({len(item)} characters)"
