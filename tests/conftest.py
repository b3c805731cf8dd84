"""Shared fixtures: one real server on a free loopback port, and a real client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedlens.config import ServerConfig
from embedlens.server import EmbedlensServer, create_server
from embedlens_client import Client

ROOT = Path(__file__).resolve().parent.parent
# Built indexes are cached here between runs (a fresh clone builds them once).
CACHE_DIR = Path(os.environ.get("EMBEDLENS_TEST_CACHE_DIR", ROOT / "cache" / "test"))


def make_config(**overrides: object) -> ServerConfig:
    """A server config for tests: loopback, free ports, shared cache, no progress bars."""
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "cache_dir": CACHE_DIR,
        "progress": False,
        "grace_seconds": 2.0,
    }
    base.update(overrides)
    return ServerConfig(**base)  # type: ignore[arg-type]


def start_server(config: ServerConfig, timeout: float = 600.0) -> EmbedlensServer:
    app, _ = create_server(config)
    app.start()
    if not app.wait_ready(timeout):
        app.stop(0)
        raise RuntimeError(f"server did not become ready: {app.registry.failure!r}")
    return app


@pytest.fixture(scope="session")
def server() -> Iterator[EmbedlensServer]:
    """The default model (MiniLM from its package) behind a real gRPC server."""
    app = start_server(make_config())
    yield app
    app.stop(0)


@pytest.fixture(scope="session")
def target(server: EmbedlensServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def client(target: str) -> Iterator[Client]:
    with Client(target, timeout=60.0) as c:
        yield c
