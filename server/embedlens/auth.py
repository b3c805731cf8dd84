"""Bearer-token authentication, checked by the call pipeline before any handler runs.

- With user tokens configured, every call needs `authorization: Bearer <token>`; without one it
  gets UNAUTHENTICATED before its request is even parsed. Health and reflection stay open
  unless `open_health` is off (load balancers and `grpcurl list` carry no tokens).
- AdminService always needs the admin token; a server started without one refuses admin calls.
- The admin token is also accepted wherever a user token is.
- Tokens are compared in constant time; token files are re-read on reload (SIGHUP), so tokens
  rotate without a restart.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import ServerConfig

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/embedlens.v1.AdminService/"
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def read_token_file(path: Path) -> list[str]:
    """Tokens from a file, one per line; blank lines and `#` comments are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def bearer_token(metadata: Iterable[Any] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header, or None."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _matches(token: str, allowed: Iterable[bytes]) -> bool:
    given = token.encode("utf-8", "replace")
    found = False
    for t in allowed:  # no early exit: the time taken does not say which token came close
        found |= hmac.compare_digest(given, t)
    return found


class Tokens:
    """The accepted user and admin tokens; reload() re-reads the token files."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.user: tuple[bytes, ...] = ()
        self.admin: tuple[bytes, ...] = ()
        self.reload()

    def reload(self) -> None:
        c = self.config
        user = list(c.auth_tokens)
        if c.auth_token_file is not None:
            user += read_token_file(c.auth_token_file)
        admin = [c.admin_token] if c.admin_token else []
        if c.admin_token_file is not None:
            admin += read_token_file(c.admin_token_file)[:1]
        if c.auth and not user:
            raise ValueError(f"auth is on but {c.auth_token_file} holds no token")
        with self._lock:
            self.user = tuple(t.encode() for t in user)
            self.admin = tuple(t.encode() for t in admin)

    @property
    def auth_required(self) -> bool:
        return bool(self.user)


class Authenticator:
    """Says why a call may not proceed (UNAUTHENTICATED), or None; admin calls need the admin
    token. The call pipeline (interceptors.py) asks `check` for every call."""

    def __init__(self, tokens: Tokens, *, open_health: bool = True) -> None:
        self.tokens = tokens
        self.open = OPEN_PREFIXES if open_health else ()

    def check(self, method: str, metadata: Iterable[Any] | None) -> str | None:
        """None when the call may proceed, else why not."""
        t = self.tokens
        if method.startswith(ADMIN_PREFIX):
            if not t.admin:
                return (
                    "admin RPCs are disabled: start the server with an admin token "
                    "(--admin-token-file or EMBEDLENS_ADMIN_TOKEN)"
                )
            token = bearer_token(metadata)
            if token is None or not _matches(token, t.admin):
                return "admin RPCs need the admin token: send 'authorization: Bearer <token>'"
            return None
        if not t.auth_required or method.startswith(self.open):
            return None
        token = bearer_token(metadata)
        if token is None:
            return "this server needs a token: send 'authorization: Bearer <token>'"
        if not _matches(token, (*t.user, *t.admin)):
            return "the bearer token is not valid for this server"
        return None
