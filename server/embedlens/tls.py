"""Server TLS credentials from PEM files: TLS, or mutual TLS when a client CA is given."""

from __future__ import annotations

from pathlib import Path

import grpc

from .config import ServerConfig


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {str(path)!r}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"the {what} {str(path)!r} is not PEM (no -----BEGIN line)")
    return data


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """None for plaintext; with a client CA, clients must present a certificate it signed."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    chain = _read(config.tls_cert, "TLS certificate")
    key = _read(config.tls_key, "TLS private key")
    client_ca = (
        _read(config.tls_client_ca, "client CA bundle")
        if config.tls_client_ca is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
