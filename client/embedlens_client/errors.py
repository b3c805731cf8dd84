"""grpc.RpcError as a small exception hierarchy, one class per status a caller handles."""

from __future__ import annotations

import grpc


class ClientError(Exception):
    """An embedlens call failed; `code` is the gRPC status, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "") -> None:
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method


class NotFoundError(ClientError):
    """Unknown token, id out of range, or unknown model."""


class InvalidArgumentError(ClientError):
    """The request was malformed (bad k, wrong dimension, NaN, empty input, ...)."""


class ResourceExhaustedError(ClientError):
    """Over a server limit (k, batch size, tokens, concurrency, message size)."""


class UnavailableError(ClientError):
    """The server is loading, shutting down or unreachable; retrying later may work."""


class DeadlineExceededError(ClientError):
    """The call's timeout passed."""


class FailedPreconditionError(ClientError):
    """The model cannot do this (e.g. ContextualEmbed on a static-only model)."""


class UnimplementedError(ClientError):
    """The server does not implement this call."""


class UnauthenticatedError(ClientError):
    """Missing or wrong auth token."""


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def from_rpc_error(err: grpc.RpcError, method: str = "") -> ClientError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return _BY_CODE.get(code, ClientError)(code, details or "", method)
