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
    )
}


def status_name(exc: BaseException) -> str:
    """The gRPC status-code name for an exception (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_EXCEPTION:
            return STATUS_BY_EXCEPTION[cls]  # type: ignore[index]
    return "INTERNAL"


def quote_list(items: list[str], limit: int = 5) -> str:
    """'a', 'b' and 3 more: for naming offending items in messages without huge output."""
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
