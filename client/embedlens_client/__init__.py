"""Thin Python client for embedlens: grpcio, protobuf and numpy only."""

from .client import (
    Client,
    ContextualResult,
    IndexInfo,
    Limits,
    LookupResult,
    ModelInfo,
    ModelReload,
    Neighbor,
    Token,
    TransformerInfo,
    tls_credentials,
)
from .errors import (
    ClientError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientError",
    "ContextualResult",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "IndexInfo",
    "InvalidArgumentError",
    "Limits",
    "LookupResult",
    "ModelInfo",
    "ModelReload",
    "Neighbor",
    "NotFoundError",
    "ResourceExhaustedError",
    "Token",
    "TransformerInfo",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "tls_credentials",
]
